//! A mailbox: a subscriber's queue, counters and worker, and the router's
//! side of it (queueing under the overflow policy, replacing the subscriber,
//! closing and draining).

use super::queue::{checked, Queue, Wait};
use super::stats::Counters;
use super::{
    CallCancel, Deliver, Delivery, DispatchSettings, Notification, Overflow, QueueLimits,
    SubscriberStats,
};
use crate::payload::PayloadMode;
use crate::sync::{lock, Histogram};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Called (on the worker thread) when a subscriber reaches its failure
/// threshold, with its id and the reason, so the registry can mute it.
pub(crate) type QuarantineHook = Arc<dyn Fn(&str, &str) + Send + Sync>;

/// Drops, logged as a summary at most once a second: any database role may
/// NOTIFY any channel, so a line per drop would let a burst flood the log.
/// The metrics count every drop.
pub(super) struct DropLog {
    id: Arc<str>,
    /// Drops since the last line.
    unreported: AtomicU64,
    /// A summary task is running.
    reporting: AtomicBool,
}

impl DropLog {
    const EVERY: Duration = Duration::from_secs(1);

    pub(super) fn new(id: Arc<str>) -> Self {
        Self {
            id,
            unreported: AtomicU64::new(0),
            reporting: AtomicBool::new(false),
        }
    }

    /// One drop: the first of a run is logged at once, the rest summed up.
    pub(super) fn note(self: &Arc<Self>, policy: Overflow) {
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
pub(super) enum Life {
    /// Taking deliveries.
    Running,
    /// Closed: the worker finishes what is queued, then stops.
    Draining,
    /// Stopped at once: what is queued is discarded.
    Abandoned,
}

/// A mailbox's [`Life`] in an atomic, so the router and the worker read it
/// without a lock.
pub(super) struct LifeCell(AtomicU8);

impl LifeCell {
    pub(super) fn new(life: Life) -> Self {
        Self(AtomicU8::new(life as u8))
    }

    pub(super) fn get(&self) -> Life {
        match self.0.load(Ordering::Relaxed) {
            0 => Life::Running,
            1 => Life::Draining,
            _ => Life::Abandoned,
        }
    }

    pub(super) fn set(&self, life: Life) {
        self.0.store(life as u8, Ordering::Relaxed);
    }

    /// Move from `from` to `to`, unless it has moved on already.
    pub(super) fn advance(&self, from: Life, to: Life) {
        let _ =
            (self.0).compare_exchange(from as u8, to as u8, Ordering::Relaxed, Ordering::Relaxed);
    }
}

/// A subscriber's queue, counters and worker. The registry holds these.
/// A mailbox lives as long as its subscriber id: a reload swaps the
/// subscriber and settings inside it, so the queue and its order carry over.
pub(crate) struct Mailbox {
    pub(crate) id: Arc<str>,
    pub(super) raw_payloads: AtomicBool,
    pub(super) queue: Mutex<Queue>,
    pub(super) queued: AtomicUsize,
    pub(super) ready: Condvar,
    pub(super) space: tokio::sync::Notify,
    pub(super) overflowing: AtomicBool,
    pub(super) life: LifeCell,
    pub(super) counters: Counters,
    pub(super) drops: Arc<DropLog>,
    /// Consecutive failed calls; quarantine at `failure_threshold` (0: never).
    pub(super) failures_in_a_row: AtomicU32,
    pub(super) failure_threshold: AtomicU32,
    /// Quarantined: deliveries are discarded until released.
    pub(super) quarantined: AtomicBool,
    pub(super) on_quarantine: QuarantineHook,
    /// A new subscriber for the worker to switch to before its next call.
    pub(super) replacement: Mutex<Option<Box<dyn Deliver>>>,
    /// The newest epoch of tracked deliveries given up on (0: none).
    pub(super) failed_epoch: AtomicU64,
    /// The last epoch handed out.
    epochs: AtomicU64,
    /// Shared with the subscriber: which tracked call runs, and which to cut short.
    pub(super) cancel: Arc<CallCancel>,
    pub(super) replaced: AtomicBool,
    pub(super) worker: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Mailbox {
    /// Start a worker thread for `subscriber`.
    pub(crate) fn spawn(
        id: Arc<str>,
        settings: DispatchSettings,
        mut subscriber: Box<dyn Deliver>,
        on_quarantine: QuarantineHook,
    ) -> std::io::Result<Arc<Self>> {
        let cancel = Arc::new(CallCancel::default());
        subscriber.set_cancel(cancel.clone());
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
            failed_epoch: AtomicU64::new(0),
            epochs: AtomicU64::new(0),
            cancel,
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
    pub(crate) fn replace(&self, settings: DispatchSettings, mut subscriber: Box<dyn Deliver>) {
        subscriber.set_cancel(self.cancel.clone());
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
            call_p50_us: c.call_duration.quantile_ns(0.5).map(|ns| ns / 1000),
            call_p99_us: c.call_duration.quantile_ns(0.99).map(|ns| ns / 1000),
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
            if let Some(dropped) = queue.items.pop_front() {
                self.give_up(&dropped);
            }
            queue.push_back(delivery);
            if policy == Overflow::WaitThenDropOldest {
                self.overflowing.store(true, Ordering::Relaxed);
            }
        } else {
            self.give_up(&delivery);
        }
        drop(queue);
        self.counters.dropped.fetch_add(1, Ordering::Relaxed);
        self.drops.note(policy);
    }

    /// Queue notifications in order: all that fit under one lock, the rest
    /// one by one under the overflow policy.
    pub(super) async fn push_all<I>(&self, notifications: I)
    where
        I: IntoIterator<Item = Arc<Notification>>,
        I::IntoIter: ExactSizeIterator,
    {
        let mut notifications = notifications.into_iter();
        if self.life.get() == Life::Running {
            let mut queue = lock(&self.queue);
            let room = queue.limits.capacity.saturating_sub(queue.items.len());
            let queued = room.min(notifications.len());
            queue
                .items
                .extend(notifications.by_ref().take(queued).map(Delivery::Notify));
            self.queued.store(queue.items.len(), Ordering::Relaxed);
            let wake = queued > 0 && queue.worker_waiting;
            drop(queue);
            if wake {
                self.ready.notify_one();
            }
        }
        for n in notifications {
            self.push(Delivery::Notify(n)).await;
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

    /// A new epoch for tracked deliveries, later than every one before.
    pub(crate) fn next_epoch(&self) -> u64 {
        self.epochs.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Give up `epoch`: from now on, what is queued of it is dropped
    /// uncalled (reported as not delivered). A call of it in progress runs
    /// to its end.
    pub(crate) fn give_up_epoch(&self, epoch: u64) {
        self.failed_epoch.fetch_max(epoch, Ordering::Relaxed);
    }

    /// Give up `epoch` and cut short a call of it in progress, if the
    /// subscriber can be (see [`CallCancel`]).
    pub(crate) fn cancel_epoch(&self, epoch: u64) {
        self.give_up_epoch(epoch);
        self.cancel.cancel_through(epoch);
    }

    /// A tracked delivery is not made: the rest of its epoch is not either.
    pub(super) fn give_up(&self, delivery: &Delivery) {
        if let Some(epoch) = delivery.epoch() {
            self.failed_epoch.fetch_max(epoch, Ordering::Relaxed);
        }
    }

    /// Closed or abandoned: it takes nothing new.
    pub(crate) fn is_closed(&self) -> bool {
        self.life.get() != Life::Running
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
}
