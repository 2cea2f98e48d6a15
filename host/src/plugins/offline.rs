//! A plugin run outside a host, one call at a time on the caller's thread:
//! what `pgnotifier call`, `replay` and `check` are made of.
//!
//! It is loaded as a host loads it, sidecar included, with capabilities that
//! need no database unless it is given one: `publish` logs what it would
//! send (after the grant checks), `query` answers from a fixture or fails
//! saying it needs a database, and HTTP reaches the granted origins only
//! when allowed.

use super::loader::{self, LoadedPlugin, PluginFiles};
use super::SubscriberSettings;
use crate::capabilities::{CapabilityPool, QueryFixture};
use crate::dispatch::{CallFailure, Deliver, Notification};
use crate::error::{Error, Result};
use crate::payload::{decode, Payload};
use crate::pg::DatabaseSettings;
use crate::sandbox::{LoadError, Sandbox, SandboxSettings};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// How a plugin is loaded outside a host.
#[derive(Default)]
pub struct OfflineSettings {
    /// A sidecar to use instead of the one beside the plugin: its path, and
    /// its text.
    pub sidecar: Option<(PathBuf, String)>,
    /// `[config]` keys set over the sidecar's.
    pub config: Vec<(String, String)>,
    /// Where `publish` and `query` go; without one, `publish` is a dry run
    /// and `query` answers from the fixture or fails.
    pub database: Option<DatabaseSettings>,
    /// Rows for `query`, by SQL, instead of a database: the fixture's path,
    /// and its JSON text.
    pub query_fixture: Option<(PathBuf, String)>,
    /// Let HTTP reach the origins the sidecar grants.
    pub allow_http: bool,
}

/// A loaded plugin, its `register` run, ready to be called.
pub struct OfflinePlugin {
    /// Its subscriber id: the file's name without `.wasm`.
    pub id: String,
    /// What it subscribed to (its sidecar's `channels`, or `register`'s).
    pub channels: Vec<String>,
    /// The capabilities its sidecar grants, as the log shows them.
    pub grants: String,
    /// The version of the WIT contract it targets.
    pub wit_version: &'static str,
    loaded: LoadedPlugin,
    /// Kept for its epoch ticker: without it no deadline would ever come.
    _sandbox: Arc<Sandbox>,
}

impl OfflinePlugin {
    /// Compile and instantiate the plugin at `path`, and run its
    /// `register`. Compiling blocks: call it off the async threads, inside
    /// a tokio runtime when a database is given (its connections run there).
    pub fn load(path: &Path, settings: OfflineSettings) -> Result<Self> {
        let pool = match &settings.database {
            Some(database) => {
                Some(Arc::new(CapabilityPool::new(database, 2).map_err(|e| {
                    LoadError::new(path, format!("the capability pool: {e}"))
                })?))
            }
            None => None,
        };
        let fixture = match &settings.query_fixture {
            Some((fixture, text)) => Some(Arc::new(
                QueryFixture::parse(fixture, text)
                    .map_err(|e| LoadError::new(fixture, e.to_string()))?,
            )),
            None => None,
        };
        let sandbox = Sandbox::offline(
            &SandboxSettings::default(),
            pool,
            fixture,
            settings.allow_http,
        )
        .map_err(|e| Error::Sandbox(e.into()))?;
        let mut files = PluginFiles::read(path)?;
        if let Some((sidecar, text)) = settings.sidecar {
            files.set_sidecar(&sidecar, text);
        }
        if !settings.config.is_empty() {
            let pairs: Vec<(&str, &str)> = (settings.config.iter())
                .map(|(key, value)| (key.as_str(), value.as_str()))
                .collect();
            files.set_sidecar_config(&pairs)?;
        }
        let loaded = loader::load(&sandbox, &files, SubscriberSettings::default())?;
        Ok(Self {
            id: files.id.to_string(),
            channels: loaded.channels.clone(),
            grants: loaded.grants.to_string(),
            wit_version: loaded.wit_version,
            loaded,
            _sandbox: sandbox,
        })
    }

    /// Decode `payload` as the plugin asks (typed, or raw in its sidecar),
    /// and call its `on-notify` with it: what it got, and how the call went.
    pub fn call(
        &mut self,
        channel: &str,
        payload: &str,
        pid: i32,
    ) -> (Payload, std::result::Result<(), CallFailure>) {
        let notification = Notification {
            channel: channel.into(),
            payload: decode(payload, self.loaded.settings.dispatch.payload),
            pid,
        };
        let outcome = self.loaded.subscriber.on_notify(&notification, None);
        (notification.payload, outcome)
    }
}
