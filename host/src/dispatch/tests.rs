//! The dispatch core with a fake subscriber: no database and no wasm, so
//! each case runs in milliseconds. The fake can hold its first call open,
//! which pins the queue's contents while a test fills it.

use super::*;
use crate::payload::decode;
use crate::sync::lock;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

/// Holds calls until opened; counts the calls waiting at it.
#[derive(Default)]
struct Gate {
    open: Mutex<bool>,
    changed: Condvar,
    waiting: AtomicUsize,
}

impl Gate {
    fn closed() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn opened() -> Arc<Self> {
        let gate = Self::closed();
        gate.open();
        gate
    }

    fn pass(&self) {
        let mut open = lock(&self.open);
        self.waiting.fetch_add(1, Ordering::SeqCst);
        while !*open {
            open = self.changed.wait(open).unwrap_or_else(|p| p.into_inner());
        }
        self.waiting.fetch_sub(1, Ordering::SeqCst);
    }

    fn open(&self) {
        *lock(&self.open) = true;
        self.changed.notify_all();
    }

    /// Wait until the worker is held in a call.
    fn until_held(&self) {
        eventually("the worker holds a call at the gate", || {
            self.waiting.load(Ordering::SeqCst) == 1
        });
    }
}

type Log = Arc<Mutex<Vec<String>>>;

/// A subscriber that logs `name:payload` for each call, after the gate.
/// Batching, it logs `name:batch N` before the batch's payloads.
struct Fake {
    name: &'static str,
    log: Log,
    gate: Arc<Gate>,
    fails: bool,
    batching: bool,
}

impl Deliver for Fake {
    fn on_notify(
        &mut self,
        n: &Notification,
        event: Option<&DurableEvent>,
    ) -> Result<(), CallFailure> {
        self.gate.pass();
        let mut text = match &n.payload {
            Payload::Text(text) => text.clone(),
            other => format!("{other:?}"),
        };
        if let Some(event) = event {
            text.push_str(&format!(" #{}", event.id));
        }
        lock(&self.log).push(format!("{}:{text}", self.name));
        match self.fails {
            true => Err(CallFailure::Returned("no".into())),
            false => Ok(()),
        }
    }

    fn on_gap(&mut self, gap: &Arc<Gap>) -> Result<(), CallFailure> {
        let channels = &gap.channels;
        lock(&self.log).push(format!("{}:gap {channels:?}", self.name));
        Ok(())
    }

    fn batches(&self) -> bool {
        self.batching
    }

    fn on_notify_batch(
        &mut self,
        batch: &[Arc<Notification>],
    ) -> Result<Vec<(usize, CallFailure)>, CallFailure> {
        if self.batching {
            lock(&self.log).push(format!("{}:batch {}", self.name, batch.len()));
        }
        Ok(one_by_one(self, batch))
    }
}

/// Poll `done` until it holds, or fail naming `what` after five seconds.
fn eventually(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn notification(text: &str) -> Arc<Notification> {
    notification_on("orders", text)
}

fn notification_on(channel: &str, text: &str) -> Arc<Notification> {
    Arc::new(Notification {
        channel: channel.into(),
        payload: decode(text, PayloadMode::Raw),
        pid: 7,
    })
}

fn settings(capacity: usize, overflow: Overflow, wait: Duration) -> DispatchSettings {
    DispatchSettings {
        queue: QueueLimits {
            capacity,
            overflow,
            overflow_wait: wait,
        },
        payload: PayloadMode::Raw,
        failure_threshold: 0,
    }
}

struct Harness {
    mailbox: Arc<Mailbox>,
    log: Log,
    gate: Arc<Gate>,
    quarantined: Arc<Mutex<Vec<String>>>,
}

impl Harness {
    fn new(settings: DispatchSettings, gate: Arc<Gate>, fails: bool) -> Self {
        Self::start(settings, gate, fails, false)
    }

    fn start(settings: DispatchSettings, gate: Arc<Gate>, fails: bool, batching: bool) -> Self {
        let log = Log::default();
        let quarantined: Arc<Mutex<Vec<String>>> = Arc::default();
        let record = quarantined.clone();
        let hook: QuarantineHook =
            Arc::new(move |id, reason| lock(&record).push(format!("{id}: {reason}")));
        let fake = Fake {
            name: "old",
            log: log.clone(),
            gate: gate.clone(),
            fails,
            batching,
        };
        let mailbox = Mailbox::spawn("fake".into(), settings, Box::new(fake), hook)
            .expect("start a worker thread");
        Self {
            mailbox,
            log,
            gate,
            quarantined,
        }
    }

    async fn push(&self, text: &str) {
        self.mailbox
            .push(Delivery::Notify(notification(text)))
            .await;
    }

    /// Push `first` and wait until the worker holds it at the gate.
    async fn hold(&self, first: &str) {
        self.push(first).await;
        self.gate.until_held();
    }

    /// Replace the subscriber with "new", which passes at once, fails
    /// nothing and does not batch.
    fn replace_with_new(&self, settings: DispatchSettings) {
        let new = Fake {
            name: "new",
            log: self.log.clone(),
            gate: Gate::opened(),
            fails: false,
            batching: false,
        };
        self.mailbox.replace(settings, Box::new(new));
    }

    /// A worker held in its call of "1", and "2" and "3" queued: a queue of
    /// two is full.
    async fn full(settings: DispatchSettings) -> Self {
        let h = Self::new(settings, Gate::closed(), false);
        h.hold("1").await;
        h.push("2").await;
        h.push("3").await;
        h
    }

    /// Open the gate and wait for every queued delivery to be made.
    fn finish(&self) -> Vec<String> {
        self.gate.open();
        assert!(
            self.mailbox.drain(Duration::from_secs(5)),
            "drained in time"
        );
        lock(&self.log).clone()
    }
}

/// Poll a future once: whether it finished at once.
async fn poll_once<F: Future + Unpin>(future: &mut F) -> Poll<F::Output> {
    std::future::poll_fn(|cx| Poll::Ready(std::pin::Pin::new(&mut *future).poll(cx))).await
}

#[tokio::test]
async fn deliveries_arrive_in_order() {
    let h = Harness::new(
        settings(1000, Overflow::Block, Duration::ZERO),
        Gate::opened(),
        false,
    );
    let sent: Vec<String> = (0..200).map(|i| i.to_string()).collect();
    for text in &sent {
        h.push(text).await;
    }
    let log = h.finish();
    let expected: Vec<String> = sent.iter().map(|t| format!("old:{t}")).collect();
    assert_eq!(log, expected);
    assert_eq!(h.mailbox.stats().delivered, 200);
}

#[tokio::test]
async fn live_notifications_queued_on_one_channel_reach_a_batching_subscriber_together() {
    let h = Harness::start(
        settings(1000, Overflow::Block, Duration::ZERO),
        Gate::closed(),
        false,
        true,
    );
    h.hold("1").await;
    let run: Vec<String> = (2..=70).map(|i| i.to_string()).collect();
    for text in &run {
        h.push(text).await;
    }
    (h.mailbox)
        .push(Delivery::Notify(notification_on("other", "x")))
        .await;
    h.push("y").await;
    let log = h.finish();
    // "1" came alone; the run splits at the limit and where the channel changes.
    let mut expected = vec!["old:1".to_string(), format!("old:batch {BATCH_LIMIT}")];
    let (full, rest) = run.split_at(BATCH_LIMIT);
    expected.extend(full.iter().map(|t| format!("old:{t}")));
    expected.push(format!("old:batch {}", rest.len()));
    expected.extend(rest.iter().map(|t| format!("old:{t}")));
    expected.extend(["old:x".to_string(), "old:y".to_string()]);
    assert_eq!(log, expected);
    assert_eq!(h.mailbox.stats().delivered, 72);
}

#[tokio::test]
async fn each_failure_in_a_batch_counts_toward_quarantine() {
    let h = Harness::start(
        DispatchSettings {
            failure_threshold: 3,
            ..settings(1000, Overflow::Block, Duration::ZERO)
        },
        Gate::closed(),
        true,
        true,
    );
    h.hold("1").await;
    for text in ["2", "3", "4", "5"] {
        h.push(text).await;
    }
    h.gate.open();
    // "1" alone, then "2" and "3" of the batch: three in a row. The rest of
    // the batch was called already; its failures count too.
    eventually("every failure counted", || h.mailbox.stats().failed == 5);
    assert_eq!(h.mailbox.stats().delivered, 0);
    assert!(
        lock(&h.quarantined)[0].contains("3 failures in a row"),
        "{:?}",
        lock(&h.quarantined)
    );
}

#[tokio::test]
async fn drop_oldest_drops_the_oldest_queued_at_once() {
    let h = Harness::full(settings(2, Overflow::DropOldest, Duration::ZERO)).await;
    h.push("4").await;
    assert_eq!(h.mailbox.stats().dropped, 1);
    assert_eq!(h.finish(), ["old:1", "old:3", "old:4"]);
}

#[tokio::test]
async fn drop_newest_drops_the_new_notification_at_once() {
    let h = Harness::full(settings(2, Overflow::DropNewest, Duration::ZERO)).await;
    h.push("4").await;
    assert_eq!(h.mailbox.stats().dropped, 1);
    assert_eq!(h.finish(), ["old:1", "old:2", "old:3"]);
}

#[tokio::test]
async fn block_waits_for_room_and_drops_nothing() {
    let h = Harness::full(settings(2, Overflow::Block, Duration::ZERO)).await;
    let mut fourth = Box::pin(h.push("4"));
    assert!(
        poll_once(&mut fourth).await.is_pending(),
        "a full queue makes the push wait"
    );
    h.gate.open();
    fourth.await;
    assert_eq!(h.finish(), ["old:1", "old:2", "old:3", "old:4"]);
    assert_eq!(h.mailbox.stats().dropped, 0);
}

#[tokio::test]
async fn wait_then_drop_oldest_waits_once_then_drops_at_once_while_full() {
    // A subscriber that makes room within the wait loses nothing.
    let patient = settings(2, Overflow::WaitThenDropOldest, Duration::from_secs(30));
    let h = Harness::full(patient).await;
    let mut fourth = Box::pin(h.push("4"));
    assert!(
        poll_once(&mut fourth).await.is_pending(),
        "the push waits for room"
    );
    h.gate.open();
    fourth.await;
    assert_eq!(h.finish(), ["old:1", "old:2", "old:3", "old:4"]);
    assert_eq!(h.mailbox.stats().dropped, 0);

    // One that does not: the first push waits, drops the oldest, and the
    // next drops at once while the queue stays full.
    let brief = settings(2, Overflow::WaitThenDropOldest, Duration::from_millis(20));
    let h = Harness::full(brief).await;
    let started = Instant::now();
    h.push("4").await;
    assert!(
        started.elapsed() >= Duration::from_millis(20),
        "the first full push waited"
    );
    let mut fifth = Box::pin(h.push("5"));
    assert!(
        poll_once(&mut fifth).await.is_ready(),
        "the next one dropped at once"
    );
    assert_eq!(h.mailbox.stats().dropped, 2);
    assert_eq!(h.finish(), ["old:1", "old:4", "old:5"]);
}

#[tokio::test]
async fn failures_in_a_row_quarantine_the_subscriber_and_discard_its_queue() {
    let mut limits = settings(100, Overflow::Block, Duration::ZERO);
    limits.failure_threshold = 3;
    let h = Harness::new(limits, Gate::closed(), true);
    h.hold("1").await;
    for text in ["2", "3", "4", "5", "6"] {
        h.push(text).await;
    }
    h.gate.open();
    eventually("the quarantine hook runs", || {
        !lock(&h.quarantined).is_empty()
    });
    assert_eq!(
        *lock(&h.quarantined),
        ["fake: 3 failures in a row; last: returned an error: no"]
    );
    // Routed before the registry muted it: dropped, not called.
    h.push("7").await;
    eventually("the notification after the quarantine is dropped", || {
        h.mailbox.stats().dropped == 4
    });
    h.mailbox.release_quarantine();
    h.push("8").await;
    let log = h.finish();
    assert_eq!(log, ["old:1", "old:2", "old:3", "old:8"]);
    let stats = h.mailbox.stats();
    assert_eq!((stats.failed, stats.delivered, stats.dropped), (4, 0, 4));
    assert_eq!(
        lock(&h.quarantined).len(),
        1,
        "one quarantine, not one per failure"
    );
}

#[tokio::test]
async fn a_replaced_subscriber_gets_the_queue_in_order_after_the_call_in_progress() {
    let h = Harness::new(
        settings(100, Overflow::Block, Duration::ZERO),
        Gate::closed(),
        false,
    );
    h.hold("1").await;
    h.push("2").await;
    h.push("3").await;
    h.replace_with_new(settings(100, Overflow::Block, Duration::ZERO));
    h.push("4").await;
    assert_eq!(h.finish(), ["old:1", "new:2", "new:3", "new:4"]);
}

/// A batch the worker took for a batching subscriber goes one by one to a
/// replacement that does not batch.
#[tokio::test]
async fn a_batch_taken_before_a_reload_goes_one_by_one_to_a_replacement_that_does_not_batch() {
    let settings = settings(100, Overflow::Block, Duration::ZERO);
    let h = Harness::start(settings, Gate::closed(), false, true);
    h.hold("1").await;
    for text in ["2", "3", "4"] {
        h.push(text).await;
    }
    h.replace_with_new(settings);
    assert_eq!(h.finish(), ["old:1", "new:2", "new:3", "new:4"]);
    assert_eq!(h.mailbox.stats().delivered, 4);
}

#[tokio::test]
async fn the_router_decodes_once_per_mode_and_queues_runs_in_order() {
    let raw = Harness::new(
        settings(100, Overflow::Block, Duration::ZERO),
        Gate::opened(),
        false,
    );
    let mut typed_settings = settings(100, Overflow::Block, Duration::ZERO);
    typed_settings.payload = PayloadMode::Typed;
    let typed = Harness::new(typed_settings, Gate::opened(), false);
    let received = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let routes = RouteTable::new([
        (
            "orders".into(),
            received.clone(),
            vec![raw.mailbox.clone(), typed.mailbox.clone()],
        ),
        ("idle".into(), Arc::default(), Vec::new()),
    ]);
    assert!(routes.is_active("orders") && !routes.is_active("idle"));
    let mut router = Router::default();
    for payload in ["1", "{\"id\":2}", "three"] {
        assert!(router.add(&routes, "orders", payload, 7).is_none());
    }
    assert!(router.add(&routes, "nobody", "x", 7).is_none());
    let mut run = router.take().expect("a run in progress");
    run.queue().await;
    // The next run reuses the lists, emptied.
    router.recycle(run);
    assert!(router.add(&routes, "orders", "four", 7).is_none());
    // A new table (a reload) ends the run, even on the same channel.
    let reloaded =
        RouteTable::new([("orders".into(), received.clone(), vec![raw.mailbox.clone()])]);
    let before_reload = router.add(&reloaded, "orders", "five", 7);
    before_reload
        .expect("the run of the old table")
        .queue()
        .await;
    router.take().expect("a run of the new table").queue().await;
    let raw_log = raw.finish();
    assert_eq!(
        raw_log,
        [
            "old:1",
            "old:{\"id\":2}",
            "old:three",
            "old:four",
            "old:five"
        ]
    );
    let typed_log = typed.finish();
    assert_eq!(typed_log.len(), 4, "{typed_log:?}");
    assert_eq!(typed_log[3], "old:four");
    assert_eq!(typed_log[0], "old:Payload::Integer(1)");
    assert!(
        typed_log[1].starts_with("old:Payload::Json("),
        "{typed_log:?}"
    );
    assert_eq!(typed_log[2], "old:three");
    assert_eq!(received.load(Ordering::Relaxed), 5);
}

#[tokio::test]
async fn a_gap_is_delivered_in_its_place_in_the_queue() {
    let h = Harness::new(
        settings(100, Overflow::Block, Duration::ZERO),
        Gate::closed(),
        false,
    );
    h.hold("1").await;
    h.mailbox
        .push(Delivery::Gap {
            gap: Arc::new(Gap {
                channels: ["orders".to_owned()].into(),
                lost_at: None,
                resumed_at: std::time::SystemTime::now(),
                cause: GapCause::ConnectionLost("test".into()),
            }),
            resumed: None,
            done: None,
        })
        .await;
    h.push("2").await;
    assert_eq!(h.finish(), ["old:1", "old:gap [\"orders\"]", "old:2"]);
    assert_eq!(h.mailbox.stats().gaps, 1);
}

/// A gap event waits for its latch (the channels LISTENed again), and what
/// was queued after it waits behind it.
#[tokio::test]
async fn a_gap_waits_until_its_channels_are_listened_again() {
    let h = Harness::new(
        settings(100, Overflow::Block, Duration::ZERO),
        Gate::opened(),
        false,
    );
    let (resumed, release) = crate::sync::Latch::new();
    let gap = Gap {
        channels: ["orders".to_owned()].into(),
        lost_at: None,
        resumed_at: std::time::SystemTime::now(),
        cause: GapCause::ConnectionLost("test".into()),
    };
    h.push("1").await;
    (h.mailbox)
        .push(Delivery::Gap {
            gap: Arc::new(gap),
            resumed: Some(resumed),
            done: None,
        })
        .await;
    h.push("2").await;
    eventually("the worker has delivered 1", || lock(&h.log).len() == 1);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(
        *lock(&h.log),
        ["old:1"],
        "the gap went before its latch opened"
    );
    assert_eq!(h.mailbox.stats().queued, 1, "2 waits behind the gap");
    release.release();
    assert_eq!(h.finish(), ["old:1", "old:gap [\"orders\"]", "old:2"]);
}

#[tokio::test]
async fn after_a_tracked_failure_the_rest_of_its_epoch_is_not_called() {
    let h = Harness::new(
        settings(100, Overflow::Block, Duration::ZERO),
        Gate::opened(),
        true,
    );
    let epoch = h.mailbox.next_epoch();
    let mut outcomes = Vec::new();
    for (id, text) in ["a", "b", "c"].into_iter().enumerate() {
        let (done, outcome) = tokio::sync::oneshot::channel();
        h.mailbox
            .push(Delivery::tracked(
                notification(text),
                event(id as i64),
                done,
                epoch,
            ))
            .await;
        outcomes.push(outcome);
    }
    let mut outcomes = outcomes.into_iter();
    let first = outcomes.next().unwrap().await;
    assert!(matches!(first, Ok(Outcome::Failed(_))), "{first:?}");
    for rest in outcomes {
        assert!(rest.await.is_err(), "not called: reads as not delivered");
    }
    // A later epoch is called again.
    let (done, outcome) = tokio::sync::oneshot::channel();
    let later = h.mailbox.next_epoch();
    assert!(later > epoch);
    h.mailbox
        .push(Delivery::tracked(notification("d"), event(3), done, later))
        .await;
    assert!(matches!(outcome.await, Ok(Outcome::Failed(_))));
    assert_eq!(h.finish(), ["old:a #0", "old:d #3"]);
}

fn event(id: i64) -> DurableEvent {
    DurableEvent {
        id,
        key: crate::dispatch::EventKey(id as u128),
        attempt: 1,
        sent_at: std::time::SystemTime::now(),
    }
}
