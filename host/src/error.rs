//! The library's error type for [`Notifier`](crate::Notifier) operations.
//!
//! Each boundary has its own enum (`RegistryError`, `LoadError`,
//! `ConfigError`) so callers can tell causes apart; this one gathers them.

use crate::registry::RegistryError;
use crate::sandbox::LoadError;
use crate::settings::ConfigError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot start the worker thread of subscriber {id:?}: {source}")]
    Worker { id: String, source: std::io::Error },
    #[error("cannot create the wasm engine")]
    Sandbox(#[source] Cause),
    #[error("cannot watch the plugins folder {}", dir.display())]
    Watch {
        dir: std::path::PathBuf,
        #[source]
        source: Cause,
    },
    #[error(transparent)]
    Feed(#[from] crate::durable::FeedError),
    #[error(transparent)]
    Durable(#[from] crate::durable::DurableError),
    #[error("the listener did not LISTEN every active channel within {0:?}")]
    NotListening(std::time::Duration),
    #[error("LISTEN does not work through {database}: a notification sent to a LISTENed channel never arrived within {waited:?}. A pooler in transaction mode (pgbouncer's pool_mode = transaction) does this: connect to PostgreSQL directly, or through a pool in session mode")]
    ListenBroken {
        database: String,
        waited: std::time::Duration,
    },
    #[error("cannot notify {channel:?}: {reason}")]
    Notify { channel: String, reason: String },
    #[error("subscriber {0:?} is a native subscriber, not a plugin: it has no file to reload")]
    NotAPlugin(String),
    #[error("cannot use the state dir {}: {source}", dir.display())]
    StateDir {
        dir: std::path::PathBuf,
        source: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The cause of an error from another library, kept whole for the chain.
pub type Cause = Box<dyn std::error::Error + Send + Sync>;

impl Error {
    /// For a subscriber's worker thread that could not be started.
    pub(crate) fn worker(id: &str) -> impl FnOnce(std::io::Error) -> Self + '_ {
        move |source| Error::Worker {
            id: id.to_owned(),
            source,
        }
    }
}
