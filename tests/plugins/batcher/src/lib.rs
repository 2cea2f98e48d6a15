//! pgnotifier test fixture: a Rust plugin that exports `batch`, so a test can
//! tell how notifications reached it. Each call logs `batch N` or `single`,
//! then each text payload: `fail` fails that notification, `panic` traps the
//! call, any other is logged as it is.

wit_bindgen::generate!({ world: "batched-plugin", path: "../../../wit" });

use exports::pgnotifier::plugin::batch::{self, Failure};
use exports::pgnotifier::plugin::subscriber::{Guest, Payload, Registration};
use pgnotifier::plugin::host::{log, Level};

struct Batcher;

/// One notification, as either export handles it.
fn handle(payload: &Payload) -> Result<(), String> {
    match payload {
        Payload::Text(text) if text == "fail" => Err("asked to fail".into()),
        Payload::Text(text) if text == "panic" => panic!("asked to panic"),
        Payload::Text(text) => {
            log(Level::Info, text);
            Ok(())
        }
        _ => Ok(()),
    }
}

impl Guest for Batcher {
    fn register(_id: String, config: Vec<(String, String)>) -> Result<Registration, String> {
        let channels = config
            .iter()
            .find(|(key, _)| key == "channels")
            .map_or("batcher", |(_, value)| value.as_str());
        Ok(Registration {
            channels: channels.split(',').map(|c| c.trim().to_string()).collect(),
        })
    }

    fn on_notify(_id: String, _channel: String, payload: Payload, _pid: i32) -> Result<(), String> {
        log(Level::Debug, "single");
        handle(&payload)
    }

    fn on_gap(_id: String, _channels: Vec<String>) {}
}

impl batch::Guest for Batcher {
    fn on_notify_batch(
        _id: String,
        _channel: String,
        notifications: Vec<batch::Notification>,
    ) -> Vec<Failure> {
        log(Level::Debug, &format!("batch {}", notifications.len()));
        (0u32..)
            .zip(&notifications)
            .filter_map(|(index, n)| {
                handle(&n.payload)
                    .err()
                    .map(|message| Failure { index, message })
            })
            .collect()
    }
}

export!(Batcher);
