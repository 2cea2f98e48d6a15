//! Dispatch: one bounded FIFO queue and one worker thread per subscriber.
//!
//! The router (in the listener's connection task) decodes each notification
//! once and pushes it to the queue of every subscriber on the channel. Each
//! worker owns its subscriber (a wasm instance or a native closure) and calls
//! it in order. Workers are OS threads, so a subscriber that burns CPU or
//! blocks only ever holds up itself.

use crate::config::SubscriberSettings;
use crate::metrics::{self, Histogram};
use crate::payload::{self, Payload, PayloadMode};
use crate::registry::{Route, Snapshot};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// One notification as subscribers see it. Shared by every subscriber that
/// wants the same payload mode.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Notification {
    pub channel: Arc<str>,
    pub payload: Payload,
    /// The process id of the PostgreSQL backend that sent it.
    pub pid: i32,
}

/// What a worker hands to its subscriber.
#[derive(Debug, Clone)]
pub(crate) enum Delivery {
    Notify(Arc<Notification>),
    /// Notifications on these channels may have been missed.
    Gap(Arc<[String]>),
}

/// Why one call to a subscriber failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallFailure {
    /// The subscriber returned an error; its state is kept.
    #[error("returned an error: {0}")]
    Returned(String),
    /// The subscriber trapped or panicked; a wasm instance is recycled.
    #[error("trapped: {0}")]
    Trapped(String),
    /// The call ran past its deadline; a wasm instance is recycled.
    #[error("ran past its deadline of {0:?}")]
    TimedOut(Duration),
}

/// Something that receives deliveries on its own worker thread.
pub(crate) trait Deliver: Send + 'static {
    fn on_notify(&mut self, notification: &Notification) -> Result<(), CallFailure>;
    fn on_gap(&mut self, channels: &[String]) -> Result<(), CallFailure>;
}

/// What to do when a subscriber's queue is full.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Overflow {
    /// Wait up to `overflow_wait` for space, then drop the oldest queued
    /// notification. While the queue stays full after such a wait, further
    /// notifications drop the oldest at once, so a stuck subscriber delays
    /// the others by one wait, not one wait per notification. A subscriber
    /// that drains within the wait paces every other one to its speed.
    WaitThenDropOldest,
    /// Drop the oldest queued notification at once: the router never waits,
    /// so a slow subscriber never delays the others.
    #[default]
    DropOldest,
    /// Drop the new notification at once.
    DropNewest,
    /// Wait for space however long it takes (back-pressure on every subscriber).
    Block,
}

/// Per-subscriber queue settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct QueueLimits {
    pub capacity: usize,
    pub overflow: Overflow,
    pub overflow_wait: Duration,
}

impl Default for QueueLimits {
    fn default() -> Self {
        Self {
            // Room for a burst: slots cost nothing until used, and the
            // payloads they hold are shared with every other subscriber.
            capacity: 65_536,
            overflow: Overflow::DropOldest,
            overflow_wait: Duration::from_millis(100),
        }
    }
}

/// Counters for one subscriber. Atomics, so the hot path never locks for
/// them, on cache lines of their own, so the worker writing them does not
/// slow the router writing the queue beside them.
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct Counters {
    delivered: AtomicU64,
    failed: AtomicU64,
    timed_out: AtomicU64,
    dropped: AtomicU64,
    gaps: AtomicU64,
    /// How long each `on-notify` call took.
    call_duration: Histogram,
}

/// A point-in-time copy of a subscriber's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SubscriberStats {
    /// Calls that succeeded.
    pub delivered: u64,
    /// Calls that failed, timeouts included.
    pub failed: u64,
    /// Calls cut off by the deadline.
    pub timed_out: u64,
    /// Notifications dropped because the queue was full.
    pub dropped: u64,
    /// Gap events delivered.
    pub gaps: u64,
    /// Notifications waiting in the queue.
    pub queued: usize,
}

/// The queue proper, behind the mailbox's mutex.
#[derive(Default)]
struct Queue {
    items: VecDeque<Delivery>,
    limits: QueueLimits,
    /// The worker is asleep on the condvar; only then is a wake-up (a syscall) needed.
    worker_waiting: bool,
    /// A pusher waits for space; only then does the worker signal it.
    router_waiting: bool,
}

impl Queue {
    /// Append and say whether the worker must be woken.
    fn push_back(&mut self, delivery: Delivery) -> bool {
        self.items.push_back(delivery);
        self.worker_waiting
    }
}

/// How many times an idle worker checks for more work before it sleeps.
const IDLE_SPINS: u32 = 256;

/// Workers alive now, across every notifier in the process.
static LIVE_WORKERS: AtomicUsize = AtomicUsize::new(0);

/// Spinning only pays while every worker can have a core to itself;
/// beyond that, a spinning worker takes time from the others.
fn spinning_pays() -> bool {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let cores = *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    LIVE_WORKERS.load(Ordering::Relaxed) < cores
}

/// Add to a counter only one thread writes (the subscriber's worker): a
/// plain load and store, without the locked read-modify-write of `fetch_add`.
pub(crate) fn bump(counter: &AtomicU64, by: u64) {
    let value = counter.load(Ordering::Relaxed).wrapping_add(by);
    counter.store(value, Ordering::Relaxed);
}

/// What the worker does next.
enum Next {
    /// `waited`: the worker idled before this one arrived.
    Deliver {
        delivery: Delivery,
        waited: bool,
    },
    /// Nothing queued, but a replacement subscriber is waiting.
    Switch,
    Stop,
}

/// Called (on the worker thread) when a subscriber reaches its failure
/// threshold, with its id and the reason, so the registry can mute it.
pub(crate) type QuarantineHook = Arc<dyn Fn(&str, &str) + Send + Sync>;

/// Drops, logged as a summary at most once a second: any database role may
/// NOTIFY any channel, so a line per drop would let a burst flood the log.
/// The metrics count every drop.
struct DropLog {
    id: Arc<str>,
    /// Drops since the last line.
    unreported: AtomicU64,
    /// A summary task is running.
    reporting: AtomicBool,
}

impl DropLog {
    const EVERY: Duration = Duration::from_secs(1);

    fn new(id: Arc<str>) -> Self {
        Self {
            id,
            unreported: AtomicU64::new(0),
            reporting: AtomicBool::new(false),
        }
    }

    /// One drop: the first of a run is logged at once, the rest summed up.
    fn note(self: &Arc<Self>, policy: Overflow) {
        if self.reporting.swap(true, Ordering::AcqRel) {
            self.unreported.fetch_add(1, Ordering::Relaxed);
            return;
        }
        tracing::warn!(subscriber = %self.id, ?policy, "queue full; dropped a notification (more drops are summed up each second)");
        tokio::spawn(self.clone().summarise(policy));
    }

    async fn summarise(self: Arc<Self>, policy: Overflow) {
        loop {
            tokio::time::sleep(Self::EVERY).await;
            let dropped = self.unreported.swap(0, Ordering::Relaxed);
            if dropped > 0 {
                tracing::warn!(subscriber = %self.id, ?policy, dropped, "queue full; dropped {dropped} notifications in the last {:?}", Self::EVERY);
                continue;
            }
            self.reporting.store(false, Ordering::Release);
            // A drop noted between the swap and the store saw `reporting` still set.
            if self.unreported.load(Ordering::Relaxed) == 0
                || self.reporting.swap(true, Ordering::AcqRel)
            {
                return;
            }
        }
    }
}

/// Where a mailbox is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Life {
    /// Taking deliveries.
    Running,
    /// Closed: the worker finishes what is queued, then stops.
    Draining,
    /// Stopped at once: what is queued is discarded.
    Abandoned,
}

/// A mailbox's [`Life`] in an atomic, so the router and the worker read it
/// without a lock.
struct LifeCell(AtomicU8);

impl LifeCell {
    fn new(life: Life) -> Self {
        Self(AtomicU8::new(life as u8))
    }

    fn get(&self) -> Life {
        match self.0.load(Ordering::Relaxed) {
            0 => Life::Running,
            1 => Life::Draining,
            _ => Life::Abandoned,
        }
    }

    fn set(&self, life: Life) {
        self.0.store(life as u8, Ordering::Relaxed);
    }

    /// Move from `from` to `to`, unless it has moved on already.
    fn advance(&self, from: Life, to: Life) {
        let _ =
            (self.0).compare_exchange(from as u8, to as u8, Ordering::Relaxed, Ordering::Relaxed);
    }
}

/// How long the router waits for room in a full queue: decided by the
/// overflow policy when the queue is first found full.
#[derive(Clone, Copy, Debug)]
enum Wait {
    Forever,
    Until(Instant),
}

impl Wait {
    fn for_policy(limits: QueueLimits, already_overflowing: bool) -> Self {
        match limits.overflow {
            Overflow::Block => Wait::Forever,
            Overflow::WaitThenDropOldest if !already_overflowing => {
                Wait::Until(Instant::now() + limits.overflow_wait)
            }
            _ => Wait::Until(Instant::now()),
        }
    }
}

/// A subscriber's queue, counters and worker. The registry holds these.
/// A mailbox lives as long as its subscriber id: a reload swaps the
/// subscriber and settings inside it, so the queue and its order carry over.
pub(crate) struct Mailbox {
    pub(crate) id: Arc<str>,
    raw_payloads: AtomicBool,
    queue: Mutex<Queue>,
    queued: AtomicUsize,
    ready: Condvar,
    space: tokio::sync::Notify,
    overflowing: AtomicBool,
    life: LifeCell,
    counters: Counters,
    drops: Arc<DropLog>,
    /// Consecutive failed calls; quarantine at `failure_threshold` (0: never).
    failures_in_a_row: AtomicU32,
    failure_threshold: AtomicU32,
    /// Quarantined: deliveries are discarded until released.
    quarantined: AtomicBool,
    on_quarantine: QuarantineHook,
    /// A new subscriber for the worker to switch to before its next call.
    replacement: Mutex<Option<Box<dyn Deliver>>>,
    replaced: AtomicBool,
    worker: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Mailbox {
    /// Start a worker thread for `subscriber`.
    pub(crate) fn spawn(
        id: Arc<str>,
        settings: SubscriberSettings,
        subscriber: Box<dyn Deliver>,
        on_quarantine: QuarantineHook,
    ) -> std::io::Result<Arc<Self>> {
        let mailbox = Arc::new(Self {
            id: id.clone(),
            raw_payloads: AtomicBool::new(settings.payload == PayloadMode::Raw),
            queue: Mutex::new(Queue {
                limits: checked(settings.queue),
                ..Queue::default()
            }),
            queued: AtomicUsize::new(0),
            ready: Condvar::new(),
            space: tokio::sync::Notify::new(),
            overflowing: AtomicBool::new(false),
            life: LifeCell::new(Life::Running),
            counters: Counters::default(),
            drops: Arc::new(DropLog::new(id.clone())),
            failures_in_a_row: AtomicU32::new(0),
            failure_threshold: AtomicU32::new(settings.failure_threshold),
            quarantined: AtomicBool::new(false),
            on_quarantine,
            replacement: Mutex::new(None),
            replaced: AtomicBool::new(false),
            worker: Mutex::new(None),
        });
        let worker_mailbox = mailbox.clone();
        let handle = std::thread::Builder::new()
            .name(format!("pgn:{id}"))
            .spawn(move || worker_mailbox.work(subscriber))?;
        *lock(&mailbox.worker) = Some(handle);
        Ok(mailbox)
    }

    /// The payload mode the router decodes for.
    pub(crate) fn mode(&self) -> PayloadMode {
        if self.raw_payloads.load(Ordering::Relaxed) {
            PayloadMode::Raw
        } else {
            PayloadMode::Typed
        }
    }

    /// Switch to a new subscriber and settings. What is queued stays queued,
    /// in order, and goes to the new subscriber; a call in progress finishes
    /// on the old one.
    pub(crate) fn replace(&self, settings: SubscriberSettings, subscriber: Box<dyn Deliver>) {
        *lock(&self.replacement) = Some(subscriber);
        self.replaced.store(true, Ordering::Release);
        self.raw_payloads
            .store(settings.payload == PayloadMode::Raw, Ordering::Relaxed);
        self.failure_threshold
            .store(settings.failure_threshold, Ordering::Relaxed);
        lock(&self.queue).limits = checked(settings.queue);
        // Wake an idle worker to switch at once.
        self.ready.notify_all();
        // More room may have appeared.
        self.space.notify_waiters();
    }

    /// Take deliveries again after a quarantine, with a clean failure count.
    pub(crate) fn release_quarantine(&self) {
        self.failures_in_a_row.store(0, Ordering::Relaxed);
        self.quarantined.store(false, Ordering::Relaxed);
    }

    /// Count a failed call; at the threshold, quarantine: discard what is
    /// queued (a failing subscriber would only burn its deadline on each)
    /// and ask the registry to mute it.
    fn count_failure(&self, failure: &CallFailure) {
        let in_a_row = self.failures_in_a_row.fetch_add(1, Ordering::Relaxed) + 1;
        let threshold = self.failure_threshold.load(Ordering::Relaxed);
        if threshold == 0 || in_a_row < threshold || self.quarantined.swap(true, Ordering::Relaxed)
        {
            return;
        }
        let discarded = {
            let mut queue = lock(&self.queue);
            let n = queue.items.len();
            queue.items.clear();
            self.queued.store(0, Ordering::Relaxed);
            n
        };
        self.counters
            .dropped
            .fetch_add(discarded as u64, Ordering::Relaxed);
        self.space.notify_waiters();
        let reason = format!("{in_a_row} failures in a row; last: {failure}");
        tracing::error!(subscriber = %self.id, discarded, "quarantined: {reason}; muted until unmuted or reloaded");
        (self.on_quarantine)(&self.id, &reason);
    }

    /// The durations of this subscriber's `on-notify` calls.
    pub(crate) fn call_duration(&self) -> &Histogram {
        &self.counters.call_duration
    }

    pub(crate) fn stats(&self) -> SubscriberStats {
        let c = &self.counters;
        SubscriberStats {
            delivered: c.delivered.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            timed_out: c.timed_out.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            gaps: c.gaps.load(Ordering::Relaxed),
            queued: self.queued.load(Ordering::Relaxed),
        }
    }

    /// Queue a delivery, applying the overflow policy when the queue is full.
    pub(crate) async fn push(&self, delivery: Delivery) {
        // Fast path: room in the queue, no waiter registration at all.
        let mut delivery = match self.try_push(delivery) {
            Ok(()) => return,
            Err((back, _)) => back,
        };
        // Decided when the queue is first found full.
        let mut wait: Option<Wait> = None;
        let policy = loop {
            // Register for a wake-up before looking again, so none is missed.
            let space = self.space.notified();
            tokio::pin!(space);
            space.as_mut().enable();
            lock(&self.queue).router_waiting = true;
            let limits = match self.try_push(delivery) {
                Ok(()) => return,
                Err((back, limits)) => {
                    delivery = back;
                    limits
                }
            };
            let overflowing = self.overflowing.load(Ordering::Relaxed);
            match *wait.get_or_insert_with(|| Wait::for_policy(limits, overflowing)) {
                Wait::Forever => space.await,
                Wait::Until(at) => match at.saturating_duration_since(Instant::now()) {
                    left if left.is_zero() => break limits.overflow,
                    left => {
                        let _ = tokio::time::timeout(left, space).await;
                    }
                },
            }
        };
        // Still full past the wait: drop one, per policy.
        let mut queue = lock(&self.queue);
        if queue.items.len() < queue.limits.capacity {
            // The worker made room just now.
            let wake = queue.push_back(delivery);
            self.queued.store(queue.items.len(), Ordering::Relaxed);
            drop(queue);
            if wake {
                self.ready.notify_one();
            }
            return;
        }
        if policy != Overflow::DropNewest {
            queue.items.pop_front();
            queue.push_back(delivery);
            if policy == Overflow::WaitThenDropOldest {
                self.overflowing.store(true, Ordering::Relaxed);
            }
        }
        drop(queue);
        self.counters.dropped.fetch_add(1, Ordering::Relaxed);
        self.drops.note(policy);
    }

    /// Queue notifications in order: all that fit under one lock, the rest
    /// one by one under the overflow policy.
    async fn push_all(&self, notifications: &[Arc<Notification>]) {
        let mut queued = 0;
        if self.life.get() == Life::Running {
            let mut queue = lock(&self.queue);
            let room = queue.limits.capacity.saturating_sub(queue.items.len());
            queued = room.min(notifications.len());
            queue.items.extend(
                notifications[..queued]
                    .iter()
                    .map(|n| Delivery::Notify(n.clone())),
            );
            self.queued.store(queue.items.len(), Ordering::Relaxed);
            let wake = queued > 0 && queue.worker_waiting;
            drop(queue);
            if wake {
                self.ready.notify_one();
            }
        }
        for n in &notifications[queued..] {
            self.push(Delivery::Notify(n.clone())).await;
        }
    }

    /// Queue if there is room; otherwise hand the delivery back with the limits.
    fn try_push(&self, delivery: Delivery) -> Result<(), (Delivery, QueueLimits)> {
        if self.life.get() != Life::Running {
            // Closed: take nothing new, and never make the router wait for it.
            return Ok(());
        }
        let mut queue = lock(&self.queue);
        if queue.items.len() >= queue.limits.capacity {
            return Err((delivery, queue.limits));
        }
        let wake = queue.push_back(delivery);
        self.queued.store(queue.items.len(), Ordering::Relaxed);
        drop(queue);
        if wake {
            self.ready.notify_one();
        }
        Ok(())
    }

    /// Stop taking deliveries; the worker finishes what is queued and exits.
    pub(crate) fn close(&self) {
        self.life.advance(Life::Running, Life::Draining);
        self.wake_all();
    }

    /// Stop at once: the worker discards what is queued after its current call.
    pub(crate) fn abandon(&self) {
        self.life.set(Life::Abandoned);
        self.wake_all();
    }

    /// Wake the worker and any pusher, so both see a state change.
    fn wake_all(&self) {
        drop(lock(&self.queue));
        self.ready.notify_all();
        self.space.notify_waiters();
    }

    /// Close the queue and wait for the worker to finish it, up to `timeout`.
    /// Returns false if the worker was still busy and was abandoned.
    pub(crate) fn drain(&self, timeout: Duration) -> bool {
        self.close();
        let Some(handle) = lock(&self.worker).take() else {
            return true;
        };
        let deadline = Instant::now() + timeout;
        while !handle.is_finished() {
            if Instant::now() >= deadline {
                self.abandon();
                tracing::warn!(subscriber = %self.id, queued = self.queued.load(Ordering::Relaxed), "drain timeout; discarding the rest of the queue");
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let _ = handle.join();
        true
    }

    /// Wait for the next thing to do.
    fn next(&self) -> Next {
        let mut queue = lock(&self.queue);
        let mut spun = false;
        loop {
            if self.life.get() == Life::Abandoned {
                let discarded = queue.items.len();
                queue.items.clear();
                self.queued.store(0, Ordering::Relaxed);
                if discarded > 0 {
                    self.counters
                        .dropped
                        .fetch_add(discarded as u64, Ordering::Relaxed);
                }
                return Next::Stop;
            }
            if let Some(delivery) = queue.items.pop_front() {
                let len = queue.items.len();
                self.queued.store(len, Ordering::Relaxed);
                if len <= queue.limits.capacity / 2 {
                    self.overflowing.store(false, Ordering::Relaxed);
                }
                // Wake a waiting pusher only at half empty, so it refills in a
                // batch instead of being woken for every single slot.
                let wake_router = queue.router_waiting && len <= queue.limits.capacity / 2;
                if wake_router {
                    queue.router_waiting = false;
                }
                drop(queue);
                if wake_router {
                    self.space.notify_waiters();
                }
                return Next::Deliver {
                    delivery,
                    waited: spun,
                };
            }
            if self.replaced.load(Ordering::Acquire) {
                // Idle: switch now, so the old instance is not kept alive.
                return Next::Switch;
            }
            if self.life.get() != Life::Running {
                return Next::Stop;
            }
            if !spun && spinning_pays() {
                // Under load the next notification is usually microseconds
                // away: spin briefly rather than sleep and be woken (two
                // context switches and a futex call).
                spun = true;
                drop(queue);
                for _ in 0..IDLE_SPINS {
                    if self.queued.load(Ordering::Relaxed) > 0 {
                        break;
                    }
                    std::hint::spin_loop();
                }
                queue = lock(&self.queue);
                continue;
            }
            queue.worker_waiting = true;
            queue = self.ready.wait(queue).unwrap_or_else(|p| p.into_inner());
            queue.worker_waiting = false;
            spun = true;
        }
    }

    fn work(&self, mut subscriber: Box<dyn Deliver>) {
        LIVE_WORKERS.fetch_add(1, Ordering::Relaxed);
        // When the last call ended. Back to back, it is also when the next
        // one starts, so a busy worker reads the clock once per call; the
        // duration then includes taking the notification off the queue.
        let clock = metrics::clock();
        let mut last_end: Option<u64> = None;
        loop {
            let next = self.next();
            if self.replaced.swap(false, Ordering::Acquire) {
                if let Some(replacement) = lock(&self.replacement).take() {
                    subscriber = replacement;
                }
            }
            let delivery = match next {
                Next::Deliver { delivery, waited } => {
                    if waited {
                        last_end = None;
                    }
                    delivery
                }
                Next::Switch => continue,
                Next::Stop => break,
            };
            if self.quarantined.load(Ordering::Relaxed) {
                // Routed before the registry muted it: not for this subscriber.
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let result = match &delivery {
                Delivery::Notify(n) => {
                    let started = last_end.unwrap_or_else(|| clock.raw());
                    let result = subscriber.on_notify(n);
                    let ended = clock.raw();
                    (self.counters.call_duration).record(clock.delta_as_nanos(started, ended));
                    last_end = Some(ended);
                    result
                }
                Delivery::Gap(channels) => {
                    bump(&self.counters.gaps, 1);
                    subscriber.on_gap(channels)
                }
            };
            match result {
                Ok(()) => {
                    self.failures_in_a_row.store(0, Ordering::Relaxed);
                    if matches!(delivery, Delivery::Notify(_)) {
                        bump(&self.counters.delivered, 1);
                    }
                }
                Err(failure) => {
                    bump(&self.counters.failed, 1);
                    if matches!(failure, CallFailure::TimedOut(_)) {
                        bump(&self.counters.timed_out, 1);
                    }
                    tracing::warn!(subscriber = %self.id, "call failed: {failure}");
                    self.count_failure(&failure);
                }
            }
        }
        LIVE_WORKERS.fetch_sub(1, Ordering::Relaxed);
        tracing::debug!(subscriber = %self.id, "worker stopped");
    }
}

/// The longest run the router holds before queueing it.
const RUN_LIMIT: usize = 64;

/// Routes notifications in runs: consecutive notifications with the same
/// route are queued together, one lock and at most one wake-up per
/// subscriber, when the run ends, reaches [`RUN_LIMIT`], or the connection
/// has nothing more buffered ([`Router::take`]). Each payload is decoded at
/// most once per mode, and only if someone wants it.
#[derive(Default)]
pub(crate) struct Router {
    run: Option<Run>,
}

/// Notifications routed to the same mailboxes, not yet queued.
pub(crate) struct Run {
    route: Route,
    /// Decoded as typed, if a subscriber in the route wants that.
    typed: Option<Vec<Arc<Notification>>>,
    raw: Option<Vec<Arc<Notification>>>,
}

impl Router {
    /// Add one notification. Returns a run to queue now: the previous one
    /// if this notification starts another, or this one if it is full.
    pub(crate) fn add(
        &mut self,
        snapshot: &Snapshot,
        channel: &str,
        raw_payload: &str,
        pid: i32,
    ) -> Option<Run> {
        let Some((channel, active)) = snapshot.route(channel) else {
            snapshot.count_unrouted(channel);
            return None;
        };
        // The listener's task is the only writer of these counters.
        bump(&active.received, 1);
        let route = &active.mailboxes;
        let mut finished = None;
        if !self
            .run
            .as_ref()
            .is_some_and(|run| Arc::ptr_eq(&run.route, route))
        {
            finished = self.run.replace(Run::new(route.clone()));
        }
        let run = self.run.as_mut()?;
        for (slot, mode) in [
            (&mut run.typed, PayloadMode::Typed),
            (&mut run.raw, PayloadMode::Raw),
        ] {
            if let Some(list) = slot {
                list.push(Arc::new(Notification {
                    channel: channel.clone(),
                    payload: payload::decode(raw_payload, mode),
                    pid,
                }));
            }
        }
        if run.len() >= RUN_LIMIT {
            debug_assert!(finished.is_none(), "a new run holds one notification");
            return self.run.take();
        }
        finished
    }

    /// The run in progress, to queue now.
    pub(crate) fn take(&mut self) -> Option<Run> {
        self.run.take()
    }
}

impl Run {
    fn new(route: Route) -> Self {
        let wants = |mode| route.iter().any(|m| m.mode() == mode);
        let typed = wants(PayloadMode::Typed).then(|| Vec::with_capacity(RUN_LIMIT));
        let raw = wants(PayloadMode::Raw).then(|| Vec::with_capacity(RUN_LIMIT));
        Self { route, typed, raw }
    }

    fn len(&self) -> usize {
        self.typed
            .as_ref()
            .or(self.raw.as_ref())
            .map_or(0, Vec::len)
    }

    /// Queue the run with every mailbox on its route, in order.
    pub(crate) async fn queue(self) {
        for mailbox in self.route.iter() {
            let list = match mailbox.mode() {
                PayloadMode::Typed => self.typed.as_ref(),
                PayloadMode::Raw => self.raw.as_ref(),
            };
            // A mode switched by a reload since the run began: either list is a valid payload.
            if let Some(list) = list.or(self.typed.as_ref()).or(self.raw.as_ref()) {
                mailbox.push_all(list).await;
            }
        }
    }
}

/// A queue of at least one.
fn checked(limits: QueueLimits) -> QueueLimits {
    QueueLimits {
        capacity: limits.capacity.max(1),
        ..limits
    }
}

/// Lock a mutex, recovering from poisoning: every critical section here
/// leaves the data consistent, so a panic elsewhere must not stop dispatch.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}
