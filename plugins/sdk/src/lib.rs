//! Write a pgnotifier subscriber in Rust: implement [`Plugin`] and call
//! [`export!`]. The plugin value lives in the instance between calls, so it
//! can keep state; `register` builds it from the sidecar's `[config]`.
//!
//! ```
//! use pgnotifier_plugin::{info, Config, Notification, Plugin, Result};
//!
//! #[derive(serde::Deserialize)]
//! struct Order { id: i64, total: f64 }
//!
//! struct BigOrders { over: f64 }
//!
//! impl Plugin for BigOrders {
//!     fn register(_id: &str, config: &Config) -> Result<(Self, Vec<String>)> {
//!         Ok((BigOrders { over: config.get_or("over", 100.0)? }, vec!["orders".into()]))
//!     }
//!     fn on_notify(&mut self, n: Notification<'_>) -> Result<()> {
//!         let order: Order = n.payload.json()?; // an error fails the call, with its cause
//!         if order.total > self.over {
//!             info!("order {} is big: {}", order.id, order.total);
//!         }
//!         Ok(())
//!     }
//! }
//!
//! pgnotifier_plugin::export!(BigOrders);
//!
//! // A unit test, run natively (`cargo test`) against the mock host:
//! use pgnotifier_plugin::testing::MockHost;
//!
//! let mut host = MockHost::new();
//! host.config("over", 100);
//! let mut plugin = host.register::<BigOrders>("big").unwrap();
//! plugin.notify("orders", r#"{"id": 7, "total": 250.0}"#).unwrap();
//! plugin.notify("orders", r#"{"id": 8, "total": 50.0}"#).unwrap();
//! assert_eq!(host.logged(), ["order 7 is big: 250"]);
//! let error = plugin.notify("orders", "42").unwrap_err();
//! assert_eq!(error.to_string(), "payload is not Order: invalid type: integer `42`, expected struct Order");
//! ```
//!
//! Capabilities work when the plugin's sidecar grants them (`[grants]`), and
//! return an error otherwise: [`publish`], [`query`], and with the `http`
//! feature, [`http::request`].
//!
//! Built for the host target (`cargo test`), the same calls go to a
//! [`testing::MockHost`] instead, so a plugin's logic is unit-tested natively.

mod capabilities;
mod config;
#[cfg(feature = "http")]
pub mod http;
mod log;
mod payload;
#[doc(hidden)]
pub mod runtime;
#[cfg(not(target_arch = "wasm32"))]
pub mod testing;

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "batched-plugin",
        path: "../../wit",
        pub_export_macro: true,
        default_bindings_module: "pgnotifier_plugin::bindings",
        additional_derives: [PartialEq],
    });
}

pub use anyhow::{anyhow, bail, ensure, Context, Error, Result};
pub use bindings::exports::pgnotifier::plugin::subscriber::Payload;
pub use bindings::pgnotifier::plugin::delivery::{Event, Gap, GapCause};
pub use bindings::pgnotifier::plugin::host::Level;
pub use capabilities::{current_gap, publish, query};
pub use config::Config;
pub use log::log;

/// A subscriber. One value per instance; the host calls it one call at a
/// time. Notifications that queue up on a channel reach it in one call into
/// the instance (the WIT's `batch` export), each still through
/// [`Plugin::on_notify`], in order.
pub trait Plugin: Sized + 'static {
    /// Called once after load: build the plugin and name its channels (a
    /// sidecar's `channels` overrides them). An error refuses the load.
    fn register(id: &str, config: &Config) -> Result<(Self, Vec<String>)>;

    /// One notification. An error is counted as a failure of this call, and
    /// the host logs it with its causes.
    fn on_notify(&mut self, notification: Notification<'_>) -> Result<()>;

    /// Notifications on `channels` may have been missed (the host
    /// reconnected, or durable events were pruned); [`current_gap`] says
    /// when and why.
    fn on_gap(&mut self, channels: &[String]) {
        warn!("may have missed notifications on {channels:?}");
    }
}

/// One notification, borrowed for the length of the call.
#[derive(Debug)]
pub struct Notification<'a> {
    /// The subscriber id (the plugin file's stem).
    pub id: &'a str,
    pub channel: &'a str,
    /// Decoded once by the host: [`Payload::json`] reads it as any type.
    pub payload: &'a Payload,
    /// The PostgreSQL backend process that sent it.
    pub pid: i32,
}

impl Notification<'_> {
    /// For an at-least-once subscriber, the durable event this is: its id,
    /// its `key` (the same on every delivery and never given to another
    /// event: the idempotency key), the attempt, and when it was sent
    /// (microseconds since the Unix epoch). `None` for a live notification.
    pub fn event(&self) -> Option<Event> {
        capabilities::current_event()
    }
}
