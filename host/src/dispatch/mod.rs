//! Dispatch: one bounded FIFO queue and one worker thread per subscriber.
//!
//! The [`router`] (in the listener's connection task) decodes each
//! notification once and pushes it to the [`mailbox`] of every subscriber on
//! the channel, as the route table the registry builds says. Each [`worker`]
//! owns its subscriber (a wasm instance or a native closure) and calls it in
//! order. Workers are OS threads, so a subscriber that burns CPU or blocks
//! only ever holds up itself. Workers hand the notifications they are done
//! with back to the router to [`reuse`]. Dispatch knows nothing of where
//! subscribers come from: it takes its own [`DispatchSettings`] and a [`Deliver`].

mod mailbox;
mod queue;
mod reuse;
mod router;
mod stats;
#[cfg(test)]
mod tests;
mod worker;

pub(crate) use mailbox::{Mailbox, QuarantineHook};
pub use queue::{Overflow, QueueLimits};
pub(crate) use router::{RouteTable, Router, Run};
pub use stats::{DurableStats, SubscriberStats};

use crate::payload::{Payload, PayloadMode};
use crate::sync::Latch;
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// One notification as subscribers see it. Shared by every subscriber that
/// wants the same payload mode.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Notification {
    pub channel: Arc<str>,
    pub payload: Payload,
    /// The process id of the PostgreSQL backend that sent it.
    pub pid: i32,
}

/// Which durable event a delivery carries (at-least-once subscribers only),
/// so the subscriber can tell a redelivery from a new event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct DurableEvent {
    /// Its id in `pgnotifier.outbox`: the same on every delivery of it.
    pub id: i64,
    /// The same on every delivery of it, and never given to another event:
    /// the idempotency key. An `id` can come back for a new event after a
    /// crash that lost an asynchronous commit, or a failover to a replica
    /// that lagged.
    pub key: EventKey,
    /// 1 on the first call with it by this host, more on retries; a dead
    /// letter sent again continues its count.
    pub attempt: u32,
    /// When `pgnotifier.send` ran.
    pub sent_at: SystemTime,
}

/// A durable event's key: a UUID, written as its 36 characters.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventKey(pub u128);

impl std::fmt::Display for EventKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hex = format!("{:032x}", self.0);
        write!(
            f,
            "{}-{}-{}-{}-{}",
            &hex[..8],
            &hex[8..12],
            &hex[12..16],
            &hex[16..20],
            &hex[20..]
        )
    }
}

impl std::fmt::Debug for EventKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl std::str::FromStr for EventKey {
    type Err = std::num::ParseIntError;

    /// A UUID in its usual form, hyphens anywhere, or 32 hex digits.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let digits: String = text.chars().filter(|c| *c != '-').collect();
        if digits.len() != 32 {
            // The same error a malformed number gives.
            return "".parse::<u128>().map(EventKey);
        }
        u128::from_str_radix(&digits, 16).map(EventKey)
    }
}

impl Serialize for EventKey {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// Notifications on some channels may have been missed, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Gap {
    pub channels: Arc<[String]>,
    /// When the host saw the loss, if it can know.
    pub lost_at: Option<SystemTime>,
    /// When delivery resumed.
    pub resumed_at: SystemTime,
    pub cause: GapCause,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum GapCause {
    /// The LISTEN connection was lost: the error.
    ConnectionLost(String),
    /// This many durable events were pruned before the subscriber had them.
    Pruned(u64),
}

/// What a worker hands to its subscriber.
#[derive(Debug)]
pub(crate) enum Delivery {
    Notify(Arc<Notification>),
    /// A durable event: its outcome is reported. One dropped unreported (a
    /// full queue, a quarantine, a closed mailbox) reads as not delivered.
    /// Once one of an epoch fails or is dropped, the rest of that epoch is
    /// dropped uncalled, so the sender can retry in order. Boxed: the
    /// queue's slots stay as small as a live notification needs.
    Tracked(Box<Tracked>),
    /// Notifications may have been missed. The worker calls `on-gap` only
    /// once `resumed` is open (the channels are LISTENed again), so a
    /// subscriber that resynchronises there misses nothing committed after
    /// it reads. Queued before that, so it comes before every notification
    /// of the new connection. `done`, when set (a durable feeder's gap),
    /// hears how `on-gap` went, and its epoch can be given up, as a tracked
    /// event's.
    Gap {
        gap: Arc<Gap>,
        resumed: Option<Latch>,
        done: Option<Done>,
    },
}

#[derive(Debug)]
pub(crate) struct Tracked {
    notification: Arc<Notification>,
    event: DurableEvent,
    done: Done,
}

/// Where a tracked delivery's outcome goes (dropped unreported: not
/// delivered), and the epoch it belongs to.
#[derive(Debug)]
pub(crate) struct Done {
    pub(crate) outcome: tokio::sync::oneshot::Sender<Outcome>,
    pub(crate) epoch: u64,
}

impl Delivery {
    pub(crate) fn tracked(
        notification: Arc<Notification>,
        event: DurableEvent,
        done: tokio::sync::oneshot::Sender<Outcome>,
        epoch: u64,
    ) -> Self {
        Delivery::Tracked(Box::new(Tracked {
            notification,
            event,
            done: Done {
                outcome: done,
                epoch,
            },
        }))
    }

    /// The epoch of a tracked delivery.
    fn epoch(&self) -> Option<u64> {
        match self {
            Delivery::Tracked(tracked) => Some(tracked.done.epoch),
            Delivery::Gap {
                done: Some(done), ..
            } => Some(done.epoch),
            _ => None,
        }
    }
}

/// Which tracked call a subscriber is in, and which epochs to cut short:
/// shared by a mailbox, its worker and the subscriber. A feeder that lost
/// its lock cancels its epoch, because another host may deliver the same
/// events at any moment; a wasm plugin with grants, whose calls wait on
/// queries and HTTP, then ends at its next capability call or epoch tick.
/// The others end within their deadline anyway.
#[derive(Debug, Default)]
pub(crate) struct CallCancel {
    /// The epoch of the tracked call in progress; 0 for none.
    running: AtomicU64,
    cancelled_through: AtomicU64,
}

impl CallCancel {
    /// Whether the call in progress is to end now.
    pub(crate) fn is_cancelled(&self) -> bool {
        let running = self.running.load(Ordering::SeqCst);
        running != 0 && running <= self.cancelled_through.load(Ordering::SeqCst)
    }

    /// Cut short the calls of `epoch` and those before it.
    fn cancel_through(&self, epoch: u64) {
        self.cancelled_through.fetch_max(epoch, Ordering::SeqCst);
    }

    /// A call of `epoch` (0: untracked) starts.
    fn start(&self, epoch: u64) {
        self.running.store(epoch, Ordering::SeqCst);
    }
}

/// How a tracked delivery went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    Delivered,
    Failed(CallFailure),
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
    /// The host cut the call short: the feeder that queued it lost its
    /// lock, and another host delivers the event. Not the subscriber's
    /// failure; a wasm instance is recycled.
    #[error("cut short: this host no longer feeds the subscriber")]
    Cancelled,
}

/// The most live notifications a worker hands to a batching subscriber in
/// one call (the WIT's `on-notify-batch` promises it).
pub(crate) const BATCH_LIMIT: usize = 64;

/// Something that receives deliveries on its own worker thread.
pub(crate) trait Deliver: Send + 'static {
    /// `event` is set for a durable event.
    fn on_notify(
        &mut self,
        notification: &Notification,
        event: Option<&DurableEvent>,
    ) -> Result<(), CallFailure>;
    fn on_gap(&mut self, gap: &Arc<Gap>) -> Result<(), CallFailure>;

    /// Whether live notifications queued on one channel go to
    /// [`Deliver::on_notify_batch`] together.
    fn batches(&self) -> bool {
        false
    }

    /// The flag that asks a call in progress to end early. Only a
    /// subscriber that can wait in a call for long looks at it.
    fn set_cancel(&mut self, _cancel: Arc<CallCancel>) {}

    /// Live notifications on one channel, in order, at most [`BATCH_LIMIT`].
    /// `Ok`: the ones that failed, by index, in increasing order; the rest
    /// were delivered. `Err`: the call failed as a whole, delivering none.
    /// One that does not batch takes them one by one.
    fn on_notify_batch(
        &mut self,
        batch: &[Arc<Notification>],
    ) -> Result<Vec<(usize, CallFailure)>, CallFailure> {
        Ok(one_by_one(self, batch))
    }
}

/// A batch through `on_notify`, one call each: the failures, by index.
pub(crate) fn one_by_one<D: Deliver + ?Sized>(
    subscriber: &mut D,
    batch: &[Arc<Notification>],
) -> Vec<(usize, CallFailure)> {
    let mut failed = Vec::new();
    for (index, n) in batch.iter().enumerate() {
        if let Err(failure) = subscriber.on_notify(n, None) {
            failed.push((index, failure));
        }
    }
    failed
}

/// How a subscriber is dispatched to: its queue, the payload it wants, and
/// when repeated failures quarantine it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DispatchSettings {
    pub queue: QueueLimits,
    pub payload: PayloadMode,
    /// Failed calls in a row after which the subscriber is quarantined
    /// (muted, with the reason shown); 0 turns quarantine off.
    pub failure_threshold: u32,
}

impl Default for DispatchSettings {
    fn default() -> Self {
        Self {
            queue: QueueLimits::default(),
            payload: PayloadMode::default(),
            failure_threshold: 5,
        }
    }
}
