//! pgnotifier test fixture: a Rust plugin that panics on the text payload
//! `panic` and logs every other text payload, so a test can tell that a Rust
//! panic is contained and the instance comes back.

wit_bindgen::generate!({ world: "plugin", path: "../../../wit" });

use exports::pgnotifier::plugin::subscriber::{Guest, Payload, Registration};
use pgnotifier::plugin::host::{log, Level};

struct Panicky;

impl Guest for Panicky {
    fn register(_id: String, config: Vec<(String, String)>) -> Result<Registration, String> {
        let channels = config
            .iter()
            .find(|(key, _)| key == "channels")
            .map_or("panicky", |(_, value)| value.as_str());
        Ok(Registration {
            channels: channels.split(',').map(|c| c.trim().to_string()).collect(),
        })
    }

    fn on_notify(_id: String, _channel: String, payload: Payload, _pid: i32) -> Result<(), String> {
        match payload {
            Payload::Text(text) if text == "panic" => panic!("asked to panic"),
            Payload::Text(text) => log(Level::Info, &text),
            _ => {}
        }
        Ok(())
    }

    fn on_gap(_id: String, _channels: Vec<String>) {}
}

export!(Panicky);
