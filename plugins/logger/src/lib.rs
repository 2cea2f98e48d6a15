//! pgnotifier example plugin: log every notification as `(id, channel, payload, pid)`.
//!
//! Sidecar `logger.toml`:
//! ```toml
//! [config]
//! channels = ["ch1", "orders"]   # default ["ch1"]
//! ```

use pgnotifier_plugin::{info, warn, Config, Notification, Payload, Plugin, Result};

struct Logger {
    id: String,
}

impl Plugin for Logger {
    fn register(id: &str, config: &Config) -> Result<(Self, Vec<String>)> {
        let channels = config.get_or("channels", vec!["ch1".to_owned()])?;
        info!("{id} registered on {channels:?}");
        Ok((Logger { id: id.into() }, channels))
    }

    fn on_notify(&mut self, n: Notification<'_>) -> Result<()> {
        let payload = describe(n.payload);
        info!("({}, {:?}, {payload}, {})", n.id, n.channel, n.pid);
        Ok(())
    }

    fn on_gap(&mut self, channels: &[String]) {
        warn!("{} may have missed notifications on {channels:?}", self.id);
    }
}

/// The payload as `case value`: `integer 42`, `text "hi"`, `json {"a":1}`.
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
