//! What probing the real binary found, each as a user (or an attacker)
//! would meet it: `pgnotifier run` and `ctl` as processes, a real PostgreSQL.

use crate::support::host::{ctl_ok, http, Host, Setup, BIN};
use crate::support::wat::{Notify, WatPlugin};
use crate::support::{channel, until, Sender, SOON};
use notify::event::{AccessKind, EventKind};
use notify::{RecursiveMode, Watcher};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn mkfifo(path: &Path) {
    let status = Command::new("mkfifo").arg(path).status().expect("mkfifo");
    assert!(status.success(), "mkfifo {}", path.display());
}

/// The host's own reads of a plugin must not look like changes to it: an
/// idle host reads nothing, and a bad file is refused once, not forever.
/// Nor its reads of the folder: listing the folder opens it, and a host
/// that listed it again for each such event never slept.
#[tokio::test]
async fn an_idle_host_never_rereads_its_plugins_nor_retries_a_bad_one() {
    let s = Setup::new("idle", "");
    let ch = channel("idle");
    s.echo("echo", &ch);
    std::fs::write(s.plugins.join("bad.wasm"), b"not a component").unwrap();
    let host = Host::with_config(&s.config);
    host.wait_for(&["LISTEN set updated", &ch]);
    host.wait_for(&["bad.wasm", "subscriber=bad"]);

    // Opens of the plugin, and of the folder itself.
    let (opens, folder_opens) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (counter, folder_counter) = (opens.clone(), folder_opens.clone());
    let folder = s.plugins.canonicalize().unwrap();
    let plugin = folder.join("echo.wasm");
    let (watched_folder, watched_plugin) = (folder.clone(), plugin.clone());
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        if matches!(event.kind, EventKind::Access(AccessKind::Open(_))) {
            if event.paths.contains(&watched_folder) {
                folder_counter.fetch_add(1, Ordering::Relaxed);
            }
            if event.paths.contains(&watched_plugin) {
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }
    })
    .unwrap();
    watcher.watch(&plugin, RecursiveMode::NonRecursive).unwrap();
    watcher.watch(&folder, RecursiveMode::NonRecursive).unwrap();
    // The watch must see a read of each, or the counts below prove nothing.
    std::fs::read(&plugin).unwrap();
    std::fs::read_dir(&folder).unwrap().for_each(drop);
    assert!(
        crate::support::eventually(SOON, || opens.load(Ordering::Relaxed) > 0
            && folder_opens.load(Ordering::Relaxed) > 0)
        .await,
        "the test's own watch saw no open"
    );
    opens.store(0, Ordering::Relaxed);
    folder_opens.store(0, Ordering::Relaxed);

    // An idle second and a half, closed by a marker: once the marker is
    // loaded, the host has handled every event before it.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        folder_opens.load(Ordering::Relaxed),
        0,
        "the idle host listed its plugins folder"
    );
    s.echo("marker", &channel("idle_marker"));
    host.wait_for(&["plugin loaded", "subscriber=marker"]);
    assert_eq!(
        opens.load(Ordering::Relaxed),
        0,
        "the idle host opened an untouched plugin"
    );
    assert_eq!(s.metric("pgnotifier_plugin_load_failures_total"), 1.0);
    assert_eq!(host.count(&["bad.wasm", "subscriber=bad"]), 1);
    host.stop();
}

/// A FIFO where a sidecar belongs is refused at once, hot reload goes on,
/// `check` answers, and SIGTERM exits.
#[tokio::test]
async fn a_fifo_is_refused_and_never_hangs_reloads_check_or_shutdown() {
    let s = Setup::new("fifo", "");
    mkfifo(&s.plugins.join("x.toml"));
    s.echo("x", &channel("fifo_x"));
    let host = Host::with_config(&s.config);
    host.wait_for(&["not a regular file (a FIFO)", "subscriber=x"]);
    let ch = channel("fifo_after");
    s.echo("after", &ch);
    host.wait_for(&["LISTEN set updated", &ch]);

    for file in [s.plugins.join("x.wasm"), {
        let fifo = s.dir.join("fifo.wasm");
        mkfifo(&fifo);
        fifo
    }] {
        let started = Instant::now();
        let out = Command::new(BIN).arg("check").arg(&file).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{err}");
        assert!(err.contains("not a regular file (a FIFO)"), "{err}");
        assert!(
            started.elapsed() < SOON,
            "check took {:?}",
            started.elapsed()
        );
    }
    host.stop();
}

/// The request line and the headers share one deadline: a client that
/// takes most of it for the request line gets the rest for its headers.
#[test]
fn a_request_gets_five_seconds_for_its_line_and_headers_together() {
    let s = Setup::new("slow-headers", "");
    let host = Host::with_config(&s.config);
    host.wait_for(&["admin API listening"]);
    let mut client = TcpStream::connect(s.admin_addr()).unwrap();
    let connected = Instant::now();
    std::thread::sleep(Duration::from_secs(4));
    client.write_all(b"GET /v1/channels HTTP/1.1\r\n").unwrap();
    client.set_read_timeout(Some(SOON)).unwrap();
    let mut rest = Vec::new();
    let _ = client.read_to_end(&mut rest);
    assert!(
        connected.elapsed() < Duration::from_secs(7),
        "headers were still awaited {:?} after the client connected",
        connected.elapsed()
    );
    host.stop();
}

/// A client that sends half a request and waits holds neither its
/// connection nor the host's shutdown for long.
#[test]
fn a_half_sent_admin_request_is_cut_off_and_does_not_hold_shutdown() {
    let s = Setup::new("slowloris", "");
    let host = Host::with_config(&s.config);
    host.wait_for(&["admin API listening"]);
    let addr = s.admin_addr();

    let mut first = TcpStream::connect(&addr).unwrap();
    first.write_all(b"GET /v1/channels HTTP/1.1\r\n").unwrap();
    first.set_read_timeout(Some(SOON)).unwrap();
    let started = Instant::now();
    let mut rest = Vec::new();
    // Closed by the server (an orderly close, or a reset).
    let _ = first.read_to_end(&mut rest);
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the half-sent request held its connection for {:?}",
        started.elapsed()
    );

    let mut second = TcpStream::connect(&addr).unwrap();
    second.write_all(b"GET /v1/channels HTTP/1.1\r\n").unwrap();
    let stopping = Instant::now();
    host.signal("TERM");
    let (status, output) = host.wait();
    assert!(status.success(), "{status}\n{output}");
    assert!(
        stopping.elapsed() < Duration::from_secs(10),
        "shutdown took {:?}",
        stopping.elapsed()
    );
    assert!(
        !s.data_dir.join("admin.addr").exists(),
        "admin.addr is left behind after exit"
    );
}

/// Every re-LISTEN of a channel that was LISTENed (a restart, a stop and
/// start, new connection settings) tells its subscribers they may have
/// missed notifications; delivery resumes after it.
#[tokio::test]
async fn every_relisten_gives_its_subscribers_a_gap_event() {
    let s = Setup::new("relisten", "");
    let ch = channel("relisten");
    s.echo("echo", &ch);
    let host = Host::with_config(&s.config);
    host.wait_for(&["LISTEN set updated", &ch]);
    let gap = ["notifications may have been missed", "subscriber=echo"];
    let sender = Sender::connect().await;
    // The host logs the gap when it queues it, before LISTEN is sent again
    // (on-gap itself waits for LISTEN): wait for LISTEN as well.
    let wait_gaps = |n: usize| {
        host.wait_for_count(&gap, n);
        host.wait_for_count(&["LISTEN set updated", &ch], n + 1);
    };

    // Notifications sent while the listener restarts: each is delivered, or
    // the gap event says some may not be.
    let burst = tokio::spawn({
        let ch = ch.clone();
        async move {
            let sender = Sender::connect().await;
            for i in 0..300 {
                sender.notify(&ch, &format!("burst {i}")).await;
            }
        }
    });
    ctl_ok(&s.config, &["restart"]);
    burst.await.unwrap();
    wait_gaps(1);
    sender.notify(&ch, "after restart").await;
    host.wait_for(&["after restart", "subscriber=echo"]);
    let delivered = host.count(&["burst ", "subscriber=echo"]);
    assert!(delivered <= 300, "{delivered}");

    ctl_ok(&s.config, &["stop"]);
    ctl_ok(&s.config, &["start"]);
    wait_gaps(2);
    sender.notify(&ch, "after start").await;
    host.wait_for(&["after start", "subscriber=echo"]);

    // New connection settings restart the listener: a gap too.
    let text = std::fs::read_to_string(&s.config).unwrap() + "heartbeat_ms = 5000\n";
    std::fs::write(&s.config, text).unwrap();
    host.signal("HUP");
    wait_gaps(3);
    sender.notify(&ch, "after reload").await;
    host.wait_for(&["after reload", "subscriber=echo"]);
    assert_eq!(s.metric("pgnotifier_listener_gap_events_total"), 3.0);
    // The plugin's on-gap ran each time (it logs the channel at warn).
    let on_gap = host.count(&["WARN", &ch, "subscriber=echo", "pgnotifier::plugin"]);
    assert_eq!(on_gap, 3, "{}", host.output());
    host.stop();
}

/// Hot reload keeps working with a relative `--plugins`, and through the
/// folder being removed, recreated, moved away and moved back.
#[tokio::test]
async fn hot_reload_follows_a_relative_folder_that_goes_and_comes_back() {
    let s = Setup::new("relative", "");
    let mut command = Host::command();
    command
        .current_dir(&s.dir)
        .args(["run", "--plugins", "plugins", "--database-url"])
        .arg(crate::support::database_url());
    let host = Host::start(command);
    host.wait_for(&["starting"]);
    let sender = Sender::connect().await;
    let (a, b, c) = (channel("rel_a"), channel("rel_b"), channel("rel_c"));

    // Added after start: the relative folder is still watched.
    s.echo("a", &a);
    host.wait_for(&["LISTEN set updated", &a]);
    sender.notify(&a, "a loaded").await;
    host.wait_for(&["a loaded", "subscriber=a"]);

    // Removed: the subscribers keep running, and the host says so.
    std::fs::remove_dir_all(&s.plugins).unwrap();
    host.wait_for(&["the plugins folder is gone"]);
    sender.notify(&a, "a still running").await;
    host.wait_for(&["a still running", "subscriber=a"]);

    // Recreated: watched again, and synced (a's file is not in it any more).
    std::fs::create_dir(&s.plugins).unwrap();
    s.echo("b", &b);
    host.wait_for(&["the plugins folder is back"]);
    host.wait_for(&["LISTEN set updated", &b]);
    host.wait_for(&["plugin removed", "subscriber=a"]);
    sender.notify(&b, "b in the new folder").await;
    host.wait_for(&["b in the new folder", "subscriber=b"]);

    // Moved away and back.
    let away = s.dir.join("away");
    std::fs::rename(&s.plugins, &away).unwrap();
    host.wait_for_count(&["the plugins folder is gone"], 2);
    sender.notify(&b, "b still running").await;
    host.wait_for(&["b still running", "subscriber=b"]);
    std::fs::rename(&away, &s.plugins).unwrap();
    s.echo("c", &c);
    host.wait_for(&["LISTEN set updated", &c]);
    sender.notify(&c, "c after the move back").await;
    host.wait_for(&["c after the move back", "subscriber=c"]);
    assert_eq!(host.count(&["plugin removed", "subscriber=b"]), 0);
    host.stop();
}

/// A burst into a slow subscriber is logged as a summary a second, not a
/// line per dropped notification; the metrics count every drop.
#[tokio::test]
async fn drops_are_logged_as_a_summary_not_a_line_each() {
    let s = Setup::new("drops", "");
    let ch = channel("drops");
    WatPlugin::new(&[ch.as_str()], Notify::Burn(2_000_000)).write(&s.plugins, "slow");
    std::fs::write(
        s.plugins.join("slow.toml"),
        "queue_size = 1\noverflow = \"drop-newest\"\n",
    )
    .unwrap();
    let host = Host::with_config(&s.config);
    host.wait_for(&["LISTEN set updated", &ch]);
    Sender::connect()
        .await
        .client
        .execute(
            "select pg_notify($1, 'n' || i) from generate_series(1, 5000) i",
            &[&ch],
        )
        .await
        .unwrap();
    let summary = host.wait_for(&["notifications in the last", "subscriber=slow"]);
    assert!(summary.contains("dropped="), "{summary}");
    let dropped = s.metric("pgnotifier_subscriber_dropped_total{subscriber=\"slow\"}");
    assert!(dropped > 1000.0, "{dropped}");
    let lines = host.count(&["queue full", "subscriber=slow"]);
    assert!(
        lines <= 5,
        "{lines} log lines for {dropped} drops:\n{}",
        host.output()
    );
    host.stop();
}

/// `ctl --data-dir X` talks to the host that uses X, found through
/// `X/admin.addr`, with no admin address given.
#[test]
fn ctl_finds_the_host_of_its_data_dir() {
    let s = Setup::new("ctl-data-dir", "");
    let ch = channel("ctl_data_dir");
    s.echo("echo", &ch);
    let host = Host::with_config(&s.config);
    host.wait_for(&["LISTEN set updated", &ch]);
    let out = Command::new(BIN)
        .args(["ctl", "--data-dir"])
        .arg(&s.data_dir)
        .arg("channels")
        .env_remove("PGNOTIFIER_ADMIN_ADDR")
        .env_remove("PGNOTIFIER_CONFIG")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains(&ch), "{text}");
    host.stop();
}

/// Durations and sizes are range-checked: a huge value is a clear error
/// naming the setting, not a host whose hot reload never fires.
#[test]
fn huge_durations_are_refused_naming_the_setting() {
    for setting in ["watch_debounce_ms", "drain_timeout_ms"] {
        let s = Setup::new("huge", "");
        let text = std::fs::read_to_string(&s.config).unwrap();
        let text = text.replace("watch_debounce_ms = 25\n", "");
        std::fs::write(
            &s.config,
            format!("{text}{setting} = 18446744073709551615\n"),
        )
        .unwrap();
        let out = Command::new(BIN)
            .args(["run", "--config"])
            .arg(&s.config)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{err}");
        assert!(
            err.contains(&format!("{setting}: 18446744073709551615 is outside")),
            "{err}"
        );
    }
}

/// Queued notifications discarded at the drain deadline make the exit
/// status non-zero, so a supervisor can tell.
#[tokio::test]
async fn discarding_at_the_drain_deadline_is_a_failed_exit() {
    let s = Setup::new("drain-deadline", "drain_timeout_ms = 100\n");
    let ch = channel("deadline");
    WatPlugin::new(&[ch.as_str()], Notify::Burn(600_000_000)).write(&s.plugins, "burner");
    std::fs::write(s.plugins.join("burner.toml"), "timeout_ms = 20000\n").unwrap();
    let host = Host::with_config(&s.config);
    host.wait_for(&["LISTEN set updated", &ch]);
    let sender = Sender::connect().await;
    for i in 0..5 {
        sender.notify(&ch, &format!("job {i}")).await;
    }
    host.wait_for(&["job 0", "subscriber=burner"]);
    host.signal("TERM");
    let (status, output) = host.wait();
    assert_eq!(status.code(), Some(1), "{output}");
    assert!(output.contains("drain timeout"), "{output}");
}

/// The bearer scheme is case-insensitive (RFC 9110).
#[test]
fn a_lower_case_bearer_scheme_is_accepted() {
    let s = Setup::new("bearer", "admin_token = \"s3cret-token\"\n");
    let host = Host::with_config(&s.config);
    host.wait_for(&["admin API listening"]);
    let get = |authorization: &str| {
        let header = format!("Authorization: {authorization}");
        http(
            &s.admin_addr(),
            "GET /v1/channels HTTP/1.1",
            &[&header],
            b"",
        )
    };
    assert!(get("bearer s3cret-token").starts_with("HTTP/1.1 200"));
    assert!(get("BEARER s3cret-token").starts_with("HTTP/1.1 200"));
    assert!(get("bearer wrong").starts_with("HTTP/1.1 401"));
    host.stop();
}

/// Reloads of one plugin run one at a time: a burst of parallel reload
/// requests for a large (Python) plugin does not hold a copy each.
#[test]
fn parallel_reloads_of_one_plugin_run_one_at_a_time() {
    let s = Setup::new("reloads", "");
    std::fs::copy(
        crate::support::example_plugin("formatter"),
        s.plugins.join("formatter.wasm"),
    )
    .unwrap();
    let host = Host::with_config(&s.config);
    // Compiling an 18 MB component takes seconds when it is not cached yet.
    host.wait_for_within(
        Duration::from_secs(120),
        &["plugin loaded", "subscriber=formatter"],
    );
    let before = host.peak_memory();
    let addr = s.admin_addr();
    let requests: Vec<_> = (0..30)
        .map(|_| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                http(
                    &addr,
                    "POST /v1/subscribers/formatter/reload HTTP/1.1",
                    &[],
                    b"",
                )
            })
        })
        .collect();
    for request in requests {
        let answer = request.join().unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    }
    // Each reload logs before it answers; the log reaches the test a moment later.
    host.wait_for_count(&["plugin reloaded", "subscriber=formatter"], 30);
    assert_eq!(host.count(&["plugin reloaded", "subscriber=formatter"]), 30);
    let grown = host.peak_memory().saturating_sub(before);
    assert!(
        grown < 1 << 30,
        "30 parallel reloads grew the peak memory by {} MiB",
        grown >> 20
    );
    host.stop();
}

/// Every admin error is JSON `{"error": ...}`: a request line too long, a
/// wrong method, a body too large, a path that is not UTF-8.
#[test]
fn every_admin_error_is_json() {
    let s = Setup::new("json-errors", "");
    let host = Host::with_config(&s.config);
    host.wait_for(&["admin API listening"]);
    // A body one byte over the 2 MiB limit: the server reads it all before
    // refusing it, so the close is orderly (unread bytes would make it a reset).
    let send = |head: &str, length: usize| http(&s.admin_addr(), head, &[], &vec![b'x'; length]);
    let long = format!("GET /v1/channels/{} HTTP/1.1", "x".repeat(10_000));
    for (head, length, status) in [
        (long.as_str(), 0, "414"),
        ("PUT /v1/channels HTTP/1.1", 0, "405"),
        ("POST /v1/channels HTTP/1.1", (2 << 20) + 1, "413"),
        ("DELETE /v1/channels/%FF HTTP/1.1", 0, "400"),
    ] {
        let answer = send(head, length);
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status}")),
            "{head}: {answer}"
        );
        let json = answer.split("\r\n\r\n").nth(1).unwrap_or("");
        let value: serde_json::Value = serde_json::from_str(json)
            .unwrap_or_else(|e| panic!("{head}: not JSON ({e}): {answer}"));
        assert!(
            value["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{answer}"
        );
    }
    host.stop();
}

/// With the default overflow policy, a slow subscriber does not pace a fast
/// one on the same channel: the fast one finishes a burst while the slow one
/// has barely started, and neither drops anything the queue can hold.
#[tokio::test]
async fn a_slow_subscriber_never_paces_a_fast_one_by_default() {
    let s = Setup::new("pacing", "");
    let ch = channel("pacing");
    std::fs::copy(
        crate::support::example_plugin("noop"),
        s.plugins.join("fast.wasm"),
    )
    .unwrap();
    std::fs::write(
        s.plugins.join("fast.toml"),
        format!("channels = [\"{ch}\"]\n"),
    )
    .unwrap();
    WatPlugin::new(&[ch.as_str()], Notify::Burn(2_000_000)).write(&s.plugins, "slow");
    let host = Host::with_config(&s.config);
    host.wait_for(&["plugin loaded", "subscriber=fast"]);
    host.wait_for(&["LISTEN set updated", &ch]);
    let burst = 20_000;
    Sender::connect()
        .await
        .client
        .execute(
            "select pg_notify($1, 'n' || i) from generate_series(1, $2::int) i",
            &[&ch, &burst],
        )
        .await
        .unwrap();
    let delivered = |id: &str| {
        s.metric(&format!(
            "pgnotifier_subscriber_delivered_total{{subscriber=\"{id}\"}}"
        ))
    };
    let state = || format!("fast got {} of {burst}", delivered("fast"));
    until(SOON, state, || {
        (delivered("fast") >= f64::from(burst)).then_some(())
    });
    let slow = delivered("slow");
    assert!(
        slow < f64::from(burst) / 2.0,
        "the slow subscriber had {slow} of {burst} when the fast one finished: it paced it"
    );
    for id in ["fast", "slow"] {
        let dropped = s.metric(&format!(
            "pgnotifier_subscriber_dropped_total{{subscriber=\"{id}\"}}"
        ));
        assert_eq!(
            dropped, 0.0,
            "{id} dropped {dropped} of a burst its queue holds"
        );
    }
    // The slow one's backlog outlasts any drain deadline: `host` is killed on drop.
}

/// Names from outside are printed with control characters escaped: a
/// channel a plugin registers (in `ctl`'s tables) and a plugin file name (in
/// the log) can neither drive the terminal nor forge a line.
#[tokio::test]
async fn ctl_and_the_log_escape_control_characters() {
    let s = Setup::new("escapes", "");
    let sneaky = format!("{}\u{1b}[2J\nFAKE", channel("esc"));
    s.echo("echo", &channel("esc_plain"));
    let channels = toml::Value::Array(vec![toml::Value::String(sneaky)]);
    std::fs::write(
        s.plugins.join("echo.toml"),
        format!("channels = {channels}\n"),
    )
    .unwrap();
    std::fs::write(s.plugins.join("forged\nERROR line.wasm"), b"junk").unwrap();
    let host = Host::with_config(&s.config);
    host.wait_for(&["LISTEN set updated"]);
    host.wait_for(&["forged\\nERROR line.wasm"]);
    assert_eq!(
        host.count(&["ERROR line.wasm"]),
        host.count(&["forged\\nERROR line.wasm"]),
        "a file name started a line of its own:\n{}",
        host.output()
    );
    let table = ctl_ok(&s.config, &["channels"]);
    assert!(!table.contains('\u{1b}'), "{table:?}");
    assert!(table.contains("\\u{1b}[2J\\nFAKE"), "{table}");
    host.stop();
}

/// A change the state file cannot keep (a read-only data dir) is applied,
/// and the host says it will be lost at restart: in the response, which
/// `ctl` prints, and in `/readyz`.
#[test]
fn an_unsaved_change_is_reported_in_the_response_and_in_readyz() {
    let s = Setup::new("unsaved", "");
    let ch = channel("unsaved");
    s.echo("echo", &ch);
    let host = Host::with_config(&s.config);
    host.wait_for(&["LISTEN set updated", &ch]);
    // A directory where the state file's temp file would go makes every save fail,
    // even as root (who ignores permissions).
    let state = s.data_dir.join("state.json");
    let _ = std::fs::remove_file(&state);
    std::fs::create_dir_all(state.join("blocker")).unwrap();
    let out = crate::support::host::ctl(&s.config, &["mute-channel", &ch]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("warning:") && err.contains("lost at restart"),
        "{err}"
    );
    let answer = http(&s.admin_addr(), "GET /readyz HTTP/1.1", &[], b"");
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("lost at restart"), "{answer}");
    host.stop();
}

/// A plugin that is a symlink is reloaded when its target changes, also when
/// the target is replaced by a rename (as a build tool writes it).
#[tokio::test]
async fn a_symlinked_plugin_is_reloaded_when_its_target_changes() {
    let s = Setup::new("symlink", "");
    let builds = s.dir.join("builds");
    std::fs::create_dir_all(&builds).unwrap();
    let ch = channel("symlinked");
    let target = WatPlugin::new(&[ch.as_str()], Notify::Echo)
        .label("v1")
        .write(&builds, "linked");
    std::os::unix::fs::symlink(&target, s.plugins.join("linked.wasm")).unwrap();
    let host = Host::with_config(&s.config);
    host.wait_for(&["v1", "subscriber=linked"]);
    host.wait_for(&["LISTEN set updated", &ch]);
    let next = WatPlugin::new(&[ch.as_str()], Notify::Echo)
        .label("v2")
        .write(&builds, ".linked-next");
    std::fs::rename(next, &target).unwrap();
    host.wait_for(&["plugin reloaded", "subscriber=linked"]);
    host.wait_for(&["v2", "subscriber=linked"]);
    host.stop();
}

/// Messages name the thing at fault, and say each cause once.
#[test]
fn messages_name_the_thing_at_fault_and_say_each_cause_once() {
    let run = |configure: &dyn Fn(&mut Command)| {
        let mut command = Command::new(BIN);
        configure(&mut command);
        let out = command.output().unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };

    // A data dir that is a file.
    let s = Setup::new("messages", "");
    let file = s.dir.join("not-a-dir");
    std::fs::write(&file, "").unwrap();
    let err = run(&|c| {
        c.args(["run", "--plugins"])
            .arg(&s.plugins)
            .arg("--data-dir")
            .arg(&file)
            .args(["--admin-addr", "127.0.0.1:0"]);
    });
    assert!(err.contains(&file.display().to_string()), "{err}");
    assert_eq!(err.matches("File exists").count(), 1, "{err}");

    // A plugins folder that is not there: the cause is kept, and said once.
    let missing = s.dir.join("no-such-folder");
    let err = run(&|c| {
        c.args(["run", "--plugins"])
            .arg(&missing)
            .arg("--data-dir")
            .arg(&s.data_dir)
            .args(["--admin-addr", "127.0.0.1:0"]);
    });
    assert!(
        err.contains(&format!(
            "cannot watch the plugins folder {}",
            missing.display()
        )),
        "{err}"
    );
    assert_eq!(err.matches("No such file").count(), 1, "{err}");

    // A huge memory_mib in [defaults].
    let huge = Setup::new(
        "messages-huge",
        "[defaults]\nmemory_mib = 99999999999999999999\n",
    );
    let err = run(&|c| {
        c.args(["run", "--config"]).arg(&huge.config);
    });
    assert!(
        err.contains("99999999999999999999 is too large for this setting") && !err.contains("i128"),
        "{err}"
    );

    // A whitespace-only token is no token: beyond loopback, refused.
    let err = run(&|c| {
        c.args(["run", "--plugins"])
            .arg(&s.plugins)
            .args(["--admin-addr", "0.0.0.0:0"])
            .env("PGNOTIFIER_ADMIN_TOKEN", "   ");
    });
    assert!(err.contains("no admin_token is set"), "{err}");

    // An invalid channel in the state file is reported, and the host starts.
    std::fs::create_dir_all(&s.data_dir).unwrap();
    let long = "x".repeat(64);
    std::fs::write(
        s.data_dir.join("state.json"),
        format!("{{\"version\": 1, \"channels\": {{\"{long}\": {{\"muted\": true}}}}}}"),
    )
    .unwrap();
    let host = Host::with_config(&s.config);
    host.wait_for(&["the state file names an invalid channel", &long[..20]]);
    host.wait_for(&["admin API listening"]);

    // SIGHUP with the config file gone: refused once, the cause said once.
    std::fs::remove_file(&s.config).unwrap();
    host.signal("HUP");
    let line = host.wait_for(&["config reload refused"]);
    assert_eq!(line.matches("No such file").count(), 1, "{line}");
    host.stop();
}
