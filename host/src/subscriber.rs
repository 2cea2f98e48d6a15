//! Subscribers written in Rust: closures called on their own worker thread.
//!
//! What a wasm plugin reads through the WIT's `delivery` interface, a
//! closure reads with [`current_event`] and [`current_gap`], on the thread
//! that calls it.

use crate::dispatch::{
    CallFailure, Deliver, DispatchSettings, DurableEvent, Gap, Notification, Overflow, QueueLimits,
};
use crate::durable::{DeliveryMode, RetryPolicy};
use crate::payload::{Payload, PayloadMode};
use std::cell::{Cell, RefCell};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Duration;

type NotifyFn = dyn Fn(&str, &str, &Payload, i32) + Send + Sync;
type GapFn = dyn Fn(&str, &[String]) + Send + Sync;

/// A native subscriber: a closure called as `(id, channel, payload, pid)`.
///
/// ```
/// let subscriber = pgnotifier::Subscriber::native(|id, channel, payload, pid| {
///     println!("{id} got {payload:?} on {channel} from backend {pid}");
/// });
/// ```
#[derive(Clone)]
pub struct Subscriber {
    on_notify: Arc<NotifyFn>,
    on_gap: Option<Arc<GapFn>>,
    pub(crate) settings: DispatchSettings,
    pub(crate) delivery: DeliveryMode,
}

impl Subscriber {
    pub fn native(f: impl Fn(&str, &str, &Payload, i32) + Send + Sync + 'static) -> Self {
        Self {
            on_notify: Arc::new(f),
            on_gap: None,
            settings: DispatchSettings::default(),
            delivery: DeliveryMode::AtMostOnce,
        }
    }

    /// Also receive every event `pgnotifier.send` records on the
    /// subscriber's channels, at least once and in order, across lost
    /// connections and restarts; a panic is retried as `retry` says, then
    /// the event is dead-lettered.
    pub fn at_least_once(mut self, retry: RetryPolicy) -> Self {
        self.delivery = DeliveryMode::AtLeastOnce(retry);
        self
    }

    /// Also be told `(id, channels)` when notifications may have been missed.
    pub fn on_gap(mut self, f: impl Fn(&str, &[String]) + Send + Sync + 'static) -> Self {
        self.on_gap = Some(Arc::new(f));
        self
    }

    /// Receive every payload unparsed, as `Payload::Text`.
    pub fn payload_mode(mut self, mode: PayloadMode) -> Self {
        self.settings.payload = mode;
        self
    }

    /// Queue size and what to do when it is full.
    pub fn queue(mut self, capacity: usize, overflow: Overflow, overflow_wait: Duration) -> Self {
        self.settings.queue = QueueLimits {
            capacity,
            overflow,
            overflow_wait,
        };
        self
    }

    /// Quarantine after this many failed calls (panics) in a row; 0 never does.
    pub fn failure_threshold(mut self, failures: u32) -> Self {
        self.settings.failure_threshold = failures;
        self
    }

    pub(crate) fn into_deliver(self, id: Arc<str>) -> Box<dyn Deliver> {
        Box::new(NativeDeliver {
            id,
            subscriber: self,
        })
    }
}

struct NativeDeliver {
    id: Arc<str>,
    subscriber: Subscriber,
}

thread_local! {
    static CURRENT_EVENT: Cell<Option<DurableEvent>> = const { Cell::new(None) };
    static CURRENT_GAP: RefCell<Option<Arc<Gap>>> = const { RefCell::new(None) };
}

/// In a native subscriber's closure: the durable event it is called with
/// (its id, attempt and send time), or `None` for a live notification.
/// Key idempotency on the id: after a restart an event may come again.
pub fn current_event() -> Option<DurableEvent> {
    CURRENT_EVENT.get()
}

/// In a native subscriber's gap closure: the gap's bounds and cause.
pub fn current_gap() -> Option<Gap> {
    CURRENT_GAP.with_borrow(|gap| gap.as_deref().cloned())
}

impl Deliver for NativeDeliver {
    fn on_notify(
        &mut self,
        n: &Notification,
        event: Option<&DurableEvent>,
    ) -> Result<(), CallFailure> {
        let f = &self.subscriber.on_notify;
        CURRENT_EVENT.set(event.copied());
        let called = catch_unwind(AssertUnwindSafe(|| {
            f(&self.id, &n.channel, &n.payload, n.pid)
        }));
        CURRENT_EVENT.set(None);
        called.map_err(panic_failure)
    }

    fn on_gap(&mut self, gap: &Arc<Gap>) -> Result<(), CallFailure> {
        let Some(f) = &self.subscriber.on_gap else {
            return Ok(());
        };
        CURRENT_GAP.set(Some(gap.clone()));
        let called = catch_unwind(AssertUnwindSafe(|| f(&self.id, &gap.channels)));
        CURRENT_GAP.set(None);
        called.map_err(panic_failure)
    }
}

fn panic_failure(panic: Box<dyn std::any::Any + Send>) -> CallFailure {
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into());
    CallFailure::Trapped(format!("panicked: {message}"))
}
