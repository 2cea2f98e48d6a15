//! pgnotifier benchmark fixture: a subscriber that accepts every notification
//! and does nothing, so a benchmark measures the host, not the plugin.
//!
//! It takes batches too (`on-notify-batch`), as plugins built with the Rust
//! SDK do.
//!
//! Sidecar `noop.toml`: `[config] channels = "a,b"` (default `bench`).

wit_bindgen::generate!({ world: "batched-plugin", path: "../../wit" });

use exports::pgnotifier::plugin::batch::{self, Failure};
use exports::pgnotifier::plugin::subscriber::{Guest, Payload, Registration};

struct Noop;

impl Guest for Noop {
    fn register(_id: String, config: Vec<(String, String)>) -> Result<Registration, String> {
        let channels = config
            .iter()
            .find(|(key, _)| key == "channels")
            .map_or("bench", |(_, value)| value.as_str());
        Ok(Registration {
            channels: channels.split(',').map(|c| c.trim().to_string()).collect(),
        })
    }

    fn on_notify(
        _id: String,
        _channel: String,
        _payload: Payload,
        _pid: i32,
    ) -> Result<(), String> {
        Ok(())
    }

    fn on_gap(_id: String, _channels: Vec<String>) {}
}

impl batch::Guest for Noop {
    fn on_notify_batch(
        _id: String,
        _channel: String,
        _notifications: Vec<batch::Notification>,
    ) -> Vec<Failure> {
        Vec::new()
    }
}

export!(Noop);
