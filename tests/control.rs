//! The control plane, as an operator uses it: `pgnotifier ctl` against a
//! running `pgnotifier run`, a real PostgreSQL, and the effect on delivery.

use crate::support::host::{ctl, ctl_json, ctl_ok, http, parse_metrics, Host, BIN};
use crate::support::wat::{Notify, WatPlugin};
use crate::support::{channel, until, Sender, SOON};
use serde_json::Value;
use std::path::PathBuf;

/// A host with one echo plugin on `channels`, configured by a file.
struct Setup {
    dir: PathBuf,
    plugins: PathBuf,
    config: PathBuf,
    data_dir: PathBuf,
}

impl Setup {
    fn new(name: &str, plugins: &[(&str, &[&str], Notify)], extra: &str) -> Self {
        let base = crate::support::host::Setup::new(name, extra);
        for (id, channels, notify) in plugins {
            WatPlugin::new(channels, *notify).write(&base.plugins, id);
        }
        Self {
            dir: base.dir,
            plugins: base.plugins,
            config: base.config,
            data_dir: base.data_dir,
        }
    }

    fn start(&self) -> Host {
        let host = Host::with_config(&self.config);
        host.wait_for(&["admin API listening"]);
        host.wait_for(&["LISTEN set updated"]);
        host
    }

    fn ctl(&self, args: &[&str]) -> String {
        ctl_ok(&self.config, args)
    }

    fn json(&self, args: &[&str]) -> Value {
        ctl_json(&self.config, args)
    }

    /// Wait until `channel` is LISTENed (or, with `false`, is not).
    fn wait_listening(&self, channel: &str, listening: bool) {
        let state = || {
            format!(
                "{channel} listening={}: {}",
                !listening,
                self.json(&["status"])
            )
        };
        until(SOON, state, || {
            let status = self.json(&["status"]);
            let listened = status["listening"].as_array().unwrap().iter();
            (listened.clone().any(|c| c == channel) == listening).then_some(())
        });
    }

    /// One request to the admin API; the status and the body.
    fn http_get(&self, path: &str) -> (u16, String) {
        let addr = std::fs::read_to_string(self.data_dir.join("admin.addr")).unwrap();
        let response = http(addr.trim(), &format!("GET {path} HTTP/1.1"), &[], b"");
        let status = response[9..12].parse().unwrap();
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        (status, body)
    }
}

/// Send `payload` on `channel`, then a marker on `marker_channel` that
/// `subscriber` does receive; once the marker is in, say whether the payload is.
async fn delivered(
    host: &Host,
    subscriber: &str,
    (channel, payload): (&str, &str),
    marker_channel: &str,
) -> bool {
    let sender = Sender::connect().await;
    sender.notify(channel, payload).await;
    let marker = format!("marker-{payload}");
    sender.notify(marker_channel, &marker).await;
    let tag = format!("subscriber={subscriber}");
    host.wait_for(&[&marker, &tag]);
    host.count(&[payload, &tag]) > host.count(&[&marker, &tag])
}

fn channel_view<'a>(channels: &'a Value, name: &str) -> &'a Value {
    channels
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["channel"] == name)
        .unwrap_or_else(|| panic!("no channel {name} in {channels}"))
}

#[tokio::test]
async fn channel_operations_through_ctl_change_delivery() {
    let (a, b) = (channel("ctl_a"), channel("ctl_b"));
    let s = Setup::new(
        "ctl-channels",
        &[("echo", &[a.as_str(), b.as_str()], Notify::Echo)],
        "",
    );
    let host = s.start();
    s.wait_listening(&a, true);
    s.wait_listening(&b, true);

    let table = s.ctl(&["channels"]);
    assert!(table.starts_with("CHANNEL"), "{table}");
    assert!(table.contains(&a) && table.contains("echo"), "{table}");

    s.ctl(&["mute-channel", &a]);
    let view = s.json(&["channels"]);
    assert_eq!(channel_view(&view, &a)["muted"], true);
    assert_eq!(channel_view(&view, &a)["active"], false);
    assert!(!delivered(&host, "echo", (&a, "while-muted"), &b).await);

    s.ctl(&["unmute-channel", &a]);
    s.wait_listening(&a, true);
    assert!(delivered(&host, "echo", (&a, "after-unmute"), &b).await);

    s.ctl(&["mute-channel", "--all"]);
    let view = s.json(&["channels"]);
    assert!(view.as_array().unwrap().iter().all(|c| c["muted"] == true));
    s.ctl(&["unmute-channel", "--all"]);
    s.wait_listening(&b, true);

    let extra = channel("ctl_extra");
    s.ctl(&["add-channel", &extra]);
    let view = s.json(&["channels"]);
    assert_eq!(
        channel_view(&view, &extra)["active"],
        false,
        "no subscriber yet"
    );
    s.ctl(&["remove-channel", &a]);
    s.wait_listening(&a, false);
    assert!(!delivered(&host, "echo", (&a, "after-remove"), &b).await);
    let view = s.json(&["channels"]);
    assert!(view
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c["channel"] != a.as_str()));

    // Errors name the thing at fault, with the API's status.
    let out = ctl(&s.config, &["mute-channel", "no_such_channel"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown channel \"no_such_channel\"") && err.contains("404"),
        "{err}"
    );
    let long = "x".repeat(64);
    let out = ctl(&s.config, &["add-channel", &long]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("400"), "{err}");
    host.stop();
}

#[tokio::test]
async fn subscriber_operations_through_ctl_change_delivery() {
    let (a, b) = (channel("sub_a"), channel("sub_b"));
    let s = Setup::new(
        "ctl-subscribers",
        &[
            ("echo", &[a.as_str()], Notify::Echo),
            ("other", &[b.as_str()], Notify::Echo),
        ],
        "",
    );
    let host = s.start();
    s.wait_listening(&a, true);

    // subscribe: echo now gets b too.
    let view = s.json(&["subscribe", "echo", &b]);
    let channels: Vec<&str> = (view["channels"].as_array().unwrap().iter())
        .map(|c| c["channel"].as_str().unwrap())
        .collect();
    assert!(channels.contains(&b.as_str()), "{view}");
    assert!(delivered(&host, "echo", (&b, "on-b"), &a).await);

    // mute on one channel, then unmute.
    s.ctl(&["mute-subscriber", "echo", &b]);
    assert!(!delivered(&host, "echo", (&b, "muted-on-b"), &a).await);
    s.ctl(&["unmute-subscriber", "echo", &b]);
    assert!(delivered(&host, "echo", (&b, "unmuted-on-b"), &a).await);

    // mute on every channel: nothing at all arrives.
    s.ctl(&["mute-subscriber", "echo"]);
    let view = s.json(&["subscribers"]);
    let echo = (view.as_array().unwrap().iter())
        .find(|v| v["id"] == "echo")
        .unwrap();
    assert!(echo["channels"]
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c["muted"] == true));
    let sender = Sender::connect().await;
    sender.notify(&a, "all-muted").await;
    sender.notify(&b, "marker-all-muted").await;
    host.wait_for(&["marker-all-muted", "subscriber=other"]);
    assert_eq!(host.count(&["all-muted", "subscriber=echo"]), 0);
    s.ctl(&["unmute-subscriber", "echo"]);

    // unsubscribe: b no longer reaches echo, the subscriber stays.
    s.ctl(&["unsubscribe", "echo", &b]);
    assert!(!delivered(&host, "echo", (&b, "after-unsubscribe"), &a).await);
    let table = s.ctl(&["subscribers"]);
    assert!(table.starts_with("ID"), "{table}");
    assert!(
        table.contains("echo") && table.contains("wit 0.1.0"),
        "{table}"
    );

    // reload: a fresh instance from the same file.
    s.ctl(&["reload", "echo"]);
    host.wait_for(&["plugin reloaded", "subscriber=echo"]);
    s.wait_listening(&a, true);
    assert!(delivered(&host, "echo", (&a, "after-reload"), &a).await);

    let out = ctl(&s.config, &["mute-subscriber", "nobody"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("unknown subscriber \"nobody\"") && err.contains("404"),
        "{err}"
    );
    let out = ctl(&s.config, &["unsubscribe", "echo", "not_its_channel"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not subscribed") && err.contains("404"),
        "{err}"
    );
    host.stop();
}

#[tokio::test]
async fn the_listener_stops_starts_and_restarts_through_ctl() {
    let (a, b) = (channel("lst_a"), channel("lst_b"));
    let s = Setup::new(
        "ctl-listener",
        &[("echo", &[a.as_str(), b.as_str()], Notify::Echo)],
        "",
    );
    let host = s.start();
    s.wait_listening(&a, true);
    let status = s.ctl(&["status"]);
    assert!(
        status.contains("running: yes") && status.contains("connected: yes"),
        "{status}"
    );

    let stopped = s.json(&["stop"]);
    assert_eq!(stopped["running"], false, "{stopped}");
    let sender = Sender::connect().await;
    sender.notify(&a, "while-stopped").await;
    let (ready, body) = s.http_get("/readyz");
    assert_eq!(ready, 503, "{body}");
    assert!(body.contains("stopped"), "{body}");

    s.ctl(&["start"]);
    s.wait_listening(&a, true);
    assert!(delivered(&host, "echo", (&a, "after-start"), &b).await);
    assert_eq!(host.count(&["while-stopped", "subscriber=echo"]), 0);
    // The stop was a gap: its bounds, channels and cause are shown, and
    // so is how full PostgreSQL's NOTIFY queue is.
    let status = s.json(&["status"]);
    let gap = &status["last_gap"];
    assert!(
        gap["lost_at_ms"].as_u64() <= gap["resumed_at_ms"].as_u64(),
        "{status}"
    );
    assert!(gap["lost_at_ms"].as_u64().is_some(), "{status}");
    let channels = gap["channels"].as_array().unwrap();
    assert!(channels.iter().any(|c| c == a.as_str()), "{status}");
    assert!(
        gap["cause"].as_str().unwrap().contains("stopped"),
        "{status}"
    );
    let usage = status["notify_queue_usage"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&usage), "{status}");

    let before = s.json(&["status"])["backend_pid"].as_i64().unwrap();
    s.ctl(&["restart"]);
    s.wait_listening(&a, true);
    let after = s.json(&["status"])["backend_pid"].as_i64().unwrap();
    assert_ne!(before, after, "a restart opens a new connection");
    assert!(delivered(&host, "echo", (&a, "after-restart"), &b).await);
    host.stop();
}

#[tokio::test]
async fn metrics_are_scraped_and_parse() {
    let (a, b) = (channel("met_a"), channel("met_b"));
    let s = Setup::new(
        "ctl-metrics",
        &[
            ("echo", &[a.as_str()], Notify::Echo),
            ("failing", &[b.as_str()], Notify::Fail),
        ],
        "[defaults]\nfailure_threshold = 0\n",
    );
    let host = s.start();
    s.wait_listening(&b, true);
    let sender = Sender::connect().await;
    for i in 0..5 {
        sender.notify(&a, &format!("m{i}")).await;
    }
    for i in 0..3 {
        sender.notify(&b, &format!("f{i}")).await;
    }
    host.wait_for(&["m4", "subscriber=echo"]);
    let state = || format!("failing never failed 3 times: {}", s.ctl(&["metrics"]));
    let metrics = until(SOON, state, || {
        let metrics = parse_metrics(&s.ctl(&["metrics"]));
        let failed = metrics.get("pgnotifier_subscriber_failed_total{subscriber=\"failing\"}");
        (failed == Some(&3.0)).then_some(metrics)
    });
    let get = |series: &str| -> f64 {
        *metrics
            .get(series)
            .unwrap_or_else(|| panic!("no {series} in {metrics:#?}"))
    };
    assert_eq!(
        get("pgnotifier_subscriber_delivered_total{subscriber=\"echo\"}"),
        5.0
    );
    assert_eq!(
        get("pgnotifier_subscriber_failed_total{subscriber=\"failing\"}"),
        3.0
    );
    assert_eq!(
        get("pgnotifier_subscriber_timed_out_total{subscriber=\"echo\"}"),
        0.0
    );
    assert_eq!(
        get("pgnotifier_subscriber_dropped_total{subscriber=\"echo\"}"),
        0.0
    );
    assert_eq!(
        get("pgnotifier_subscriber_queue_depth{subscriber=\"echo\"}"),
        0.0
    );
    assert_eq!(
        get("pgnotifier_subscriber_call_duration_seconds_count{subscriber=\"echo\"}"),
        5.0
    );
    assert_eq!(
        get("pgnotifier_subscriber_call_duration_seconds_bucket{subscriber=\"echo\",le=\"+Inf\"}"),
        5.0
    );
    assert!(get("pgnotifier_subscriber_call_duration_seconds_sum{subscriber=\"echo\"}") > 0.0);
    assert_eq!(
        get(&format!(
            "pgnotifier_channel_received_total{{channel=\"{a}\"}}"
        )),
        5.0
    );
    assert_eq!(
        get(&format!(
            "pgnotifier_channel_received_total{{channel=\"{b}\"}}"
        )),
        3.0
    );
    assert_eq!(get("pgnotifier_listener_connected"), 1.0);
    assert_eq!(get("pgnotifier_listener_reconnects_total"), 0.0);
    assert_eq!(get("pgnotifier_listener_gap_events_total"), 0.0);
    let age = get("pgnotifier_listener_last_notification_age_seconds");
    assert!((0.0..60.0).contains(&age), "{age}");
    assert_eq!(get("pgnotifier_plugin_loads_total"), 2.0);
    assert_eq!(get("pgnotifier_plugin_load_failures_total"), 0.0);
    assert!(metrics.contains_key("pgnotifier_plugin_compile_cache_hits_total"));

    // A bad plugin file counts as a load failure; the others keep running.
    std::fs::write(s.dir.join("plugins/broken.wasm"), b"\0asm not really").unwrap();
    until(
        SOON,
        || host.output(),
        || {
            let metrics = parse_metrics(&s.ctl(&["metrics"]));
            (metrics["pgnotifier_plugin_load_failures_total"] >= 1.0).then_some(())
        },
    );

    assert_eq!(s.http_get("/healthz"), (200, "ok\n".to_owned()));
    let (ready, body) = s.http_get("/readyz");
    assert_eq!(ready, 200, "{body}");
    host.stop();
}

#[tokio::test]
async fn mutes_and_runtime_subscriptions_survive_a_restart() {
    let (a, b, c, d) = (
        channel("st_a"),
        channel("st_b"),
        channel("st_c"),
        channel("st_d"),
    );
    let s = Setup::new(
        "ctl-state",
        &[
            ("echo", &[a.as_str(), b.as_str()], Notify::Echo),
            ("marker", &[c.as_str()], Notify::Echo),
            ("failing", &[d.as_str()], Notify::Fail),
        ],
        "",
    );
    std::fs::write(
        s.dir.join("plugins/failing.toml"),
        "failure_threshold = 1\n",
    )
    .unwrap();
    let host = s.start();
    s.wait_listening(&d, true);
    Sender::connect().await.notify(&d, "fail-once").await;
    host.wait_for(&["quarantined", "subscriber=failing"]);
    s.wait_listening(&a, true);
    s.ctl(&["mute-channel", &a]);
    s.ctl(&["mute-subscriber", "echo", &b]);
    s.ctl(&["subscribe", "echo", &c]);
    s.ctl(&["unsubscribe", "marker", &c]);
    s.ctl(&["subscribe", "marker", &b]);
    host.stop();
    let saved = std::fs::read_to_string(s.data_dir.join("state.json")).unwrap();
    assert!(saved.contains(&a) && saved.contains(&c), "{saved}");

    let host = s.start();
    host.wait_for(&["saved mutes and subscriptions restored", "subscriber=echo"]);
    s.wait_listening(&c, true);
    let view = s.json(&["channels"]);
    assert_eq!(channel_view(&view, &a)["muted"], true, "{view}");
    let view = s.json(&["subscribers"]);
    let failing = (view.as_array().unwrap().iter())
        .find(|v| v["id"] == "failing")
        .unwrap();
    let reason = failing["quarantine"].as_str().unwrap_or_default();
    assert!(reason.contains("1 failures in a row"), "{failing}");
    // a is muted, echo is muted on b, echo has c; marker traded c for b.
    assert!(!delivered(&host, "echo", (&a, "restart-a"), &c).await);
    assert!(!delivered(&host, "echo", (&b, "restart-b"), &c).await);
    assert!(delivered(&host, "marker", (&b, "marker-gets-b"), &b).await);
    assert_eq!(host.count(&["restart-c", "subscriber=marker"]), 0);
    host.stop();

    // A corrupt state file is set aside; the host starts without it.
    std::fs::write(s.data_dir.join("state.json"), "{ torn").unwrap();
    let host = s.start();
    host.wait_for(&["state file unreadable"]);
    s.wait_listening(&a, true);
    let aside = std::fs::read_dir(&s.data_dir)
        .unwrap()
        .filter_map(Result::ok)
        .any(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("state.json.corrupt-")
        });
    assert!(aside, "the corrupt file is kept aside");
    assert!(delivered(&host, "echo", (&a, "fresh-a"), &a).await);
    host.stop();
}

#[test]
fn a_non_loopback_bind_without_a_token_refuses_to_start() {
    let s = Setup::new("ctl-exposed", &[], "");
    let out = std::process::Command::new(BIN)
        .args(["run", "--config"])
        .arg(&s.config)
        .env("PGNOTIFIER_ADMIN_ADDR", "0.0.0.0:0")
        .env_remove("PGNOTIFIER_ADMIN_TOKEN")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("0.0.0.0:0 is not a loopback address") && err.contains("admin_token"),
        "{err}"
    );
}

#[tokio::test]
async fn with_a_token_every_control_route_requires_it() {
    let a = channel("tok");
    let s = Setup::new(
        "ctl-token",
        &[("echo", &[a.as_str()], Notify::Echo)],
        "admin_token = \"s3cret-token\"\n",
    );
    let host = Host::start({
        let mut command = std::process::Command::new(BIN);
        command
            .args(["run", "--config"])
            .arg(&s.config)
            .env("PGNOTIFIER_ADMIN_ADDR", "0.0.0.0:0");
        command
    });
    host.wait_for(&["LISTEN set updated"]);
    // ctl reads the token from the same config file.
    assert!(s.ctl(&["channels"]).contains(&a));
    let (status, body) = s.http_get("/v1/channels");
    assert_eq!(status, 401, "{body}");
    assert_eq!(s.http_get("/metrics").0, 401);
    assert_eq!(s.http_get("/v1/stream").0, 401, "the live stream too");
    assert_eq!(s.http_get("/v1/events").0, 401, "the host's events too");
    // The console's page loads without it, and asks for it; its data does not.
    let (status, page) = s.http_get("/");
    assert_eq!(status, 200, "{page}");
    assert!(
        page.contains("/console.js") && page.contains("token"),
        "{page}"
    );
    let (status, script) = s.http_get("/console.js");
    assert_eq!(status, 200);
    assert!(
        script.contains("/v1/stream") && script.contains("Authorization"),
        "{script}"
    );
    assert_eq!(s.http_get("/console.css").0, 200);
    assert_eq!(s.http_get("/healthz").0, 200);
    let wrong = std::process::Command::new(BIN)
        .arg("ctl")
        .arg("--data-dir")
        .arg(&s.data_dir)
        .args(["--admin-addr", "127.0.0.1:0", "channels"])
        .env("PGNOTIFIER_ADMIN_TOKEN", "guess")
        .output()
        .unwrap();
    assert!(!wrong.status.success());
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("401"));
    let output = host.stop();
    assert!(
        !output.contains("s3cret-token"),
        "the token is never logged"
    );
}

#[tokio::test]
async fn sighup_applies_a_changed_config_and_refuses_a_broken_one() {
    let (a, marker) = (channel("hup"), channel("hup_marker"));
    let s = Setup::new(
        "ctl-sighup",
        &[
            ("failing", &[a.as_str()], Notify::Fail),
            ("echo", &[marker.as_str()], Notify::Echo),
        ],
        "[defaults]\nfailure_threshold = 0\n",
    );
    let host = s.start();
    s.wait_listening(&a, true);
    let sender = Sender::connect().await;
    for i in 0..3 {
        sender.notify(&a, &format!("x{i}")).await;
    }
    sender.notify(&marker, "before-hup").await;
    host.wait_for(&["before-hup"]);
    let quarantined = |s: &Setup| {
        let view = s.json(&["subscribers"]);
        (view.as_array().unwrap().iter())
            .find(|v| v["id"] == "failing")
            .map(|v| !v["quarantine"].is_null())
            .unwrap()
    };
    assert!(!quarantined(&s), "threshold 0 never quarantines");

    let config = std::fs::read_to_string(&s.config).unwrap();
    let changed = config.replace("failure_threshold = 0", "failure_threshold = 1");
    std::fs::write(&s.config, &changed).unwrap();
    host.signal("HUP");
    host.wait_for(&["config reloaded", "defaults"]);
    sender.notify(&a, "after-hup").await;
    until(SOON, || host.output(), || quarantined(&s).then_some(()));

    // A new queue warning threshold needs no new connection: the same
    // backend LISTENs, and no subscriber is told of a gap.
    let backend = |s: &Setup| {
        let (status, body) = s.http_get("/v1/listener");
        assert_eq!(status, 200, "{body}");
        let view: Value = serde_json::from_str(&body).unwrap();
        view["backend_pid"].as_i64().expect("connected")
    };
    let before = backend(&s);
    let warned = changed.replace("[defaults]", "queue_usage_warn_percent = 50\n[defaults]");
    std::fs::write(&s.config, &warned).unwrap();
    host.signal("HUP");
    host.wait_for(&["config reloaded", "queue_usage_warn_percent"]);
    assert_eq!(backend(&s), before, "the listener kept its connection");
    assert_eq!(
        host.count(&["notifications may have been missed"]),
        0,
        "no gap event"
    );
    let changed = warned;

    std::fs::write(&s.config, format!("{changed}\nnot toml at all [")).unwrap();
    host.signal("HUP");
    host.wait_for(&["config reload refused"]);
    // ctl reads the same, now broken, file: ask the API directly.
    let (status, body) = s.http_get("/v1/listener");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"running\":true"), "{body}");
    host.stop();
}

#[tokio::test]
async fn json_logs_carry_the_subscriber_id() {
    let a = channel("jsonlog");
    let s = Setup::new(
        "ctl-json-logs",
        &[("echo", &[a.as_str()], Notify::Echo)],
        "",
    );
    let mut command = std::process::Command::new(BIN);
    command
        .args(["--log-format", "json", "run", "--config"])
        .arg(&s.config);
    let host = Host::start(command);
    host.wait_for(&["LISTEN set updated"]);
    s.wait_listening(&a, true);
    Sender::connect().await.notify(&a, "json-line").await;
    let line = host.wait_for(&["json-line"]);
    let parsed: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!(parsed["subscriber"], "echo", "{line}");
    let output = host.stop();
    for line in output.lines() {
        let parsed: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        let message = parsed["message"].as_str().unwrap_or_default();
        if message.contains("plugin") {
            assert!(
                parsed.get("subscriber").is_some(),
                "a plugin line without its id: {line}"
            );
        }
    }
}

/// A page of another site cannot change anything (cross-site request
/// forgery), nor, without a token, read the API through a DNS name that
/// points at loopback (DNS rebinding); ctl and same-origin requests can.
#[tokio::test]
async fn a_cross_site_request_and_a_foreign_host_are_refused() {
    let a = channel("csrf");
    let s = Setup::new("ctl-csrf", &[("echo", &[a.as_str()], Notify::Echo)], "");
    let _host = s.start();
    let addr = std::fs::read_to_string(s.data_dir.join("admin.addr")).unwrap();
    let addr = addr.trim();
    let post = |headers: &[&str]| {
        let answer = http(
            addr,
            "POST /v1/channels/mute HTTP/1.1",
            headers,
            b"{\"all\": true}",
        );
        (answer[9..12].parse::<u16>().unwrap(), answer)
    };
    let (status, answer) = post(&[
        "Origin: https://evil.example",
        "Content-Type: application/json",
    ]);
    assert_eq!(status, 403, "{answer}");
    assert!(answer.contains("cross-site"), "{answer}");
    let (status, answer) = post(&[
        "Sec-Fetch-Site: cross-site",
        "Content-Type: application/json",
    ]);
    assert_eq!(status, 403, "{answer}");
    let (status, answer) = post(&["Origin: null", "Content-Type: application/json"]);
    assert_eq!(status, 403, "{answer}");
    // Nothing was muted by them.
    let channels = s.json(&["channels"]);
    assert_eq!(channel_view(&channels, &a)["muted"], false, "{channels}");
    // A DNS name pointing here is not this API's, for reading either.
    let answer = http(
        addr,
        "GET /v1/channels HTTP/1.1",
        &["Host: evil.example:7433"],
        b"",
    );
    assert!(answer.starts_with("HTTP/1.1 421"), "{answer}");
    assert!(answer.contains("DNS rebinding"), "{answer}");
    // A page the host serves itself (same origin) may.
    let origin = format!("Origin: http://{addr}");
    let (status, answer) = post(&[
        &origin,
        "Sec-Fetch-Site: same-origin",
        "Content-Type: application/json",
    ]);
    assert_eq!(status, 200, "{answer}");
    let channels = s.json(&["channels"]);
    assert_eq!(channel_view(&channels, &a)["muted"], true, "{channels}");
}

/// The live stream of a client (`GET /v1/stream`): the response head, then
/// each `state` event's data, read off its chunked body as it comes.
struct LiveStream {
    reader: std::io::BufReader<std::net::TcpStream>,
}

impl LiveStream {
    fn open(addr: &str) -> (String, Self) {
        use std::io::{BufRead, Write};
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        write!(stream, "GET /v1/stream HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
        stream.set_read_timeout(Some(SOON)).unwrap();
        let mut reader = std::io::BufReader::new(stream);
        let mut head = String::new();
        while !head.ends_with("\r\n\r\n") {
            if reader.read_line(&mut head).unwrap() == 0 {
                break;
            }
        }
        (head, Self { reader })
    }

    /// The next chunk of the body; `None` at its end (or the connection's).
    fn chunk(&mut self) -> Option<String> {
        use std::io::{BufRead, Read};
        let mut size = String::new();
        self.reader.read_line(&mut size).ok()?;
        let size = usize::from_str_radix(size.trim(), 16).ok()?;
        if size == 0 {
            return None;
        }
        let mut data = vec![0; size + 2];
        self.reader.read_exact(&mut data).ok()?;
        Some(String::from_utf8_lossy(&data[..size]).into_owned())
    }

    /// The next state sent, skipping keep-alive comments.
    fn next_state(&mut self) -> Option<Value> {
        let mut text = String::new();
        loop {
            text.push_str(&self.chunk()?);
            if let Some(event) = text.split("\n\n").find(|e| e.contains("event: state")) {
                let data = event.lines().find_map(|l| l.strip_prefix("data: "))?;
                return Some(serde_json::from_str(data).unwrap());
            }
        }
    }
}

fn delivered_of(state: &Value, id: &str) -> u64 {
    let subscribers = state["subscribers"].as_array().unwrap();
    let subscriber = subscribers.iter().find(|s| s["id"] == id).unwrap();
    subscriber["stats"]["delivered"].as_u64().unwrap()
}

/// The live stream sends the state at once, then each change (a delivery
/// counted), and ends cleanly when the host shuts down.
#[tokio::test]
async fn the_live_stream_follows_delivery_and_ends_at_shutdown() {
    let a = channel("live");
    let s = Setup::new("ctl-live", &[("echo", &[a.as_str()], Notify::Echo)], "");
    let host = s.start();
    s.wait_listening(&a, true);
    let addr = std::fs::read_to_string(s.data_dir.join("admin.addr")).unwrap();
    let (head, mut live) = LiveStream::open(addr.trim());
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("text/event-stream"), "{head}");
    let first = live.next_state().expect("the state at once");
    assert_eq!(first["listener"]["connected"], true, "{first}");
    let before = delivered_of(&first, "echo");
    Sender::connect().await.notify(&a, "tick").await;
    let started = std::time::Instant::now();
    let after = loop {
        let state = live.next_state().expect("a change");
        if delivered_of(&state, "echo") > before {
            break state;
        }
        assert!(started.elapsed() < SOON, "never delivered: {state}");
    };
    assert_eq!(delivered_of(&after, "echo"), before + 1);
    // Shutdown ends the stream (the body's last chunk), without waiting
    // out the grace of requests in flight.
    let stopping = std::thread::spawn(move || host.stop());
    let ended = std::time::Instant::now();
    while live.next_state().is_some() {}
    assert!(
        ended.elapsed() < std::time::Duration::from_secs(2),
        "the stream ended {:?} after shutdown began",
        ended.elapsed()
    );
    let output = stopping.join().unwrap();
    assert!(!output.contains("cut off"), "{output}");
}

/// The console's files come from the binary, may load nothing from
/// elsewhere, and may not be framed.
#[tokio::test]
async fn the_console_is_served_from_the_binary_and_loads_nothing_from_elsewhere() {
    let a = channel("console");
    let s = Setup::new("ctl-console", &[("echo", &[a.as_str()], Notify::Echo)], "");
    let _host = s.start();
    let addr = std::fs::read_to_string(s.data_dir.join("admin.addr")).unwrap();
    let answer = http(addr.trim(), "GET / HTTP/1.1", &[], b"");
    let head = answer
        .split("\r\n\r\n")
        .next()
        .unwrap()
        .to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{answer}");
    assert!(head.contains("content-type: text/html"), "{head}");
    assert!(
        head.contains("content-security-policy: default-src 'self'; frame-ancestors 'none'"),
        "{head}"
    );
    assert!(head.contains("x-content-type-options: nosniff"), "{head}");
    assert!(
        !answer.contains("http://") && !answer.contains("https://"),
        "{answer}"
    );
}

/// The host tells its own events, through ctl and the API: a plugin
/// loaded, then a broken file dropped into the folder, refused with its
/// error. `after` gives only what follows an event; the live state
/// carries the latest event's number.
#[tokio::test]
async fn the_host_tells_its_events_a_load_and_a_reload_failure() {
    let a = channel("events");
    let s = Setup::new("ctl-events", &[("echo", &[a.as_str()], Notify::Echo)], "");
    let _host = s.start();
    let events = s.json(&["events"]);
    let of = |events: &Value, kind: &str, subject: &str| {
        (events.as_array().unwrap().iter())
            .find(|e| e["kind"] == kind && e["subject"] == subject)
            .cloned()
    };
    let loaded = of(&events, "loaded", "echo").unwrap_or_else(|| panic!("{events}"));
    std::fs::write(s.plugins.join("broken.wasm"), b"not a component").unwrap();
    let failed = until(
        SOON,
        || s.json(&["events"]).to_string(),
        || of(&s.json(&["events"]), "load_failed", "broken"),
    );
    let detail = failed["detail"].as_str().unwrap();
    assert!(detail.contains("broken.wasm"), "{failed}");
    assert!(failed["seq"].as_u64() > loaded["seq"].as_u64(), "{failed}");
    let after = loaded["seq"].as_u64().unwrap();
    let (status, body) = s.http_get(&format!("/v1/events?after={after}"));
    assert_eq!(status, 200, "{body}");
    let newer: Value = serde_json::from_str(&body).unwrap();
    assert!(
        (newer.as_array().unwrap().iter()).all(|e| e["seq"].as_u64().unwrap() > after),
        "{newer}"
    );
    assert!(of(&newer, "load_failed", "broken").is_some(), "{newer}");
    let table = s.ctl(&["events"]);
    assert!(
        table.contains("load_failed") && table.contains("broken"),
        "{table}"
    );
    let addr = std::fs::read_to_string(s.data_dir.join("admin.addr")).unwrap();
    let (_, mut live) = LiveStream::open(addr.trim());
    let state = live.next_state().expect("the state at once");
    assert!(
        state["last_event"].as_u64() >= failed["seq"].as_u64(),
        "{state}"
    );
}

/// A test notification sent through ctl (the console's route) reaches the
/// channel's subscriber; a channel name PostgreSQL would refuse is refused.
#[tokio::test]
async fn a_test_notification_sent_through_the_api_is_delivered() {
    let a = channel("test_notify");
    let s = Setup::new("ctl-notify", &[("echo", &[a.as_str()], Notify::Echo)], "");
    let host = s.start();
    s.wait_listening(&a, true);
    let sent = s.json(&["notify", &a, "hello-from-ctl"]);
    assert_eq!(sent["channel"], a.as_str(), "{sent}");
    host.wait_for(&["hello-from-ctl", "subscriber=echo"]);
    let long = "x".repeat(64);
    let refused = ctl(&s.config, &["notify", &long, "x"]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("is 64 bytes; PostgreSQL allows at most 63"),
        "{stderr}"
    );
}
