//! Hostile plugins never hurt the host or each other.
//!
//! Each case loads a hostile plugin beside a well-behaved one on the same
//! channel, sends a stream of notifications, and checks that the host is
//! alive, the well-behaved plugin received every notification in order, the
//! hostile one's failure was counted and logged with its id, and the host's
//! RSS stayed bounded. Then the failure policy: quarantine and its release.
//!
//! The cases run one at a time (see `serial`) so each RSS reading is its own.

use crate::support::wat::{component_importing, Notify, Register, WatPlugin};
use crate::support::{channel, eventually, logs, Sender, SOON};
use pgnotifier::Notifier;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// One case at a time in this binary.
async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

/// Resident memory of this process, in MiB.
fn rss_mib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status");
    kib / 1024
}

/// A hostile plugin and a well-behaved echo, both on one channel.
struct Case {
    notifier: Notifier,
    channel: String,
    sender: Sender,
    hostile: String,
    good: String,
    rss_before: u64,
    dir: PathBuf,
}

impl Case {
    /// Load `component` (with its sidecar) and an echo plugin on a fresh channel.
    async fn start(name: &str, component: &[u8], sidecar: &str) -> Self {
        logs::install();
        let rss_before = rss_mib();
        let dir = crate::support::temp_dir("hostile");
        let ch = channel(name);
        let hostile = format!("{name}_{ch}");
        let good = format!("good_{ch}");
        std::fs::write(dir.join(format!("{hostile}.wasm")), component).unwrap();
        std::fs::write(
            dir.join(format!("{hostile}.toml")),
            format!("channels = [\"{ch}\"]\n{sidecar}"),
        )
        .unwrap();
        WatPlugin::new(&[ch.as_str()], Notify::Echo).write(&dir, &good);
        let notifier = Notifier::new(crate::support::database());
        for (file, outcome) in notifier.load_plugins(&dir).await.unwrap() {
            outcome.unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        }
        crate::support::listen(&notifier).await;
        Self {
            notifier,
            channel: ch,
            sender: Sender::connect().await,
            hostile,
            good,
            rss_before,
            dir,
        }
    }

    async fn wat(name: &str, notify: Notify, sidecar: &str) -> Self {
        let plugin = WatPlugin::new(&["unused"], notify);
        Self::start(name, &plugin.component(), sidecar).await
    }

    async fn send(&self, payloads: &[&str]) {
        for p in payloads {
            self.sender.notify(&self.channel, p).await;
        }
    }

    fn stats(&self) -> pgnotifier::SubscriberStats {
        crate::support::stats_of(&self.notifier, &self.hostile)
    }

    /// The four things every case shows. `failure` is part of the logged
    /// reason (None: the hostile plugin's calls are not failures).
    async fn survived(&self, payloads: &[&str], failure: Option<&str>, rss_budget_mib: u64) {
        let good = || {
            logs::plugin_messages(&self.good)
                .into_iter()
                .filter(|m| m != "registered")
                .collect::<Vec<_>>()
        };
        assert!(
            eventually(SOON, || good() == payloads).await,
            "the well-behaved plugin got {:?}",
            good()
        );
        if let Some(failure) = failure {
            assert!(
                eventually(SOON, || self.stats().failed >= 1).await,
                "{:?}",
                self.stats()
            );
            // The failure is counted before it is logged.
            let logged = || {
                logs::of(&self.hostile)
                    .iter()
                    .any(|l| l.level == "WARN" && l.message.contains(failure))
            };
            assert!(
                eventually(SOON, logged).await,
                "a failure mentioning {failure:?} is logged with the id {}: {:?}",
                self.hostile,
                logs::of(&self.hostile)
            );
        }
        assert!(self.notifier.is_running(), "the listener is still running");
        assert_eq!(
            crate::support::stats_of(&self.notifier, &self.good).failed,
            0
        );
        let grown = rss_mib().saturating_sub(self.rss_before);
        assert!(
            grown <= rss_budget_mib,
            "RSS grew by {grown} MiB (budget {rss_budget_mib} MiB)"
        );
    }

    async fn end(self) {
        self.notifier.shutdown(Duration::from_secs(5)).await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

const STREAM: [&str; 8] = ["m0", "m1", "m2", "m3", "m4", "m5", "m6", "m7"];

#[tokio::test]
async fn an_endless_loop_in_on_notify_is_cut_by_the_deadline() {
    let _one = serial().await;
    let case = Case::wat("spin", Notify::Spin, "timeout_ms = 50\n").await;
    case.send(&STREAM).await;
    case.survived(&STREAM, Some("ran past its deadline of 50ms"), 32)
        .await;
    assert!(case.stats().timed_out >= 1);
    case.end().await;
}

#[tokio::test]
async fn an_endless_register_fails_to_load_without_holding_up_the_others() {
    let _one = serial().await;
    logs::install();
    let dir = crate::support::temp_dir("hostile");
    let ch = channel("regspin");
    WatPlugin::new(&[ch.as_str()], Notify::Echo)
        .register(Register::Spin)
        .write(&dir, "a_spinner");
    std::fs::write(dir.join("a_spinner.toml"), "timeout_ms = 3000\n").unwrap();
    WatPlugin::new(&[ch.as_str()], Notify::Echo).write(&dir, "b_good");
    let notifier = Notifier::new(crate::support::database());
    let started = Instant::now();
    let loading = tokio::spawn({
        let notifier = notifier.clone();
        let dir = dir.clone();
        async move { notifier.load_plugins(&dir).await.unwrap() }
    });
    // The good plugin is up while the spinner is still inside its register.
    assert!(
        eventually(Duration::from_secs(2), || notifier
            .subscribers()
            .iter()
            .any(|s| s.id == "b_good"))
        .await,
        "the good plugin waited for the spinning one"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    let outcomes = loading.await.unwrap();
    let spinner = outcomes
        .iter()
        .find(|(f, _)| f.ends_with("a_spinner.wasm"))
        .map(|(_, o)| o.as_ref().unwrap_err().to_string())
        .unwrap();
    assert!(
        spinner.contains("a_spinner.wasm")
            && spinner.contains("register ran past its deadline of 3s"),
        "{spinner}"
    );
    assert_eq!(
        notifier
            .subscribers()
            .iter()
            .map(|s| s.id.as_str())
            .collect::<Vec<_>>(),
        ["b_good"]
    );
    notifier.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn unbounded_memory_growth_hits_the_memory_limit() {
    let _one = serial().await;
    let case = Case::wat("grow", Notify::Grow, "memory_mib = 8\n").await;
    case.send(&STREAM).await;
    case.survived(&STREAM, Some("memory limit of 8 MiB"), 48)
        .await;
    case.end().await;
}

#[tokio::test]
async fn unbounded_recursion_overflows_the_guest_stack_only() {
    let _one = serial().await;
    let case = Case::wat("recurse", Notify::Recurse, "").await;
    case.send(&STREAM).await;
    case.survived(&STREAM, Some("call stack exhausted"), 32)
        .await;
    case.end().await;
}

#[tokio::test]
async fn an_unreachable_trap_recycles_the_instance() {
    let _one = serial().await;
    let case = Case::wat("trap", Notify::Trap, "").await;
    case.send(&STREAM[..3]).await;
    case.survived(&STREAM[..3], Some("unreachable"), 32).await;
    assert!(
        eventually(SOON, || logs::of(&case.hostile)
            .iter()
            .any(|l| l.message == "instance recycled"))
        .await
    );
    case.end().await;
}

#[tokio::test]
async fn a_rust_panic_is_a_trap_and_the_fresh_instance_carries_on() {
    let _one = serial().await;
    let panicky = std::fs::read(crate::support::test_plugin("panicky")).unwrap();
    let case = Case::start("panicky", &panicky, "").await;
    let payloads = ["before", "panic", "after"];
    case.send(&payloads).await;
    case.survived(&payloads, Some("unreachable"), 32).await;
    assert!(
        eventually(SOON, || logs::plugin_messages(&case.hostile)
            == ["before", "after"])
        .await,
        "{:?}",
        logs::plugin_messages(&case.hostile)
    );
    let stats = case.stats();
    assert_eq!((stats.delivered, stats.failed), (2, 1));
    case.end().await;
}

#[tokio::test]
async fn an_error_result_is_a_failure_that_keeps_the_instance() {
    let _one = serial().await;
    let case = Case::wat("fail", Notify::Fail, "failure_threshold = 0\n").await;
    case.send(&STREAM).await;
    case.survived(&STREAM, Some("returned an error: nope"), 32)
        .await;
    assert!(eventually(SOON, || case.stats().failed == STREAM.len() as u64).await);
    assert!(!logs::of(&case.hostile)
        .iter()
        .any(|l| l.message.contains("recycled")));
    case.end().await;
}

#[tokio::test]
async fn a_log_flood_is_rate_limited() {
    let _one = serial().await;
    let started = Instant::now();
    // 200k log calls and 1 MB of newlines (256k empty lines) on stdout, per call.
    let case = Case::wat(
        "flood",
        Notify::Flood {
            logs: 200_000,
            blocks: 256,
        },
        "timeout_ms = 20000\n",
    )
    .await;
    case.send(&STREAM[..2]).await;
    assert!(
        eventually(SOON, || case.stats().delivered == 2).await,
        "{:?}",
        case.stats()
    );
    case.survived(&STREAM[..2], None, 64).await;
    let written = logs::plugin_messages(&case.hostile).len() as f64;
    let allowed = 1000.0 + 200.0 * started.elapsed().as_secs_f64() + 1.0;
    assert!(
        written <= allowed,
        "{written} lines reached the log (at most {allowed} allowed)"
    );
    assert!(
        logs::of(&case.hostile)
            .iter()
            .any(|l| l.level == "WARN" && l.message.contains("log lines suppressed")),
        "the suppression is reported"
    );
    case.end().await;
}

#[tokio::test]
async fn a_100_mb_log_message_is_cut_without_being_copied() {
    let _one = serial().await;
    let case = Case::wat(
        "huge",
        Notify::HugeLog,
        "memory_mib = 128\ntimeout_ms = 10000\n",
    )
    .await;
    case.send(&STREAM[..1]).await;
    assert!(
        eventually(SOON, || case.stats().delivered == 1).await,
        "{:?}",
        case.stats()
    );
    // The guest's own 100 MB is resident; the host adds no copy of it.
    case.survived(&STREAM[..1], None, 128 + 32).await;
    let lines = logs::plugin_messages(&case.hostile);
    let huge = lines
        .iter()
        .find(|m| m.starts_with("AAAA"))
        .expect("the message was logged, cut");
    assert!(huge.ends_with(" [truncated]"), "marked as cut");
    assert_eq!(huge.len(), 64 * 1024 + " [truncated]".len());
    case.end().await;
}

#[tokio::test]
async fn wasi_grants_no_environment_files_or_sockets() {
    let _one = serial().await;
    std::env::set_var("PGNOTIFIER_TEST_SECRET", "do-not-leak");
    let case = Case::wat("probe", Notify::Probe, "").await;
    case.send(&STREAM[..1]).await;
    case.survived(&STREAM[..1], None, 32).await;
    assert!(
        eventually(SOON, || logs::plugin_messages(&case.hostile).len() >= 4).await,
        "{:?}",
        logs::plugin_messages(&case.hostile)
    );
    assert_eq!(
        logs::plugin_messages(&case.hostile)[1..],
        ["env empty", "no dirs", "socket refused"]
    );
    case.end().await;
}

#[tokio::test]
async fn a_component_importing_an_unknown_interface_is_refused_by_name() {
    let _one = serial().await;
    let dir = crate::support::temp_dir("hostile");
    let path = dir.join("needy.wasm");
    std::fs::write(&path, component_importing("test:missing/iface")).unwrap();
    let notifier = Notifier::new(crate::support::database());
    let err = notifier.load_plugin(&path).await.unwrap_err().to_string();
    assert!(
        err.contains("needy.wasm") && err.contains("test:missing/iface"),
        "{err}"
    );
    assert!(notifier.subscribers().is_empty());
}

/// A plugin that fails on every call, alone on its channel.
async fn failing_alone(threshold: u32) -> (Case, PathBuf) {
    let case = Case::wat(
        "failing",
        Notify::Fail,
        &format!("failure_threshold = {threshold}\n"),
    )
    .await;
    // Give it a channel of its own too, so quarantine empties one channel.
    let own = format!("own_{}", case.channel);
    case.notifier
        .subscribe_to(&case.hostile, own.as_str())
        .unwrap();
    crate::support::listen(&case.notifier).await;
    let path = case.dir.join(format!("{}.wasm", case.hostile));
    (case, path)
}

fn quarantine_of(notifier: &Notifier, id: &str) -> Option<String> {
    notifier
        .subscribers()
        .into_iter()
        .find(|s| s.id == id)
        .and_then(|s| s.quarantine)
}

#[tokio::test]
async fn failures_in_a_row_quarantine_the_subscriber_and_unlisten_its_own_channel() {
    let _one = serial().await;
    let (case, _) = failing_alone(3).await;
    let own = format!("own_{}", case.channel);
    assert!(case.notifier.listening().contains(&own));
    case.send(&STREAM).await;
    assert!(
        eventually(SOON, || quarantine_of(&case.notifier, &case.hostile)
            .is_some())
        .await,
        "quarantined after 3 failures"
    );
    let reason = quarantine_of(&case.notifier, &case.hostile).unwrap();
    assert!(
        reason.starts_with("3 failures in a row; last: returned an error: nope"),
        "{reason}"
    );
    // Exactly three calls were made; the rest were not for it.
    case.survived(&STREAM, Some("nope"), 32).await;
    assert_eq!(case.stats().failed, 3);
    assert!(logs::of(&case.hostile)
        .iter()
        .any(|l| l.level == "ERROR" && l.message.starts_with("quarantined: 3 failures")));
    // Its own channel is no longer LISTENed; the shared one still is.
    assert!(
        eventually(SOON, || !case.notifier.listening().contains(&own)).await,
        "{:?}",
        case.notifier.listening()
    );
    assert!(case.notifier.listening().contains(&case.channel));
    let views = case.notifier.channels();
    let shared = views.iter().find(|c| c.channel == case.channel).unwrap();
    assert!(shared
        .subscribers
        .iter()
        .any(|s| s.id == case.hostile && s.quarantined));

    // An explicit unmute releases it: LISTEN again, calls again.
    case.notifier
        .unmute_subscriber(&case.hostile, pgnotifier::Selection::All)
        .unwrap();
    assert_eq!(quarantine_of(&case.notifier, &case.hostile), None);
    crate::support::listen(&case.notifier).await;
    assert!(case.notifier.listening().contains(&own));
    case.sender.notify(&own, "again").await;
    assert!(eventually(SOON, || case.stats().failed == 4).await);
    case.end().await;
}

#[tokio::test]
async fn a_reload_ends_a_quarantine() {
    let _one = serial().await;
    let (case, path) = failing_alone(2).await;
    case.send(&STREAM[..2]).await;
    assert!(
        eventually(SOON, || quarantine_of(&case.notifier, &case.hostile)
            .is_some())
        .await
    );
    // The fixed version: same channels, echoes instead of failing.
    let fixed = WatPlugin::new(&["unused"], Notify::Echo).component();
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, fixed).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    case.notifier.load_plugin(&path).await.unwrap();
    assert_eq!(quarantine_of(&case.notifier, &case.hostile), None);
    crate::support::listen(&case.notifier).await;
    case.sender.notify(&case.channel, "fixed").await;
    assert!(
        eventually(SOON, || logs::plugin_messages(&case.hostile)
            .contains(&"fixed".to_string()))
        .await
    );
    case.end().await;
}

#[tokio::test]
async fn a_success_resets_the_failure_count() {
    let _one = serial().await;
    // `boom` traps in the echo plugin; threshold 3 is never reached in a row.
    let case = Case::wat("flaky", Notify::Echo, "failure_threshold = 3\n").await;
    let payloads = ["boom", "boom", "ok", "boom", "boom", "ok"];
    case.send(&payloads).await;
    assert!(eventually(SOON, || case.stats().delivered == 2).await);
    assert_eq!(case.stats().failed, 4);
    assert_eq!(quarantine_of(&case.notifier, &case.hostile), None);
    case.end().await;
}
