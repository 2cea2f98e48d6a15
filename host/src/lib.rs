//! pgnotifier: capture PostgreSQL `NOTIFY` streams and dispatch each
//! notification to subscribers — sandboxed WebAssembly components or Rust
//! closures — called as `(id, channel, payload, pid)`.
//!
//! A notification's path: the `listener`'s connection receives it; the
//! `dispatch` router decodes it once and queues it for each subscriber of
//! its channel; that subscriber's worker thread calls it, a wasm guest in
//! the [`sandbox`] or a closure. Durable events take the same queues from
//! the outbox, through a feeder per subscriber ([`durable`]).
//!
//! Control: configuration, the [`plugins`] loader and the application's
//! admin API change the [`registry`]; its snapshot is swapped whole, and
//! the listener LISTENs or UNLISTENs the difference.
//!
//! The modules, from the bottom up; each imports only modules listed before
//! it (a test, `layering`, fails on an import that runs back up):
//!
//! - leaves: [`channel`] names, [`payload`] decoding, the WIT [`bindings`],
//!   [`files`], [`printable`] text and error chains, [`settings`] errors and
//!   checks, `sync` (the lock, counters, the clock, background tasks), and
//!   the [`journal`] of the host's own events;
//! - [`pg`]: the database settings (libpq's URL and `PG*` variables), TLS,
//!   connecting and keeping a connection up (backoff, the driver of a
//!   LISTENing connection), advisory locks;
//! - `dispatch`: the route table, the router, one mailbox (bounded queue)
//!   and one worker thread per subscriber, its counters, and the
//!   notifications workers hand back for reuse;
//! - `capabilities` a sidecar grants (publish, query, http), and the
//!   [`sandbox`] wasm guests run in (deadline, memory cap, no WASI grants);
//! - [`registry`]: channels, subscribers and mute flags as an immutable
//!   snapshot that builds the route table, and the runtime [`registry::state`] file;
//! - [`durable`]: at-least-once delivery: the `pgnotifier` schema (the
//!   outbox `pgnotifier.send` writes, positions, dead letters), the reader
//!   that never skips a committed event, a feeder per subscriber, and the
//!   relay that brings the WAL transport's events into the outbox;
//! - `error`: the library's [`Error`], gathering each layer's own;
//! - [`plugins`]: sidecar settings, the loader, the sync of a plugins folder
//!   with its subscribers, the watcher (hot reload), and a plugin run offline;
//! - [`cluster`]: leader election among hosts on one database, on the
//!   LISTEN connection, so that only one dispatches;
//! - `listener`: one connection LISTENing the registry's active channels,
//!   handing each notification to the router, reconnecting with gap events;
//! - `metrics`: the Prometheus text of every counter, read-only;
//! - the facade: `notifier` ([`Notifier`]), `subscriber` (native
//!   [`Subscriber`]s) and [`blocking`].
//!
//! The `pgnotifier` binary (run, ctl, the admin API, the demo, the author's
//! tools) is another crate, `pgnotifier-app`, built on this one.

pub mod bindings;
pub mod channel;
pub mod files;
pub mod journal;
pub mod payload;
pub mod printable;
pub mod settings;
mod sync;

pub mod pg;

mod dispatch;

mod capabilities;
pub mod sandbox;

pub mod registry;

pub mod durable;

mod error;

pub mod plugins;

pub mod cluster;

mod listener;
mod metrics;

pub mod blocking;
mod notifier;
mod subscriber;

#[cfg(test)]
mod layering;

pub use capabilities::CapabilityLimits;
pub use dispatch::{
    CallFailure, DispatchSettings, DurableEvent, DurableStats, EventKey, Gap, GapCause,
    Notification, Overflow, QueueLimits, SubscriberStats,
};
pub use error::{Error, Result};
pub use journal::{HostEvent, HostEventKind};
pub use listener::LastGap;
pub use notifier::{
    ClusterView, IntoChannels, ListenerView, NotReady, Notifier, NotifierBuilder, Selection,
    ShutdownReport,
};
pub use payload::{Payload, PayloadMode};
pub use pg::connection::ConnectionSettings;
pub use pg::DatabaseSettings;
pub use plugins::{PluginChange, PluginWatcher, SubscriberSettings};
pub use registry::{ChannelView, SubscriberView};
pub use settings::ConfigError;
pub use subscriber::{current_event, current_gap, Subscriber};
