//! Dispatch: one ordered queue per subscriber; slow ones hold up only themselves.

use crate::support::wat::{Notify, WatPlugin};
use crate::support::{channel, count, eventually, logs, recorder, stats_of, Sender, SOON};
use pgnotifier::{Notifier, Overflow, Payload, Subscriber};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One plugin burns CPU on every call; the other, on the same channel, gets
/// every notification while the slow one is still far behind.
#[tokio::test]
async fn a_slow_subscriber_never_delays_the_others() {
    logs::install();
    let dir = crate::support::temp_dir("slow");
    let ch = channel("slow");
    let (slow_id, fast_id) = (format!("slow_{ch}"), format!("fast_{ch}"));
    let slow = WatPlugin::new(&[ch.as_str()], Notify::Burn(40_000_000)).write(&dir, &slow_id);
    let fast = WatPlugin::new(&[ch.as_str()], Notify::Echo).write(&dir, &fast_id);
    let n = Notifier::new(crate::support::database());
    n.load_plugin(&slow).await.unwrap();
    n.load_plugin(&fast).await.unwrap();
    crate::support::listen(&n).await;

    const SENT: usize = 100;
    let sender = Sender::connect().await;
    for i in 0..SENT {
        sender.notify(&ch, &format!("m{i}")).await;
    }
    // "registered" plus one line per notification.
    assert!(eventually(SOON, || logs::plugin_messages(&fast_id).len() == SENT + 1).await);
    let slow_done = logs::plugin_messages(&slow_id).len() - 1;
    assert!(
        slow_done < SENT / 2,
        "the fast plugin finished while the slow one had done {slow_done} of {SENT}"
    );
    let want: Vec<String> = (0..SENT).map(|i| format!("m{i}")).collect();
    assert_eq!(logs::plugin_messages(&fast_id)[1..], want[..], "in order");
    n.shutdown(Duration::ZERO).await;
}

#[tokio::test]
async fn order_is_kept_per_subscriber_within_and_across_transactions() {
    let (n, ch, seen) = crate::support::recording("s", "order").await;
    let sender = Sender::connect().await;
    sender
        .client
        .execute(
            "select pg_notify($1, i::text) from generate_series(0, 1999) as i",
            &[&ch],
        )
        .await
        .unwrap();
    for i in 2000..2100 {
        sender.notify(&ch, &i.to_string()).await;
    }
    assert!(eventually(SOON, || count(&seen) == 2100).await);
    let got: Vec<_> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|r| r.payload.clone())
        .collect();
    assert_eq!(got, (0..2100).map(Payload::Integer).collect::<Vec<_>>());
    n.shutdown(Duration::from_secs(5)).await;
}

/// A subscriber that blocks until released, recording what it got.
fn gated() -> (Subscriber, mpsc::Sender<()>, Arc<Mutex<Vec<i64>>>) {
    let (release, gate) = mpsc::channel::<()>();
    let gate = Mutex::new(gate);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    let s = Subscriber::native(move |_, _, payload, _| {
        let _ = gate.lock().unwrap().recv();
        if let Payload::Integer(i) = payload {
            sink.lock().unwrap().push(*i);
        }
    });
    (s, release, seen)
}

#[tokio::test]
async fn a_full_queue_drops_the_oldest_and_counts_every_drop() {
    let n = Notifier::new(crate::support::database());
    let ch = channel("full");
    let (s, release, seen) = gated();
    n.subscribe(
        "s",
        ch.as_str(),
        s.queue(4, Overflow::DropOldest, Duration::ZERO),
    )
    .unwrap();
    let (other, other_seen) = recorder();
    n.subscribe("other", ch.as_str(), other).unwrap();
    crate::support::listen(&n).await;
    let sender = Sender::connect().await;
    for i in 1..=20 {
        sender.notify(&ch, &i.to_string()).await;
    }
    assert!(
        eventually(SOON, || count(&other_seen) == 20).await,
        "the other subscriber is unaffected"
    );
    let stats = || stats_of(&n, "s");
    assert!(
        eventually(SOON, || stats().dropped >= 15).await,
        "{:?}",
        stats()
    );
    for _ in 0..20 {
        let _ = release.send(());
    }
    assert!(eventually(SOON, || stats().delivered + stats().dropped == 20).await);
    let got = seen.lock().unwrap().clone();
    assert_eq!(got.len() as u64, stats().delivered);
    assert_eq!(
        got[got.len() - 4..],
        [17, 18, 19, 20],
        "the newest are kept"
    );
    n.shutdown(Duration::from_secs(5)).await;
}

/// The default policy waits for space: a stall shorter than the wait loses nothing.
#[tokio::test]
async fn the_default_policy_waits_out_a_short_stall() {
    let n = Notifier::new(crate::support::database());
    let ch = channel("stall");
    let (s, release, seen) = gated();
    let s = s.queue(2, Overflow::WaitThenDropOldest, Duration::from_secs(10));
    n.subscribe("s", ch.as_str(), s).unwrap();
    crate::support::listen(&n).await;
    let sender = Sender::connect().await;
    let releaser = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        for _ in 0..10 {
            let _ = release.send(());
        }
    });
    for i in 1..=10 {
        sender.notify(&ch, &i.to_string()).await;
    }
    assert!(eventually(SOON, || seen.lock().unwrap().len() == 10).await);
    releaser.join().unwrap();
    assert_eq!(*seen.lock().unwrap(), (1..=10).collect::<Vec<i64>>());
    assert_eq!(n.subscribers()[0].stats.dropped, 0);
    n.shutdown(Duration::from_secs(5)).await;
}

/// Past the wait, the default policy drops the oldest and counts it, and a
/// stuck subscriber costs the others one wait, not one per notification.
#[tokio::test]
async fn the_default_policy_drops_after_the_wait() {
    let n = Notifier::new(crate::support::database());
    let ch = channel("stuck");
    let (s, release, _seen) = gated();
    n.subscribe(
        "stuck",
        ch.as_str(),
        s.queue(2, Overflow::WaitThenDropOldest, Duration::from_millis(200)),
    )
    .unwrap();
    let (other, other_seen) = recorder();
    n.subscribe("other", ch.as_str(), other).unwrap();
    crate::support::listen(&n).await;
    let sender = Sender::connect().await;
    let started = std::time::Instant::now();
    for i in 1..=30 {
        sender.notify(&ch, &i.to_string()).await;
    }
    assert!(eventually(SOON, || count(&other_seen) == 30).await);
    let stuck = || stats_of(&n, "stuck");
    assert!(
        eventually(SOON, || stuck().dropped >= 27).await,
        "{:?}",
        stuck()
    );
    // Not a timing test: 27 waits of 200 ms would be 5.4 s; one wait is 0.2 s.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "waited once per notification"
    );
    drop(release);
    n.shutdown(Duration::from_secs(5)).await;
}

/// A panicking closure fails that call only; the next call goes through.
#[tokio::test]
async fn a_panicking_closure_fails_one_call_and_keeps_its_worker() {
    let n = Notifier::new(crate::support::database());
    let ch = channel("panic");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    let s = Subscriber::native(move |_, _, payload, _| {
        if *payload == Payload::Text("panic".into()) {
            panic!("asked to");
        }
        sink.lock().unwrap().push(payload.clone());
    });
    n.subscribe("p", ch.as_str(), s).unwrap();
    crate::support::listen(&n).await;
    let sender = Sender::connect().await;
    for p in ["before", "panic", "after"] {
        sender.notify(&ch, p).await;
    }
    assert!(eventually(SOON, || seen.lock().unwrap().len() == 2).await);
    let stats = n.subscribers()[0].stats;
    assert_eq!((stats.delivered, stats.failed), (2, 1));
    n.shutdown(Duration::from_secs(5)).await;
}
