//! pgnotifier example plugin: log every notification as `(id, channel, payload, pid)`.
//!
//! Sidecar `logger.toml`:
//! ```toml
//! [config]
//! channels = "ch1,orders"   # comma-separated; default "ch1"
//! ```

use pgnotifier_plugin::{info, warn, Config, Notification, Payload, Plugin};

struct Logger {
    id: String,
}

impl Plugin for Logger {
    fn register(id: &str, config: &Config) -> Result<(Self, Vec<String>), String> {
        let mut channels = config.list("channels");
        if channels.is_empty() {
            channels.push("ch1".into());
        }
        info(&format!("{id} registered on {channels:?}"));
        Ok((Logger { id: id.into() }, channels))
    }

    fn on_notify(&mut self, n: Notification<'_>) -> Result<(), String> {
        let payload = describe(n.payload);
        info(&format!(
            "({}, {:?}, {payload}, {})",
            n.id, n.channel, n.pid
        ));
        Ok(())
    }

    fn on_gap(&mut self, channels: &[String]) {
        warn(&format!(
            "{} may have missed notifications on {channels:?}",
            self.id
        ));
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

pgnotifier_plugin::export!(Logger);
