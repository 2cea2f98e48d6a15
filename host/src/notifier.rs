//! The `Notifier`: the library API, with the origin's operations.
//!
//! Registry operations are synchronous and take effect at once; the listener
//! follows the active set by itself. `start`, `stop` and `restart` control the
//! listener. Subscribers keep running across them until removed or shut down.

use crate::cluster::{ClusterSettings, ClusterStatus, Role};
use crate::durable::feeder::{self, FeedSettings, Feeders};
use crate::durable::{
    dead_letters, reader, relay, schema, DeadLetter, DeliveryMode, DurableError, Transport,
};
use crate::error::{Error, Result};
use crate::journal::HostEvent;
use crate::listener::{LastGap, Listener, ListenerStatus};
use crate::pg::connection::{self, ConnectionSettings};
use crate::pg::{advisory, DatabaseSettings};
use crate::plugins::{watcher, PluginChange, PluginSync, PluginWatcher, SubscriberSettings};
use crate::registry::state::StateFile;
use crate::registry::{ChannelView, Registry, RegistryError, SubscriberSource, SubscriberView};
use crate::sandbox::{CacheStats, SandboxSettings};
use crate::subscriber::Subscriber;
use crate::sync::{clock, lock, AbortOnDrop};
use serde::{Deserialize, Serialize};
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

/// Why the host is not ready, as [`Notifier::readiness`] says.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NotReady {
    /// Operators' changes are not being saved to the state file.
    #[error("{0}")]
    Unsaved(String),
    #[error("the listener is stopped")]
    Stopped,
    #[error("not connected to PostgreSQL")]
    Disconnected,
    #[error("channel {0:?} is not LISTENed yet")]
    NotListening(String),
}

/// How a shutdown went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShutdownReport {
    /// Subscribers whose queues were not empty at the drain deadline.
    pub abandoned: Vec<String>,
}

/// The listener, as [`Notifier::listener`] shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ListenerView {
    /// Started and not stopped.
    pub running: bool,
    pub connected: bool,
    /// The PostgreSQL backend pid of the LISTEN connection, when connected.
    pub backend_pid: Option<i32>,
    /// The channels LISTENed right now.
    pub listening: Vec<String>,
    pub reconnects: u64,
    /// Leader, standby or alone: a standby LISTENs nothing.
    pub cluster: ClusterView,
    /// PostgreSQL's NOTIFY queue, how full (0 to 1), at the last heartbeat.
    #[serde(default)]
    pub notify_queue_usage: f64,
    /// The last time notifications may have been missed.
    #[serde(default)]
    pub last_gap: Option<LastGap>,
}

/// This host in its cluster, as [`Notifier::cluster`] shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterView {
    pub role: Role,
    /// The cluster's name, if this host is in one.
    pub cluster: Option<String>,
    pub group: Option<String>,
    /// The leader's backend, as PostgreSQL shows it (itself when leading).
    pub leader: Option<String>,
    /// How often this host took over from another leader.
    pub takeovers: u64,
}

/// Builds a [`Notifier`].
pub struct NotifierBuilder {
    database: DatabaseSettings,
    sandbox: SandboxSettings,
    defaults: SubscriberSettings,
    watch_debounce: Duration,
    connection: ConnectionSettings,
    query_pool_size: usize,
    registry: Registry,
    outbox_retention: Duration,
    durable_transport: Transport,
    cluster: Option<ClusterSettings>,
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
        self.registry = Registry::persisted(file, saved).map_err(|e| Error::StateDir {
            dir: dir.to_owned(),
            source: e,
        })?;
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
    pub fn sandbox(mut self, config: SandboxSettings) -> Self {
        self.sandbox = config;
        self
    }

    /// Limits for plugins whose sidecar does not set them.
    pub fn defaults(mut self, settings: SubscriberSettings) -> Self {
        self.defaults = settings;
        self
    }

    /// How long a changed file in the plugins folder must be quiet before
    /// the change is applied (at most a day).
    pub fn watch_debounce(mut self, quiet: Duration) -> Self {
        self.watch_debounce = quiet;
        self
    }

    /// How long an outbox event is kept at most, even if an at-least-once
    /// subscriber has not had it yet (it then gets a gap event); a week
    /// unless set.
    pub fn outbox_retention(mut self, retention: Duration) -> Self {
        self.outbox_retention = retention;
        self
    }

    /// Where `pgnotifier.send` writes its events: the outbox table (the
    /// default, any PostgreSQL) or the write-ahead log (`wal_level =
    /// logical`; [`start`](Notifier::start) refuses a server without it).
    pub fn durable_transport(mut self, transport: Transport) -> Self {
        self.durable_transport = transport;
        self
    }

    /// Run as one host of a cluster: only the elected leader dispatches.
    pub fn cluster(mut self, settings: ClusterSettings) -> Self {
        self.cluster = Some(settings);
        self
    }

    pub fn build(self) -> Notifier {
        let registry = Arc::new(self.registry);
        let database = Arc::new(Mutex::new(self.database));
        let cluster = Arc::new(ClusterStatus::new(self.cluster));
        // A feeder checks its connection as often as a leader its own.
        let heartbeat =
            (cluster.settings.as_ref()).map_or(Duration::from_secs(1), |c| c.heartbeat(None));
        let feeders = Arc::new(Feeders::new(
            database.clone(),
            Arc::downgrade(&registry),
            self.outbox_retention,
            cluster.watch_dispatching(),
            heartbeat,
            self.sandbox.max_payload_bytes,
            self.durable_transport,
        ));
        let plugins = PluginSync::new(
            registry.clone(),
            feeders.clone(),
            database.clone(),
            self.sandbox,
            self.query_pool_size,
            self.defaults,
        );
        Notifier {
            inner: Arc::new(Inner {
                registry,
                database,
                plugins: Arc::new(plugins),
                feeders,
                watch_debounce: self.watch_debounce,
                connection: Mutex::new(self.connection),
                listener: Mutex::new(None),
                status: Arc::default(),
                cluster,
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
    database: Arc<Mutex<DatabaseSettings>>,
    plugins: Arc<PluginSync>,
    /// The at-least-once subscribers' feeders.
    feeders: Arc<Feeders>,
    watch_debounce: Duration,
    connection: Mutex<ConnectionSettings>,
    listener: Mutex<Option<Listener>>,
    status: Arc<ListenerStatus>,
    cluster: Arc<ClusterStatus>,
}

impl Notifier {
    pub fn new(database: DatabaseSettings) -> Self {
        Self::builder(database).build()
    }

    pub fn builder(database: DatabaseSettings) -> NotifierBuilder {
        NotifierBuilder {
            database,
            sandbox: SandboxSettings::default(),
            defaults: SubscriberSettings::default(),
            watch_debounce: Duration::from_millis(25),
            connection: ConnectionSettings::default(),
            query_pool_size: 4,
            registry: Registry::new(),
            outbox_retention: crate::durable::DEFAULT_RETENTION,
            durable_transport: Transport::default(),
            cluster: None,
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
        let (settings, delivery) = (subscriber.settings, subscriber.delivery);
        let runtime = match delivery {
            DeliveryMode::AtLeastOnce(_) => Some(feeder::runtime()?),
            DeliveryMode::AtMostOnce => None,
        };
        let mailbox = registry
            .spawn_mailbox(id.clone(), settings, subscriber.into_deliver(id.clone()))
            .map_err(Error::worker(&id))?;
        let channels = channels.into_channels();
        registry.insert_subscriber(mailbox.clone(), SubscriberSource::Native, &channels)?;
        if let (DeliveryMode::AtLeastOnce(retry), Some(runtime)) = (delivery, runtime) {
            let settings = FeedSettings {
                retry,
                longest_call: feeder::NATIVE_LONGEST_CALL,
            };
            (self.inner.feeders).ensure(&runtime, &id, &mailbox, settings, Arc::default());
        }
        Ok(())
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
        self.inner.feeders.stop(id).await;
        Ok(self.inner.registry.remove_subscriber(id).await?)
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

    /// What happened to the host after its event `seq` (0: all kept),
    /// oldest first: plugins loaded, reloaded and refused, quarantines,
    /// gaps, leadership taken. The last [`KEPT`](crate::journal::KEPT) are kept.
    pub fn host_events(&self, after: u64) -> Vec<HostEvent> {
        self.inner.registry.journal().after(after)
    }

    /// The number of the host's latest event (0: none yet).
    pub fn last_host_event(&self) -> u64 {
        self.inner.registry.journal().last_seq()
    }

    /// Every subscriber with its channels, mute flags and counters.
    pub fn subscribers(&self) -> Vec<SubscriberView> {
        let mut views = self.inner.registry.subscribers();
        for view in &mut views {
            view.durable = self.inner.feeders.stats_of(&view.id);
        }
        views
    }

    /// Load one plugin file (and its sidecar) and subscribe it, or reload it
    /// if it is already loaded. Returns its id.
    pub async fn load_plugin(&self, path: &Path) -> Result<String> {
        self.inner.plugins.load_plugin(path).await
    }

    /// Load every `*.wasm` in `dir`, all at once, so one slow plugin (a
    /// `register` that runs to its deadline) holds up none of the others.
    /// One bad file does not stop the others: each file's outcome is
    /// returned in file order, and failures are logged.
    pub async fn load_plugins(&self, dir: &Path) -> Result<Vec<(PathBuf, Result<String>)>> {
        self.inner.plugins.load_plugins(dir).await
    }

    /// Make the subscriber of one plugin file match the file: add it, reload
    /// it (keeping its queue and mute flags), or remove it if the file is
    /// gone. A file that fails to load changes nothing: the running version,
    /// if any, keeps running.
    pub async fn sync_plugin(&self, path: &Path) -> Result<PluginChange> {
        self.inner.plugins.sync_plugin(path).await
    }

    /// Reload a plugin subscriber from its file, even if the file did not
    /// change (a new `[defaults]`, or a fresh instance). Unknown ids and
    /// native subscribers are errors.
    pub async fn reload_plugin(&self, id: &str) -> Result<PluginChange> {
        self.inner.plugins.reload_plugin(id).await
    }

    /// Load every plugin in `dir`, then follow the folder: new files are
    /// added, changed ones reloaded, deleted ones removed, until the returned
    /// watcher is dropped.
    pub async fn watch_plugins(&self, dir: &Path) -> Result<PluginWatcher> {
        watcher::watch(&self.inner.plugins, dir, self.inner.watch_debounce).await
    }

    /// Compile cache counters, once a plugin has been loaded and if the cache is on.
    pub fn compile_cache_stats(&self) -> Option<CacheStats> {
        self.inner.plugins.cache_stats()
    }

    /// Connect and start LISTENing. Does nothing if already running.
    ///
    /// First it sends itself a notification, from a second connection, and
    /// refuses ([`Error::ListenBroken`]) when none arrives within 3 s: a
    /// pooler in transaction mode accepts LISTEN and delivers nothing. A
    /// server that cannot be reached is no refusal: the listener retries.
    pub async fn start(&self) -> Result<()> {
        if self.is_running() {
            return Ok(());
        }
        // The dispatch clock calibrates on first use, spinning for up to
        // 200 ms on a noisy VM: here, beside the probe's round trips, not
        // in the listener at the first notification, which it held back.
        let calibrated = tokio::task::spawn_blocking(|| {
            clock();
        });
        // Refused, not silently deaf: LISTEN through a transaction-mode pooler.
        let database = lock(&self.inner.database).clone();
        let works = connection::check_listen_works(&database).await;
        // Only a panic fails it, and then the first use calibrates instead.
        let _ = calibrated.await;
        if !works {
            return Err(Error::ListenBroken {
                database: database.redacted().to_string(),
                waited: connection::PROBE_WAIT,
            });
        }
        self.start_relay(&database).await?;
        let mut listener = lock(&self.inner.listener);
        if listener.as_ref().is_some_and(Listener::is_running) {
            return Ok(());
        }
        *listener = Some(Listener::spawn(
            lock(&self.inner.database).clone(),
            *lock(&self.inner.connection),
            self.inner.registry.clone(),
            self.inner.status.clone(),
            self.inner.cluster.clone(),
        ));
        Ok(())
    }

    /// With the WAL transport, refuse a server without `wal_level =
    /// logical` now rather than at the first send, and relay its slot while
    /// this host dispatches. With the outbox transport, relay what senders
    /// may still write to a slot the WAL transport left. A server that
    /// cannot be reached now is checked as the relay connects.
    async fn start_relay(&self, database: &DatabaseSettings) -> Result<()> {
        let runtime = feeder::runtime()?;
        let feeders = &self.inner.feeders;
        let connected = database
            .connect()
            .await
            .ok()
            .map(|(client, connection)| (client, AbortOnDrop(tokio::spawn(connection))));
        match feeders.transport() {
            Transport::Wal { slot } => {
                if let Some((client, _driver)) = &connected {
                    relay::check_requirements(client).await?;
                }
                feeders.ensure_relay(&runtime, slot, true);
            }
            Transport::Outbox => {
                let Some((client, _driver)) = &connected else {
                    return Ok(());
                };
                match relay::left_to_drain(client).await {
                    Ok(Some(slot)) => {
                        tracing::info!(%slot, "durable_transport is \"outbox\": senders write to the outbox again, and the WAL transport's slot is relayed until it is dropped (SELECT pg_drop_replication_slot('{slot}') once no sender that began before this start is left)");
                        feeders.ensure_relay(&runtime, &slot, false);
                    }
                    Ok(None) => {}
                    Err(e) => tracing::warn!("looking for a WAL transport's slot to relay: {e}"),
                }
            }
        }
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
            cluster: self.cluster(),
            notify_queue_usage: f64::from_bits(
                self.inner.status.queue_usage.load(Ordering::Relaxed),
            ),
            last_gap: lock(&self.inner.status.last_gap).clone(),
        }
    }

    /// This host's place in its cluster.
    pub fn cluster(&self) -> ClusterView {
        let status = &self.inner.cluster;
        ClusterView {
            role: status.role(),
            cluster: status.settings.as_ref().map(|s| s.name.clone()),
            group: status.settings.as_ref().and_then(|s| s.group.clone()),
            leader: status.leader(),
            takeovers: status.takeovers.load(Ordering::Relaxed),
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

    /// Prune the outbox now, as the host does every minute: events every
    /// at-least-once subscriber of their channel has passed, and events
    /// older than the retention. `None` when another host is pruning.
    /// Committed events that were never stamped (the stamp trigger
    /// disabled by hand) are stamped first, counted and logged.
    pub async fn prune_outbox(&self) -> Result<Option<crate::durable::Pruned>> {
        use crate::durable::pruner;
        let mut client = self.durable_client().await?;
        let unstamped = pruner::stamp_unstamped(&mut client).await?;
        (self.inner.feeders.outbox().unstamped).fetch_add(unstamped, Ordering::Relaxed);
        let retention = self.inner.feeders.retention();
        Ok(pruner::prune(&mut client, retention).await?)
    }

    /// Every dead letter: events an at-least-once subscriber failed on
    /// every attempt, oldest first.
    pub async fn dead_letters(&self) -> Result<Vec<DeadLetter>> {
        let client = self.durable_client().await?;
        Ok(dead_letters::list(&client).await?)
    }

    /// Deliver dead letter `id` again, to its own subscriber only; it is
    /// removed once a call succeeds.
    pub async fn redeliver(&self, id: i64) -> Result<DeadLetter> {
        let client = self.durable_client().await?;
        Ok(dead_letters::request_redelivery(&client, id).await?)
    }

    /// Discard dead letter `id`: it is not delivered again.
    pub async fn discard_dead_letter(&self, id: i64) -> Result<DeadLetter> {
        let client = self.durable_client().await?;
        Ok(dead_letters::discard(&client, id).await?)
    }

    /// Send a notification on `channel` with `payload`, from a connection
    /// of this host's own, as `pg_notify` does: a test an operator makes.
    pub async fn notify(&self, channel: &str, payload: &str) -> Result<()> {
        let refused = |reason: String| Error::Notify {
            channel: channel.to_owned(),
            reason,
        };
        crate::channel::validate(channel).map_err(RegistryError::InvalidChannel)?;
        let database = lock(&self.inner.database).clone();
        let (client, connection) =
            (database.connect().await).map_err(|e| refused(crate::printable::with_causes(&e)))?;
        let _driver = tokio::spawn(connection);
        (client
            .execute("SELECT pg_catalog.pg_notify($1, $2)", &[&channel, &payload])
            .await)
            .map_err(|e| refused(crate::pg::describe(&e)))?;
        Ok(())
    }

    /// Move an at-least-once subscriber's position past every event
    /// committed so far: what it has not handled yet is skipped, not
    /// delivered. Events of transactions still running are not skipped.
    /// Only the host that feeds the subscriber can: a standby refuses,
    /// naming the leader, and so does a host whose feeder another holds.
    pub async fn skip_ahead(&self, id: &str) -> Result<()> {
        let mailbox = (self.inner.registry.mailbox(id))
            .ok_or_else(|| RegistryError::UnknownSubscriber(id.to_owned()))?;
        let settings = (self.inner.feeders.settings_of(id))
            .ok_or_else(|| DurableError::NotDurable(id.to_owned()))?;
        if self.inner.cluster.role() == Role::Standby {
            let leader = self.inner.cluster.leader();
            return Err(DurableError::Standby { leader }.into());
        }
        let runtime = feeder::runtime()?;
        // Stopped at the next event, its position written and its lock freed.
        self.inner.feeders.stop(id).await;
        let moved = async {
            let client = self.durable_client().await?;
            let lock = feeder::lock_name(id);
            let refused = |e: tokio_postgres::Error| Error::from(DurableError::from(e));
            if !advisory::try_lock(&client, &lock).await.map_err(refused)? {
                let holder = advisory::holder(&client, &lock).await.map_err(refused)?;
                return Err(DurableError::FedElsewhere {
                    subscriber: id.to_owned(),
                    holder: holder.unwrap_or_else(|| "another host".to_owned()),
                }
                .into());
            }
            // The horizon waits for transactions committing now; one still
            // running commits after it, and is delivered.
            let target = (reader::end_of_outbox(&client).await).map_err(DurableError::from)?;
            reader::save_position(&client, id, target, None)
                .await
                .map_err(DurableError::from)?;
            advisory::unlock(&client, &lock).await.map_err(refused)?;
            tracing::warn!(subscriber = %id, "skipped ahead: events not handled yet will not be delivered");
            Ok::<_, Error>(())
        }
        .await;
        // Fed again either way, from wherever the position now is.
        self.inner
            .feeders
            .ensure(&runtime, &id.into(), &mailbox, settings, Arc::default());
        moved
    }

    /// A connection for durable operations, the schema installed.
    async fn durable_client(&self) -> Result<tokio_postgres::Client> {
        let database = lock(&self.inner.database).clone();
        let (mut client, connection) = database.connect().await.map_err(DurableError::from)?;
        tokio::spawn(connection);
        schema::install(&mut client)
            .await
            .map_err(DurableError::from)?;
        Ok(client)
    }

    /// Wait until every change made so far (mutes, subscriptions,
    /// quarantines) is written to the state file, or known not to be
    /// ([`unsaved_changes`](Self::unsaved_changes)). The file is written on
    /// a thread of its own, so changes never wait for the disk.
    pub async fn state_saved(&self) {
        self.inner.registry.saved().await;
    }

    /// Ready when connected, LISTENing every active channel and saving the
    /// runtime state; otherwise why not.
    pub fn readiness(&self) -> std::result::Result<(), NotReady> {
        if let Some(reason) = self.unsaved_changes() {
            return Err(NotReady::Unsaved(reason));
        }
        if !self.is_running() {
            return Err(NotReady::Stopped);
        }
        if !self.inner.status.connected.load(Ordering::Relaxed) {
            return Err(NotReady::Disconnected);
        }
        if self.inner.cluster.role() == Role::Standby {
            // Connected and ready to take over; it LISTENs nothing until then.
            return Ok(());
        }
        let active = self.inner.registry.watch_active().borrow().clone();
        let listened = self.inner.status.listened.borrow().clone();
        match active.iter().find(|c| !listened.contains(*c)) {
            Some(missing) => Err(NotReady::NotListening(missing.to_string())),
            None => Ok(()),
        }
    }

    /// Every counter, in the Prometheus text format.
    pub fn metrics(&self) -> String {
        crate::metrics::render(&crate::metrics::Sources {
            registry: &self.inner.registry,
            listener: &self.inner.status,
            plugins: &self.inner.plugins.counters,
            cache: self.compile_cache_stats(),
            durable: self.inner.feeders.stats(),
            outbox: self.inner.feeders.outbox(),
            relay: self.inner.feeders.relay_stats(),
            cluster: &self.inner.cluster,
        })
    }

    /// Limits for plugins whose sidecar does not set them, from now on.
    /// Loaded plugins keep theirs until reloaded.
    pub fn set_defaults(&self, settings: SubscriberSettings) {
        self.inner.plugins.set_defaults(settings);
    }

    /// The database and connection settings for the next [`start`](Self::start).
    pub fn set_database(&self, database: DatabaseSettings, connection: ConnectionSettings) {
        *lock(&self.inner.database) = database;
        *lock(&self.inner.connection) = connection;
    }

    /// Warn past this fill of PostgreSQL's notification queue, in percent:
    /// from the running listener's next heartbeat, without reconnecting.
    pub fn set_queue_warn_percent(&self, percent: u8) {
        lock(&self.inner.connection).queue_warn_percent = percent;
        (self.inner.status.queue_warn_percent).store(percent, Ordering::Relaxed);
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
        // Feeders stop after the event in hand; the drain delivers it, and
        // each writes its position before it ends.
        let feeders = self.inner.feeders.stop_all();
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
        for feeder in feeders {
            feeder.stop().await;
        }
        self.inner.feeders.relay_stopped().await;
        self.state_saved().await;
        ShutdownReport { abandoned }
    }
}
