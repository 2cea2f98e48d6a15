//! The glue [`crate::export!`] expands to: one plugin value per instance,
//! built by `register` and called by the exports. Not for direct use.

use crate::{Config, Notification, Payload, Plugin};
use std::cell::RefCell;

pub struct Runtime<P: Plugin> {
    cell: RefCell<Option<P>>,
}

impl<P: Plugin> Default for Runtime<P> {
    fn default() -> Self {
        Self::new()
    }
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
        let (plugin, channels) = P::register(&id, &Config::new(config)).map_err(message)?;
        *self.cell.borrow_mut() = Some(plugin);
        Ok(channels)
    }

    pub fn on_notify(
        &self,
        id: &str,
        channel: &str,
        payload: &Payload,
        pid: i32,
    ) -> Result<(), String> {
        let mut cell = self.cell.borrow_mut();
        let plugin = cell
            .as_mut()
            .ok_or_else(|| "on-notify before register".to_string())?;
        plugin
            .on_notify(Notification {
                id,
                channel,
                payload,
                pid,
            })
            .map_err(message)
    }

    /// Each notification of a batch through `on_notify`, in order; the
    /// failures by index.
    pub fn on_notify_batch(
        &self,
        id: &str,
        channel: &str,
        notifications: impl IntoIterator<Item = (Payload, i32)>,
    ) -> Vec<(u32, String)> {
        let mut failures = Vec::new();
        for (index, (payload, pid)) in (0u32..).zip(notifications) {
            if let Err(message) = self.on_notify(id, channel, &payload, pid) {
                failures.push((index, message));
            }
        }
        failures
    }

    pub fn on_gap(&self, channels: Vec<String>) {
        if let Some(plugin) = self.cell.borrow_mut().as_mut() {
            plugin.on_gap(&channels);
        }
    }
}

/// The error and its causes on one line, as the host logs it.
pub(crate) fn message(e: anyhow::Error) -> String {
    format!("{e:#}")
}

/// Export `$plugin` (a type implementing [`Plugin`]) as the component's subscriber.
#[macro_export]
macro_rules! export {
    ($plugin:ty) => {
        static __PGNOTIFIER_RUNTIME: $crate::runtime::Runtime<$plugin> =
            $crate::runtime::Runtime::new();

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
                __PGNOTIFIER_RUNTIME.on_notify(&id, &channel, &payload, pid)
            }

            fn on_gap(_id: String, channels: Vec<String>) {
                __PGNOTIFIER_RUNTIME.on_gap(channels)
            }
        }

        impl $crate::bindings::exports::pgnotifier::plugin::batch::Guest for __PgnotifierExports {
            fn on_notify_batch(
                id: String,
                channel: String,
                notifications: Vec<
                    $crate::bindings::exports::pgnotifier::plugin::batch::Notification,
                >,
            ) -> Vec<$crate::bindings::exports::pgnotifier::plugin::batch::Failure> {
                let notifications = notifications.into_iter().map(|n| (n.payload, n.pid));
                (__PGNOTIFIER_RUNTIME.on_notify_batch(&id, &channel, notifications))
                    .into_iter()
                    .map(|(index, message)| {
                        $crate::bindings::exports::pgnotifier::plugin::batch::Failure {
                            index,
                            message,
                        }
                    })
                    .collect()
            }
        }

        $crate::bindings::export!(__PgnotifierExports);
    };
}
