//! A subscriber's queue: its limits, what happens when it is full, and how
//! long the router waits for room.

use super::Delivery;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

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

/// The queue proper, behind the mailbox's mutex.
#[derive(Default)]
pub(super) struct Queue {
    pub(super) items: VecDeque<Delivery>,
    pub(super) limits: QueueLimits,
    /// The worker is asleep on the condvar; only then is a wake-up (a syscall) needed.
    pub(super) worker_waiting: bool,
    /// A pusher waits for space; only then does the worker signal it.
    pub(super) router_waiting: bool,
}

impl Queue {
    /// Append and say whether the worker must be woken.
    pub(super) fn push_back(&mut self, delivery: Delivery) -> bool {
        self.items.push_back(delivery);
        self.worker_waiting
    }
}

/// How long the router waits for room in a full queue: decided by the
/// overflow policy when the queue is first found full.
#[derive(Clone, Copy, Debug)]
pub(super) enum Wait {
    Forever,
    Until(Instant),
}

impl Wait {
    pub(super) fn for_policy(limits: QueueLimits, already_overflowing: bool) -> Self {
        match limits.overflow {
            Overflow::Block => Wait::Forever,
            Overflow::WaitThenDropOldest if !already_overflowing => {
                Wait::Until(Instant::now() + limits.overflow_wait)
            }
            _ => Wait::Until(Instant::now()),
        }
    }
}

/// A queue of at least one.
pub(super) fn checked(limits: QueueLimits) -> QueueLimits {
    QueueLimits {
        capacity: limits.capacity.max(1),
        ..limits
    }
}
