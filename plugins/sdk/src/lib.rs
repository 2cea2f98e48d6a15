//! Write a pgnotifier subscriber in Rust: implement [`Plugin`] and call
//! [`export!`]. The plugin value lives in the instance between calls, so it
//! can keep state; `register` builds it from the sidecar's `[config]`.
//!
//! ```ignore
//! use pgnotifier_plugin::{info, Config, Notification, Plugin};
//!
//! struct Hello;
//!
//! impl Plugin for Hello {
//!     fn register(_id: &str, config: &Config) -> Result<(Self, Vec<String>), String> {
//!         Ok((Hello, config.list("channels")))
//!     }
//!     fn on_notify(&mut self, n: Notification<'_>) -> Result<(), String> {
//!         info(&format!("{} said {:?}", n.pid, n.payload));
//!         Ok(())
//!     }
//! }
//!
//! pgnotifier_plugin::export!(Hello);
//! ```
//!
//! Every plugin built on this crate also understands `trace = "true"` in its
//! `[config]`: it then logs each payload as `got <case> <value>` before the
//! plugin sees it, the same line the other languages' examples write.
//!
//! Capabilities work when the plugin's sidecar grants them (`[grants]`), and
//! return an error otherwise: [`publish`], [`query`], and with the `http`
//! feature, [`http::request`].

use std::cell::RefCell;

#[cfg(feature = "http")]
pub mod http;

#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "plugin",
        path: "../../wit",
        pub_export_macro: true,
        default_bindings_module: "pgnotifier_plugin::bindings",
    });
}

pub use bindings::exports::pgnotifier::plugin::subscriber::Payload;
pub use bindings::pgnotifier::plugin::delivery::{Event, Gap, GapCause};
pub use bindings::pgnotifier::plugin::host::Level;

/// A subscriber. One value per instance; the host calls it one call at a time.
pub trait Plugin: Sized + 'static {
    /// Called once after load: build the plugin and name its channels (a
    /// sidecar's `channels` overrides them). An error refuses the load.
    fn register(id: &str, config: &Config) -> Result<(Self, Vec<String>), String>;

    /// One notification. An error is counted as a failure of this call.
    fn on_notify(&mut self, notification: Notification<'_>) -> Result<(), String>;

    /// Notifications on `channels` may have been missed (the host
    /// reconnected, or durable events were pruned); [`current_gap`] says
    /// when and why.
    fn on_gap(&mut self, channels: &[String]) {
        warn(&format!("may have missed notifications on {channels:?}"));
    }
}

/// One notification, borrowed for the length of the call.
#[derive(Debug)]
pub struct Notification<'a> {
    /// The subscriber id (the plugin file's stem).
    pub id: &'a str,
    pub channel: &'a str,
    pub payload: &'a Payload,
    /// The PostgreSQL backend process that sent it.
    pub pid: i32,
}

impl Notification<'_> {
    /// For an at-least-once subscriber, the durable event this is: its id
    /// (the same on every delivery, so an idempotency key), the attempt, and
    /// when it was sent (microseconds since the Unix epoch). `None` for a
    /// live notification.
    pub fn event(&self) -> Option<Event> {
        bindings::pgnotifier::plugin::delivery::current_event()
    }
}

/// In [`Plugin::on_gap`]: when the gap began and ended, and why.
pub fn current_gap() -> Option<Gap> {
    bindings::pgnotifier::plugin::delivery::current_gap()
}

/// The sidecar's `[config]` table, as key/value text.
#[derive(Debug, Default)]
pub struct Config(Vec<(String, String)>);

impl Config {
    /// The value of `key`, if set.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// A comma-separated value as a list, blanks dropped; empty if unset.
    pub fn list(&self, key: &str) -> Vec<String> {
        self.get(key)
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect()
    }

    /// A number, with `default` when unset; an error names the key otherwise.
    pub fn number(&self, key: &str, default: u64) -> Result<u64, String> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .trim()
                .parse()
                .map_err(|_| format!("config {key} = {v:?} is not a whole number")),
        }
    }

    /// `true`/`false`, with `default` when unset.
    pub fn flag(&self, key: &str, default: bool) -> Result<bool, String> {
        match self.get(key).map(str::trim) {
            None => Ok(default),
            Some("true") => Ok(true),
            Some("false") => Ok(false),
            Some(v) => Err(format!("config {key} = {v:?} is not true or false")),
        }
    }
}

/// Write a line to the host log, tagged with this subscriber's id.
pub fn log(level: Level, message: &str) {
    bindings::pgnotifier::plugin::host::log(level, message);
}

pub fn debug(message: &str) {
    log(Level::Debug, message);
}

pub fn info(message: &str) {
    log(Level::Info, message);
}

pub fn warn(message: &str) {
    log(Level::Warn, message);
}

pub fn error(message: &str) {
    log(Level::Error, message);
}

/// Send `NOTIFY channel, payload` on the host's database. Needs
/// `[grants] publish = ["channel"]`.
pub fn publish(channel: &str, payload: &str) -> Result<(), String> {
    bindings::pgnotifier::plugin::publish::publish(channel, payload)
}

/// Run one SQL statement with `$1`, `$2`, ... bound to `params`; the rows come
/// back as a JSON array of objects. Needs `[grants] query = true` (read-only)
/// or `query_write = true`.
pub fn query(sql: &str, params: &[&str]) -> Result<String, String> {
    let params: Vec<String> = params.iter().map(|p| (*p).to_owned()).collect();
    bindings::pgnotifier::plugin::query::query(sql, &params)
}

/// The payload as `case value`: `integer 42`, `float 2.5`, `text "hi"`,
/// `json {"a":1}`. The host's `pgnotifier::payload::describe` writes the same.
pub fn describe(payload: &Payload) -> String {
    match payload {
        Payload::Null => "null".into(),
        Payload::Boolean(b) => format!("boolean {b}"),
        Payload::Integer(i) => format!("integer {i}"),
        Payload::Float(f) => format!("float {f:?}"),
        Payload::Text(t) => format!("text {t:?}"),
        Payload::Json(j) => format!("json {j}"),
    }
}

/// The cross-language `got <case> <value>` trace line, the same in every
/// plugin language: text unquoted, so C, Python and JavaScript print it alike.
fn trace_line(payload: &Payload) -> String {
    match payload {
        Payload::Text(t) => format!("got text {t}"),
        other => format!("got {}", describe(other)),
    }
}

/// What one instance holds between calls.
struct Instance<P> {
    plugin: P,
    trace: bool,
}

/// The glue [`export!`] expands to; not for direct use.
#[doc(hidden)]
pub struct Runtime<P: Plugin> {
    cell: RefCell<Option<Instance<P>>>,
}

// SAFETY: a component instance runs on one thread, and nothing here is
// reachable from another.
unsafe impl<P: Plugin> Sync for Runtime<P> {}

impl<P: Plugin> Runtime<P> {
    pub const fn new() -> Self {
        Runtime {
            cell: RefCell::new(None),
        }
    }

    pub fn register(
        &self,
        id: String,
        config: Vec<(String, String)>,
    ) -> Result<Vec<String>, String> {
        let config = Config(config);
        let trace = config.flag("trace", false)?;
        let (plugin, channels) = P::register(&id, &config)?;
        *self.cell.borrow_mut() = Some(Instance { plugin, trace });
        Ok(channels)
    }

    pub fn on_notify(
        &self,
        id: String,
        channel: String,
        payload: Payload,
        pid: i32,
    ) -> Result<(), String> {
        let mut cell = self.cell.borrow_mut();
        let instance = cell
            .as_mut()
            .ok_or_else(|| "on-notify before register".to_string())?;
        if instance.trace {
            info(&trace_line(&payload));
        }
        instance.plugin.on_notify(Notification {
            id: &id,
            channel: &channel,
            payload: &payload,
            pid,
        })
    }

    pub fn on_gap(&self, channels: Vec<String>) {
        if let Some(instance) = self.cell.borrow_mut().as_mut() {
            instance.plugin.on_gap(&channels);
        }
    }
}

/// Export `$plugin` (a type implementing [`Plugin`]) as the component's subscriber.
#[macro_export]
macro_rules! export {
    ($plugin:ty) => {
        static __PGNOTIFIER_RUNTIME: $crate::Runtime<$plugin> = $crate::Runtime::new();

        struct __PgnotifierExports;

        impl $crate::bindings::exports::pgnotifier::plugin::subscriber::Guest
            for __PgnotifierExports
        {
            fn register(
                id: String,
                config: Vec<(String, String)>,
            ) -> Result<
                $crate::bindings::exports::pgnotifier::plugin::subscriber::Registration,
                String,
            > {
                __PGNOTIFIER_RUNTIME.register(id, config).map(|channels| {
                    $crate::bindings::exports::pgnotifier::plugin::subscriber::Registration {
                        channels,
                    }
                })
            }

            fn on_notify(
                id: String,
                channel: String,
                payload: $crate::Payload,
                pid: i32,
            ) -> Result<(), String> {
                __PGNOTIFIER_RUNTIME.on_notify(id, channel, payload, pid)
            }

            fn on_gap(_id: String, channels: Vec<String>) {
                __PGNOTIFIER_RUNTIME.on_gap(channels)
            }
        }

        $crate::bindings::export!(__PgnotifierExports);
    };
}
