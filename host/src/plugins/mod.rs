//! Plugins: the files of a plugins folder become wasm subscribers.
//!
//! - [`settings`]: a plugin's sidecar and the limits it sets;
//! - `loader`: one `NAME.wasm` (and its `NAME.toml`) compiled, started and registered;
//! - `sync`: the subscribers of a folder made to match its files, the one
//!   path start-up, hot reload and the API all take;
//! - `watcher`: the folder followed, each change synced;
//! - [`offline`]: one plugin loaded and called outside a host.

pub(crate) mod loader;
pub mod offline;
pub mod settings;
pub(crate) mod sync;
pub(crate) mod watcher;

pub use offline::{OfflinePlugin, OfflineSettings};
pub use settings::{Delivery, LimitSettings, Sidecar, Start, SubscriberSettings};
pub use sync::PluginChange;
pub(crate) use sync::{PluginCounters, PluginSync};
pub use watcher::PluginWatcher;
