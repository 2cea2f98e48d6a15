//! The sandbox basics: long-lived instances, deadlines, recycling, and guest
//! output routed to the log. Hostile plugins are in `hostile.rs`.

mod support;

use pgnotifier::Notifier;
use std::path::PathBuf;
use std::time::Duration;
use support::wat::{Notify, WatPlugin};
use support::{channel, eventually, logs, Sender, SOON};

struct Setup {
    notifier: Notifier,
    channel: String,
    sender: Sender,
}

/// Load the plugins (with optional sidecars), start, and wait for LISTEN.
async fn setup(plugins: &[(&str, Notify, Option<&str>)]) -> (Setup, Vec<String>) {
    logs::install();
    let dir = support::temp_dir("sandbox");
    let ch = channel("sbx");
    let notifier = Notifier::new(support::database());
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
    support::listen(&notifier).await;
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
        support::stats_of(&self.notifier, id)
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
