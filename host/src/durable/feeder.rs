//! The feeder: one task per at-least-once subscriber that reads its events
//! from the outbox and hands them to its mailbox, in order.
//!
//! - **One feeder per subscriber, across every host.** A feeder feeds only
//!   while its host dispatches (alone, or leading its cluster), and only
//!   while its connection holds the subscriber's feed lock
//!   (`pgnotifier feed ID`). A host that finds the lock taken (the same
//!   subscriber id in another group, or on a host outside the cluster)
//!   feeds nothing, says which host holds it, and tries again later. A
//!   reload changes a feeder's settings in place; it never starts a second.
//! - **The position** moves only after `on-notify` returned ok for an event
//!   (or the event was dead-lettered); it is written to PostgreSQL after
//!   [`SAVE_EVERY`] events or [`SAVE_AFTER`], whichever comes first, and
//!   whenever the feeder runs dry. A read moves it past everything it
//!   covered, so a subscriber on a quiet channel does not read the same
//!   commits again. A crash redelivers at most what was handled since the
//!   last write, and the [`WINDOW`] in flight.
//! - **Windows.** Events are queued a window at a time and their outcomes
//!   followed in order. After a failure the rest of the window is not
//!   called (its epoch is given up), so a retried event still comes before
//!   every later one.
//! - **Stopping at the next event.** Asked to stop or standing by, a feeder
//!   gives up what it queued and waits only for the call in progress. Then
//!   it records that it stopped cleanly (`positions.fed_by`) and frees the
//!   lock. Finding its connection gone or its lock freed (checked every
//!   heartbeat, whatever it is doing), it also cuts the call in progress
//!   short (see `CallCancel`), since another host may take the lock at
//!   once. A feeder that takes the lock after one that did not stop cleanly
//!   waits out that host's heartbeats and the longest call first: no event
//!   is ever in two calls at once.
//! - **Retries and dead letters.** A failed call is retried with backoff,
//!   up to `max_attempts`; then the event goes to `pgnotifier.dead_letters`,
//!   and the position past it, in one transaction. An event the mailbox did
//!   not take (a full queue, a quarantine) is offered again, without
//!   counting an attempt. While the subscriber is quarantined or muted,
//!   nothing is read: it keeps its position.
//! - **Gaps** pruning left are told before the events after them, and their
//!   rows removed only once `on-gap` returned ok; a failing `on-gap` is
//!   retried. A stop waits for an `on-gap` in progress and records it told,
//!   so it is told again only if the connection was lost meanwhile.
//! - **Connections.** The feeder LISTENs on the wake channel and also
//!   polls, so a missed wake-up only delays. A lost connection is made
//!   again, and reading resumes from the saved position. A feeder that
//!   panics is started again from there, and counted.

use super::backfill;
use super::dead_letters;
use super::pruner::{self, OutboxStats};
use super::reader::{self, Batch, Channels, Event, Position, PrunedGap};
use super::relay::{self, RelayStats, Transport};
use super::rows::TableName;
use super::schema::{self, WAKE_CHANNEL};
use crate::dispatch::{
    CallFailure, Delivery, Done, DurableEvent, DurableStats, Gap, GapCause, Mailbox, Notification,
    Outcome,
};
use crate::payload::decode;
use crate::pg::connection::{self, Backoff};
use crate::pg::{advisory, DatabaseSettings};
use crate::printable::with_causes;
use crate::registry::Registry;
use crate::sync::{bump, lock, AbortOnDrop, Stop, Task};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, watch, Notify};
use tokio_postgres::Client;

/// Events handled between two writes of the position.
pub const SAVE_EVERY: u32 = 100;
/// The longest a handled event waits for its position to be written.
pub const SAVE_AFTER: Duration = Duration::from_millis(200);
/// How often a position that only moved past events of other channels, or
/// a paused subscriber's channels, are written.
const RECORD_EVERY: Duration = Duration::from_secs(5);
/// How often the outbox is read without a wake-up.
const POLL: Duration = Duration::from_secs(1);
/// Events read at once.
const BATCH: usize = 500;
/// Events queued to the subscriber before the first outcome is awaited.
pub const WINDOW: usize = 64;
/// How often a feeder counts what it has not handled yet.
const MEASURE_LAG: Duration = Duration::from_secs(1);
/// How often a feeder refused its lock tries again.
const REFUSED_RETRY: Duration = Duration::from_secs(5);
/// What a feeder that takes over waits beyond the longest call.
const TAKEOVER_MARGIN: Duration = Duration::from_secs(1);
/// The longest takeover wait taken from the database (an hour): a value
/// written there by hand cannot stall a subscriber for longer.
const MAX_RECORDED_TAKEOVER_MS: i64 = 3_600_000;

/// How failed calls are retried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Calls of one event before it is dead-lettered (at least 1).
    pub max_attempts: u32,
    /// The wait after the first failure; it doubles up to 30 s.
    pub backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            backoff: Duration::from_millis(100),
        }
    }
}

impl RetryPolicy {
    fn wait_after(&self, attempt: u32) -> Duration {
        let factor = 1u32 << attempt.saturating_sub(1).min(16);
        (self.backoff * factor).min(Duration::from_secs(30))
    }
}

/// Whether a subscriber is fed from the outbox.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DeliveryMode {
    /// Live notifications only, as `NOTIFY` delivers them.
    #[default]
    AtMostOnce,
    /// Also every event `pgnotifier.send` records on its channels.
    AtLeastOnce(RetryPolicy),
}

/// How one subscriber is fed: what a reload may change in place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FeedSettings {
    pub(crate) retry: RetryPolicy,
    /// The longest one call can run once cut short (a plugin's deadline,
    /// or its longest capability call): with two heartbeats, how long a
    /// feeder that takes over from one that stopped uncleanly waits.
    pub(crate) longest_call: Duration,
}

/// [`DurableStats`] as the feeder keeps them.
#[derive(Debug, Default)]
struct FeedCounters {
    lag_events: AtomicU64,
    lag_ms: AtomicU64,
    retries: AtomicU64,
    dead_letters: AtomicU64,
    restarts: AtomicU64,
    fed_elsewhere: AtomicBool,
}

impl FeedCounters {
    fn read(&self) -> DurableStats {
        DurableStats {
            lag_events: self.lag_events.load(Ordering::Relaxed),
            lag_ms: self.lag_ms.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            dead_letters: self.dead_letters.load(Ordering::Relaxed),
            feeder_restarts: self.restarts.load(Ordering::Relaxed),
            fed_elsewhere: self.fed_elsewhere.load(Ordering::Relaxed),
        }
    }
}

/// The feeders of one notifier's at-least-once subscribers, by id.
pub(crate) struct Feeders {
    database: Arc<Mutex<DatabaseSettings>>,
    registry: Weak<Registry>,
    running: Mutex<std::collections::HashMap<Arc<str>, Feeder>>,
    /// How long events are kept at most; pruning starts with the first feeder.
    retention: Duration,
    pruning: Mutex<Option<Task>>,
    outbox: Arc<OutboxStats>,
    /// Whether this host may dispatch: a standby of a cluster feeds nothing.
    dispatching: watch::Receiver<bool>,
    /// How often a feeder looks whether its connection still holds its lock.
    heartbeat: Duration,
    /// This process, as a feeder records itself in `positions.fed_by`.
    me: Arc<str>,
    /// The largest payload `pgnotifier.send` accepts, written to the
    /// database as each feeder starts.
    max_payload_bytes: u32,
    /// Where `pgnotifier.send` writes.
    transport: Transport,
    /// The WAL transport's relay, while this host runs one.
    relay: Mutex<Option<Task>>,
    relay_stats: Arc<RelayStats>,
}

impl Feeders {
    pub(crate) fn new(
        database: Arc<Mutex<DatabaseSettings>>,
        registry: Weak<Registry>,
        retention: Duration,
        dispatching: watch::Receiver<bool>,
        heartbeat: Duration,
        max_payload_bytes: u32,
        transport: Transport,
    ) -> Self {
        Self {
            database,
            registry,
            running: Default::default(),
            retention,
            pruning: Default::default(),
            outbox: Arc::default(),
            dispatching,
            heartbeat,
            me: advisory::new_holder_name().into(),
            max_payload_bytes,
            transport,
            relay: Default::default(),
            relay_stats: Arc::default(),
        }
    }

    /// The WAL transport's relay's counters (zero while none runs).
    pub(crate) fn relay_stats(&self) -> &RelayStats {
        &self.relay_stats
    }

    /// Wait until the relay, if any, has stopped, having relayed what it read.
    pub(crate) async fn relay_stopped(&self) {
        let relay = lock(&self.relay).take();
        if let Some(relay) = relay {
            relay.stop().await;
        }
    }

    pub(crate) fn transport(&self) -> &Transport {
        &self.transport
    }

    /// Make `tables`' row changes durable events, for a subscriber whose
    /// sidecar names them; the channel each table's changes arrive on. The
    /// WAL transport adds them to its publication (channel `schema.table`);
    /// on the outbox transport, each table's `notify_row` trigger sends
    /// them, on its channel. A table neither can follow is refused, naming it.
    pub(crate) async fn follow_tables(
        &self,
        tables: &[TableName],
    ) -> Result<Vec<String>, super::DurableError> {
        let database = lock(&self.database).clone();
        let (client, connection) = database.connect().await?;
        let _driver = AbortOnDrop(tokio::spawn(connection));
        match &self.transport {
            Transport::Wal { slot } => {
                super::rows::publish(&client, slot, tables).await?;
                Ok(tables.iter().map(TableName::channel).collect())
            }
            Transport::Outbox => super::rows::trigger_channels(&client, tables).await,
        }
    }

    /// Relay `slot` into the outbox on `runtime` while this host
    /// dispatches, unless already; `wal` sets where senders write (the WAL,
    /// or the outbox again while what the slot holds is drained).
    pub(crate) fn ensure_relay(&self, runtime: &tokio::runtime::Handle, slot: &str, wal: bool) {
        let mut relay = lock(&self.relay);
        if relay.as_ref().is_some_and(|task| !task.is_finished()) {
            return;
        }
        *relay = Some(relay::spawn(
            runtime,
            lock(&self.database).clone(),
            relay::RelaySpec {
                slot: slot.into(),
                wal,
                max_payload_bytes: self.max_payload_bytes,
            },
            self.dispatching.clone(),
            self.relay_stats.clone(),
        ));
    }

    /// How `id` stands, if it is fed.
    pub(crate) fn stats_of(&self, id: &str) -> Option<DurableStats> {
        lock(&self.running).get(id).map(|f| f.counters.read())
    }

    /// Every fed subscriber's stats.
    pub(crate) fn stats(&self) -> Vec<(Arc<str>, DurableStats)> {
        let running = lock(&self.running);
        running
            .iter()
            .map(|(id, f)| (id.clone(), f.counters.read()))
            .collect()
    }

    /// The outbox as the pruner last saw it.
    pub(crate) fn outbox(&self) -> &OutboxStats {
        &self.outbox
    }

    /// Prune the outbox every [`pruner::PRUNE_EVERY`] on `runtime`, unless already.
    fn ensure_pruning(&self, runtime: &tokio::runtime::Handle) {
        let mut pruning = lock(&self.pruning);
        if pruning.is_some() {
            return;
        }
        let database = lock(&self.database).clone();
        *pruning = Some(pruner::spawn(
            runtime,
            database,
            self.retention,
            self.outbox.clone(),
        ));
    }

    /// Feed `id` from the outbox on `runtime` with `settings`. A feeder
    /// already running takes the new settings in place: there is never a
    /// second feeder of one subscriber.
    pub(crate) fn ensure(
        &self,
        runtime: &tokio::runtime::Handle,
        id: &Arc<str>,
        mailbox: &Arc<Mailbox>,
        settings: FeedSettings,
        backfill: backfill::Tables,
    ) {
        self.ensure_pruning(runtime);
        let mut running = lock(&self.running);
        if let Some(feeder) = running.get(id).filter(|f| !f.task.is_finished()) {
            *lock(&feeder.settings) = settings;
            *lock(&feeder.backfill) = backfill;
            return;
        }
        let spec = FeedSpec {
            database: lock(&self.database).clone(),
            id: id.clone(),
            mailbox: mailbox.clone(),
            registry: self.registry.clone(),
            settings: Arc::new(Mutex::new(settings)),
            counters: Arc::default(),
            heartbeat: self.heartbeat,
            me: self.me.clone(),
            max_payload_bytes: self.max_payload_bytes,
            backfill: Arc::new(Mutex::new(backfill)),
            publication: match &self.transport {
                Transport::Wal { slot } => Some(slot.as_str().into()),
                Transport::Outbox => None,
            },
        };
        let feeder = Feeder {
            settings: spec.settings.clone(),
            backfill: spec.backfill.clone(),
            counters: spec.counters.clone(),
            task: Task::spawn(runtime, |stop| {
                supervise(spec, stop, self.dispatching.clone())
            }),
        };
        running.insert(id.clone(), feeder);
    }

    pub(crate) fn retention(&self) -> Duration {
        self.retention
    }

    /// How `id` is fed, if it is.
    pub(crate) fn settings_of(&self, id: &str) -> Option<FeedSettings> {
        lock(&self.running).get(id).map(|f| *lock(&f.settings))
    }

    /// Stop feeding `id`: the call in progress finishes, the position is
    /// written and the feed lock freed before this returns.
    pub(crate) async fn stop(&self, id: &str) {
        let feeder = lock(&self.running).remove(id);
        if let Some(feeder) = feeder {
            feeder.task.stop().await;
        }
    }

    /// Ask every feeder (and the pruner) to stop, without waiting; each
    /// finishes the call in hand and writes its position, which
    /// [`Feeder::stop`] waits for.
    pub(crate) fn stop_all(&self) -> Vec<Feeder> {
        if let Some(pruning) = lock(&self.pruning).take() {
            pruning.ask_to_stop();
        }
        if let Some(relay) = lock(&self.relay).as_ref() {
            relay.ask_to_stop();
        }
        let feeders: Vec<Feeder> = lock(&self.running).drain().map(|(_, f)| f).collect();
        for feeder in &feeders {
            feeder.task.ask_to_stop();
        }
        feeders
    }
}

/// The runtime to feed on: the caller's.
pub(crate) fn runtime() -> Result<tokio::runtime::Handle, FeedError> {
    tokio::runtime::Handle::try_current().map_err(|_| FeedError::NoRuntime)
}

/// Why an at-least-once subscriber cannot be fed.
#[derive(Debug, thiserror::Error)]
pub enum FeedError {
    #[error("an at-least-once subscriber needs a tokio runtime to run its feeder")]
    NoRuntime,
}

/// A running feeder; dropping it asks it to stop.
pub(crate) struct Feeder {
    task: Task,
    settings: Arc<Mutex<FeedSettings>>,
    backfill: Arc<Mutex<backfill::Tables>>,
    counters: Arc<FeedCounters>,
}

impl Feeder {
    /// Wait until it has stopped, its position written.
    pub(crate) async fn stop(self) {
        self.task.stop().await;
    }
}

/// What a feeder is given, and starts again from after a panic.
#[derive(Clone)]
struct FeedSpec {
    database: DatabaseSettings,
    id: Arc<str>,
    mailbox: Arc<Mailbox>,
    registry: Weak<Registry>,
    settings: Arc<Mutex<FeedSettings>>,
    counters: Arc<FeedCounters>,
    heartbeat: Duration,
    me: Arc<str>,
    max_payload_bytes: u32,
    /// Tables whose rows a subscriber without a position starts with, and
    /// the channel of each, as its sidecar names them now.
    backfill: Arc<Mutex<backfill::Tables>>,
    /// The publication that relays their changes (the WAL transport's).
    publication: Option<Arc<str>>,
}

/// The name of `subscriber`'s feed lock: one feeder holds it at a time.
pub(crate) fn lock_name(subscriber: &str) -> String {
    format!("pgnotifier feed {subscriber}")
}

/// How long a feeder that takes over from a native subscriber's feeder
/// that stopped uncleanly waits for its last call: a closure has no deadline.
pub(crate) const NATIVE_LONGEST_CALL: Duration = Duration::from_secs(1);

impl FeedSpec {
    fn lock_name(&self) -> String {
        lock_name(&self.id)
    }

    fn settings(&self) -> FeedSettings {
        *lock(&self.settings)
    }
}

/// Run the feeder until stopped; a feeder that panics is started again
/// from the saved position, and counted.
async fn supervise(spec: FeedSpec, stop: Stop, dispatching: watch::Receiver<bool>) {
    loop {
        let feed = Feed {
            spec: spec.clone(),
            stop: stop.clone(),
            dispatching: dispatching.clone(),
            refused_by: None,
        };
        match tokio::spawn(feed.run()).await {
            Ok(()) => return,
            Err(e) if e.is_panic() => {
                bump(&spec.counters.restarts, 1);
                let panic = e.into_panic();
                let message = (panic.downcast_ref::<&str>().copied())
                    .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
                    .unwrap_or("a panic");
                tracing::error!(subscriber = %spec.id, "the feeder failed ({message}); starting it again from the saved position");
            }
            Err(_) => return,
        }
        let mut stop = stop.clone();
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.asked() => return,
        }
    }
}

/// Why a session ended.
#[derive(Debug)]
enum End {
    Stopped,
    /// This host no longer dispatches (a standby now).
    StoodDown,
    /// Another process holds the feed lock: who.
    Refused(String),
    Lost(String),
}

impl End {
    fn lost(e: &dyn std::error::Error) -> Self {
        End::Lost(with_causes(e))
    }
}

impl<E: std::error::Error + 'static> From<E> for End {
    fn from(e: E) -> Self {
        End::lost(&e)
    }
}

/// A feeder's life across connections.
struct Feed {
    spec: FeedSpec,
    stop: Stop,
    dispatching: watch::Receiver<bool>,
    /// Who held the lock at the last refusal, so it is logged once.
    refused_by: Option<String>,
}

impl Feed {
    async fn run(mut self) {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        loop {
            // A standby feeds nothing; the leader feeds from the saved position.
            tokio::select! {
                led = self.dispatching.wait_for(|on| *on) => if led.is_err() { return },
                _ = self.stop.asked() => return,
            }
            let end = self.session().await;
            let refused = matches!(end, End::Refused(_));
            self.spec
                .counters
                .fed_elsewhere
                .store(refused, Ordering::Relaxed);
            let pause = match end {
                End::Stopped => return,
                End::StoodDown => {
                    tracing::info!(subscriber = %self.spec.id, "durable delivery paused: this host stands by");
                    backoff.reset();
                    continue;
                }
                End::Refused(holder) => {
                    if self.refused_by.as_ref() != Some(&holder) {
                        tracing::error!(
                            subscriber = %self.spec.id,
                            "not fed here: {holder} already feeds this subscriber (one subscriber id belongs to one cluster group; or that host is stopping, and a call of it still runs); this host, {}, tries again every {REFUSED_RETRY:?}",
                            self.spec.me
                        );
                        self.refused_by = Some(holder);
                    }
                    REFUSED_RETRY
                }
                End::Lost(reason) => {
                    let pause = backoff.next_delay();
                    tracing::warn!(subscriber = %self.spec.id, "durable delivery: {reason}; resuming from the saved position in {pause:.1?}");
                    pause
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = self.stop.asked() => return,
            }
        }
    }

    /// One connection's life: open it, feed, and close it.
    async fn session(&mut self) -> End {
        let connecting = tokio::select! {
            connected = self.spec.database.connect() => connected,
            _ = self.stop.asked() => return End::Stopped,
        };
        let (client, connection) = match connecting {
            Ok(pair) => pair,
            Err(e) => return End::Lost(format!("cannot connect: {}", with_causes(&e))),
        };
        let wake = Arc::new(Notify::new());
        let gone = Arc::new(AtomicBool::new(false));
        let (woken, ended) = (wake.clone(), gone.clone());
        let driver = AbortOnDrop(tokio::spawn(async move {
            let wakes = |_| {
                woken.notify_one();
                true
            };
            let _ = connection::drive(connection, wakes).await;
            ended.store(true, Ordering::Relaxed);
            // Gone: wake the session, whose next query fails and says why.
            woken.notify_one();
        }));
        let mut session = Session {
            lock_name: self.spec.lock_name(),
            feed: self,
            client,
            wake,
            gone,
            _driver: driver,
            at: Position::default(),
            saved: Saved::default(),
            channels: Vec::new(),
            through: 0,
            unsaved_events: 0,
            measured: None,
            locked: false,
            lock_checked: Instant::now(),
            recorded_takeover: Duration::ZERO,
        };
        let end = match session.open().await {
            Ok(()) => session.feed().await,
            Err(end) => end,
        };
        session.close(end).await
    }
}

/// What was last written of the position.
#[derive(Default)]
struct Saved {
    at: Option<Position>,
    channels: Vec<String>,
    through: i64,
    when: Option<Instant>,
}

/// One connection's life: the state the feeding loop keeps between steps.
struct Session<'f> {
    feed: &'f mut Feed,
    client: Client,
    /// Woken by a wake-up NOTIFY, and when the connection ends.
    wake: Arc<Notify>,
    /// The connection has ended.
    gone: Arc<AtomicBool>,
    _driver: AbortOnDrop<()>,
    lock_name: String,
    /// Handled (or dead-lettered) through here, or covered by a read.
    at: Position,
    saved: Saved,
    /// The channels of the last read, known through the stamp `through`.
    channels: Vec<String>,
    through: i64,
    /// Events handled since the position was last written.
    unsaved_events: u32,
    measured: Option<Instant>,
    /// This session holds the feed lock.
    locked: bool,
    /// When the lock was last found held: it is looked at again a
    /// heartbeat later, whatever the feeder is doing then.
    lock_checked: Instant,
    /// The takeover wait recorded beside this feeder's claim.
    recorded_takeover: Duration,
}

/// How the attempts at one event ended.
enum Tried {
    Delivered,
    /// Every attempt failed: the last failure, and how many there were.
    Failed(CallFailure, u32),
    /// Stopped before an attempt succeeded; whether the one in progress
    /// then did.
    Interrupted {
        end: End,
        delivered: bool,
    },
}

/// What interrupted a wait for an outcome.
enum Interrupt {
    Stop,
    StandDown,
    Lost(String),
}

impl From<Interrupt> for End {
    fn from(interrupt: Interrupt) -> Self {
        match interrupt {
            Interrupt::Stop => End::Stopped,
            Interrupt::StandDown => End::StoodDown,
            Interrupt::Lost(why) => End::Lost(why),
        }
    }
}

impl Session<'_> {
    fn id(&self) -> &str {
        &self.feed.spec.id
    }

    /// Set the connection up, take the feed lock, find the position, and
    /// wait out a feeder before this one that did not stop cleanly.
    async fn open(&mut self) -> Result<(), End> {
        schema::install(&mut self.client).await?;
        // The feeder's queries are small and many: compiling one with JIT
        // (which a stale estimate of the outbox can trigger) costs more than
        // it ever saves. The server frees the lock of a connection that
        // stalled only after this host has given it up and let its last
        // call end; and (from PostgreSQL 14) that of a connection this host
        // dropped while a read waited, within a second, not at the end of
        // the wait.
        let takeover = self.takeover();
        let setup = format!(
            "SET jit = off; LISTEN {}; {};
             SELECT pg_catalog.set_config('client_connection_check_interval', '1000', false)
              WHERE pg_catalog.current_setting('server_version_num')::integer >= 140000",
            crate::channel::quote_ident(WAKE_CHANNEL),
            advisory::server_keepalives(takeover)
        );
        self.client.batch_execute(&setup).await?;
        // A feeder that is stopping (a leader standing down) lets go within
        // the longest call and its heartbeats: wait that long before
        // calling it another host's.
        let patience = Instant::now() + takeover;
        while !advisory::try_lock(&self.client, &self.lock_name).await? {
            if Instant::now() < patience {
                self.pause(Duration::from_millis(100)).await?;
                continue;
            }
            let holder = advisory::holder(&self.client, &self.lock_name).await?;
            let fed_by = self.fed_by().await?;
            let who = match (fed_by, holder) {
                (Some(host), Some(backend)) => format!("{host}, as {backend},"),
                (Some(host), None) => host,
                (None, Some(backend)) => backend,
                (None, None) => "another process".to_owned(),
            };
            return Err(End::Refused(who));
        }
        self.locked = true;
        self.lock_checked = Instant::now();
        self.write_max_payload_bytes().await;
        self.feed
            .spec
            .counters
            .fed_elsewhere
            .store(false, Ordering::Relaxed);
        self.at = match reader::position(&self.client, self.id()).await? {
            Some(at) => at,
            None => {
                // Written at once, so pruning keeps what this subscriber reads next.
                let registry = self.feed.spec.registry.upgrade();
                let channels = registry.and_then(|r| r.durable_channels(self.id()));
                let channels = channels.map(|c| c.names).unwrap_or_default();
                let id = self.feed.spec.id.clone();
                let tables = lock(&self.feed.spec.backfill).clone();
                if tables.is_empty() {
                    // A backfill an earlier start left pending is not this start's.
                    backfill::forget(&self.client, &id).await?;
                    reader::start_at_end(&mut self.client, &id, &channels).await?
                } else {
                    backfill::start(&mut self.client, &id, &channels, &tables).await?
                }
            }
        };
        self.saved.at = Some(self.at);
        // Recorded at the start, or by a feeder that stopped before taking it.
        let (id, max_bytes) = (self.feed.spec.id.clone(), self.feed.spec.max_payload_bytes);
        let tables = lock(&self.feed.spec.backfill).clone();
        let publication = self.feed.spec.publication.as_deref();
        let taking = Instant::now();
        // It may wait long for writers of its tables: a stop or a stand-down
        // does not wait for them (the backfill stays pending).
        let taken = tokio::select! {
            taken = backfill::take_pending(&mut self.client, &id, &tables, publication, max_bytes) => taken?,
            _ = self.feed.stop.asked() => return Err(End::Stopped),
            _ = self.feed.dispatching.wait_for(|on| !*on) => return Err(End::StoodDown),
        };
        if let Some(rows) = taken {
            let took = taking.elapsed();
            tracing::info!(subscriber = %id, rows, ?took, "backfill taken: the tables' rows come first, then every change after them");
        }
        let (before, wait) = self.claim(takeover).await?;
        self.recorded_takeover = takeover;
        if !wait.is_zero() {
            // A feeder that did not stop cleanly finds its lock gone within
            // two heartbeats and cuts its call short; the call then ends
            // within its longest call, by that host's settings. Whoever
            // claimed since (this host before a reconnect, or one that
            // stopped while it waited) waits for the same end.
            let before = before.unwrap_or_else(|| "a feeder that stopped while it waited".into());
            tracing::info!(subscriber = %self.id(), "a call of an earlier feeder of this subscriber ({before}) may still run: waiting {wait:.1?}");
            self.pause(wait).await?;
        }
        Ok(())
    }

    /// Let `pgnotifier.send` take payloads up to this host's setting. A role
    /// that may not write it feeds all the same, under the cap the
    /// database has.
    async fn write_max_payload_bytes(&self) {
        let bytes = self.feed.spec.max_payload_bytes;
        match schema::set_max_payload_bytes(&self.client, bytes).await {
            Ok(Some(before)) if before != bytes => tracing::info!(
                subscriber = %self.id(),
                "max_payload_bytes in the database was {before}, now {bytes}: give every host of a database the same"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(
                subscriber = %self.id(),
                "cannot write max_payload_bytes ({bytes}) to pgnotifier.limits, which keeps its own: {e}"
            ),
        }
    }

    /// The host recorded as feeding the subscriber, if any.
    async fn fed_by(&self) -> Result<Option<String>, End> {
        let row = self
            .client
            .query_opt(
                "SELECT fed_by FROM pgnotifier.positions WHERE subscriber = $1",
                &[&self.id()],
            )
            .await?;
        Ok(match row {
            Some(row) => reader::column(&row, "fed_by")?,
            None => None,
        })
    }

    /// Record this host as feeding the subscriber, and how long one that
    /// takes over from it must wait. When the feeder recorded before did
    /// not stop cleanly, a call of it may run for its own takeover wait
    /// (or this host's, if longer): the end of that is recorded too, and
    /// kept until it passes, whoever claims meanwhile. Who was recorded
    /// before, and how long from now until that end.
    async fn claim(&self, takeover: Duration) -> Result<(Option<String>, Duration), End> {
        let takeover_ms = i64::try_from(takeover.as_millis()).unwrap_or(i64::MAX);
        let row = self
            .client
            .query_opt(
                "UPDATE pgnotifier.positions p
                    SET fed_by = $2, takeover_ms = $3,
                        calls_end_by = CASE
                            WHEN before.fed_by IS NULL OR before.fed_by = $2 THEN before.calls_end_by
                            ELSE greatest(before.calls_end_by, pg_catalog.now()
                                 + pg_catalog.make_interval(secs => greatest($3,
                                       least(coalesce(before.takeover_ms, 0), $4)) / 1000.0))
                        END
                   FROM (SELECT fed_by, takeover_ms, calls_end_by FROM pgnotifier.positions
                          WHERE subscriber = $1 FOR UPDATE) before
                  WHERE p.subscriber = $1
              RETURNING before.fed_by,
                        (pg_catalog.date_part('epoch', greatest(p.calls_end_by - pg_catalog.now(),
                                                                interval '0')) * 1000)::bigint
                            AS wait_ms",
                &[&self.id(), &&*self.feed.spec.me, &takeover_ms, &MAX_RECORDED_TAKEOVER_MS],
            )
            .await?;
        let Some(row) = row else {
            return Ok((None, Duration::ZERO));
        };
        let wait_ms: Option<i64> = reader::column(&row, "wait_ms")?;
        let wait =
            Duration::from_millis(wait_ms.and_then(|ms| u64::try_from(ms).ok()).unwrap_or(0));
        Ok((reader::column(&row, "fed_by")?, wait))
    }

    /// Keep the recorded takeover wait true when a reload changed the
    /// longest call.
    async fn record_takeover_if_changed(&mut self) -> Result<(), End> {
        let takeover = self.takeover();
        if takeover == self.recorded_takeover {
            return Ok(());
        }
        let takeover_ms = i64::try_from(takeover.as_millis()).unwrap_or(i64::MAX);
        self.client
            .execute(
                "UPDATE pgnotifier.positions SET takeover_ms = $3 WHERE subscriber = $1 AND fed_by = $2",
                &[&self.id(), &&*self.feed.spec.me, &takeover_ms],
            )
            .await?;
        self.recorded_takeover = takeover;
        Ok(())
    }

    /// How long a host that takes over from this feeder, were it to stop
    /// uncleanly now, waits for a call of it that may still run.
    fn takeover(&self) -> Duration {
        let FeedSettings { longest_call, .. } = self.feed.spec.settings();
        2 * self.feed.spec.heartbeat + longest_call + TAKEOVER_MARGIN
    }

    /// Write the position, record a clean stop and free the lock, when the
    /// connection still answers; the session's end either way.
    async fn close(mut self, end: End) -> End {
        if !self.locked || self.gone.load(Ordering::Relaxed) {
            return end;
        }
        let clean = matches!(end, End::Stopped | End::StoodDown);
        let release = async {
            self.save().await?;
            if clean {
                self.client
                    .execute(
                        "UPDATE pgnotifier.positions SET fed_by = NULL WHERE subscriber = $1 AND fed_by = $2",
                        &[&self.id(), &&*self.feed.spec.me],
                    )
                    .await?;
            }
            advisory::unlock(&self.client, &self.lock_name).await?;
            Ok::<_, End>(())
        };
        // A connection still busy with a read cannot answer soon: dropping
        // it frees the lock all the same.
        match tokio::time::timeout(Duration::from_secs(5), release).await {
            Ok(Ok(())) => {}
            Ok(Err(End::Lost(why))) => {
                tracing::warn!(subscriber = %self.id(), "writing the position as the feeder stops: {why}")
            }
            Ok(Err(_)) | Err(_) => {}
        }
        end
    }

    /// Feed until something ends the session.
    async fn feed(&mut self) -> End {
        loop {
            if let Err(end) = self.step().await {
                return end;
            }
        }
    }

    /// One read and what it brought.
    async fn step(&mut self) -> Result<(), End> {
        self.check_running()?;
        self.check_lock_if_due().await?;
        self.record_takeover_if_changed().await?;
        let Some(channels) = self.durable_channels() else {
            // Removed: the position stays for a subscriber of this id later.
            return Err(End::Stopped);
        };
        if channels.paused {
            if self.lag_due() {
                self.measure_lag(&channels.names).await?;
            }
            self.record_paused(channels.names).await?;
            return self.idle().await;
        }
        self.redeliver().await?;
        let Some(batch) = self.read(channels.names).await? else {
            return Ok(());
        };
        self.tell_gaps(&batch.gaps).await?;
        let mut next = 0;
        while next < batch.events.len() {
            let window = &batch.events[next..batch.events.len().min(next + WINDOW)];
            next += self.deliver_window(window).await?;
            self.save_if_due(false).await?;
        }
        self.at = self.at.max(batch.covered);
        if self.lag_due() {
            let channels = self.channels.clone();
            self.measure_lag(&channels).await?;
        }
        if batch.events.is_empty() {
            self.save_if_due(true).await?;
            return self.idle().await;
        }
        Ok(())
    }

    /// Stopped, standing by, or the connection gone: the session ends.
    fn check_running(&self) -> Result<(), End> {
        if self.feed.stop.is_asked() {
            return Err(End::Stopped);
        }
        if !*self.feed.dispatching.borrow() {
            return Err(End::StoodDown);
        }
        if self.gone.load(Ordering::Relaxed) {
            return Err(End::Lost("the connection was lost".to_owned()));
        }
        Ok(())
    }

    fn durable_channels(&self) -> Option<crate::registry::DurableChannels> {
        let registry = self.feed.spec.registry.upgrade()?;
        registry.durable_channels(self.id())
    }

    /// The next batch on `channels`, or `None` when the subscriber's
    /// channels changed while it was read (read again): a channel added
    /// then must not be passed over. Events whose commit is not durable yet
    /// are flushed first.
    async fn read(&mut self, channels: Vec<String>) -> Result<Option<Batch>, End> {
        let read = reader::read(&self.client, &self.feed.spec.id, self.at, &channels, BATCH);
        let batch = tokio::select! {
            batch = read => batch?,
            _ = self.feed.stop.asked() => return Err(End::Stopped),
            _ = self.feed.dispatching.wait_for(|on| !*on) => return Err(End::StoodDown),
        };
        if self.durable_channels().map(|c| c.names).as_ref() != Some(&channels) {
            return Ok(None);
        }
        if let Some(lsn) = batch.needs_flush() {
            reader::flush(&mut self.client, lsn).await?;
        }
        self.channels = channels;
        self.through = batch.horizon;
        Ok(Some(batch))
    }

    /// A paused subscriber reads nothing, but its channels are recorded now
    /// and then, so pruning may remove what none of them needs.
    async fn record_paused(&mut self, channels: Vec<String>) -> Result<(), End> {
        if self.saved.when.is_some_and(|t| t.elapsed() < RECORD_EVERY) {
            return Ok(());
        }
        let horizon = reader::end_of_outbox(&self.client).await?.stamp;
        if self.durable_channels().map(|c| c.names).as_ref() == Some(&channels) {
            self.channels = channels;
            self.through = horizon;
            self.save().await?;
        }
        Ok(())
    }

    /// Wait for a wake-up, the next poll, or a reason to stop.
    async fn idle(&mut self) -> Result<(), End> {
        tokio::select! {
            _ = self.wake.notified() => Ok(()),
            _ = tokio::time::sleep(POLL) => Ok(()),
            _ = self.feed.stop.asked() => Err(End::Stopped),
            // Its sender gone, the notifier is: stop, not spin.
            changed = self.feed.dispatching.changed() => match changed {
                Ok(()) => Ok(()),
                Err(_) => Err(End::Stopped),
            },
        }
    }

    /// Sleep for `wait`, unless the session must end first. Holding the
    /// feed lock, look at it every heartbeat meanwhile: a call that follows
    /// a pause (a retry's backoff) never starts more than a heartbeat after
    /// the lock was last found held.
    async fn pause(&mut self, wait: Duration) -> Result<(), End> {
        let until = Instant::now() + wait;
        loop {
            let beat = self.lock_checked + self.feed.spec.heartbeat;
            let wake_at = if self.locked { beat.min(until) } else { until };
            tokio::select! {
                _ = tokio::time::sleep_until(wake_at.into()) => {}
                _ = self.feed.stop.asked() => return Err(End::Stopped),
                _ = self.feed.dispatching.wait_for(|on| !*on) => return Err(End::StoodDown),
            }
            self.check_lock_if_due().await?;
            if Instant::now() >= until {
                return Ok(());
            }
        }
    }

    /// Look at the feed lock if a heartbeat passed since it was last found
    /// held. Every call is queued after this, so none starts once the lock
    /// is known lost, and none more than a heartbeat after it was last seen.
    async fn check_lock_if_due(&mut self) -> Result<(), End> {
        if self.locked && self.lock_checked.elapsed() >= self.feed.spec.heartbeat {
            self.check_lock().await.map_err(End::Lost)?;
        }
        Ok(())
    }

    /// Whether the lag was last counted a while ago.
    fn lag_due(&self) -> bool {
        self.measured.is_none_or(|at| at.elapsed() >= MEASURE_LAG)
    }

    /// Count what is not handled yet on `channels`.
    async fn measure_lag(&mut self, channels: &[String]) -> Result<(), End> {
        let (events, age) = reader::lag(&self.client, self.id(), self.at, channels).await?;
        let counters = &self.feed.spec.counters;
        counters.lag_events.store(events, Ordering::Relaxed);
        let age = u64::try_from(age.as_millis()).unwrap_or(u64::MAX);
        counters.lag_ms.store(age, Ordering::Relaxed);
        self.measured = Some(Instant::now());
        Ok(())
    }

    /// Write the position now if it changed.
    async fn save(&mut self) -> Result<(), End> {
        let saved = &self.saved;
        if saved.at == Some(self.at)
            && saved.channels == self.channels
            && saved.through == self.through
        {
            return Ok(());
        }
        let channels = Channels {
            names: &self.channels,
            through: self.through,
        };
        reader::save_position(&self.client, self.id(), self.at, Some(channels)).await?;
        self.saved = Saved {
            at: Some(self.at),
            channels: self.channels.clone(),
            through: self.through,
            when: Some(Instant::now()),
        };
        self.unsaved_events = 0;
        Ok(())
    }

    /// Write the position when events handled wait long enough (or the
    /// feeder runs `dry`), or when it only moved past other channels' events
    /// for a while.
    async fn save_if_due(&mut self, dry: bool) -> Result<(), End> {
        let since = self.saved.when.map_or(Duration::MAX, |t| t.elapsed());
        let due = self.unsaved_events >= SAVE_EVERY
            || (self.unsaved_events > 0 && (dry || since >= SAVE_AFTER))
            || since >= RECORD_EVERY;
        if due {
            self.save().await?;
        }
        Ok(())
    }

    /// An event is handled (delivered, or dead-lettered).
    fn handled(&mut self, event: &Event) {
        self.at = event.position();
        self.unsaved_events += 1;
    }

    /// Tell the subscriber of the gaps pruning left it, before the events
    /// after them; a gap's row goes once `on-gap` returned ok, also when the
    /// session ends as it returns.
    async fn tell_gaps(&mut self, gaps: &[PrunedGap]) -> Result<(), End> {
        for pruned in gaps {
            let cause = match &pruned.cause {
                Some(cause) => {
                    tracing::warn!(subscriber = %self.id(), channels = ?pruned.channels, "durable events lost before delivery: {cause}");
                    Some(GapCause::ConnectionLost(cause.clone()))
                }
                None if pruned.events > 0 => {
                    tracing::warn!(subscriber = %self.id(), events = pruned.events, channels = ?pruned.channels, "events pruned by outbox_retention before delivery");
                    Some(GapCause::Pruned(pruned.events))
                }
                None => None,
            };
            if let Some(cause) = cause {
                let gap = Arc::new(Gap {
                    channels: pruned.channels.clone().into(),
                    lost_at: Some(pruned.first_sent_at),
                    resumed_at: std::time::SystemTime::now(),
                    cause,
                });
                if let Err((end, told)) = self.tell_gap(gap).await {
                    if told {
                        // Recorded if the connection still answers.
                        let told = pruner::gap_told(&self.client, pruned.id);
                        let _ = tokio::time::timeout(Duration::from_secs(5), told).await;
                    }
                    return Err(end);
                }
            }
            pruner::gap_told(&self.client, pruned.id).await?;
        }
        Ok(())
    }

    /// Call `on-gap` until it returns ok, or the session ends: how it
    /// ended, and whether an `on-gap` in progress then returned ok.
    async fn tell_gap(&mut self, gap: Arc<Gap>) -> Result<(), (End, bool)> {
        let mailbox = self.feed.spec.mailbox.clone();
        let mut failures = 0;
        loop {
            let (outcome, mut told) = oneshot::channel();
            let epoch = mailbox.next_epoch();
            let delivery = Delivery::Gap {
                gap: gap.clone(),
                resumed: None,
                done: Some(Done { outcome, epoch }),
            };
            self.check_lock_if_due().await.map_err(|end| (end, false))?;
            mailbox.push(delivery).await;
            let wait = match self.outcome(&mut told).await {
                Ok(Ok(Outcome::Delivered)) => return Ok(()),
                Ok(Ok(Outcome::Failed(failure))) => {
                    failures += 1;
                    bump(&self.feed.spec.counters.retries, 1);
                    tracing::warn!(subscriber = %self.id(), "on-gap failed ({failure}); telling it again");
                    self.feed.spec.settings().retry.wait_after(failures)
                }
                Ok(Err(_)) if mailbox.is_closed() => return Err((End::Stopped, false)),
                // Not taken (a full queue, a quarantine): offered again.
                Ok(Err(_)) => Duration::from_millis(100),
                Err(interrupt) => {
                    self.give_up(epoch, &interrupt);
                    let delivered = matches!(told.await, Ok(Outcome::Delivered));
                    return Err((interrupt.into(), delivered));
                }
            };
            self.pause(wait).await.map_err(|end| (end, false))?;
        }
    }

    /// Queue a window of events (after the position, in order), then follow
    /// their outcomes in order: how many from the start are done
    /// (delivered, or dead-lettered after their retries), at least one. After
    /// a failure the rest of the window is not called (its epoch is given
    /// up), so the failed event is retried before any event after it.
    async fn deliver_window(&mut self, window: &[Event]) -> Result<usize, End> {
        let mailbox = self.feed.spec.mailbox.clone();
        self.check_lock_if_due().await?;
        let epoch = mailbox.next_epoch();
        let mut pending = VecDeque::with_capacity(window.len());
        for event in window {
            let (done, outcome) = oneshot::channel();
            let tracked =
                Delivery::tracked(self.notification(event), durable(event, 1), done, epoch);
            mailbox.push(tracked).await;
            pending.push_back(outcome);
        }
        for (done, event) in window.iter().enumerate() {
            let Some(mut outcome) = pending.pop_front() else {
                break;
            };
            let tried = match self.outcome(&mut outcome).await {
                Ok(Ok(Outcome::Delivered)) => {
                    self.handled(event);
                    continue;
                }
                Ok(Ok(Outcome::Failed(failure))) => self.attempt(event, 0, 1, Some(failure)).await,
                // Not taken: offered again from here.
                Ok(Err(_)) if done > 0 => return Ok(done),
                Ok(Err(_)) => self.attempt(event, 0, 0, None).await,
                Err(interrupt) => {
                    self.give_up(epoch, &interrupt);
                    pending.push_front(outcome);
                    self.settle(&window[done..], pending).await;
                    return Err(interrupt.into());
                }
            };
            return match tried {
                Tried::Delivered => {
                    self.handled(event);
                    Ok(done + 1)
                }
                Tried::Failed(failure, attempts) => {
                    self.dead_letter(event, &failure, attempts).await?;
                    Ok(done + 1)
                }
                Tried::Interrupted { end, delivered } => {
                    if delivered {
                        self.handled(event);
                    }
                    Err(end)
                }
            };
        }
        Ok(window.len())
    }

    /// After giving up an epoch: wait until none of its calls is in
    /// progress. The worker calls a delivery of it only if it took it off
    /// the queue before the epoch was given up; once it drops one, it drops
    /// the rest. So the outcomes, in order, until the first not taken.
    async fn settle(&mut self, events: &[Event], pending: VecDeque<oneshot::Receiver<Outcome>>) {
        for (event, outcome) in events.iter().zip(pending) {
            match outcome.await {
                Ok(Outcome::Delivered) => self.handled(event),
                Ok(Outcome::Failed(_)) => {}
                Err(_) => return,
            }
        }
    }

    /// Wait for `outcome`, unless the session must end first: asked to
    /// stop, standing by, or the connection gone or its lock freed (looked
    /// at a heartbeat after it was last found held).
    async fn outcome(
        &mut self,
        outcome: &mut oneshot::Receiver<Outcome>,
    ) -> Result<Result<Outcome, oneshot::error::RecvError>, Interrupt> {
        loop {
            enum Woke {
                Outcome(Result<Outcome, oneshot::error::RecvError>),
                Stop,
                StandDown,
                Woken,
                Beat,
            }
            let beat = tokio::time::Instant::from_std(self.lock_checked + self.feed.spec.heartbeat);
            let woke = tokio::select! {
                biased;
                got = &mut *outcome => Woke::Outcome(got),
                _ = self.feed.stop.asked() => Woke::Stop,
                _ = self.feed.dispatching.wait_for(|on| !*on) => Woke::StandDown,
                // A wake-up, or the connection ending.
                _ = self.wake.notified() => Woke::Woken,
                _ = tokio::time::sleep_until(beat) => Woke::Beat,
            };
            match woke {
                Woke::Outcome(got) => return Ok(got),
                Woke::Stop => return Err(Interrupt::Stop),
                Woke::StandDown => return Err(Interrupt::StandDown),
                Woke::Woken if self.gone.load(Ordering::Relaxed) => {
                    return Err(Interrupt::Lost("the connection was lost".to_owned()))
                }
                Woke::Woken => {}
                Woke::Beat => self.check_lock().await.map_err(Interrupt::Lost)?,
            }
        }
    }

    /// Find the lock still held by this session's connection, or say why
    /// it cannot be trusted to be: gone, no answer within a heartbeat, or
    /// the lock freed.
    async fn check_lock(&mut self) -> Result<(), String> {
        if self.gone.load(Ordering::Relaxed) {
            return Err("the connection was lost".to_owned());
        }
        let within = self.feed.spec.heartbeat;
        let sql = format!("SELECT {} AS held", advisory::held(1));
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&self.lock_name];
        let check = self.client.query_one(&sql, &params);
        match tokio::time::timeout(within, check).await {
            Ok(Ok(row)) => match row.try_get::<_, bool>("held") {
                Ok(true) => {
                    self.lock_checked = Instant::now();
                    Ok(())
                }
                Ok(false) => Err(
                    "the server freed this feeder's lock (a DISCARD ALL or an unlock from a pooler or proxy?)".to_owned(),
                ),
                Err(e) => Err(with_causes(&e)),
            },
            Ok(Err(e)) => Err(format!("the connection failed: {}", with_causes(&e))),
            Err(_) => Err(format!("no answer from the connection within {within:?}")),
        }
    }

    /// Give up what was queued of `epoch`. When the lock may be another
    /// host's already, also cut a call of it in progress short.
    fn give_up(&self, epoch: u64, interrupt: &Interrupt) {
        match interrupt {
            Interrupt::Lost(_) => self.feed.spec.mailbox.cancel_epoch(epoch),
            Interrupt::Stop | Interrupt::StandDown => self.feed.spec.mailbox.give_up_epoch(epoch),
        }
    }

    fn notification(&self, event: &Event) -> Arc<Notification> {
        Arc::new(Notification {
            channel: event.channel.as_str().into(),
            payload: decode(&event.payload, self.feed.spec.mailbox.mode()),
            pid: event.pid,
        })
    }

    /// Deliver the dead letters an operator asked to deliver again: a
    /// success removes one, a failure keeps it with the new error.
    async fn redeliver(&mut self) -> Result<(), End> {
        for letter in dead_letters::waiting(&self.client, self.id()).await? {
            match self.attempt(&letter.event, letter.attempts, 0, None).await {
                Tried::Delivered => dead_letters::delivered(&self.client, letter.id).await?,
                Tried::Interrupted { end, delivered } => {
                    if delivered {
                        dead_letters::delivered(&self.client, letter.id).await?;
                    }
                    return Err(end);
                }
                Tried::Failed(failure, attempts) => {
                    let attempts = i32::try_from(attempts).unwrap_or(i32::MAX);
                    let error = failure.to_string();
                    dead_letters::failed_again(&self.client, letter.id, &error, attempts).await?;
                }
            }
        }
        Ok(())
    }

    /// Call the subscriber with `event`, alone, until it succeeds or runs
    /// out of attempts; `attempt` calls have failed already, `last` last.
    /// The subscriber sees the attempt counted after `earlier` ones (those
    /// of a dead letter sent again).
    async fn attempt(
        &mut self,
        event: &Event,
        earlier: u32,
        mut attempt: u32,
        last: Option<CallFailure>,
    ) -> Tried {
        let mailbox = self.feed.spec.mailbox.clone();
        if let Some(failure) = last {
            let retry = self.feed.spec.settings().retry;
            if attempt >= retry.max_attempts.max(1) {
                return Tried::Failed(failure, attempt);
            }
            bump(&self.feed.spec.counters.retries, 1);
            if let Err(end) = self.pause(retry.wait_after(attempt)).await {
                return Tried::Interrupted {
                    end,
                    delivered: false,
                };
            }
        }
        loop {
            let epoch = mailbox.next_epoch();
            let (done, mut outcome) = oneshot::channel();
            let seen = durable(event, earlier.saturating_add(attempt).saturating_add(1));
            let tracked = Delivery::tracked(self.notification(event), seen, done, epoch);
            if let Err(end) = self.check_lock_if_due().await {
                return Tried::Interrupted {
                    end,
                    delivered: false,
                };
            }
            mailbox.push(tracked).await;
            let failure = match self.outcome(&mut outcome).await {
                Ok(Ok(Outcome::Delivered)) => return Tried::Delivered,
                Ok(Ok(Outcome::Failed(failure))) => failure,
                Ok(Err(_)) => {
                    // Not taken (a full queue, a quarantine): offer it again
                    // later, as the same attempt.
                    if mailbox.is_closed() {
                        return Tried::Interrupted {
                            end: End::Stopped,
                            delivered: false,
                        };
                    }
                    if let Err(end) = self.pause(Duration::from_millis(100)).await {
                        return Tried::Interrupted {
                            end,
                            delivered: false,
                        };
                    }
                    continue;
                }
                Err(interrupt) => {
                    self.give_up(epoch, &interrupt);
                    let delivered = matches!(outcome.await, Ok(Outcome::Delivered));
                    return Tried::Interrupted {
                        end: interrupt.into(),
                        delivered,
                    };
                }
            };
            attempt += 1;
            let retry = self.feed.spec.settings().retry;
            if attempt >= retry.max_attempts.max(1) {
                return Tried::Failed(failure, attempt);
            }
            bump(&self.feed.spec.counters.retries, 1);
            if let Err(end) = self.pause(retry.wait_after(attempt)).await {
                return Tried::Interrupted {
                    end,
                    delivered: false,
                };
            }
        }
    }

    /// Dead-letter `event`, and move the position past it, in one transaction.
    async fn dead_letter(
        &mut self,
        event: &Event,
        failure: &CallFailure,
        attempts: u32,
    ) -> Result<(), End> {
        let error = failure.to_string();
        let attempts = i32::try_from(attempts).unwrap_or(i32::MAX);
        let id = self.feed.spec.id.clone();
        dead_letters::insert(&mut self.client, &id, event, &error, attempts).await?;
        self.handled(event);
        // Written with the letter; the channels are written with the next save.
        self.saved.at = Some(self.at);
        self.unsaved_events = 0;
        bump(&self.feed.spec.counters.dead_letters, 1);
        tracing::error!(subscriber = %self.id(), event = event.id, attempts, "dead-lettered: {error}");
        Ok(())
    }
}

/// What the subscriber is told of `event` on call number `attempt`.
fn durable(event: &Event, attempt: u32) -> DurableEvent {
    DurableEvent {
        id: event.id,
        key: event.key,
        attempt,
        sent_at: event.sent_at,
    }
}
