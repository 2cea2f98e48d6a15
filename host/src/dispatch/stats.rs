//! A subscriber's counters: written by its worker without locks, read by
//! the views and the metrics.

use crate::sync::Histogram;
use serde::{Deserialize, Serialize};
use std::sync::atomic::AtomicU64;

/// Counters for one subscriber. Atomics, so the hot path never locks for
/// them, on cache lines of their own, so the worker writing them does not
/// slow the router writing the queue beside them.
#[derive(Debug, Default)]
#[repr(align(128))]
pub(crate) struct Counters {
    pub(super) delivered: AtomicU64,
    pub(super) failed: AtomicU64,
    pub(super) timed_out: AtomicU64,
    pub(super) dropped: AtomicU64,
    pub(super) gaps: AtomicU64,
    /// How long each `on-notify` call took.
    pub(super) call_duration: Histogram,
}

/// A point-in-time copy of a subscriber's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
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
    /// How long calls took: the median and the 99th percentile, each as
    /// the upper bound of its histogram bucket, in microseconds (none
    /// before the first call).
    #[serde(default)]
    pub call_p50_us: Option<u64>,
    #[serde(default)]
    pub call_p99_us: Option<u64>,
}

/// What `ctl subscribers` and the metrics show of an at-least-once subscriber.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DurableStats {
    /// Events sent on its channels that it has not handled yet, counted
    /// about once a second.
    pub lag_events: u64,
    /// How long ago the oldest of them was sent, in milliseconds; 0 when
    /// caught up.
    pub lag_ms: u64,
    /// Failed calls that were retried.
    pub retries: u64,
    /// Events that went to the dead letters.
    pub dead_letters: u64,
    /// Times its feeder failed (a panic) and was started again.
    pub feeder_restarts: u64,
    /// Another host feeds it (it holds the subscriber's feed lock), so
    /// this one does not: one subscriber id on two hosts outside one
    /// cluster group.
    pub fed_elsewhere: bool,
}
