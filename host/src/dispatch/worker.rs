//! The worker: the thread that takes a mailbox's deliveries in order and
//! calls its subscriber, counting failures up to a quarantine.

use super::mailbox::{Life, Mailbox};
use super::{CallFailure, Deliver, Delivery, DurableEvent, Notification, Outcome};
use crate::sync::{bump, clock, lock};
use std::sync::atomic::Ordering;

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

    /// Wait for the next thing to do.
    fn next(&self) -> Next {
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
                return Next::Deliver { delivery, waited };
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

    /// One `on-notify` call, timed. Back to back, the last call's end is
    /// this one's start, so a busy worker reads the clock once per call.
    /// `Ok(true)`: a notification was delivered.
    fn call(
        &self,
        clock: &quanta::Clock,
        subscriber: &mut dyn Deliver,
        n: &Notification,
        event: Option<&DurableEvent>,
        last_end: &mut Option<u64>,
    ) -> Result<bool, CallFailure> {
        let started = last_end.unwrap_or_else(|| clock.raw());
        let result = subscriber.on_notify(n, event);
        let ended = clock.raw();
        (self.counters.call_duration).record(clock.delta_as_nanos(started, ended));
        *last_end = Some(ended);
        result.map(|()| true)
    }

    pub(super) fn work(&self, mut subscriber: Box<dyn Deliver>) {
        // When the last call ended (see `call`); the duration then includes
        // taking the notification off the queue.
        let clock = clock();
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
            if let Some(epoch) = delivery.epoch() {
                if epoch <= self.failed_epoch.load(Ordering::Relaxed) {
                    // Behind one that failed: offered again, in order.
                    continue;
                }
            }
            if self.quarantined.load(Ordering::Relaxed) {
                // Routed before the registry muted it: not for this subscriber.
                self.give_up(&delivery);
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let (result, report) = match delivery {
                Delivery::Notify(n) => (
                    self.call(clock, subscriber.as_mut(), &n, None, &mut last_end),
                    None,
                ),
                Delivery::Tracked(tracked) => {
                    let super::Tracked {
                        notification,
                        event,
                        done,
                        epoch,
                    } = *tracked;
                    let result = self.call(
                        clock,
                        subscriber.as_mut(),
                        &notification,
                        Some(&event),
                        &mut last_end,
                    );
                    (result, Some((done, epoch)))
                }
                Delivery::Gap(gap) => {
                    bump(&self.counters.gaps, 1);
                    (subscriber.on_gap(&gap).map(|()| false), None)
                }
            };
            if let Some((done, epoch)) = report {
                let outcome = match &result {
                    Ok(_) => Outcome::Delivered,
                    Err(failure) => {
                        self.failed_epoch.fetch_max(epoch, Ordering::Relaxed);
                        Outcome::Failed(failure.clone())
                    }
                };
                let _ = done.send(outcome);
            }
            match result {
                Ok(notified) => {
                    self.failures_in_a_row.store(0, Ordering::Relaxed);
                    if notified {
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
        tracing::debug!(subscriber = %self.id, "worker stopped");
    }
}
