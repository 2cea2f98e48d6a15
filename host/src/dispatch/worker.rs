//! The worker: the thread that takes a mailbox's deliveries in order and
//! calls its subscriber, counting failures up to a quarantine.

use super::mailbox::{Life, Mailbox};
use super::reuse::HandBack;
use super::{
    CallFailure, Deliver, Delivery, Done, DurableEvent, Notification, Outcome, BATCH_LIMIT,
};
use crate::sync::{bump, clock, lock, Histogram};
use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// What the worker does next.
enum Next {
    /// `waited`: the worker idled before this one arrived.
    Deliver {
        delivery: Delivery,
        waited: bool,
    },
    /// Live notifications on one channel, taken into the worker's batch.
    Batch {
        waited: bool,
    },
    /// Nothing queued, but a replacement subscriber is waiting.
    Switch,
    Stop,
}

impl Mailbox {
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
            for delivery in queue.items.drain(..) {
                self.give_up(&delivery);
            }
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

    /// Wait for the next thing to do. With room in `batch` (emptied by the
    /// caller), live notifications queued on one channel are taken together.
    fn next(&self, batch: &mut Vec<Arc<Notification>>, max: usize) -> Next {
        let mut queue = lock(&self.queue);
        let mut waited = false;
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
                let next = match delivery {
                    Delivery::Notify(first) if starts_run(&queue.items, &first, max) => {
                        take_run(&mut queue.items, first, max, batch);
                        Next::Batch { waited }
                    }
                    delivery => Next::Deliver { delivery, waited },
                };
                let len = queue.items.len();
                self.queued.store(len, Ordering::Relaxed);
                // Written only when set: the router reads this line on every push.
                if len <= queue.limits.capacity / 2 && self.overflowing.load(Ordering::Relaxed) {
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
                return next;
            }
            if self.replaced.load(Ordering::Acquire) {
                // Idle: switch now, so the old instance is not kept alive.
                return Next::Switch;
            }
            if self.life.get() != Life::Running {
                return Next::Stop;
            }
            // Nothing queued: sleep until the router wakes this worker. No
            // spinning first: a spin that waits for the next notification
            // burns its whole length at every moderate rate, and a drain
            // keeps the queue from emptying anyway.
            queue.worker_waiting = true;
            queue = self.ready.wait(queue).unwrap_or_else(|p| p.into_inner());
            queue.worker_waiting = false;
            waited = true;
        }
    }

    /// One `on-notify` call, timed. `Ok(true)`: a notification was delivered.
    fn call(
        &self,
        timer: &mut CallTimer,
        subscriber: &mut dyn Deliver,
        n: &Notification,
        event: Option<&DurableEvent>,
    ) -> Result<bool, CallFailure> {
        timer.time(&self.counters.call_duration, 1, || {
            subscriber.on_notify(n, event).map(|()| true)
        })
    }

    /// One `on-notify-batch` call, timed, and each notification of it counted.
    fn call_batch(
        &self,
        timer: &mut CallTimer,
        subscriber: &mut dyn Deliver,
        batch: &[Arc<Notification>],
    ) {
        let result = timer.time(&self.counters.call_duration, batch.len(), || {
            subscriber.on_notify_batch(batch)
        });
        match result {
            Ok(failures) if failures.is_empty() => {
                self.failures_in_a_row.store(0, Ordering::Relaxed);
                bump(&self.counters.delivered, batch.len() as u64);
            }
            Ok(failures) => {
                let mut failures = failures.into_iter().peekable();
                for index in 0..batch.len() {
                    match failures.next_if(|(failed, _)| *failed == index) {
                        Some((_, failure)) => self.count(Err(failure)),
                        None => self.count(Ok(true)),
                    }
                }
            }
            Err(failure) => {
                // One call failed, so one failure toward quarantine; none of
                // the batch was delivered.
                let not_delivered = batch.len().saturating_sub(1) as u64;
                bump(&self.counters.failed, not_delivered);
                self.count(Err(failure));
            }
        }
    }

    /// Count how a call went.
    fn count(&self, result: Result<bool, CallFailure>) {
        match result {
            Ok(notified) => {
                self.failures_in_a_row.store(0, Ordering::Relaxed);
                if notified {
                    bump(&self.counters.delivered, 1);
                }
            }
            // The host's doing, not the subscriber's: nothing to count.
            Err(CallFailure::Cancelled) => {
                tracing::info!(subscriber = %self.id, "a call was cut short: this host no longer feeds the subscriber");
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

    pub(super) fn work(&self, mut subscriber: Box<dyn Deliver>) {
        let mut timer = CallTimer::default();
        let mut batch = Vec::with_capacity(BATCH_LIMIT);
        let mut hand_back = HandBack::default();
        loop {
            hand_back.done_with(batch.drain(..));
            if self.queued.load(Ordering::Relaxed) == 0 {
                // Likely to sleep next: an idle worker keeps nothing back.
                hand_back.hand_back();
            }
            let max = if subscriber.batches() { BATCH_LIMIT } else { 1 };
            let next = self.next(&mut batch, max);
            if self.replaced.swap(false, Ordering::Acquire) {
                if let Some(replacement) = lock(&self.replacement).take() {
                    subscriber = replacement;
                }
            }
            let delivery = match next {
                Next::Deliver { delivery, waited } => {
                    timer.waited(waited);
                    delivery
                }
                Next::Batch { waited } => {
                    timer.waited(waited);
                    if self.quarantined.load(Ordering::Relaxed) {
                        (self.counters.dropped).fetch_add(batch.len() as u64, Ordering::Relaxed);
                    } else {
                        self.call_batch(&mut timer, subscriber.as_mut(), &batch);
                    }
                    continue;
                }
                Next::Switch => continue,
                Next::Stop => break,
            };
            if self.admit(&delivery) {
                self.deliver(&mut timer, subscriber.as_mut(), delivery, &mut hand_back);
            }
        }
        tracing::debug!(subscriber = %self.id, "worker stopped");
    }

    /// Whether `delivery` is to be called: not behind one of its epoch
    /// that failed (it is offered again, in order), and the subscriber not
    /// quarantined (it is dropped).
    fn admit(&self, delivery: &Delivery) -> bool {
        if let Some(epoch) = delivery.epoch() {
            // Marked running before the check, so an epoch cancelled
            // from here on cuts this call short.
            self.cancel.start(epoch);
            if epoch <= self.failed_epoch.load(Ordering::SeqCst) {
                // Behind one that failed: offered again, in order.
                self.cancel.start(0);
                return false;
            }
        }
        if self.quarantined.load(Ordering::Relaxed) {
            // Routed before the registry muted it: not for this subscriber.
            self.cancel.start(0);
            self.give_up(delivery);
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Call the subscriber with `delivery`, report a tracked one's outcome
    /// to its feeder, and count it.
    fn deliver(
        &self,
        timer: &mut CallTimer,
        subscriber: &mut dyn Deliver,
        delivery: Delivery,
        hand_back: &mut HandBack,
    ) {
        let (result, report) = match delivery {
            Delivery::Notify(n) => {
                let result = self.call(timer, subscriber, &n, None);
                hand_back.done_with([n]);
                (result, None)
            }
            Delivery::Tracked(tracked) => {
                let super::Tracked {
                    notification,
                    event,
                    done,
                } = *tracked;
                let result = self.call(timer, subscriber, &notification, Some(&event));
                (result, Some(done))
            }
            Delivery::Gap { gap, resumed, done } => {
                if let Some(resumed) = resumed {
                    resumed.wait();
                }
                bump(&self.counters.gaps, 1);
                (subscriber.on_gap(&gap).map(|()| false), done)
            }
        };
        if let Some(Done { outcome, epoch }) = report {
            self.cancel.start(0);
            let reported = match &result {
                Ok(_) => Outcome::Delivered,
                Err(failure) => {
                    self.failed_epoch.fetch_max(epoch, Ordering::Relaxed);
                    Outcome::Failed(failure.clone())
                }
            };
            let _ = outcome.send(reported);
        }
        self.count(result);
    }
}

/// Whether `first` starts a batch: there is room for one, and the next
/// queued delivery is a live notification on the same channel.
fn starts_run(items: &VecDeque<Delivery>, first: &Notification, max: usize) -> bool {
    max > 1 && matches!(items.front(), Some(Delivery::Notify(n)) if same_channel(n, &first.channel))
}

/// Move `first` and the live notifications after it on its channel into `batch`, up to `max`.
fn take_run(
    items: &mut VecDeque<Delivery>,
    first: Arc<Notification>,
    max: usize,
    batch: &mut Vec<Arc<Notification>>,
) {
    let channel = first.channel.clone();
    batch.push(first);
    while batch.len() < max {
        match items.front() {
            Some(Delivery::Notify(n)) if same_channel(n, &channel) => {}
            _ => break,
        }
        if let Some(Delivery::Notify(n)) = items.pop_front() {
            batch.push(n);
        }
    }
}

/// The router shares one name per run, so this is nearly always a pointer compare.
fn same_channel(n: &Notification, channel: &Arc<str>) -> bool {
    Arc::ptr_eq(&n.channel, channel) || n.channel == *channel
}

/// Times calls into a subscriber. Back to back, the last call's end is this
/// one's start, so a busy worker reads the clock once per call; the duration
/// then includes taking the notification off the queue.
#[derive(Default)]
struct CallTimer {
    last_end: Option<u64>,
}

impl CallTimer {
    /// The worker idled: the next call's start is read afresh.
    fn waited(&mut self, waited: bool) {
        if waited {
            self.last_end = None;
        }
    }

    /// Run `call` for `notifications` notifications, sharing its time among them.
    fn time<T>(
        &mut self,
        durations: &Histogram,
        notifications: usize,
        call: impl FnOnce() -> T,
    ) -> T {
        let clock = clock();
        let started = self.last_end.unwrap_or_else(|| clock.raw());
        let result = call();
        let ended = clock.raw();
        let each = clock.delta_as_nanos(started, ended) / notifications.max(1) as u64;
        durations.record(each, notifications as u64);
        self.last_end = Some(ended);
        result
    }
}
