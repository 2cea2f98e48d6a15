//! Dispatch: one bounded FIFO queue and one worker thread per subscriber.
//!
//! The [`router`] (in the listener's connection task) decodes each
//! notification once and pushes it to the [`mailbox`] of every subscriber on
//! the channel, as the route table the registry builds says. Each [`worker`]
//! owns its subscriber (a wasm instance or a native closure) and calls it in
//! order. Workers are OS threads, so a subscriber that burns CPU or blocks
//! only ever holds up itself. Dispatch knows nothing of where subscribers
//! come from: it takes its own [`DispatchSettings`] and a [`Deliver`].

mod mailbox;
mod queue;
mod router;
mod stats;
#[cfg(test)]
mod tests;
mod worker;

pub(crate) use mailbox::{Mailbox, QuarantineHook};
pub use queue::{Overflow, QueueLimits};
pub(crate) use router::{RouteTable, Router};
pub use stats::SubscriberStats;

use crate::payload::{Payload, PayloadMode};
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;

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
#[derive(Debug)]
pub(crate) enum Delivery {
    Notify(Arc<Notification>),
    /// A durable event: its outcome is reported. One dropped unreported (a
    /// full queue, a quarantine, a closed mailbox) reads as not delivered.
    /// Once one of an epoch fails or is dropped, the rest of that epoch is
    /// dropped uncalled, so the sender can retry in order. Boxed: the
    /// queue's slots stay as small as a live notification needs.
    Tracked(Box<Tracked>),
    /// Notifications on these channels may have been missed.
    Gap(Arc<[String]>),
}

#[derive(Debug)]
pub(crate) struct Tracked {
    notification: Arc<Notification>,
    done: tokio::sync::oneshot::Sender<Outcome>,
    epoch: u64,
}

impl Delivery {
    pub(crate) fn tracked(
        notification: Arc<Notification>,
        done: tokio::sync::oneshot::Sender<Outcome>,
        epoch: u64,
    ) -> Self {
        Delivery::Tracked(Box::new(Tracked {
            notification,
            done,
            epoch,
        }))
    }

    /// The epoch of a tracked delivery.
    fn epoch(&self) -> Option<u64> {
        match self {
            Delivery::Tracked(tracked) => Some(tracked.epoch),
            _ => None,
        }
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
}

/// Something that receives deliveries on its own worker thread.
pub(crate) trait Deliver: Send + 'static {
    fn on_notify(&mut self, notification: &Notification) -> Result<(), CallFailure>;
    fn on_gap(&mut self, channels: &[String]) -> Result<(), CallFailure>;
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
