//! The library's error type for [`Notifier`](crate::Notifier) operations.
//!
//! Each boundary has its own enum (`RegistryError`, `LoadError`,
//! `ConfigError`) so callers can tell causes apart; this one gathers them.

use crate::config::ConfigError;
use crate::registry::RegistryError;
use crate::sandbox::LoadError;

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
    #[error("the listener did not LISTEN every active channel within {0:?}")]
    NotListening(std::time::Duration),
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

/// An error and its causes on one line: tokio-postgres keeps the useful
/// part (a refused certificate, a reset connection) in the source.
pub(crate) fn with_causes(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}
