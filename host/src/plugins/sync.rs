//! Plugin sync: the subscribers of a plugin file, or of a whole folder, made
//! to match the files. Start-up, the folder watcher and the API all take
//! this one path.
//!
//! A file that fails to load changes nothing: the running version, if any,
//! keeps running. Loads of one subscriber id run one at a time; the engine
//! (and the database pool behind its capabilities) is made on first use.

use super::loader::{self, PluginFiles};
use super::settings::{Start, SubscriberSettings};
use crate::capabilities::CapabilityPool;
use crate::channel;
use crate::durable::feeder::{self, FeedSettings, Feeders};
use crate::durable::DeliveryMode;
use crate::error::{Error, Result};
use crate::journal::HostEventKind;
use crate::pg::DatabaseSettings;
use crate::printable::with_causes;
use crate::registry::{Registry, RegistryError, SubscriberSource};
use crate::sandbox::{CacheStats, LoadError, Sandbox, SandboxSettings};
use crate::sync::lock;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// What syncing one plugin file did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PluginChange {
    Added(String),
    Reloaded(String),
    /// Neither the `.wasm` nor its sidecar changed.
    Unchanged(String),
    Removed(String),
    /// No file and no subscriber: nothing to do.
    Absent,
}

/// Counters about plugin files, for the metrics.
#[derive(Debug, Default)]
pub(crate) struct PluginCounters {
    /// Plugins loaded or reloaded successfully.
    pub(crate) loads: AtomicU64,
    /// Loads and reloads refused (the running version, if any, kept running).
    pub(crate) load_failures: AtomicU64,
}

/// Keeps plugin subscribers in step with their files.
pub(crate) struct PluginSync {
    registry: Arc<Registry>,
    /// Where at-least-once plugins are fed from the outbox.
    feeders: Arc<Feeders>,
    /// Shared with the notifier, which may change it for the next start;
    /// the capability pool takes it when the engine is first made.
    database: Arc<Mutex<DatabaseSettings>>,
    sandbox_config: SandboxSettings,
    query_pool_size: usize,
    sandbox: Mutex<Option<Arc<Sandbox>>>,
    /// Limits for plugins whose sidecar does not set them.
    defaults: Mutex<SubscriberSettings>,
    /// One load at a time per subscriber id: parallel reloads of one plugin
    /// would each hold a compiled copy and an instance at once.
    loading: Mutex<HashMap<Arc<str>, Arc<tokio::sync::Mutex<()>>>>,
    pub(crate) counters: PluginCounters,
}

impl PluginSync {
    pub(crate) fn new(
        registry: Arc<Registry>,
        feeders: Arc<Feeders>,
        database: Arc<Mutex<DatabaseSettings>>,
        sandbox_config: SandboxSettings,
        query_pool_size: usize,
        defaults: SubscriberSettings,
    ) -> Self {
        Self {
            registry,
            feeders,
            database,
            sandbox_config,
            query_pool_size,
            sandbox: Mutex::new(None),
            defaults: Mutex::new(defaults),
            loading: Mutex::default(),
            counters: PluginCounters::default(),
        }
    }

    /// Limits for plugins whose sidecar does not set them, from now on.
    pub(crate) fn set_defaults(&self, settings: SubscriberSettings) {
        *lock(&self.defaults) = settings;
    }

    /// Compile cache counters, once a plugin has been loaded and if the cache is on.
    pub(crate) fn cache_stats(&self) -> Option<CacheStats> {
        lock(&self.sandbox).as_ref().and_then(|s| s.cache_stats())
    }

    /// Load one plugin file (and its sidecar) and subscribe it, or reload it
    /// if it is already loaded. Returns its id.
    pub(crate) async fn load_plugin(&self, path: &Path) -> Result<String> {
        if !loader::is_plugin_file(path) {
            return Err(LoadError::new(path, "not a plugin file (a visible NAME.wasm)").into());
        }
        match self.sync_plugin(path).await? {
            PluginChange::Added(id) | PluginChange::Reloaded(id) | PluginChange::Unchanged(id) => {
                Ok(id)
            }
            PluginChange::Removed(_) | PluginChange::Absent => {
                Err(LoadError::new(path, "the file disappeared").into())
            }
        }
    }

    /// Load every `*.wasm` in `dir`, all at once, so one slow plugin (a
    /// `register` that runs to its deadline) holds up none of the others.
    /// Each file's outcome is returned in file order; failures are logged.
    pub(crate) async fn load_plugins(
        self: &Arc<Self>,
        dir: &Path,
    ) -> Result<Vec<(PathBuf, Result<String>)>> {
        let files = loader::plugin_files(dir)?;
        let loads: Vec<_> = files
            .iter()
            .map(|file| {
                let (sync, file) = (self.clone(), file.clone());
                tokio::spawn(async move { sync.load_plugin(&file).await })
            })
            .collect();
        let mut outcomes = Vec::with_capacity(files.len());
        for (file, load) in files.into_iter().zip(loads) {
            let outcome = load.await.unwrap_or_else(|e| {
                Err(LoadError::new(&file, format!("loader task failed: {e}")).into())
            });
            if let Err(e) = &outcome {
                log_load_error(&file, e);
            }
            outcomes.push((file, outcome));
        }
        Ok(outcomes)
    }

    /// The files of the plugin subscribers loaded from `dir`.
    pub(crate) fn plugins_from(&self, dir: &Path) -> Vec<PathBuf> {
        self.registry.plugins_in(dir)
    }

    /// Make the plugin subscribers of `dir` match its files: load new and
    /// changed ones, and remove those whose file is gone.
    pub(crate) async fn sync_folder(self: &Arc<Self>, dir: &Path) -> Result<()> {
        self.load_plugins(dir).await?;
        for path in self.plugins_from(dir) {
            if !loader::is_plugin_file(&path) {
                if let Err(e) = self.sync_plugin(&path).await {
                    log_load_error(&path, &e);
                }
            }
        }
        Ok(())
    }

    /// Make the subscriber of one plugin file match the file: add it, reload
    /// it (keeping its queue and mute flags), or remove it if the file is gone.
    pub(crate) async fn sync_plugin(&self, path: &Path) -> Result<PluginChange> {
        self.sync(path, false).await
    }

    /// Reload a plugin subscriber from its file, even if the file did not
    /// change. Unknown ids and native subscribers are errors.
    pub(crate) async fn reload_plugin(&self, id: &str) -> Result<PluginChange> {
        let path = match self.registry.source(id) {
            Some(SubscriberSource::Plugin { path, .. }) => path,
            Some(SubscriberSource::Native) => return Err(Error::NotAPlugin(id.to_owned())),
            None => return Err(RegistryError::UnknownSubscriber(id.to_owned()).into()),
        };
        self.sync(&path, true).await
    }

    /// One sync at a time per subscriber, counting loads and refused loads.
    async fn sync(&self, path: &Path, force: bool) -> Result<PluginChange> {
        let id = loader::subscriber_id(path)?;
        let turn = lock(&self.loading).entry(id.clone()).or_default().clone();
        let outcome = {
            let _turn = turn.lock().await;
            self.sync_files(&id, path, force).await
        };
        let mut loading = lock(&self.loading);
        // Only the map and this call hold it: no one else is waiting.
        if Arc::strong_count(&turn) == 2 {
            loading.remove(&id);
        }
        drop(loading);
        let journal = self.registry.journal();
        match &outcome {
            Ok(PluginChange::Added(id)) => journal.record(HostEventKind::Loaded, id, ""),
            Ok(PluginChange::Reloaded(id)) => journal.record(HostEventKind::Reloaded, id, ""),
            Ok(PluginChange::Removed(id)) => journal.record(HostEventKind::Unloaded, id, ""),
            Err(e) => journal.record(HostEventKind::LoadFailed, &id, with_causes(e)),
            Ok(PluginChange::Unchanged(_) | PluginChange::Absent) => {}
        }
        let counter = match &outcome {
            Ok(PluginChange::Added(_) | PluginChange::Reloaded(_)) => &self.counters.loads,
            Err(Error::Load(_)) => &self.counters.load_failures,
            _ => return outcome,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        outcome
    }

    async fn sync_files(&self, id: &Arc<str>, path: &Path, force: bool) -> Result<PluginChange> {
        let registry = &self.registry;
        let current = registry.source(id);
        let ours = match &current {
            Some(SubscriberSource::Plugin {
                path: loaded_from, ..
            }) => loaded_from == path,
            Some(SubscriberSource::Native) => false,
            None => true,
        };
        if !ours {
            return Err(RegistryError::SubscriberExists(id.to_string()).into());
        }
        if !loader::is_plugin_file(path) {
            if current.is_none() {
                return Ok(PluginChange::Absent);
            }
            self.feeders.stop(id).await;
            registry.remove_subscriber(id).await?;
            tracing::info!(subscriber = %id, path = %path.display(), "plugin removed");
            return Ok(PluginChange::Removed(id.to_string()));
        }

        let owned = path.to_owned();
        let files = blocking(path, move || PluginFiles::read(&owned)).await?;
        if let Some(SubscriberSource::Plugin { fingerprint, .. }) = &current {
            if *fingerprint == files.fingerprint && !force {
                return Ok(PluginChange::Unchanged(id.to_string()));
            }
        }
        let sandbox = self.sandbox()?;
        let defaults = *lock(&self.defaults);
        let (files, loaded) = blocking(path, move || {
            let loaded = loader::load(&sandbox, &files, defaults);
            Ok((files, loaded))
        })
        .await?;
        let mut loaded = loaded?;
        // Followed before the subscriber is added: its feeder starts at the
        // end of the outbox, and every change after that is there.
        let mut backfill = Vec::new();
        if !loaded.tables.is_empty() {
            let sidecar_error =
                |e: &dyn std::fmt::Display| LoadError::new(path, format!("sidecar {e}"));
            let followed = (self.feeders.follow_tables(&loaded.tables).await)
                .map_err(|e| sidecar_error(&e))?;
            for (table, channel) in loaded.tables.iter().zip(followed) {
                // On the outbox transport: the trigger's channel, not the table's name.
                if channel != table.channel() {
                    channel::validate(&channel).map_err(|e| {
                        sidecar_error(&format_args!("tables: {table}: its trigger's channel: {e}"))
                    })?;
                    loaded.channels.retain(|c| *c != table.channel());
                    if !loaded.channels.contains(&channel) {
                        loaded.channels.push(channel.clone());
                    }
                }
                if loaded.start == Start::Snapshot {
                    backfill.push((table.clone(), channel));
                }
            }
        }
        let short_hash = &files.sha256[..12];
        let source = files.source(&loaded);
        let (dispatch, delivery) = (loaded.settings.dispatch, loaded.settings.delivery);
        let longest_call = loaded.settings.longest_call(&loaded.grants);
        let (mailbox, change) = match registry.mailbox(id) {
            Some(mailbox) => {
                mailbox.replace(dispatch, Box::new(loaded.subscriber));
                registry.reload_subscriber(id, source, &loaded.channels)?;
                tracing::info!(subscriber = %id, channels = ?loaded.channels, sha256 = short_hash, "plugin reloaded");
                (mailbox, PluginChange::Reloaded(id.to_string()))
            }
            None => {
                let mailbox = registry
                    .spawn_mailbox(id.clone(), dispatch, Box::new(loaded.subscriber))
                    .map_err(Error::worker(id))?;
                registry.insert_subscriber(mailbox.clone(), source, &loaded.channels)?;
                tracing::info!(subscriber = %id, channels = ?loaded.channels, sha256 = short_hash, "plugin loaded");
                (mailbox, PluginChange::Added(id.to_string()))
            }
        };
        match delivery {
            // The feeder carries on across a reload: the mailbox is the same.
            DeliveryMode::AtLeastOnce(retry) => {
                let settings = FeedSettings {
                    retry,
                    longest_call,
                };
                let backfill = backfill.into();
                (self.feeders).ensure(&feeder::runtime()?, id, &mailbox, settings, backfill)
            }
            DeliveryMode::AtMostOnce => self.feeders.stop(id).await,
        }
        Ok(change)
    }

    fn sandbox(&self) -> Result<Arc<Sandbox>> {
        let mut slot = lock(&self.sandbox);
        if let Some(sandbox) = slot.as_ref() {
            return Ok(sandbox.clone());
        }
        // Called from async code, so the pool's connections run on this runtime.
        let database = lock(&self.database).clone();
        let pool = CapabilityPool::new(&database, self.query_pool_size)
            .map_err(|e| Error::Sandbox(e.into()))?;
        let sandbox = Sandbox::with_pool(&self.sandbox_config, Some(Arc::new(pool)))
            .map_err(|e| Error::Sandbox(e.into()))?;
        *slot = Some(sandbox.clone());
        Ok(sandbox)
    }
}

/// Log a refused load under the subscriber id its file would have, with
/// every cause: "cannot create the wasm engine" alone says nothing of why.
pub(crate) fn log_load_error(path: &Path, e: &Error) {
    let id = loader::subscriber_id(path);
    tracing::error!(subscriber = %id.as_deref().unwrap_or("?"), "{}", with_causes(e));
}

/// Run blocking work (file reads, compiling) off the async runtime.
async fn blocking<T: Send + 'static>(
    path: &Path,
    work: impl FnOnce() -> std::result::Result<T, LoadError> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| LoadError::new(path, format!("loader task failed: {e}")))?
        .map_err(Error::from)
}
