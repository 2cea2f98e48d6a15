//! The `Notifier`: the library API, with the origin's operations.
//!
//! Registry operations are synchronous and take effect at once; the listener
//! follows the active set by itself. `start`, `stop` and `restart` control the
//! listener. Subscribers keep running across them until removed or shut down.

use crate::capabilities::CapabilityPool;
use crate::config::{ConnectionSettings, DatabaseConfig, SubscriberSettings};
use crate::dispatch::{lock, Mailbox, QuarantineHook};
use crate::error::{Error, Result};
use crate::listener::{Listener, ListenerStatus};
use crate::loader::{self, PluginFiles};
use crate::metrics::PluginCounters;
use crate::registry::{ChannelView, Registry, RegistryError, SubscriberSource, SubscriberView};
use crate::sandbox::LoadError;
use crate::sandbox::{CacheStats, Sandbox, SandboxConfig};
use crate::state::StateFile;
use crate::subscriber::Subscriber;
use crate::watcher::{self, PluginWatcher};
use serde::Serialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One channel name, or several.
pub trait IntoChannels {
    fn into_channels(self) -> Vec<String>;
}

impl IntoChannels for &str {
    fn into_channels(self) -> Vec<String> {
        vec![self.to_owned()]
    }
}
impl IntoChannels for String {
    fn into_channels(self) -> Vec<String> {
        vec![self]
    }
}
impl IntoChannels for Vec<String> {
    fn into_channels(self) -> Vec<String> {
        self
    }
}
impl IntoChannels for &[String] {
    fn into_channels(self) -> Vec<String> {
        self.to_vec()
    }
}
impl IntoChannels for &[&str] {
    fn into_channels(self) -> Vec<String> {
        self.iter().map(|s| (*s).to_owned()).collect()
    }
}
impl IntoChannels for Vec<&str> {
    fn into_channels(self) -> Vec<String> {
        self.as_slice().into_channels()
    }
}
impl<const N: usize> IntoChannels for [&str; N] {
    fn into_channels(self) -> Vec<String> {
        self.as_slice().into_channels()
    }
}

/// Which channels a mute operation applies to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selection {
    /// Every channel (of the subscriber, for subscriber operations).
    All,
    Only(Vec<String>),
}

impl<T: IntoChannels> From<T> for Selection {
    fn from(channels: T) -> Self {
        Selection::Only(channels.into_channels())
    }
}

impl Selection {
    fn as_option(&self) -> Option<&[String]> {
        match self {
            Selection::All => None,
            Selection::Only(channels) => Some(channels),
        }
    }
}

/// What [`Notifier::sync_plugin`] did.
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

/// How a shutdown went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Subscribers whose queues were not empty at the drain deadline.
    pub abandoned: Vec<String>,
}

/// The listener, as [`Notifier::listener`] shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ListenerView {
    /// Started and not stopped.
    pub running: bool,
    pub connected: bool,
    /// The PostgreSQL backend pid of the LISTEN connection, when connected.
    pub backend_pid: Option<i32>,
    /// The channels LISTENed right now.
    pub listening: Vec<String>,
    pub reconnects: u64,
}

/// Builds a [`Notifier`].
pub struct NotifierBuilder {
    database: DatabaseConfig,
    sandbox: SandboxConfig,
    defaults: SubscriberSettings,
    watch_debounce: Duration,
    connection: ConnectionSettings,
    query_pool_size: usize,
    registry: Registry,
}

impl NotifierBuilder {
    /// Keep mutes, quarantines and runtime subscriptions in `dir/state.json`,
    /// and start from what it holds. An unreadable file is set aside and
    /// reported; an unusable `dir` is an error.
    pub fn persist_state(mut self, dir: &Path) -> Result<Self> {
        let (file, saved) = StateFile::open(dir).map_err(|e| Error::StateDir {
            dir: dir.to_owned(),
            source: e,
        })?;
        tracing::info!(state_file = %file.path().display(), channels = saved.channels.len(), subscribers = saved.subscribers.len(), "runtime state loaded");
        self.registry = Registry::persisted(file, saved);
        Ok(self)
    }

    /// Connections shared by plugins' `publish` and `query` (default 4).
    pub fn query_pool_size(mut self, size: usize) -> Self {
        self.query_pool_size = size;
        self
    }

    /// Reconnection backoff and heartbeat of the LISTEN connection.
    pub fn connection(mut self, settings: ConnectionSettings) -> Self {
        self.connection = settings;
        self
    }

    /// Engine settings for wasm plugins (compile cache, instance pool size).
    pub fn sandbox(mut self, config: SandboxConfig) -> Self {
        self.sandbox = config;
        self
    }

    /// Limits for plugins whose sidecar does not set them.
    pub fn defaults(mut self, settings: SubscriberSettings) -> Self {
        self.defaults = settings;
        self
    }

    /// How long the plugins folder must be quiet before a change is applied.
    pub fn watch_debounce(mut self, quiet: Duration) -> Self {
        self.watch_debounce = quiet;
        self
    }

    pub fn build(self) -> Notifier {
        Notifier {
            inner: Arc::new(Inner {
                registry: Arc::new(self.registry),
                database: Mutex::new(self.database),
                sandbox_config: self.sandbox,
                sandbox: Mutex::new(None),
                defaults: Mutex::new(self.defaults),
                watch_debounce: self.watch_debounce,
                connection: Mutex::new(self.connection),
                query_pool_size: self.query_pool_size,
                listener: Mutex::new(None),
                status: Arc::default(),
                plugins: PluginCounters::default(),
                loading: Mutex::default(),
            }),
        }
    }
}

/// Captures NOTIFY streams and dispatches them to subscribers. Cheap to clone.
#[derive(Clone)]
pub struct Notifier {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Arc<Registry>,
    /// Mutexes for what a config reload may change; read on control paths only.
    database: Mutex<DatabaseConfig>,
    sandbox_config: SandboxConfig,
    sandbox: Mutex<Option<Arc<Sandbox>>>,
    defaults: Mutex<SubscriberSettings>,
    watch_debounce: Duration,
    connection: Mutex<ConnectionSettings>,
    query_pool_size: usize,
    listener: Mutex<Option<Listener>>,
    status: Arc<ListenerStatus>,
    plugins: PluginCounters,
    /// One load at a time per subscriber id: parallel reloads of one plugin
    /// would each hold a compiled copy and an instance at once.
    loading: Mutex<HashMap<Arc<str>, Arc<tokio::sync::Mutex<()>>>>,
}

impl Notifier {
    pub fn new(database: DatabaseConfig) -> Self {
        Self::builder(database).build()
    }

    pub fn builder(database: DatabaseConfig) -> NotifierBuilder {
        NotifierBuilder {
            database,
            sandbox: SandboxConfig::default(),
            defaults: SubscriberSettings::default(),
            watch_debounce: Duration::from_millis(25),
            connection: ConnectionSettings::default(),
            query_pool_size: 4,
            registry: Registry::new(),
        }
    }

    /// Add channels (no subscribers yet, so not LISTENed yet).
    pub fn add_channels(&self, channels: impl IntoChannels) -> Result<()> {
        Ok(self
            .inner
            .registry
            .add_channels(&channels.into_channels())?)
    }

    /// Remove channels and every subscription to them.
    pub fn remove_channels(&self, channels: impl IntoChannels) -> Result<()> {
        Ok(self
            .inner
            .registry
            .remove_channels(&channels.into_channels())?)
    }

    /// Register a native subscriber under `id` on `channels`, creating
    /// missing channels. To add channels to an existing subscriber, use
    /// [`subscribe_to`](Self::subscribe_to).
    pub fn subscribe(
        &self,
        id: &str,
        channels: impl IntoChannels,
        subscriber: Subscriber,
    ) -> Result<()> {
        let registry = &self.inner.registry;
        if registry.mailbox(id).is_some() {
            return Err(RegistryError::SubscriberExists(id.to_owned()).into());
        }
        let id: Arc<str> = id.into();
        let settings = subscriber.settings;
        let mailbox = self.spawn_mailbox(id.clone(), settings, subscriber.into_deliver(id))?;
        self.insert(mailbox, SubscriberSource::Native, &channels.into_channels())
    }

    /// Subscribe an existing subscriber to more channels.
    pub fn subscribe_to(&self, id: &str, channels: impl IntoChannels) -> Result<()> {
        Ok(self
            .inner
            .registry
            .subscribe_to(id, &channels.into_channels())?)
    }

    /// Unsubscribe from channels. The subscriber stays registered, with its
    /// state, until [`remove_subscriber`](Self::remove_subscriber).
    pub fn unsubscribe(&self, id: &str, channels: impl IntoChannels) -> Result<()> {
        Ok(self
            .inner
            .registry
            .unsubscribe(id, &channels.into_channels())?)
    }

    /// Remove a subscriber; what is already queued for it is delivered first.
    pub async fn remove_subscriber(&self, id: &str) -> Result<()> {
        let mailbox = self.inner.registry.remove_subscriber(id)?;
        let _ = tokio::task::spawn_blocking(move || mailbox.drain(Duration::from_secs(5))).await;
        Ok(())
    }

    pub fn mute_channels(&self, which: impl Into<Selection>) -> Result<()> {
        Ok(self
            .inner
            .registry
            .set_channels_muted(which.into().as_option(), true)?)
    }

    pub fn unmute_channels(&self, which: impl Into<Selection>) -> Result<()> {
        Ok(self
            .inner
            .registry
            .set_channels_muted(which.into().as_option(), false)?)
    }

    /// Mute a subscriber on some of its channels, or on all of them.
    pub fn mute_subscriber(&self, id: &str, which: impl Into<Selection>) -> Result<()> {
        Ok(self
            .inner
            .registry
            .set_subscriber_muted(id, which.into().as_option(), true)?)
    }

    pub fn unmute_subscriber(&self, id: &str, which: impl Into<Selection>) -> Result<()> {
        Ok(self
            .inner
            .registry
            .set_subscriber_muted(id, which.into().as_option(), false)?)
    }

    /// Every channel with its mute and active flags and its subscribers.
    pub fn channels(&self) -> Vec<ChannelView> {
        self.inner.registry.channels()
    }

    /// Every subscriber with its channels, mute flags and counters.
    pub fn subscribers(&self) -> Vec<SubscriberView> {
        self.inner.registry.subscribers()
    }

    /// Load one plugin file (and its sidecar) and subscribe it, or reload it
    /// if it is already loaded. Returns its id.
    pub async fn load_plugin(&self, path: &Path) -> Result<String> {
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
    /// One bad file does not stop the others: each file's outcome is
    /// returned in file order, and failures are logged.
    pub async fn load_plugins(&self, dir: &Path) -> Result<Vec<(PathBuf, Result<String>)>> {
        let files = loader::plugin_files(dir)?;
        let loads: Vec<_> = files
            .iter()
            .map(|file| {
                let (notifier, file) = (self.clone(), file.clone());
                tokio::spawn(async move { notifier.load_plugin(&file).await })
            })
            .collect();
        let mut outcomes = Vec::with_capacity(files.len());
        for (file, load) in files.into_iter().zip(loads) {
            let outcome = load.await.unwrap_or_else(|e| {
                Err(LoadError::new(&file, format!("loader task failed: {e}")).into())
            });
            if let Err(e) = &outcome {
                watcher::log_load_error(&file, e);
            }
            outcomes.push((file, outcome));
        }
        Ok(outcomes)
    }

    /// The files of the plugin subscribers loaded from `dir`.
    pub(crate) fn plugins_from(&self, dir: &Path) -> Vec<PathBuf> {
        self.inner.registry.plugins_in(dir)
    }

    /// Make the plugin subscribers of `dir` match its files: load new and
    /// changed ones, and remove those whose file is gone.
    pub(crate) async fn sync_folder(&self, dir: &Path) -> Result<()> {
        self.load_plugins(dir).await?;
        for path in self.plugins_from(dir) {
            if !loader::is_plugin_file(&path) {
                if let Err(e) = self.sync_plugin(&path).await {
                    watcher::log_load_error(&path, &e);
                }
            }
        }
        Ok(())
    }

    /// Make the subscriber of one plugin file match the file: add it, reload
    /// it (keeping its queue and mute flags), or remove it if the file is
    /// gone. A file that fails to load changes nothing: the running version,
    /// if any, keeps running.
    pub async fn sync_plugin(&self, path: &Path) -> Result<PluginChange> {
        self.sync(path, false).await
    }

    /// Reload a plugin subscriber from its file, even if the file did not
    /// change (a new `[defaults]`, or a fresh instance). Unknown ids and
    /// native subscribers are errors.
    pub async fn reload_plugin(&self, id: &str) -> Result<PluginChange> {
        let path = match self.inner.registry.source(id) {
            Some(SubscriberSource::Plugin { path, .. }) => path,
            Some(SubscriberSource::Native) => return Err(Error::NotAPlugin(id.to_owned())),
            None => return Err(RegistryError::UnknownSubscriber(id.to_owned()).into()),
        };
        self.sync(&path, true).await
    }

    /// [`sync_plugin`](Self::sync_plugin), one at a time per subscriber,
    /// counting loads and refused loads.
    async fn sync(&self, path: &Path, force: bool) -> Result<PluginChange> {
        let id = loader::subscriber_id(path)?;
        let turn = lock(&self.inner.loading)
            .entry(id.clone())
            .or_default()
            .clone();
        let outcome = {
            let _turn = turn.lock().await;
            self.sync_files(path, force).await
        };
        let mut loading = lock(&self.inner.loading);
        // Only the map and this call hold it: no one else is waiting.
        if Arc::strong_count(&turn) == 2 {
            loading.remove(&id);
        }
        drop(loading);
        let counter = match &outcome {
            Ok(PluginChange::Added(_) | PluginChange::Reloaded(_)) => &self.inner.plugins.loads,
            Err(Error::Load(_)) => &self.inner.plugins.load_failures,
            _ => return outcome,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        outcome
    }

    async fn sync_files(&self, path: &Path, force: bool) -> Result<PluginChange> {
        let id = loader::subscriber_id(path)?;
        let current = self.inner.registry.source(&id);
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
            self.remove_subscriber(&id).await?;
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
        let defaults = *lock(&self.inner.defaults);
        let (files, loaded) = blocking(path, move || {
            let loaded = loader::load(&sandbox, &files, defaults);
            Ok((files, loaded))
        })
        .await?;
        let loaded = loaded?;
        let short_hash = &files.sha256[..12];
        let registry = &self.inner.registry;
        let source = files.source(&loaded);
        match registry.mailbox(&id) {
            Some(mailbox) => {
                mailbox.replace(loaded.settings, Box::new(loaded.subscriber));
                registry.reload_subscriber(&id, source, &loaded.channels)?;
                tracing::info!(subscriber = %id, channels = ?loaded.channels, sha256 = short_hash, "plugin reloaded");
                Ok(PluginChange::Reloaded(id.to_string()))
            }
            None => {
                let mailbox =
                    self.spawn_mailbox(id.clone(), loaded.settings, Box::new(loaded.subscriber))?;
                self.insert(mailbox, source, &loaded.channels)?;
                tracing::info!(subscriber = %id, channels = ?loaded.channels, sha256 = short_hash, "plugin loaded");
                Ok(PluginChange::Added(id.to_string()))
            }
        }
    }

    /// Load every plugin in `dir`, then follow the folder: new files are
    /// added, changed ones reloaded, deleted ones removed, until the returned
    /// watcher is dropped.
    pub async fn watch_plugins(&self, dir: &Path) -> Result<PluginWatcher> {
        watcher::watch(self, dir, self.inner.watch_debounce).await
    }

    /// Compile cache counters, once a plugin has been loaded and if the cache is on.
    pub fn compile_cache_stats(&self) -> Option<CacheStats> {
        lock(&self.inner.sandbox)
            .as_ref()
            .and_then(|s| s.cache_stats())
    }

    /// Connect and start LISTENing. Does nothing if already running.
    pub async fn start(&self) -> Result<()> {
        let mut listener = lock(&self.inner.listener);
        if listener.as_ref().is_some_and(Listener::is_running) {
            return Ok(());
        }
        *listener = Some(Listener::spawn(
            lock(&self.inner.database).clone(),
            *lock(&self.inner.connection),
            self.inner.registry.clone(),
            self.inner.status.clone(),
        ));
        Ok(())
    }

    /// UNLISTEN and disconnect. Subscribers stay registered; what was already
    /// received is still delivered.
    pub async fn stop(&self) {
        let listener = lock(&self.inner.listener).take();
        if let Some(listener) = listener {
            listener.stop().await;
        }
    }

    pub async fn restart(&self) -> Result<()> {
        self.stop().await;
        self.start().await
    }

    pub fn is_running(&self) -> bool {
        lock(&self.inner.listener)
            .as_ref()
            .is_some_and(Listener::is_running)
    }

    /// Running, connected, and what is LISTENed.
    pub fn listener(&self) -> ListenerView {
        ListenerView {
            running: self.is_running(),
            connected: self.inner.status.connected.load(Ordering::Relaxed),
            backend_pid: self.backend_pid(),
            listening: self.listening(),
            reconnects: self.inner.status.reconnects.load(Ordering::Relaxed),
        }
    }

    /// Why operators' changes (mutes, subscriptions) are not being saved to
    /// the state file, and so would be lost at restart; `None` when they are.
    pub fn unsaved_changes(&self) -> Option<String> {
        self.inner
            .registry
            .unsaved()
            .map(|reason| reason.to_string())
    }

    /// Ready when connected, LISTENing every active channel and saving the
    /// runtime state; otherwise why not.
    pub fn readiness(&self) -> std::result::Result<(), String> {
        if let Some(reason) = self.unsaved_changes() {
            return Err(reason);
        }
        if !self.is_running() {
            return Err("the listener is stopped".into());
        }
        if !self.inner.status.connected.load(Ordering::Relaxed) {
            return Err("not connected to PostgreSQL".into());
        }
        let active = self.inner.registry.watch_active().borrow().clone();
        let listened = self.inner.status.listened.borrow().clone();
        match active.iter().find(|c| !listened.contains(*c)) {
            Some(missing) => Err(format!("channel {missing:?} is not LISTENed yet")),
            None => Ok(()),
        }
    }

    /// Every counter, in the Prometheus text format.
    pub fn metrics(&self) -> String {
        crate::metrics::render(&crate::metrics::Sources {
            registry: &self.inner.registry,
            listener: &self.inner.status,
            plugins: &self.inner.plugins,
            cache: self.compile_cache_stats(),
        })
    }

    /// Limits for plugins whose sidecar does not set them, from now on.
    /// Loaded plugins keep theirs until reloaded.
    pub fn set_defaults(&self, settings: SubscriberSettings) {
        *lock(&self.inner.defaults) = settings;
    }

    /// The database and connection settings for the next [`start`](Self::start).
    pub fn set_database(&self, database: DatabaseConfig, connection: ConnectionSettings) {
        *lock(&self.inner.database) = database;
        *lock(&self.inner.connection) = connection;
    }

    /// The channels LISTENed right now.
    pub fn listening(&self) -> Vec<String> {
        self.inner
            .status
            .listened
            .borrow()
            .iter()
            .map(|c| c.to_string())
            .collect()
    }

    /// The PostgreSQL backend pid of the LISTEN connection, when connected.
    pub fn backend_pid(&self) -> Option<i32> {
        match self
            .inner
            .status
            .backend_pid
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            0 => None,
            pid => Some(pid),
        }
    }

    /// Wait until every active channel is LISTENed (and nothing else is).
    pub async fn wait_until_listening(&self, timeout: Duration) -> Result<()> {
        let mut active = self.inner.registry.watch_active();
        let mut listened = self.inner.status.listened.subscribe();
        let wait = async {
            loop {
                if **active.borrow_and_update() == **listened.borrow_and_update() {
                    return;
                }
                tokio::select! {
                    _ = active.changed() => {}
                    _ = listened.changed() => {}
                }
            }
        };
        tokio::time::timeout(timeout, wait)
            .await
            .map_err(|_| Error::NotListening(timeout))
    }

    /// Stop the listener, then let every subscriber finish its queue, up to
    /// `drain_timeout` in all. No subscriber is called after the deadline.
    pub async fn shutdown(&self, drain_timeout: Duration) -> ShutdownReport {
        self.stop().await;
        let mailboxes = self.inner.registry.mailboxes();
        let abandoned = tokio::task::spawn_blocking(move || {
            let deadline = std::time::Instant::now() + drain_timeout;
            mailboxes.iter().for_each(|m| m.close());
            mailboxes
                .iter()
                .filter(|m| !m.drain(deadline.saturating_duration_since(std::time::Instant::now())))
                .map(|m| m.id.to_string())
                .collect()
        })
        .await
        .unwrap_or_default();
        ShutdownReport { abandoned }
    }

    fn insert(
        &self,
        mailbox: Arc<Mailbox>,
        source: SubscriberSource,
        channels: &[String],
    ) -> Result<()> {
        self.inner
            .registry
            .insert_subscriber(mailbox.clone(), source, channels)
            .inspect_err(|_| mailbox.abandon())?;
        Ok(())
    }

    /// Start a subscriber's worker; its quarantine hook mutes it in the registry.
    fn spawn_mailbox(
        &self,
        id: Arc<str>,
        settings: SubscriberSettings,
        deliver: Box<dyn crate::dispatch::Deliver>,
    ) -> Result<Arc<Mailbox>> {
        let registry = Arc::downgrade(&self.inner.registry);
        let on_quarantine: QuarantineHook = Arc::new(move |id, reason| {
            if let Some(registry) = registry.upgrade() {
                // Fails only if the subscriber was removed meanwhile.
                let _ = registry.quarantine(id, reason);
            }
        });
        Mailbox::spawn(id.clone(), settings, deliver, on_quarantine).map_err(|source| {
            Error::Worker {
                id: id.to_string(),
                source,
            }
        })
    }

    fn sandbox(&self) -> Result<Arc<Sandbox>> {
        let mut slot = lock(&self.inner.sandbox);
        if let Some(sandbox) = slot.as_ref() {
            return Ok(sandbox.clone());
        }
        // Called from async code, so the pool's connections run on this runtime.
        let database = lock(&self.inner.database).clone();
        let pool = CapabilityPool::new(&database, self.inner.query_pool_size)
            .map_err(|e| Error::Sandbox(e.into()))?;
        let sandbox = Sandbox::with_pool(&self.inner.sandbox_config, Some(Arc::new(pool)))
            .map_err(|e| Error::Sandbox(e.into()))?;
        *slot = Some(sandbox.clone());
        Ok(sandbox)
    }
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
