//! pgnotifier: capture PostgreSQL `NOTIFY` streams and dispatch each
//! notification to subscribers — sandboxed WebAssembly components or Rust
//! closures — called as `(id, channel, payload, pid)`.
//!
//! The modules, from the bottom up; each imports only modules above it in
//! this list (a test, `layering`, fails on an import that runs back up):
//!
//! - leaves: [`channel`] names, [`payload`] decoding, the WIT [`bindings`],
//!   [`files`], [`printable`] text and error chains, [`settings`] errors and
//!   checks, and `sync` (the lock, counters and the clock);
//! - [`pg`]: the database settings (libpq's URL and `PG*` variables), TLS,
//!   connecting;
//! - [`dispatch`]: the route table, the router, one mailbox (bounded queue)
//!   and one worker thread per subscriber, its counters, and the
//!   notifications workers hand back for reuse;
//! - [`capabilities`] a sidecar grants (publish, query, http), and the
//!   [`sandbox`] wasm guests run in (deadline, memory cap, no WASI grants);
//! - [`registry`]: channels, subscribers and mute flags as an immutable
//!   snapshot that builds the route table, and the runtime [`registry::state`] file;
//! - [`durable`]: at-least-once delivery: the `pgnotifier` schema (the
//!   outbox `pgnotifier.send` writes, positions, dead letters), the reader
//!   that never skips a committed event, and a feeder per subscriber;
//! - [`plugins`]: sidecar settings, the loader, the sync of a plugins folder
//!   with its subscribers, and the watcher (hot reload);
//! - [`cluster`]: leader election among hosts on one database, on the
//!   LISTEN connection, so that only one dispatches;
//! - `error`: the library's [`Error`], gathering each layer's own;
//! - `listener`: one connection LISTENing the registry's active channels,
//!   handing each notification to the router, reconnecting with gap events;
//! - `metrics`: the Prometheus text of every counter, read-only;
//! - the facade: [`Notifier`], native [`Subscriber`]s, and [`blocking`];
//! - at the top, `app` behind the default `cli` feature: the `pgnotifier`
//!   binary, its config file, `run` (admin API, metrics, health, SIGHUP),
//!   `ctl` and the demo. With `default-features = false` the library builds
//!   without clap, axum, wat or wit-component. `local_pg` (throwaway
//!   clusters) is behind `test-support`.

pub mod bindings;
pub mod channel;
pub mod files;
pub mod payload;
pub mod printable;
pub mod settings;
mod sync;

pub mod pg;

pub mod dispatch;

pub mod capabilities;
pub mod sandbox;

pub mod registry;

pub mod durable;

pub mod plugins;

pub mod cluster;

mod error;
mod listener;
mod metrics;

pub mod blocking;
mod notifier;
mod subscriber;

#[cfg(feature = "cli")]
pub mod app;
#[cfg(feature = "test-support")]
pub mod local_pg;

#[cfg(test)]
mod layering;

pub use dispatch::{
    DispatchSettings, DurableEvent, DurableStats, Gap, GapCause, Notification, Overflow,
    QueueLimits, SubscriberStats,
};
pub use error::{Error, Result};
pub use listener::ConnectionSettings;
pub use notifier::{
    ClusterView, IntoChannels, ListenerView, NotReady, Notifier, NotifierBuilder, Selection,
    ShutdownReport,
};
pub use payload::{Payload, PayloadMode};
pub use pg::DatabaseConfig;
pub use plugins::{PluginChange, PluginWatcher, SubscriberSettings};
pub use registry::{ChannelView, SubscriberView};
pub use settings::ConfigError;
pub use subscriber::{current_event, current_gap, Subscriber};
