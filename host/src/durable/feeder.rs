//! The feeder: one task per at-least-once subscriber that reads its events
//! from the outbox and hands them to its mailbox, one at a time.
//!
//! - The position moves only after `on-notify` returned ok for an event (or
//!   the event was dead-lettered); it is written to PostgreSQL after
//!   [`SAVE_EVERY`] events or [`SAVE_AFTER`], whichever comes first, and
//!   whenever the feeder runs dry. A crash redelivers at most what was
//!   handled since the last write, and the [`WINDOW`] in flight: fewer than
//!   `SAVE_EVERY + WINDOW` events.
//! - Events are queued a window at a time, and their outcomes followed in
//!   order. After a failure the rest of the window is not called (its epoch
//!   is given up), so a retried event still comes before every later one.
//! - A failed call is retried with backoff, up to `max_attempts`; then the
//!   event goes to `pgnotifier.dead_letters` and delivery moves on.
//! - An event the mailbox did not take (a full queue, a quarantine) is
//!   offered again, without counting an attempt. While the subscriber is
//!   quarantined or muted, nothing is read: it keeps its position.
//! - The feeder has its own connection, which LISTENs on the wake channel;
//!   it also polls, so a missed wake-up only delays. A lost connection is
//!   made again, and reading resumes from the saved position.

use super::reader::{lag, next_events, position, save_position, start_at_end, Event, Position};
use super::schema::{self, WAKE_CHANNEL};
use super::{dead_letters, pruner, DurableError};
use crate::dispatch::{
    CallFailure, Delivery, DurableEvent, DurableStats, Gap, GapCause, Mailbox, Notification,
    Outcome,
};
use crate::payload::decode;
use crate::pg::DatabaseConfig;
use crate::printable::with_causes;
use crate::registry::Registry;
use crate::sync::{bump, lock};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

/// Events handled between two writes of the position.
pub const SAVE_EVERY: u32 = 100;
/// The longest a handled event waits for its position to be written.
pub const SAVE_AFTER: Duration = Duration::from_millis(200);
/// `outbox_events` before the first prune.
const OUTBOX_UNKNOWN: u64 = u64::MAX;
/// How often the outbox is read without a wake-up.
const POLL: Duration = Duration::from_secs(1);
/// Events read at once.
const BATCH: i64 = 500;
/// Events queued to the subscriber before the first outcome is awaited.
pub const WINDOW: usize = 64;

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

/// [`DurableStats`] as the feeder keeps them.
#[derive(Debug, Default)]
struct FeedCounters {
    lag_events: AtomicU64,
    lag_ms: AtomicU64,
    retries: AtomicU64,
    dead_letters: AtomicU64,
}

impl FeedCounters {
    fn read(&self) -> DurableStats {
        DurableStats {
            lag_events: self.lag_events.load(Ordering::Relaxed),
            lag_ms: self.lag_ms.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            dead_letters: self.dead_letters.load(Ordering::Relaxed),
        }
    }
}

/// How often a feeder counts what it has not handled yet.
const MEASURE_LAG: Duration = Duration::from_secs(1);

/// The feeders of one notifier's at-least-once subscribers, by id.
pub(crate) struct Feeders {
    database: Arc<std::sync::Mutex<DatabaseConfig>>,
    registry: Weak<Registry>,
    running: std::sync::Mutex<std::collections::HashMap<Arc<str>, Feeder>>,
    /// How long events are kept at most; pruning starts with the first feeder.
    retention: Duration,
    pruning: std::sync::Mutex<Option<(watch::Sender<bool>, JoinHandle<()>)>>,
    /// Events in the outbox at the last prune.
    outbox_events: Arc<AtomicU64>,
    /// Whether this host may dispatch: a standby of a cluster feeds nothing.
    dispatching: watch::Receiver<bool>,
}

impl Feeders {
    pub(crate) fn new(
        database: Arc<std::sync::Mutex<DatabaseConfig>>,
        registry: Weak<Registry>,
        retention: Duration,
        dispatching: watch::Receiver<bool>,
    ) -> Self {
        Self {
            database,
            registry,
            running: Default::default(),
            retention,
            pruning: Default::default(),
            outbox_events: Arc::new(AtomicU64::new(OUTBOX_UNKNOWN)),
            dispatching,
        }
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

    /// Events in the outbox at the last prune, once one has run.
    pub(crate) fn outbox_events(&self) -> Option<u64> {
        let events = self.outbox_events.load(Ordering::Relaxed);
        (events != OUTBOX_UNKNOWN).then_some(events)
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
            self.outbox_events.clone(),
        ));
    }

    /// Feed `id` from the outbox on `runtime`, unless it is fed already
    /// with `retry`.
    pub(crate) fn ensure(
        &self,
        runtime: &tokio::runtime::Handle,
        id: &Arc<str>,
        mailbox: &Arc<Mailbox>,
        retry: RetryPolicy,
    ) {
        self.ensure_pruning(runtime);
        let mut running = lock(&self.running);
        if running.get(id).is_some_and(|f| f.retry == retry) {
            return;
        }
        let database = lock(&self.database).clone();
        let feeder = Feeder::spawn(
            runtime,
            database,
            id.clone(),
            mailbox.clone(),
            self.registry.clone(),
            retry,
            self.dispatching.clone(),
        );
        // A feeder replaced stops after the event in hand.
        running.insert(id.clone(), feeder);
    }

    pub(crate) fn retention(&self) -> Duration {
        self.retention
    }

    /// How `id` is retried, if it is fed.
    pub(crate) fn retry_of(&self, id: &str) -> Option<RetryPolicy> {
        lock(&self.running).get(id).map(|f| f.retry)
    }

    /// Stop feeding `id`, its position written.
    pub(crate) async fn stop(&self, id: &str) {
        let feeder = lock(&self.running).remove(id);
        if let Some(feeder) = feeder {
            feeder.stop().await;
        }
    }

    /// Ask every feeder to stop, without waiting; each finishes the event
    /// in hand and writes its position, which [`Feeder::stop`] waits for.
    pub(crate) fn stop_all(&self) -> Vec<Feeder> {
        if let Some((stop, _)) = lock(&self.pruning).take() {
            let _ = stop.send(true);
        }
        let feeders: Vec<Feeder> = lock(&self.running).drain().map(|(_, f)| f).collect();
        for feeder in &feeders {
            let _ = feeder.stop.send(true);
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

/// A running feeder; dropping it stops it.
pub(crate) struct Feeder {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    retry: RetryPolicy,
    counters: Arc<FeedCounters>,
}

impl Feeder {
    fn spawn(
        runtime: &tokio::runtime::Handle,
        database: DatabaseConfig,
        id: Arc<str>,
        mailbox: Arc<Mailbox>,
        registry: Weak<Registry>,
        retry: RetryPolicy,
        dispatching: watch::Receiver<bool>,
    ) -> Self {
        let (stop, stopped) = watch::channel(false);
        let counters = Arc::new(FeedCounters::default());
        let feed = Feed {
            counters: counters.clone(),
            database,
            id,
            mailbox,
            registry,
            retry,
            stopped,
            dispatching,
            channels: Vec::new(),
            channels_saved: true,
        };
        Self {
            stop,
            task: runtime.spawn(feed.run()),
            retry,
            counters,
        }
    }

    /// Stop after the event in hand, writing the position first.
    pub(crate) async fn stop(mut self) {
        let _ = self.stop.send(true);
        let _ = (&mut self.task).await;
    }
}

impl Drop for Feeder {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

struct Feed {
    database: DatabaseConfig,
    id: Arc<str>,
    mailbox: Arc<Mailbox>,
    registry: Weak<Registry>,
    retry: RetryPolicy,
    stopped: watch::Receiver<bool>,
    dispatching: watch::Receiver<bool>,
    /// The subscriber's channels when last seen unpaused, written with the
    /// position for pruning; `channels_saved` is false until written.
    channels: Vec<String>,
    channels_saved: bool,
    counters: Arc<FeedCounters>,
}

/// How the attempts at one event ended.
enum Tried {
    Delivered,
    /// Every attempt failed: the last failure, and how many there were.
    Failed(CallFailure, u32),
    Stop,
}

/// Why a session ended.
enum End {
    Stopped,
    /// This host no longer dispatches (a standby now).
    StoodDown,
    Lost(String),
}

impl Feed {
    async fn run(mut self) {
        let mut wait = Duration::from_millis(100);
        loop {
            // A standby feeds nothing; the leader feeds from the saved position.
            tokio::select! {
                led = self.dispatching.wait_for(|on| *on) => if led.is_err() { return },
                _ = self.stopped.changed() => return,
            }
            match self.session().await {
                End::Stopped => return,
                End::StoodDown => {
                    tracing::info!(subscriber = %self.id, "durable delivery paused: this host stands by");
                    continue;
                }
                End::Lost(reason) => {
                    tracing::warn!(subscriber = %self.id, "durable delivery: {reason}; resuming from the saved position in {wait:?}");
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.stopped.changed() => return,
            }
            wait = (wait * 2).min(Duration::from_secs(5));
        }
    }

    async fn session(&mut self) -> End {
        let connecting = tokio::select! {
            connected = self.database.connect() => connected,
            _ = self.stopped.changed() => return End::Stopped,
        };
        let (mut client, mut connection) = match connecting {
            Ok(pair) => pair,
            Err(e) => return End::Lost(format!("cannot connect: {}", with_causes(&e))),
        };
        let wake = Arc::new(Notify::new());
        let woken = wake.clone();
        let driver = tokio::spawn(async move {
            while let Some(message) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                match message {
                    Ok(tokio_postgres::AsyncMessage::Notification(_)) => woken.notify_one(),
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
            // Gone: wake the session, whose next query fails and says why.
            woken.notify_one();
        });
        let end = self.feed(&mut client, &wake).await;
        driver.abort();
        end
    }

    async fn feed(&mut self, client: &mut tokio_postgres::Client, wake: &Notify) -> End {
        let lost = |e: &dyn std::error::Error| End::Lost(with_causes(e));
        if let Err(e) = schema::install(client).await {
            return lost(&e);
        }
        // The feeder's queries are small and many: compiling one with JIT
        // (which a stale estimate of the outbox can trigger) costs more than
        // it ever saves.
        let listen = format!(
            "SET jit = off; LISTEN {}",
            crate::channel::quote_ident(WAKE_CHANNEL)
        );
        if let Err(e) = client.batch_execute(&listen).await {
            return lost(&e);
        }
        let mut saved = None;
        let mut at = match position(client, &self.id).await {
            Ok(Some(at)) => at,
            // Written at once, so pruning keeps what this subscriber reads next.
            Ok(None) => {
                let channels = (!self.channels.is_empty()).then_some(&self.channels[..]);
                match start_at_end(client, &self.id, channels).await {
                    Ok(start) => {
                        saved = Some(start);
                        start
                    }
                    Err(e) => return lost(&e),
                }
            }
            Err(e) => return lost(&e),
        };
        let mut handled = 0;
        let mut since = Instant::now();
        let mut measured: Option<Instant> = None;
        loop {
            if *self.stopped.borrow() {
                return self.finish(client, at, &mut saved).await;
            }
            if !*self.dispatching.borrow() {
                return match self.finish(client, at, &mut saved).await {
                    End::Stopped => End::StoodDown,
                    lost => lost,
                };
            }
            let Some(channels) = self
                .registry
                .upgrade()
                .and_then(|r| r.durable_channels(&self.id))
            else {
                // Removed: the position stays for a subscriber of this id later.
                return self.finish(client, at, &mut saved).await;
            };
            if !channels.is_empty() && channels != self.channels {
                self.channels = channels.clone();
                self.channels_saved = false;
            }
            if !channels.is_empty() {
                match self.redeliver(client).await {
                    Ok(true) => {}
                    Ok(false) => return self.finish(client, at, &mut saved).await,
                    Err(e) => return lost(&e),
                }
            }
            let events = match channels.is_empty() {
                true => Vec::new(),
                false => match next_events(client, at, &channels, BATCH).await {
                    Ok(events) => events,
                    Err(e) => return lost(&e),
                },
            };
            // After the read: a prune that removed events it skips has
            // recorded its gap by now, and the gap goes before them.
            if !channels.is_empty() {
                if let Err(e) = self.tell_gaps(client).await {
                    return lost(&e);
                }
            }
            if measured.is_none_or(|at| at.elapsed() >= MEASURE_LAG) && !self.channels.is_empty() {
                match lag(client, at, &self.channels).await {
                    Ok((events, age)) => {
                        let age = u64::try_from(age.as_millis()).unwrap_or(u64::MAX);
                        self.counters.lag_events.store(events, Ordering::Relaxed);
                        self.counters.lag_ms.store(age, Ordering::Relaxed);
                    }
                    Err(e) => return lost(&e),
                }
                measured = Some(Instant::now());
            }
            if events.is_empty() {
                if let Err(e) = self.save(client, at, &mut saved).await {
                    return lost(&e);
                }
                (handled, since) = (0, Instant::now());
                let gone = tokio::select! {
                    _ = wake.notified() => false,
                    _ = tokio::time::sleep(POLL) => false,
                    _ = self.stopped.changed() => false,
                    // Its sender gone, the notifier is: stop, not spin.
                    changed = self.dispatching.changed() => changed.is_err(),
                };
                if gone {
                    return self.finish(client, at, &mut saved).await;
                }
                continue;
            }
            let mut next = 0;
            while next < events.len() {
                let window = &events[next..events.len().min(next + WINDOW)];
                let done = match self.deliver_window(client, window).await {
                    Ok(Some(done)) => done,
                    Ok(None) => return self.finish(client, at, &mut saved).await,
                    Err(e) => return lost(&e),
                };
                for event in &window[..done] {
                    at = event.position();
                    handled += 1;
                }
                next += done;
                if handled >= SAVE_EVERY || since.elapsed() >= SAVE_AFTER {
                    if let Err(e) = self.save(client, at, &mut saved).await {
                        return lost(&e);
                    }
                    (handled, since) = (0, Instant::now());
                }
            }
        }
    }

    /// Write the position if it moved since the last write.
    async fn save(
        &mut self,
        client: &tokio_postgres::Client,
        at: Position,
        saved: &mut Option<Position>,
    ) -> Result<(), super::reader::ReadError> {
        if *saved != Some(at) || !self.channels_saved {
            let channels = (!self.channels.is_empty()).then_some(&self.channels[..]);
            save_position(client, &self.id, at, channels).await?;
            *saved = Some(at);
            self.channels_saved = true;
        }
        Ok(())
    }

    /// Deliver the gaps pruning left for this subscriber.
    async fn tell_gaps(&mut self, client: &tokio_postgres::Client) -> Result<(), DurableError> {
        for pruned in pruner::gaps_of(client, &self.id).await? {
            tracing::warn!(subscriber = %self.id, events = pruned.events, channels = ?pruned.channels, "events pruned by outbox_retention before delivery");
            let gap = Gap {
                channels: pruned.channels.into(),
                lost_at: Some(pruned.first_sent_at),
                resumed_at: std::time::SystemTime::now(),
                cause: GapCause::Pruned(pruned.events),
            };
            let gap = Delivery::Gap {
                gap: Arc::new(gap),
                resumed: None,
            };
            self.mailbox.push(gap).await;
            pruner::gap_told(client, pruned.id).await?;
        }
        Ok(())
    }

    async fn finish(
        &mut self,
        client: &tokio_postgres::Client,
        at: Position,
        saved: &mut Option<Position>,
    ) -> End {
        match self.save(client, at, saved).await {
            Ok(()) => End::Stopped,
            Err(e) => End::Lost(e.to_string()),
        }
    }

    /// Deliver one event until it succeeds or is dead-lettered. False: stop.
    /// Queue a window of events at once, then follow their outcomes in
    /// order: how many from the start are done (delivered, or dead-lettered
    /// after their retries), at least one unless stopping (`None`). After a
    /// failure the rest of the window is not called (its epoch is given
    /// up), so the failed event is retried before any event after it.
    async fn deliver_window(
        &mut self,
        client: &tokio_postgres::Client,
        window: &[Event],
    ) -> Result<Option<usize>, tokio_postgres::Error> {
        let epoch = self.mailbox.next_epoch();
        let mut outcomes = Vec::with_capacity(window.len());
        for event in window {
            let (done, outcome) = tokio::sync::oneshot::channel();
            let tracked =
                Delivery::tracked(self.notification(event), durable(event, 1), done, epoch);
            self.mailbox.push(tracked).await;
            outcomes.push(outcome);
        }
        for (done, (event, outcome)) in window.iter().zip(outcomes).enumerate() {
            let tried = match outcome.await {
                Ok(Outcome::Delivered) => continue,
                Ok(Outcome::Failed(failure)) => self.attempt(event, 0, 1, Some(failure)).await,
                Err(_) if done > 0 => return Ok(Some(done)),
                Err(_) => self.attempt(event, 0, 0, None).await,
            };
            return match tried {
                Tried::Delivered => Ok(Some(done + 1)),
                Tried::Stop => Ok(None),
                Tried::Failed(failure, attempts) => {
                    self.dead_letter(client, event, &failure, attempts).await?;
                    Ok(Some(done + 1))
                }
            };
        }
        Ok(Some(window.len()))
    }

    fn notification(&self, event: &Event) -> Arc<Notification> {
        Arc::new(Notification {
            channel: event.channel.as_str().into(),
            payload: decode(&event.payload, self.mailbox.mode()),
            pid: event.pid,
        })
    }

    /// Deliver the dead letters an operator asked to deliver again: a
    /// success removes one, a failure keeps it with the new error. False: stop.
    async fn redeliver(&mut self, client: &tokio_postgres::Client) -> Result<bool, DurableError> {
        for letter in dead_letters::waiting(client, &self.id).await? {
            match self.attempt(&letter.event, letter.attempts, 0, None).await {
                Tried::Delivered => dead_letters::delivered(client, letter.id).await?,
                Tried::Stop => return Ok(false),
                Tried::Failed(failure, attempts) => {
                    let attempts = i32::try_from(attempts).unwrap_or(i32::MAX);
                    let error = failure.to_string();
                    dead_letters::failed_again(client, letter.id, &error, attempts).await?;
                }
            }
        }
        Ok(true)
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
        if let Some(failure) = last {
            if attempt >= self.retry.max_attempts.max(1) {
                return Tried::Failed(failure, attempt);
            }
            bump(&self.counters.retries, 1);
            self.pause(self.retry.wait_after(attempt)).await;
        }
        loop {
            if *self.stopped.borrow() {
                return Tried::Stop;
            }
            let epoch = self.mailbox.next_epoch();
            let (done, outcome) = tokio::sync::oneshot::channel();
            let seen = durable(event, earlier.saturating_add(attempt).saturating_add(1));
            let tracked = Delivery::tracked(self.notification(event), seen, done, epoch);
            self.mailbox.push(tracked).await;
            let failure = match outcome.await {
                Ok(Outcome::Delivered) => return Tried::Delivered,
                Ok(Outcome::Failed(failure)) => failure,
                Err(_) => {
                    // Not taken (a full queue, a quarantine): offer it again
                    // later, as the same attempt.
                    if self.mailbox.is_closed() {
                        return Tried::Stop;
                    }
                    self.pause(Duration::from_millis(100)).await;
                    continue;
                }
            };
            attempt += 1;
            if attempt >= self.retry.max_attempts.max(1) {
                return Tried::Failed(failure, attempt);
            }
            bump(&self.counters.retries, 1);
            self.pause(self.retry.wait_after(attempt)).await;
        }
    }

    async fn pause(&mut self, wait: Duration) {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = self.stopped.changed() => {}
        }
    }

    async fn dead_letter(
        &self,
        client: &tokio_postgres::Client,
        event: &Event,
        failure: &CallFailure,
        attempts: u32,
    ) -> Result<(), tokio_postgres::Error> {
        let error = failure.to_string();
        let attempts = i32::try_from(attempts).unwrap_or(i32::MAX);
        client
            .execute(
                "INSERT INTO pgnotifier.dead_letters
                     (subscriber, event_id, channel, payload, sent_at, error, attempts)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
                &[
                    &&*self.id,
                    &event.id,
                    &event.channel,
                    &event.payload,
                    &event.sent_at,
                    &error,
                    &attempts,
                ],
            )
            .await?;
        bump(&self.counters.dead_letters, 1);
        tracing::error!(subscriber = %self.id, event = event.id, attempts, "dead-lettered: {error}");
        Ok(())
    }
}

/// What the subscriber is told of `event` on call number `attempt`.
fn durable(event: &Event, attempt: u32) -> DurableEvent {
    DurableEvent {
        id: event.id,
        attempt,
        sent_at: event.sent_at,
    }
}
