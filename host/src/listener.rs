//! The listener: one PostgreSQL connection, LISTENing the active channels.
//!
//! A supervisor task connects (retrying with backoff and jitter), then runs a
//! session: the connection is driven by `poll_message` in its own task, which
//! routes every notification, while the session issues `LISTEN`/`UNLISTEN` for
//! the difference whenever the registry's active set changes. The channel set
//! never causes a reconnect. Whenever a channel that was LISTENed is LISTENed
//! again on a new connection (after a lost connection, and after a stop and
//! start, a restart or new settings), its subscribers get a gap event first.

use crate::channel::quote_ident;
use crate::cluster::election::{self, Campaign};
use crate::cluster::{ClusterStatus, Role};
use crate::dispatch::{Delivery, Gap, GapCause, Router, Run};
use crate::pg::{advisory, DatabaseConfig};
use crate::printable::with_causes;
use crate::registry::{ActiveChannels, Registry};
use crate::sync::{clock, lock, Latch, Release};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_postgres::{AsyncMessage, Client, Connection};

/// How the LISTEN connection is kept up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionSettings {
    /// First wait before reconnecting; doubles after each failed attempt,
    /// with jitter, up to `reconnect_max`. Attempts never stop.
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    /// How often a cheap query checks the connection, so a silently dead one
    /// is noticed within about twice this; `None` turns it off (TCP keepalive
    /// still applies).
    pub heartbeat: Option<Duration>,
    /// Warn when PostgreSQL's notification queue is fuller than this, in
    /// percent, read at each heartbeat. At 100% every NOTIFY fails.
    pub queue_warn_percent: u8,
}

impl Default for ConnectionSettings {
    fn default() -> Self {
        Self {
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(30),
            heartbeat: Some(Duration::from_secs(30)),
            queue_warn_percent: 25,
        }
    }
}

/// What the listener is doing, for the API and readiness.
#[derive(Debug)]
pub(crate) struct ListenerStatus {
    pub(crate) connected: AtomicBool,
    /// The PostgreSQL backend pid of the LISTEN connection (0 when none).
    pub(crate) backend_pid: AtomicI32,
    pub(crate) reconnects: AtomicU64,
    /// Heartbeats that found the server LISTENing other channels than believed.
    pub(crate) listen_repairs: AtomicU64,
    /// `pg_notification_queue_usage()` at the last heartbeat, as f64 bits.
    pub(crate) queue_usage: AtomicU64,
    /// Warn past this fill of the notification queue, in percent: read at
    /// each heartbeat, so a new threshold needs no reconnect.
    pub(crate) queue_warn_percent: AtomicU8,
    /// Reconnections after which subscribers were told they may have missed notifications.
    pub(crate) gap_events: AtomicU64,
    /// When the last notification was routed, a raw reading of
    /// [`clock`] (0: none yet). Set once per run of notifications.
    pub(crate) last_notification: AtomicU64,
    /// The channels LISTENed right now.
    pub(crate) listened: watch::Sender<ActiveChannels>,
    /// The channels that were LISTENed on a connection now closed, lost or
    /// stopped: the next connection owes their subscribers a gap event. It
    /// outlives each listener, so a stop and start is a gap too.
    gap: std::sync::Mutex<OwedGap>,
}

/// Channels whose subscribers are owed a gap event, and since when.
#[derive(Debug, Default)]
struct OwedGap {
    channels: BTreeSet<Arc<str>>,
    /// When and why the first of the connections behind it ended.
    since: Option<(SystemTime, String)>,
}

impl OwedGap {
    /// A connection ended: remember the first loss while a gap is owed.
    fn note_loss(&mut self, why: &str) {
        if !self.channels.is_empty() && self.since.is_none() {
            self.since = Some((SystemTime::now(), why.to_owned()));
        }
    }

    fn merge(&mut self, other: OwedGap) {
        self.channels.extend(other.channels);
        if self.since.is_none() {
            self.since = other.since;
        }
    }

    /// Another host led until `at`: what it did not dispatch is missed on
    /// every channel.
    fn note_takeover(&mut self, channels: &BTreeSet<Arc<str>>, at: SystemTime, why: String) {
        self.channels.extend(channels.iter().cloned());
        if self.since.is_none() {
            self.since = Some((at, why));
        }
    }

    fn clear(&mut self) {
        self.channels.clear();
        self.since = None;
    }
}

impl ListenerStatus {
    fn note_notifications(&self) {
        let now = clock().raw().max(1);
        self.last_notification.store(now, Ordering::Relaxed);
    }
}

impl Default for ListenerStatus {
    fn default() -> Self {
        Self {
            connected: AtomicBool::new(false),
            backend_pid: AtomicI32::new(0),
            reconnects: AtomicU64::new(0),
            listen_repairs: AtomicU64::new(0),
            queue_usage: AtomicU64::new(0),
            queue_warn_percent: AtomicU8::new(ConnectionSettings::default().queue_warn_percent),
            gap_events: AtomicU64::new(0),
            last_notification: AtomicU64::new(0),
            listened: watch::Sender::new(Arc::default()),
            gap: Default::default(),
        }
    }
}

/// A running listener task.
pub(crate) struct Listener {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Listener {
    pub(crate) fn spawn(
        database: DatabaseConfig,
        settings: ConnectionSettings,
        registry: Arc<Registry>,
        status: Arc<ListenerStatus>,
        cluster: Arc<ClusterStatus>,
    ) -> Self {
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(supervise(
            database, settings, registry, status, cluster, stop_rx,
        ));
        Self { stop, task }
    }

    pub(crate) fn is_running(&self) -> bool {
        !self.task.is_finished()
    }

    /// UNLISTEN, deliver what was already received, and close the connection.
    pub(crate) async fn stop(self) {
        let _ = self.stop.send(true);
        if let Err(e) = self.task.await {
            tracing::error!("listener task failed: {e}");
        }
    }
}

/// Exponential backoff with full jitter.
struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    fn next_delay(&mut self) -> Duration {
        let ceiling = self
            .min
            .saturating_mul(1 << self.attempt.min(16))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        // Jitter in [ceiling/2, ceiling], from the clock's low bits: no RNG dependency needed.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let fraction = 0.5 + f64::from(nanos % 1000) / 2000.0;
        ceiling.mul_f64(fraction)
    }
}

/// How long [`check_listen_works`] waits for its notification.
pub(crate) const PROBE_WAIT: Duration = Duration::from_secs(3);

/// Whether a notification reaches a LISTENing connection: LISTEN on one
/// connection, NOTIFY from another, and wait. Behind a pooler in transaction
/// mode LISTEN is accepted and nothing ever arrives, silently; this finds
/// out at start. False only when both connections worked and the
/// notification did not come; a database that cannot be reached is the
/// listener's to retry, not a reason to refuse.
pub(crate) async fn check_listen_works(database: &DatabaseConfig) -> bool {
    // A server that does not answer soon is the listener's to wait for.
    let connect = || async {
        tokio::time::timeout(PROBE_WAIT, database.connect())
            .await
            .ok()?
            .ok()
    };
    let probe = async {
        let (listening, mut connection) = connect().await?;
        let (arrived, mut got) = tokio::sync::mpsc::unbounded_channel();
        let driver = tokio::spawn(async move {
            while let Some(message) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                if let Ok(AsyncMessage::Notification(_)) = message {
                    let _ = arrived.send(());
                }
            }
        });
        let channel = format!("pgnotifier_probe_{}", std::process::id());
        let listened = listening
            .batch_execute(&format!("LISTEN {}", quote_ident(&channel)))
            .await;
        let sent = async {
            let (sender, connection) = connect().await?;
            let sender_driver = tokio::spawn(connection);
            let sent = sender
                .execute("SELECT pg_catalog.pg_notify($1, 'probe')", &[&channel])
                .await;
            sender_driver.abort();
            sent.ok()
        };
        let came = match (listened, sent.await) {
            (Ok(()), Some(_)) => tokio::time::timeout(PROBE_WAIT, got.recv()).await.is_ok(),
            // Could not even try: not this check's to judge.
            _ => true,
        };
        let _ = listening
            .batch_execute(&format!("UNLISTEN {}", quote_ident(&channel)))
            .await;
        driver.abort();
        Some(came)
    };
    probe.await.unwrap_or(true)
}

/// How often a server that refuses connections is checked for its return.
const PROBE_EVERY: Duration = Duration::from_millis(200);

/// Resolve once the server goes from refusing TCP connections to accepting
/// them, so a long backoff does not delay reconnecting after an outage. A
/// server that already accepts (and failed for another reason, such as TLS
/// or authentication) never resolves this: those failures keep the backoff.
/// A probe is one TCP connect, closed at once: nothing a server notices.
async fn comes_back(database: &DatabaseConfig) {
    if database.accepts_connections().await {
        return std::future::pending().await;
    }
    loop {
        tokio::time::sleep(PROBE_EVERY).await;
        if database.accepts_connections().await {
            return;
        }
    }
}

enum SessionEnd {
    Stopped,
    Lost(String),
}

async fn supervise(
    database: DatabaseConfig,
    settings: ConnectionSettings,
    registry: Arc<Registry>,
    status: Arc<ListenerStatus>,
    cluster: Arc<ClusterStatus>,
    mut stop: watch::Receiver<bool>,
) {
    let mut backoff = Backoff {
        min: settings.reconnect_min,
        max: settings.reconnect_max,
        attempt: 0,
    };
    (status.queue_warn_percent).store(settings.queue_warn_percent, Ordering::Relaxed);
    let mut gap = std::mem::take(&mut *lock(&status.gap));
    let mut was_leading = false;
    while !*stop.borrow() {
        let connected = tokio::select! {
            result = database.connect() => result,
            _ = stop.changed() => break,
        };
        let end = match connected {
            Ok((client, connection)) => {
                backoff.attempt = 0;
                status.connected.store(true, Ordering::Relaxed);
                tracing::info!(database = %database.redacted(), "connected");
                let session = Session {
                    registry: &registry,
                    status: &status,
                    cluster: &cluster,
                    heartbeat: match &cluster.settings {
                        Some(cluster) => Some(cluster.heartbeat(settings.heartbeat)),
                        None => settings.heartbeat,
                    },
                    yield_first: std::mem::take(&mut was_leading),
                };
                session.run(client, connection, &mut stop, &mut gap).await
            }
            Err(e) => SessionEnd::Lost(format!(
                "cannot connect to {}: {}",
                database.redacted(),
                with_causes(&e)
            )),
        };
        // Leadership went with the connection.
        was_leading = cluster.role() == Role::Leader;
        cluster.stand_by(None);
        status.connected.store(false, Ordering::Relaxed);
        status.backend_pid.store(0, Ordering::Relaxed);
        status.listened.send_replace(Arc::default());
        match end {
            SessionEnd::Stopped => {
                gap.note_loss("the listener was stopped");
                break;
            }
            SessionEnd::Lost(reason) => {
                gap.note_loss(&reason);
                let delay = backoff.next_delay();
                tracing::warn!(
                    attempt = backoff.attempt,
                    "{reason}; reconnecting in {delay:.1?}"
                );
                status.reconnects.fetch_add(1, Ordering::Relaxed);
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = comes_back(&database) => {
                        tracing::info!("the server accepts connections again; reconnecting now");
                    }
                    _ = stop.changed() => break,
                }
            }
        }
    }
    lock(&status.gap).merge(gap);
    tracing::info!("listener stopped");
}

/// What one connection's life needs from the supervisor.
struct Session<'a> {
    registry: &'a Arc<Registry>,
    status: &'a Arc<ListenerStatus>,
    cluster: &'a ClusterStatus,
    heartbeat: Option<Duration>,
    /// This host led on the last connection: let a standby go first.
    yield_first: bool,
}

impl Session<'_> {
    /// One connection's life. `gap` holds the channels LISTENed when the
    /// last connection was lost; it is filled again if this one is lost too.
    async fn run<S, T>(
        &self,
        client: Client,
        connection: Connection<S, T>,
        stop: &mut watch::Receiver<bool>,
        gap: &mut OwedGap,
    ) -> SessionEnd
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (registry, status) = (self.registry, self.status);
        let mut driver = tokio::spawn(drive(connection, registry.clone(), self.status.clone()));
        match client.query_one("select pg_backend_pid()", &[]).await {
            Ok(row) => status
                .backend_pid
                .store(row.try_get(0).unwrap_or(0), Ordering::Relaxed),
            Err(e) => return SessionEnd::Lost(format!("connection failed: {}", with_causes(&e))),
        }
        // In a cluster, LISTEN only once leading, on this very connection.
        if let Some(settings) = &self.cluster.settings {
            if let Some(every) = self.heartbeat {
                // The server drops a stalled connection, and with it the
                // lock, only after this host has given it up (docs/clusters.md).
                if let Err(e) = client.batch_execute(&server_keepalives(every)).await {
                    return SessionEnd::Lost(format!("connection failed: {}", with_causes(&e)));
                }
            }
            let campaign = election::campaign(&client, settings, self.cluster, self.yield_first);
            tokio::select! {
                outcome = campaign => match outcome {
                    Campaign::Won { after } => {
                        tracing::info!(cluster = %settings.name, group = settings.group.as_deref().unwrap_or(""), "leading");
                        if let Some((at, leader)) = after {
                            self.cluster.takeovers.fetch_add(1, Ordering::Relaxed);
                            let active = registry.watch_active().borrow().clone();
                            gap.note_takeover(&active, at, format!("took over from {leader}"));
                        }
                    }
                    Campaign::Failed(why) => {
                        return SessionEnd::Lost(format!("the election failed: {why}"));
                    }
                },
                _ = stop.changed() => return SessionEnd::Stopped,
                ended = &mut driver => return SessionEnd::Lost(why_ended(ended)),
            }
        }
        // Queue the gap events before LISTENing again, so every notification
        // of the new connection reaches each subscriber after its gap event;
        // workers hold them until LISTEN is back, so a subscriber that
        // resynchronises in on-gap misses nothing committed after it reads.
        // The release opens on every way out: no worker waits past this session.
        let mut listening_again = announce_gap(registry, gap).await;
        if listening_again.is_some() {
            status.gap_events.fetch_add(1, Ordering::Relaxed);
        }
        let mut active = registry.watch_active();
        let mut listened: BTreeSet<Arc<str>> = BTreeSet::new();
        let mut first_sync = true;
        let mut queue_warned = false;
        let lock_name = self.cluster.settings.as_ref().map(|s| s.lock_name());
        let heartbeat_sql = heartbeat_query(lock_name.is_some());
        let heartbeat_params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = match &lock_name {
            Some(name) => vec![name],
            None => Vec::new(),
        };
        let mut heartbeat = self.heartbeat.map(|every| {
            let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            (ticks, every)
        });
        loop {
            let wanted = active.borrow_and_update().clone();
            if let Err(e) = sync_listens(&client, &mut listened, &wanted).await {
                driver.abort();
                // On a first sync, keep the old gap too: its events may be repeated, never lost.
                gap.channels.extend(std::mem::take(&mut listened));
                return SessionEnd::Lost(format!("LISTEN failed: {}", with_causes(&e)));
            }
            status.listened.send_replace(Arc::new(listened.clone()));
            if first_sync {
                first_sync = false;
                gap.clear();
            }
            if let Some(release) = listening_again.take() {
                release.release();
            }
            let beat = async {
                match heartbeat.as_mut() {
                    Some((ticks, every)) => {
                        ticks.tick().await;
                        *every
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                changed = active.changed() => {
                    if changed.is_err() {
                        return SessionEnd::Stopped;
                    }
                }
                every = beat => {
                    // A dead peer that sent no FIN shows here as an error or no answer.
                    let answer = tokio::time::timeout(every, client.query_one(&heartbeat_sql, &heartbeat_params)).await;
                    let failure = match answer.map(|r| r.and_then(|row| Ok((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?)))) {
                        // A pooler's reset (DISCARD ALL) or a proxy freed the
                        // lock while the connection stayed: a standby may lead now.
                        Ok(Ok((_, _, false))) => Some(
                            "the server released this host's leader lock on its LISTEN connection (a DISCARD ALL or an unlock from a pooler or proxy?)".to_owned(),
                        ),
                        Ok(Ok((usage, actual, true))) => {
                            self.note_queue_usage(usage, &mut queue_warned);
                            listening_again = self.check_listening(actual, &mut listened).await;
                            None
                        }
                        Ok(Err(e)) => Some(format!("heartbeat failed: {}", with_causes(&e))),
                        Err(_) => Some(format!("no answer to the heartbeat within {every:?}")),
                    };
                    if let Some(reason) = failure {
                        driver.abort();
                        gap.channels = listened;
                        return SessionEnd::Lost(reason);
                    }
                }
                _ = stop.changed() => {
                    // Whatever is sent from here on until the next LISTEN is missed.
                    gap.channels.extend(listened);
                    if let Err(e) = client.batch_execute("UNLISTEN *").await {
                        tracing::warn!("UNLISTEN failed: {e}");
                    }
                    // Dropping the client closes the connection once the driver
                    // has routed everything already received.
                    drop(client);
                    let _ = driver.await;
                    return SessionEnd::Stopped;
                }
                ended = &mut driver => {
                    gap.channels = listened;
                    return SessionEnd::Lost(why_ended(ended));
                }
            }
        }
    }
}

/// The server-side TCP settings of a cluster's LISTEN session. This host
/// gives up a stalled connection within two heartbeats (a tick, then its
/// timeout); the server gives up on it half a second later. So the lock is
/// released only once this host has stopped dispatching: never two
/// leaders at once.
fn server_keepalives(heartbeat: Duration) -> String {
    advisory::server_keepalives(2 * heartbeat + Duration::from_millis(500))
}

/// The heartbeat's query: cheap, and it reads the notification queue, what
/// the server LISTENs on this connection, and, in a cluster, whether this
/// session still holds the leader's lock (named by `$1`).
fn heartbeat_query(leading: bool) -> String {
    let holds = if leading {
        advisory::held(1)
    } else {
        "true".to_owned()
    };
    format!(
        "SELECT pg_catalog.pg_notification_queue_usage(),
                ARRAY(SELECT pg_catalog.pg_listening_channels())::text[], {holds}"
    )
}

impl Session<'_> {
    /// What the server LISTENs is what this host believes it LISTENs, or it
    /// is told, counted and repaired: `listened` becomes what the server
    /// has, so the next sync LISTENs again what is missing (and UNLISTENs
    /// what is extra). Subscribers of a missing channel get a gap event:
    /// its notifications were not delivered, once the next sync has
    /// LISTENed them again (the returned release).
    async fn check_listening(
        &self,
        actual: Vec<String>,
        listened: &mut BTreeSet<Arc<str>>,
    ) -> Option<Release> {
        let actual: BTreeSet<Arc<str>> = actual.into_iter().map(Arc::from).collect();
        if actual == *listened {
            return None;
        }
        let missing: BTreeSet<Arc<str>> = listened.difference(&actual).cloned().collect();
        let extra: Vec<&Arc<str>> = actual.difference(listened).collect();
        tracing::warn!(
            ?missing,
            ?extra,
            "the server's LISTEN set differs from this host's; repairing"
        );
        self.status.listen_repairs.fetch_add(1, Ordering::Relaxed);
        let owed = OwedGap {
            channels: missing,
            since: Some((
                SystemTime::now(),
                "the server had stopped LISTENing on this connection".to_owned(),
            )),
        };
        let listening_again = announce_gap(self.registry, &owed).await;
        if listening_again.is_some() {
            self.status.gap_events.fetch_add(1, Ordering::Relaxed);
        }
        *listened = actual;
        self.status
            .listened
            .send_replace(Arc::new(listened.clone()));
        listening_again
    }

    /// Keep the queue's usage for the metrics; warn once as it passes the
    /// threshold, and again after it fell back below.
    fn note_queue_usage(&self, usage: f64, warned: &mut bool) {
        self.status
            .queue_usage
            .store(usage.to_bits(), Ordering::Relaxed);
        let threshold = f64::from(self.status.queue_warn_percent.load(Ordering::Relaxed)) / 100.0;
        if usage > threshold && !*warned {
            tracing::warn!(
                "PostgreSQL's notification queue is {:.1}% full (warning past {:.0}%): a LISTENing session is not reading, often one left idle in a transaction; at 100% every NOTIFY in the database fails",
                usage * 100.0,
                threshold * 100.0
            );
        }
        *warned = usage > threshold;
    }
}

/// Why the connection's driver ended.
fn why_ended(ended: Result<Result<(), tokio_postgres::Error>, tokio::task::JoinError>) -> String {
    match ended {
        Ok(Ok(())) => "connection closed by the server".to_owned(),
        Ok(Err(e)) => format!("connection lost: {}", with_causes(&e)),
        Err(e) => format!("connection task failed: {e}"),
    }
}

/// Issue LISTEN/UNLISTEN for the difference between `listened` and `wanted`.
async fn sync_listens(
    client: &Client,
    listened: &mut BTreeSet<Arc<str>>,
    wanted: &BTreeSet<Arc<str>>,
) -> Result<(), tokio_postgres::Error> {
    let mut sql = String::new();
    let added: Vec<&str> = wanted.difference(listened).map(|c| &**c).collect();
    let removed: Vec<&str> = listened.difference(wanted).map(|c| &**c).collect();
    for channel in &added {
        sql.push_str("LISTEN ");
        sql.push_str(&quote_ident(channel));
        sql.push(';');
    }
    for channel in &removed {
        sql.push_str("UNLISTEN ");
        sql.push_str(&quote_ident(channel));
        sql.push(';');
    }
    if sql.is_empty() {
        return Ok(());
    }
    client.batch_execute(&sql).await?;
    tracing::info!(listen = ?added, unlisten = ?removed, total = wanted.len(), "LISTEN set updated");
    *listened = wanted.clone();
    Ok(())
}

/// Queue for every subscriber of the owed channels that it may have missed
/// notifications. Each is told once the returned release is released or
/// dropped (the channels are LISTENed again); `None`: no one to tell.
async fn announce_gap(registry: &Registry, owed: &OwedGap) -> Option<Release> {
    if owed.channels.is_empty() {
        return None;
    }
    let (resumed, release) = Latch::new();
    let (lost_at, why) = match &owed.since {
        Some((at, why)) => (Some(*at), why.clone()),
        None => (None, "the connection was lost".to_owned()),
    };
    let mut told = false;
    let snapshot = registry.snapshot_arc();
    for (mailbox, missed) in snapshot.gap_targets(&owed.channels) {
        tracing::info!(subscriber = %mailbox.id, channels = ?missed, "notifications may have been missed");
        let gap = Gap {
            channels: missed.into(),
            lost_at,
            resumed_at: SystemTime::now(),
            cause: GapCause::ConnectionLost(why.clone()),
        };
        let gap = Delivery::Gap {
            gap: Arc::new(gap),
            resumed: Some(resumed.clone()),
            done: None,
        };
        mailbox.push(gap).await;
        told = true;
    }
    told.then_some(release)
}

/// What driving the connection came to.
enum Step {
    /// A run to queue: full, ended by another channel, or nothing more buffered.
    Queue(Run),
    /// The connection ended: closed, or with an error.
    Ended(Result<(), tokio_postgres::Error>),
}

/// Drive the connection and route every notification it brings.
async fn drive<S, T>(
    mut connection: Connection<S, T>,
    registry: Arc<Registry>,
    status: Arc<ListenerStatus>,
) -> Result<(), tokio_postgres::Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
    T: AsyncRead + AsyncWrite + Unpin,
{
    let mut router = Router::default();
    loop {
        let step = std::future::poll_fn(|cx| {
            // One look at the route table for everything already buffered
            // (an arc-swap load per notification cost a twentieth of the
            // listener): a reload is seen from the next wake-up or run queued.
            let snapshot = registry.snapshot();
            loop {
                match connection.poll_message(cx) {
                    // Queue the run in progress whenever nothing more is
                    // buffered, so a lone notification is never held back.
                    Poll::Pending => {
                        return router
                            .take()
                            .map_or(Poll::Pending, |run| Poll::Ready(Step::Queue(run)))
                    }
                    Poll::Ready(Some(Ok(AsyncMessage::Notification(n)))) => {
                        let full =
                            router.add(snapshot.routes(), n.channel(), n.payload(), n.process_id());
                        if let Some(run) = full {
                            return Poll::Ready(Step::Queue(run));
                        }
                    }
                    Poll::Ready(Some(Ok(AsyncMessage::Notice(notice)))) => {
                        tracing::debug!("server notice: {}", notice.message());
                    }
                    Poll::Ready(Some(Ok(_))) => {}
                    Poll::Ready(Some(Err(e))) => return Poll::Ready(Step::Ended(Err(e))),
                    Poll::Ready(None) => return Poll::Ready(Step::Ended(Ok(()))),
                }
            }
        })
        .await;
        match step {
            Step::Queue(mut run) => {
                status.note_notifications();
                run.queue().await;
                router.recycle(run);
            }
            Step::Ended(result) => {
                if let Some(mut run) = router.take() {
                    run.queue().await;
                }
                return result;
            }
        }
    }
}
