//! pgnotifier example plugin: log every notification as `(id, channel, payload, pid)`.
//!
//! Sidecar `logger.toml`:
//! ```toml
//! [config]
//! channels = "ch1,orders"   # comma-separated; default "ch1"
//! ```

wit_bindgen::generate!({ world: "plugin", path: "../../wit" });

use exports::pgnotifier::plugin::subscriber::{Guest, Payload, Registration};
use pgnotifier::plugin::host::{log, Level};

struct Logger;

impl Guest for Logger {
    fn register(id: String, config: Vec<(String, String)>) -> Result<Registration, String> {
        let channels = config
            .iter()
            .find(|(key, _)| key == "channels")
            .map_or("ch1", |(_, value)| value.as_str());
        let channels: Vec<String> = channels
            .split(',')
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(String::from)
            .collect();
        log(Level::Info, &format!("{id} registered on {channels:?}"));
        Ok(Registration { channels })
    }

    fn on_notify(id: String, channel: String, payload: Payload, pid: i32) -> Result<(), String> {
        log(Level::Info, &format!("({id}, {channel:?}, {}, {pid})", describe(&payload)));
        Ok(())
    }

    fn on_gap(id: String, channels: Vec<String>) {
        log(Level::Warn, &format!("{id} may have missed notifications on {channels:?}"));
    }
}

/// The payload as `case value`, e.g. `json {"a":1}` or `text "hi"`.
fn describe(payload: &Payload) -> String {
    match payload {
        Payload::Null => "null".into(),
        Payload::Boolean(b) => format!("boolean {b}"),
        Payload::Integer(i) => format!("integer {i}"),
        Payload::Float(f) => format!("float {f:?}"),
        Payload::Text(t) => format!("text {t:?}"),
        Payload::Json(j) => format!("json {j}"),
    }
}

export!(Logger);
