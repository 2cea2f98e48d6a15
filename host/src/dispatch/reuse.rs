//! Notification allocations, handed back by the workers for the router to
//! fill again.
//!
//! The listener's thread allocates every notification and the workers' threads
//! free them. glibc's allocator caches freed memory per thread, so the
//! listener found its cache empty at every allocation and each worker's free
//! went back to the listener's arena under its lock: a fifth of the CPU of a
//! 16 B drain. Handed back in batches, an allocation is filled again on the
//! thread that made it, and what it held is freed there too. Its payload
//! text is decoded into again, so a text or JSON payload costs no
//! allocation either.

use super::Notification;
use crate::payload::{self, Payload, PayloadMode};
use crate::sync::lock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// The most notifications kept for reuse: two runs' worth.
const KEPT: usize = 512;
/// A notification whose payload text holds more bytes than this is freed,
/// so that what is kept stays small.
const KEPT_TEXT: usize = 2048;
/// How many a worker gathers before it takes the lock to hand them back.
const HANDED_BACK_AT_ONCE: usize = 64;

/// Allocations handed back and not yet filled again.
pub(super) struct Kept {
    list: Mutex<Vec<Arc<Notification>>>,
    /// Whether `list` may hold any, so that an empty one is not locked.
    any: AtomicBool,
}

impl Kept {
    const fn new() -> Self {
        Self {
            list: Mutex::new(Vec::new()),
            any: AtomicBool::new(false),
        }
    }
}

/// Shared by every router and worker in the process: an allocation is an
/// allocation, whichever listener made it.
static KEPT_IN_PROCESS: Kept = Kept::new();

/// A worker's notifications on their way back, gathered so that the lock
/// is taken once per batch, or when the worker is about to sleep.
pub(super) struct HandBack {
    kept: &'static Kept,
    gathered: Vec<Arc<Notification>>,
}

impl Default for HandBack {
    fn default() -> Self {
        Self {
            kept: &KEPT_IN_PROCESS,
            gathered: Vec::new(),
        }
    }
}

impl HandBack {
    /// Hand back notifications the worker is done with. One that another
    /// mailbox still holds is only let go: its last holder may hand it back.
    pub(super) fn done_with(&mut self, notifications: impl IntoIterator<Item = Arc<Notification>>) {
        for mut notification in notifications {
            let Some(inner) = Arc::get_mut(&mut notification) else {
                continue;
            };
            if text_bytes(&inner.payload) > KEPT_TEXT {
                continue;
            }
            self.gathered.push(notification);
            if self.gathered.len() >= HANDED_BACK_AT_ONCE {
                self.hand_back();
            }
        }
    }

    /// Hand back what is gathered now: called before the worker sleeps, so
    /// that an idle worker keeps nothing.
    pub(super) fn hand_back(&mut self) {
        if self.gathered.is_empty() {
            return;
        }
        let mut kept = lock(&self.kept.list);
        let room = KEPT.saturating_sub(kept.len());
        kept.extend(self.gathered.drain(..room.min(self.gathered.len())));
        self.kept.any.store(true, Ordering::Relaxed);
        drop(kept);
        // No room: freed here, outside the lock.
        self.gathered.clear();
    }
}

/// The router's notifications to fill again.
pub(super) struct Reused {
    kept: &'static Kept,
    free: Vec<Arc<Notification>>,
}

impl Default for Reused {
    fn default() -> Self {
        Self {
            kept: &KEPT_IN_PROCESS,
            free: Vec::new(),
        }
    }
}

impl Reused {
    /// A notification received, in an allocation handed back or a new one.
    /// A handed-back notification's payload text is decoded into again.
    pub(super) fn fill(
        &mut self,
        channel: &Arc<str>,
        sent: &str,
        mode: PayloadMode,
        pid: i32,
    ) -> Arc<Notification> {
        if self.free.is_empty() && self.kept.any.load(Ordering::Relaxed) {
            let mut kept = lock(&self.kept.list);
            std::mem::swap(&mut self.free, &mut *kept);
            self.kept.any.store(false, Ordering::Relaxed);
        }
        while let Some(mut reused) = self.free.pop() {
            // Always unique: only the last holder hands one back.
            if let Some(inner) = Arc::get_mut(&mut reused) {
                inner.channel.clone_from(channel);
                inner.pid = pid;
                let mut text = into_text(std::mem::replace(&mut inner.payload, Payload::Null));
                inner.payload = payload::decode_into(sent, mode, &mut text);
                return reused;
            }
        }
        Arc::new(Notification {
            channel: channel.clone(),
            payload: payload::decode(sent, mode),
            pid,
        })
    }
}

/// The allocation of a payload's text, or an empty string.
fn into_text(payload: Payload) -> String {
    match payload {
        Payload::Text(text) | Payload::Json(text) => text,
        _ => String::new(),
    }
}

/// The bytes a payload holds on the heap for its text.
fn text_bytes(payload: &Payload) -> usize {
    match payload {
        Payload::Text(text) | Payload::Json(text) => text.capacity(),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notification(payload: Payload) -> Notification {
        Notification {
            channel: Arc::from("orders"),
            payload,
            pid: 7,
        }
    }

    /// The router's fill of a typed payload, sent as `sent`.
    fn fill(router: &mut Reused, sent: &str) -> Arc<Notification> {
        router.fill(&Arc::from("orders"), sent, PayloadMode::Typed, 7)
    }

    /// A router and a worker with a kept list of their own.
    fn pair() -> (Reused, HandBack) {
        let kept: &'static Kept = Box::leak(Box::new(Kept::new()));
        let router = Reused {
            kept,
            free: Vec::new(),
        };
        let worker = HandBack {
            kept,
            gathered: Vec::new(),
        };
        (router, worker)
    }

    #[test]
    fn the_last_holder_hands_a_notification_back_to_be_filled_again() {
        let (mut router, mut worker) = pair();
        let first = fill(&mut router, "1");
        let address = Arc::as_ptr(&first);

        worker.done_with([first.clone()]);
        assert!(
            worker.gathered.is_empty(),
            "one still held elsewhere is only let go"
        );
        worker.done_with([first]);
        assert_eq!(worker.gathered.len(), 1, "the last holder keeps it");
        let others =
            (1..HANDED_BACK_AT_ONCE).map(|i| Arc::new(notification(Payload::Integer(i as i64))));
        worker.done_with(others);
        assert!(
            worker.gathered.is_empty(),
            "a full batch is handed back at once"
        );

        let refilled: Vec<_> = (0..HANDED_BACK_AT_ONCE)
            .map(|i| fill(&mut router, &(-(i as i64)).to_string()))
            .collect();
        assert!(
            refilled.iter().any(|n| Arc::as_ptr(n) == address),
            "the allocation handed back was filled again"
        );
        for (i, n) in refilled.iter().enumerate() {
            assert_eq!(
                n.payload,
                Payload::Integer(-(i as i64)),
                "filled with the new one"
            );
        }
        assert!(router.free.is_empty(), "every one handed back was filled");
    }

    #[test]
    fn a_worker_about_to_sleep_hands_back_what_it_gathered() {
        let (mut router, mut worker) = pair();
        let first = Arc::new(notification(Payload::Integer(1)));
        let address = Arc::as_ptr(&first);
        worker.done_with([first]);
        worker.hand_back();
        assert!(worker.gathered.is_empty(), "an idle worker keeps nothing");
        let again = fill(&mut router, "2");
        assert_eq!(Arc::as_ptr(&again), address);
        assert_eq!(again.payload, Payload::Integer(2));
    }

    #[test]
    fn a_payload_is_decoded_into_the_text_the_notification_held() {
        let (mut router, mut worker) = pair();
        let first = fill(
            &mut router,
            r#"{"id": 7, "status": "paid", "by": "checkout"}"#,
        );
        let Payload::Json(text) = &first.payload else {
            panic!("decoded as {:?}", first.payload)
        };
        let at = text.as_ptr();
        worker.done_with([first]);
        worker.hand_back();

        let next = fill(&mut router, r#"  {"id" : 8, "status" : "sent"}"#);
        assert_eq!(
            next.payload,
            Payload::Json(r#"{"id":8,"status":"sent"}"#.into())
        );
        let Payload::Json(text) = &next.payload else {
            unreachable!()
        };
        assert_eq!(text.as_ptr(), at, "decoded into a new allocation");
        let channel: Arc<str> = Arc::from("audit");
        worker.done_with([next]);
        worker.hand_back();
        let raw = router.fill(&channel, "{ not json", PayloadMode::Raw, 9);
        assert_eq!(
            *raw,
            Notification {
                channel,
                payload: Payload::Text("{ not json".into()),
                pid: 9,
            }
        );
    }

    #[test]
    fn no_more_than_the_limit_is_kept_and_no_large_payload() {
        let (_router, mut worker) = pair();
        worker.done_with([Arc::new(notification(Payload::Text(
            "x".repeat(KEPT_TEXT + 1),
        )))]);
        assert!(worker.gathered.is_empty(), "a large payload is freed");
        worker.done_with((0..2 * KEPT).map(|i| Arc::new(notification(Payload::Integer(i as i64)))));
        assert_eq!(lock(&worker.kept.list).len(), KEPT);
    }
}
