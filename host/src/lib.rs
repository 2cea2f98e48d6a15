//! pgnotifier: capture PostgreSQL `NOTIFY` streams and dispatch each
//! notification to subscribers — sandboxed WebAssembly components or Rust
//! closures — called as `(id, channel, payload, pid)`.
//!
//! Data flow:
//! - [`listener`] drives one connection with `poll_message`;
//! - each notification is routed by [`dispatch`], its payload decoded once by [`payload`];
//! - into one bounded queue per subscriber ([`dispatch::Overflow`] says what happens when full);
//! - where that subscriber's worker thread calls it;
//! - a wasm guest runs in the [`sandbox`] (deadline, memory cap, no WASI grants),
//!   and may act through the [`capabilities`] its sidecar grants (publish, query, http).
//!
//! Control flow:
//! - [`config`], the plugin [`loader`] (with the folder watcher for hot reload), the
//!   [`Notifier`] API and the admin HTTP API (which `ctl` drives) change the [`registry`];
//! - the registry publishes a new immutable snapshot and the set of active channels,
//!   and saves what operators changed to the [`state`] file;
//! - the listener LISTENs/UNLISTENs the difference, never reconnecting for it.
//!
//! The application is `app`, behind the default `cli` feature: the `pgnotifier`
//! binary, whose `run` serves the admin API, Prometheus metrics and health checks
//! and reloads its config on SIGHUP, `ctl` and the demo. With
//! `default-features = false` the library builds without clap, axum, wat or
//! wit-component. `local_pg` (throwaway clusters) is behind `test-support`.

#[cfg(feature = "cli")]
pub mod app;
pub mod bindings;
pub mod blocking;
pub mod capabilities;
pub mod channel;
pub mod config;
pub mod dispatch;
mod error;
pub mod files;
#[cfg(test)]
mod layering;
mod listener;
pub mod loader;
#[cfg(feature = "test-support")]
pub mod local_pg;
mod metrics;
mod notifier;
pub mod payload;
pub mod printable;
pub mod registry;
pub mod sandbox;
pub mod state;
mod subscriber;
pub mod tls;
mod watcher;

pub use config::{ConnectionSettings, DatabaseConfig, SubscriberSettings};
pub use dispatch::{Notification, Overflow, QueueLimits, SubscriberStats};
pub use error::{Error, Result};
pub use notifier::{
    IntoChannels, ListenerView, Notifier, NotifierBuilder, PluginChange, Selection, ShutdownReport,
};
pub use payload::{Payload, PayloadMode};
pub use registry::{ChannelView, SubscriberView};
pub use subscriber::Subscriber;
pub use watcher::PluginWatcher;
