//! The sandbox basics: long-lived instances, deadlines, recycling, and guest
//! output routed to the log. Hostile plugins are in `hostile.rs`.

use crate::support::wat::{Notify, WatPlugin};
use crate::support::{channel, eventually, logs, Sender, SOON};
use pgnotifier::Notifier;
use std::path::PathBuf;
use std::time::Duration;

struct Setup {
    notifier: Notifier,
    channel: String,
    sender: Sender,
}

/// Load the plugins (with optional sidecars), start, and wait for LISTEN.
async fn setup(plugins: &[(&str, Notify, Option<&str>)]) -> (Setup, Vec<String>) {
    logs::install();
    let dir = crate::support::temp_dir("sandbox");
    let ch = channel("sbx");
    let notifier = Notifier::new(crate::support::database());
    let mut ids = Vec::new();
    for (name, behaviour, sidecar) in plugins {
        let id = format!("{name}_{ch}");
        let path: PathBuf = WatPlugin::new(&[ch.as_str()], *behaviour).write(&dir, &id);
        if let Some(toml) = sidecar {
            std::fs::write(dir.join(format!("{id}.toml")), toml).unwrap();
        }
        notifier.load_plugin(&path).await.unwrap();
        ids.push(id);
    }
    crate::support::listen(&notifier).await;
    let sender = Sender::connect().await;
    (
        Setup {
            notifier,
            channel: ch,
            sender,
        },
        ids,
    )
}

impl Setup {
    fn stats(&self, id: &str) -> pgnotifier::SubscriberStats {
        crate::support::stats_of(&self.notifier, id)
    }
}

/// Messages after the `registered` line.
fn messages(id: &str) -> Vec<String> {
    logs::plugin_messages(id)
        .into_iter()
        .filter(|m| m != "registered")
        .collect()
}

#[tokio::test]
async fn an_instance_lives_across_calls_and_a_trap_recycles_it() {
    let (s, ids) = setup(&[("echo", Notify::Echo, None)]).await;
    for p in ["count", "count", "boom", "count", "count"] {
        s.sender.notify(&s.channel, p).await;
    }
    assert!(
        eventually(SOON, || messages(&ids[0]).len() == 4).await,
        "{:?}",
        messages(&ids[0])
    );
    // State survived the first two calls; the trap threw the instance away,
    // and the fresh one (register run again) starts counting anew.
    assert_eq!(messages(&ids[0]), ["first", "again", "first", "again"]);
    assert_eq!(
        logs::plugin_messages(&ids[0])
            .iter()
            .filter(|m| *m == "registered")
            .count(),
        2
    );
    let stats = s.stats(&ids[0]);
    assert_eq!((stats.delivered, stats.failed, stats.timed_out), (4, 1, 0));
    let trap_logged = logs::of(&ids[0])
        .iter()
        .any(|l| l.message.contains("trapped") && l.level == "WARN");
    assert!(trap_logged, "the trap is logged with the subscriber id");
    s.notifier.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_call_past_its_deadline_fails_alone_and_others_carry_on() {
    let (s, ids) = setup(&[
        ("spin", Notify::Spin, Some("timeout_ms = 100\n")),
        ("echo", Notify::Echo, None),
    ])
    .await;
    for p in ["a", "b", "c"] {
        s.sender.notify(&s.channel, p).await;
    }
    assert!(eventually(SOON, || messages(&ids[1]) == ["a", "b", "c"]).await);
    assert!(
        eventually(SOON, || s.stats(&ids[0]).timed_out == 3).await,
        "{:?}",
        s.stats(&ids[0])
    );
    assert_eq!(s.stats(&ids[0]).failed, 3);
    assert!(logs::of(&ids[0])
        .iter()
        .any(|l| l.message.contains("deadline of 100ms")));
    assert!(s.notifier.is_running(), "the host carries on");
    s.notifier.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn the_default_deadline_is_one_second() {
    let (s, ids) = setup(&[("spin", Notify::Spin, None)]).await;
    let started = std::time::Instant::now();
    s.sender.notify(&s.channel, "x").await;
    assert!(eventually(SOON, || s.stats(&ids[0]).timed_out == 1).await);
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(950), "cut after {took:?}");
    assert!(logs::of(&ids[0])
        .iter()
        .any(|l| l.message.contains("deadline of 1s")));
    s.notifier.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn stdout_and_stderr_reach_the_log_tagged_with_the_id() {
    let (s, ids) = setup(&[("stdio", Notify::Stdio, None)]).await;
    s.sender.notify(&s.channel, "hello from the guest").await;
    let lines = || {
        logs::of(&ids[0])
            .into_iter()
            .filter(|l| l.stream.is_some())
            .map(|l| (l.stream.unwrap(), l.message))
            .collect::<Vec<_>>()
    };
    assert!(
        eventually(SOON, || lines().len() == 2).await,
        "{:?}",
        lines()
    );
    assert_eq!(
        lines(),
        [
            ("stdout".to_string(), "hello from the guest".to_string()),
            ("stderr".to_string(), "hello from the guest".to_string())
        ]
    );
    s.notifier.shutdown(Duration::from_secs(5)).await;
}

/// The `batcher` fixture (it exports `batch`) on a fresh channel.
async fn batcher() -> (Setup, String) {
    logs::install();
    let dir = crate::support::temp_dir("batcher");
    let ch = channel("batch");
    let id = format!("batcher_{ch}");
    let path = dir.join(format!("{id}.wasm"));
    std::fs::copy(crate::support::test_plugin("batcher"), &path).unwrap();
    std::fs::write(
        dir.join(format!("{id}.toml")),
        format!("channels = [\"{ch}\"]\nfailure_threshold = 0\n"),
    )
    .unwrap();
    let notifier = Notifier::new(crate::support::database());
    notifier.load_plugin(&path).await.unwrap();
    crate::support::listen(&notifier).await;
    let sender = Sender::connect().await;
    let setup = Setup {
        notifier,
        channel: ch,
        sender,
    };
    (setup, id)
}

impl Setup {
    /// Send `payloads` in one statement, so they arrive together and queue up.
    async fn notify_together(&self, payloads: &[&str]) {
        (self.sender.client)
            .execute(
                "select pg_notify($1, p) from unnest($2::text[]) with ordinality as t(p, i) order by i",
                &[&self.channel, &payloads],
            )
            .await
            .expect("pg_notify");
    }
}

/// How the batcher was called: `batch N` and `single` lines, in order.
fn calls(id: &str) -> Vec<String> {
    logs::plugin_messages(id)
        .into_iter()
        .filter(|m| m == "single" || m.starts_with("batch "))
        .collect()
}

/// What the batcher logged of the payloads, in order.
fn payloads_seen(id: &str) -> Vec<String> {
    logs::plugin_messages(id)
        .into_iter()
        .filter(|m| m != "single" && !m.starts_with("batch "))
        .collect()
}

#[tokio::test]
async fn notifications_that_queue_up_reach_a_batching_plugin_in_one_call_in_order() {
    let (s, id) = batcher().await;
    let sent: Vec<String> = (0..40).map(|i| format!("n{i}")).collect();
    let sent_refs: Vec<&str> = sent.iter().map(String::as_str).collect();
    s.notify_together(&sent_refs).await;
    assert!(
        eventually(SOON, || payloads_seen(&id).len() == sent.len()).await,
        "{:?}",
        payloads_seen(&id)
    );
    assert_eq!(payloads_seen(&id), sent, "every notification, in order");
    let calls = calls(&id);
    let sizes: Vec<usize> = (calls.iter())
        .map(|c| c.strip_prefix("batch ").map_or(1, |n| n.parse().unwrap()))
        .collect();
    assert_eq!(sizes.iter().sum::<usize>(), sent.len(), "{calls:?}");
    assert!(
        sizes.iter().any(|&n| n > 1) && calls.len() < sent.len(),
        "forty notifications sent at once came in one call each: {calls:?}"
    );
    let stats = s.stats(&id);
    assert_eq!((stats.delivered, stats.failed), (40, 0));

    // One that comes alone goes through on-notify.
    s.sender.notify(&s.channel, "alone").await;
    assert!(
        eventually(SOON, || payloads_seen(&id).last().map(String::as_str)
            == Some("alone"))
        .await
    );
    assert_eq!(self::calls(&id).last().map(String::as_str), Some("single"));
    s.notifier.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_failure_in_a_batch_counts_alone_and_a_trap_fails_the_whole_batch() {
    let (s, id) = batcher().await;
    s.notify_together(&["a", "fail", "b"]).await;
    assert!(
        eventually(SOON, || s.stats(&id).delivered == 2).await,
        "{:?}",
        s.stats(&id)
    );
    assert_eq!(
        calls(&id),
        ["batch 3"],
        "three sent at once came as one batch"
    );
    assert_eq!(s.stats(&id).failed, 1);
    assert!(logs::of(&id)
        .iter()
        .any(|l| l.level == "WARN" && l.message.contains("returned an error: asked to fail")));

    // A trap in a batch: the instance is recycled and none of it counts as delivered.
    s.notify_together(&["c", "panic", "d"]).await;
    assert!(
        eventually(SOON, || s.stats(&id).failed == 4).await,
        "{:?}",
        s.stats(&id)
    );
    assert_eq!(calls(&id), ["batch 3", "batch 3"]);
    assert_eq!(s.stats(&id).delivered, 2);
    assert_eq!(payloads_seen(&id), ["a", "b", "c"], "d was never reached");
    assert!(logs::of(&id)
        .iter()
        .any(|l| l.level == "WARN" && l.message.contains("trapped")));

    // The fresh instance carries on.
    s.sender.notify(&s.channel, "e").await;
    assert!(eventually(SOON, || s.stats(&id).delivered == 3).await);
    assert_eq!(payloads_seen(&id).last().map(String::as_str), Some("e"));
    s.notifier.shutdown(Duration::from_secs(5)).await;
}
