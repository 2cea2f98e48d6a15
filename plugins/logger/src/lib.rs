//! pgnotifier example plugin: log every notification as `(id, channel, payload, pid)`.
//!
//! Sidecar `logger.toml`:
//! ```toml
//! [config]
//! channels = "ch1,orders"   # comma-separated; default "ch1"
//! ```

use pgnotifier_plugin::{describe, info, warn, Config, Notification, Plugin};

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

pgnotifier_plugin::export!(Logger);
