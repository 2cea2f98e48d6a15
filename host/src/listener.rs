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
use crate::journal::HostEventKind;
use crate::pg::connection::{comes_back, Backoff, ConnectionSettings};
use crate::pg::{advisory, DatabaseSettings};
use crate::printable::with_causes;
use crate::registry::{ActiveChannels, Registry};
use crate::sync::{clock, lock, unix_ms, Latch, Release, Stop, Task};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_postgres::{AsyncMessage, Client, Connection};

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
    /// The last gap told, for the views.
    pub(crate) last_gap: std::sync::Mutex<Option<LastGap>>,
}

/// The last time notifications may have been missed: when the connection
/// was lost, when LISTEN was back, on which channels, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastGap {
    /// Milliseconds since the Unix epoch; none when not known.
    pub lost_at_ms: Option<u64>,
    pub resumed_at_ms: u64,
    pub channels: Vec<String>,
    pub cause: String,
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
            last_gap: Default::default(),
        }
    }
}

/// A running listener task.
pub(crate) struct Listener(Task);

impl Listener {
    pub(crate) fn spawn(
        database: DatabaseSettings,
        settings: ConnectionSettings,
        registry: Arc<Registry>,
        status: Arc<ListenerStatus>,
        cluster: Arc<ClusterStatus>,
    ) -> Self {
        Self(Task::spawn(&tokio::runtime::Handle::current(), |stop| {
            supervise(database, settings, registry, status, cluster, stop)
        }))
    }

    pub(crate) fn is_running(&self) -> bool {
        !self.0.is_finished()
    }

    /// UNLISTEN, deliver what was already received, and close the connection.
    pub(crate) async fn stop(self) {
        self.0.stop().await;
    }
}

enum SessionEnd {
    Stopped,
    Lost(String),
}

async fn supervise(
    database: DatabaseSettings,
    settings: ConnectionSettings,
    registry: Arc<Registry>,
    status: Arc<ListenerStatus>,
    cluster: Arc<ClusterStatus>,
    mut stop: Stop,
) {
    let mut backoff = Backoff::new(settings.reconnect_min, settings.reconnect_max);
    (status.queue_warn_percent).store(settings.queue_warn_percent, Ordering::Relaxed);
    let mut gap = std::mem::take(&mut *lock(&status.gap));
    let mut was_leading = false;
    while !stop.is_asked() {
        let connected = tokio::select! {
            result = database.connect() => result,
            _ = stop.asked() => break,
        };
        let end = match connected {
            Ok((client, connection)) => {
                backoff.reset();
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
                    _ = stop.asked() => break,
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

impl<'a> Session<'a> {
    /// One connection's life. `gap` holds the channels LISTENed when the
    /// last connection was lost; it is filled again if this one is lost too.
    async fn run<S, T>(
        &'a self,
        client: Client,
        connection: Connection<S, T>,
        stop: &mut Stop,
        gap: &mut OwedGap,
    ) -> SessionEnd
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let mut driver = tokio::spawn(drive(
            connection,
            self.registry.clone(),
            self.status.clone(),
        ));
        if let Err(end) = self.begin(&client, &mut driver, stop, gap).await {
            return end;
        }
        // Queue the gap events before LISTENing again, so every notification
        // of the new connection reaches each subscriber after its gap event;
        // workers hold them until LISTEN is back, so a subscriber that
        // resynchronises in on-gap misses nothing committed after it reads.
        // The release opens on every way out: no worker waits past this session.
        let listening_again = announce_gap(self.registry, gap).await;
        if listening_again.is_some() {
            self.status.gap_events.fetch_add(1, Ordering::Relaxed);
            *lock(&self.status.last_gap) = Some(LastGap {
                lost_at_ms: gap.since.as_ref().map(|(at, _)| unix_ms(*at)),
                resumed_at_ms: unix_ms(SystemTime::now()),
                channels: gap.channels.iter().map(|c| c.to_string()).collect(),
                cause: (gap.since.as_ref().map(|(_, why)| why.clone()))
                    .unwrap_or_else(|| "the connection was lost".to_owned()),
            });
        }
        let connected = Connected {
            heartbeat: self
                .heartbeat
                .map(|every| Heartbeat::new(every, self.cluster)),
            session: self,
            client,
            driver,
            active: self.registry.watch_active(),
            listened: BTreeSet::new(),
            first_sync: true,
            listening_again,
            queue_warned: false,
        };
        connected.serve(stop, gap).await
    }

    /// Learn the backend's pid, and in a cluster, win the election: LISTEN
    /// only once leading, on this very connection.
    async fn begin(
        &self,
        client: &Client,
        driver: &mut Driver,
        stop: &mut Stop,
        gap: &mut OwedGap,
    ) -> Result<(), SessionEnd> {
        let lost = |e: tokio_postgres::Error| {
            SessionEnd::Lost(format!("connection failed: {}", with_causes(&e)))
        };
        let row = client
            .query_one("select pg_backend_pid()", &[])
            .await
            .map_err(lost)?;
        (self.status.backend_pid).store(row.try_get(0).unwrap_or(0), Ordering::Relaxed);
        let Some(settings) = &self.cluster.settings else {
            return Ok(());
        };
        if let Some(every) = self.heartbeat {
            // The server drops a stalled connection, and with it the
            // lock, only after this host has given it up (docs/clusters.md).
            (client.batch_execute(&server_keepalives(every)).await).map_err(lost)?;
        }
        let campaign = election::campaign(client, settings, self.cluster, self.yield_first);
        tokio::select! {
            outcome = campaign => match outcome {
                Campaign::Won { after } => {
                    tracing::info!(cluster = %settings.name, group = settings.group.as_deref().unwrap_or(""), "leading");
                    let from = after.as_ref().map(|(_, leader)| format!("took over from {leader}"));
                    (self.registry.journal()).record(HostEventKind::Leading, &settings.name, from.unwrap_or_default());
                    if let Some((at, leader)) = after {
                        self.cluster.takeovers.fetch_add(1, Ordering::Relaxed);
                        let active = self.registry.watch_active().borrow().clone();
                        gap.note_takeover(&active, at, format!("took over from {leader}"));
                    }
                    Ok(())
                }
                Campaign::Failed(why) => Err(SessionEnd::Lost(format!("the election failed: {why}"))),
            },
            _ = stop.asked() => Err(SessionEnd::Stopped),
            ended = driver => Err(SessionEnd::Lost(why_ended(ended))),
        }
    }
}

/// The task driving a LISTEN connection.
type Driver = JoinHandle<Result<(), tokio_postgres::Error>>;

/// A connection LISTENing: what it LISTENs, and what it owes.
struct Connected<'a> {
    session: &'a Session<'a>,
    client: Client,
    driver: Driver,
    /// The channels wanted; each change is LISTENed or UNLISTENed.
    active: watch::Receiver<ActiveChannels>,
    /// The channels this connection LISTENs.
    listened: BTreeSet<Arc<str>>,
    /// Nothing LISTENed yet: the gap owed is paid by the first sync.
    first_sync: bool,
    /// Gap events queued, held until their channels are LISTENed again.
    listening_again: Option<Release>,
    heartbeat: Option<Heartbeat>,
    /// The notification queue's fill was past the threshold at the last look.
    queue_warned: bool,
}

/// The heartbeat's ticks and its query.
struct Heartbeat {
    ticks: tokio::time::Interval,
    every: Duration,
    sql: String,
    /// The leader lock's name, in a cluster: the query checks it is held.
    lock_name: Option<String>,
}

impl Heartbeat {
    fn new(every: Duration, cluster: &ClusterStatus) -> Self {
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let lock_name = cluster.settings.as_ref().map(|s| s.lock_name());
        Self {
            ticks,
            every,
            sql: heartbeat_query(lock_name.is_some()),
            lock_name,
        }
    }

    /// The query's answer: the queue's fill, what the server LISTENs, and
    /// whether the leader lock is held (always, outside a cluster).
    async fn ask(
        &self,
        client: &Client,
    ) -> Result<(f64, Vec<String>, bool), tokio_postgres::Error> {
        let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = match &self.lock_name {
            Some(name) => vec![name],
            None => Vec::new(),
        };
        let row = client.query_one(&self.sql, &params).await?;
        Ok((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?))
    }
}

/// The next heartbeat's tick, with its period; never without one.
async fn next_beat(heartbeat: &mut Option<Heartbeat>) -> Duration {
    match heartbeat {
        Some(heartbeat) => {
            heartbeat.ticks.tick().await;
            heartbeat.every
        }
        None => std::future::pending().await,
    }
}

impl Connected<'_> {
    /// LISTEN what is wanted and keep it so, until stopped or lost.
    async fn serve(mut self, stop: &mut Stop, gap: &mut OwedGap) -> SessionEnd {
        loop {
            if let Err(end) = self.sync(gap).await {
                return end;
            }
            let end = tokio::select! {
                changed = self.active.changed() => changed.err().map(|_| SessionEnd::Stopped),
                every = next_beat(&mut self.heartbeat) => self.beat(every, gap).await,
                _ = stop.asked() => return self.stop(gap).await,
                ended = &mut self.driver => {
                    gap.channels = std::mem::take(&mut self.listened);
                    Some(SessionEnd::Lost(why_ended(ended)))
                }
            };
            if let Some(end) = end {
                return end;
            }
        }
    }

    /// LISTEN and UNLISTEN the difference from what is wanted; then pay
    /// the gap owed, and let the gap events held go.
    async fn sync(&mut self, gap: &mut OwedGap) -> Result<(), SessionEnd> {
        let wanted = self.active.borrow_and_update().clone();
        if let Err(e) = sync_listens(&self.client, &mut self.listened, &wanted).await {
            self.driver.abort();
            // On a first sync, keep the old gap too: its events may be repeated, never lost.
            gap.channels.extend(std::mem::take(&mut self.listened));
            return Err(SessionEnd::Lost(format!(
                "LISTEN failed: {}",
                with_causes(&e)
            )));
        }
        let status = self.session.status;
        status
            .listened
            .send_replace(Arc::new(self.listened.clone()));
        if std::mem::take(&mut self.first_sync) {
            gap.clear();
        }
        if let Some(release) = self.listening_again.take() {
            release.release();
        }
        Ok(())
    }

    /// A heartbeat: a dead peer that sent no FIN shows here as an error or
    /// no answer, and a lock a pooler freed as not held.
    async fn beat(&mut self, every: Duration, gap: &mut OwedGap) -> Option<SessionEnd> {
        let Some(heartbeat) = &self.heartbeat else {
            return None;
        };
        let answer = tokio::time::timeout(every, heartbeat.ask(&self.client)).await;
        let failure = match answer {
            // A pooler's reset (DISCARD ALL) or a proxy freed the
            // lock while the connection stayed: a standby may lead now.
            Ok(Ok((_, _, false))) => Some(
                "the server released this host's leader lock on its LISTEN connection (a DISCARD ALL or an unlock from a pooler or proxy?)".to_owned(),
            ),
            Ok(Ok((usage, actual, true))) => {
                self.session.note_queue_usage(usage, &mut self.queue_warned);
                self.listening_again = self.session.check_listening(actual, &mut self.listened).await;
                None
            }
            Ok(Err(e)) => Some(format!("heartbeat failed: {}", with_causes(&e))),
            Err(_) => Some(format!("no answer to the heartbeat within {every:?}")),
        };
        let reason = failure?;
        self.driver.abort();
        gap.channels = std::mem::take(&mut self.listened);
        Some(SessionEnd::Lost(reason))
    }

    /// Asked to stop: UNLISTEN, and close once the driver has routed
    /// everything already received.
    async fn stop(self, gap: &mut OwedGap) -> SessionEnd {
        // Whatever is sent from here on until the next LISTEN is missed.
        gap.channels.extend(self.listened);
        if let Err(e) = self.client.batch_execute("UNLISTEN *").await {
            tracing::warn!("UNLISTEN failed: {e}");
        }
        // Dropping the client closes the connection.
        drop(self.client);
        let _ = self.driver.await;
        SessionEnd::Stopped
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
    let channels: Vec<&str> = owed.channels.iter().map(|c| &**c).collect();
    (registry.journal()).record(HostEventKind::Gap, &channels.join(", "), &why);
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
