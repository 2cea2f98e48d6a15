//! The `pgnotifier` binary, as a user runs it.

use crate::support::host::{Host, BIN};
use crate::support::wat::{Notify, WatPlugin};
use crate::support::{channel, Sender};
use std::path::Path;
use std::process::Command;

/// The issue's acceptance run: the Rust example plugin in `plugins/dist`
/// receives `(id, "ch1", json {"a":1}, pid)`, and guest stdio shows up too.
#[tokio::test]
async fn run_shows_the_example_plugin_receiving_a_notification() {
    let dir = crate::support::temp_dir("cli-run");
    std::fs::copy(
        crate::support::example_plugin("logger"),
        dir.join("logger.wasm"),
    )
    .unwrap();
    WatPlugin::new(&["ch1"], Notify::Stdio).write(&dir, "stdio");
    let host = Host::run(&dir, crate::support::database_url());
    host.wait_for(&["LISTEN set updated", "ch1"]);

    let sender = Sender::connect().await;
    let pid = sender.pid().await;
    sender
        .client
        .execute(r#"select pg_notify('ch1', '{"a":1}')"#, &[])
        .await
        .unwrap();
    sender.notify("ch1", "plain words").await;

    let line = host.wait_for(&[r#"(logger, "ch1", json {"a":1}, "#]);
    assert!(line.contains(&format!(", {pid})")), "{line}");
    assert!(
        line.contains("subscriber=logger"),
        "tagged with the id: {line}"
    );
    host.wait_for(&["plain words", "subscriber=stdio", "stdout"]);
    host.wait_for(&["plain words", "subscriber=stdio", "stderr"]);

    host.signal("TERM");
    let (status, output) = host.wait();
    assert!(status.success(), "{status}\n{output}");
    assert!(
        output.contains("all queued notifications delivered"),
        "{output}"
    );
}

/// SIGTERM lets queued and in-flight calls finish before the process exits.
#[tokio::test]
async fn sigterm_drains_queued_notifications_before_exit() {
    let dir = crate::support::temp_dir("cli-drain");
    let ch = channel("drain");
    WatPlugin::new(&[ch.as_str()], Notify::Burn(600_000_000)).write(&dir, "burner");
    std::fs::write(dir.join("burner.toml"), "timeout_ms = 20000\n").unwrap();
    let host = Host::run(&dir, crate::support::database_url());
    host.wait_for(&["LISTEN set updated", &ch]);
    let sender = Sender::connect().await;
    for i in 0..5 {
        sender.notify(&ch, &format!("job {i}")).await;
    }
    host.wait_for(&["job 0", "subscriber=burner"]);
    let at_signal = host.output();
    host.signal("INT");
    assert!(
        !at_signal.contains("job 4"),
        "the test needs work still queued at the signal:\n{at_signal}"
    );
    let (status, output) = host.wait();
    assert!(status.success(), "{status}\n{output}");
    for i in 0..5 {
        assert!(
            output.contains(&format!("job {i}")),
            "job {i} delivered before exit:\n{output}"
        );
    }
}

/// A second signal during the drain exits at once, without waiting for the
/// queued work.
#[tokio::test]
async fn a_second_signal_exits_at_once() {
    let dir = crate::support::temp_dir("cli-second-signal");
    let ch = channel("second");
    WatPlugin::new(&[ch.as_str()], Notify::Burn(600_000_000)).write(&dir, "burner");
    std::fs::write(
        dir.join("burner.toml"),
        "timeout_ms = 20000
",
    )
    .unwrap();
    let host = Host::run(&dir, crate::support::database_url());
    host.wait_for(&["LISTEN set updated", &ch]);
    let sender = Sender::connect().await;
    for i in 0..20 {
        sender.notify(&ch, &format!("job {i}")).await;
    }
    host.wait_for(&["job 0", "subscriber=burner"]);
    host.signal("TERM");
    host.wait_for(&["a second signal exits at once"]);
    host.signal("INT");
    let (status, output) = host.wait();
    assert_eq!(status.code(), Some(130), "{output}");
    assert!(output.contains("second signal: exiting now"), "{output}");
    assert!(
        !output.contains("job 19"),
        "the queue was drained after all:\n{output}"
    );
}

/// With no URL, the libpq variables configure the connection, and the
/// password never appears in the output.
#[tokio::test]
async fn libpq_variables_configure_the_database_and_the_password_is_never_printed() {
    let url: tokio_postgres::Config = crate::support::database_url().parse().unwrap();
    let host = match &url.get_hosts()[0] {
        tokio_postgres::config::Host::Tcp(h) => h.clone(),
        other => panic!("tests use TCP, not {other:?}"),
    };
    let port = url.get_ports().first().copied().unwrap_or(5432);
    let dir = crate::support::temp_dir("cli-env");
    let ch = channel("env");
    WatPlugin::new(&[ch.as_str()], Notify::Echo).write(&dir, "echo");

    let mut command = Host::command();
    command
        .args(["run", "--plugins"])
        .arg(&dir)
        .env_remove("DATABASE_URL")
        .env("PGHOST", &host)
        .env("PGPORT", port.to_string())
        .env("PGUSER", url.get_user().unwrap())
        .env("PGDATABASE", url.get_dbname().unwrap_or("postgres"))
        .env("PGPASSWORD", "hunter2-secret");
    let run = Host::start(command);
    run.wait_for(&[
        "connected",
        &format!("postgres://{}:***@{host}:{port}/", url.get_user().unwrap()),
    ]);
    run.wait_for(&["LISTEN set updated", &ch]);
    Sender::connect()
        .await
        .notify(&ch, "via PG variables")
        .await;
    run.wait_for(&["via PG variables", "subscriber=echo"]);
    run.signal("TERM");
    let (status, output) = run.wait();
    assert!(status.success(), "{output}");
    assert!(!output.contains("hunter2"), "password leaked:\n{output}");

    // A URL with a password is shown redacted too, even when it cannot connect.
    let bad = Host::run(
        &dir,
        "postgres://someone:hunter2-secret@127.0.0.1:1/nowhere",
    );
    bad.wait_for(&["cannot connect to postgres://someone:***@127.0.0.1:1/nowhere"]);
    bad.signal("TERM");
    let (_, output) = bad.wait();
    assert!(!output.contains("hunter2"), "password leaked:\n{output}");
}

/// Everything can come from the config file: database, plugins folder, defaults.
#[tokio::test]
async fn the_config_file_sets_database_plugins_and_defaults() {
    let dir = crate::support::temp_dir("cli-config");
    let plugins = dir.join("plugins");
    std::fs::create_dir(&plugins).unwrap();
    let ch = channel("config");
    WatPlugin::new(&[ch.as_str()], Notify::Spin).write(&plugins, "spinner");
    let config = dir.join("pgnotifier.toml");
    std::fs::write(
        &config,
        format!(
            "database_url = \"{}\"\nplugins = \"{}\"\n\n[defaults]\ntimeout_ms = 50\n",
            crate::support::database_url(),
            plugins.display()
        ),
    )
    .unwrap();
    let mut command = Host::command();
    command
        .args(["run", "--config"])
        .arg(&config)
        .env_remove("DATABASE_URL");
    let host = Host::start(command);
    host.wait_for(&["LISTEN set updated", &ch]);
    Sender::connect().await.notify(&ch, "spin").await;
    host.wait_for(&["subscriber=spinner", "ran past its deadline of 50ms"]);
    host.signal("TERM");
    let (status, output) = host.wait();
    assert!(status.success(), "{output}");

    std::fs::write(&config, "[defaults]\nqueue_size = 0\n").unwrap();
    let out = Host::command()
        .args(["run", "--plugins"])
        .arg(&plugins)
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("queue_size: 0 is outside"), "{stderr}");
}

#[test]
fn check_prints_the_id_and_channels_of_a_valid_plugin() {
    let out = Command::new(BIN)
        .arg("check")
        .arg(crate::support::example_plugin("logger"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "id: logger\nchannels: ch1\ngrants: none\n"
    );
    // The sidecar beside the file grants capabilities; check shows them.
    let out = Command::new(BIN)
        .arg("check")
        .arg(crate::support::examples_plugin("order-webhook"))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "id: order-webhook\nchannels: orders_changed\ngrants: query (read-only) as role order_webhook; http to http://127.0.0.1:8080\n",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn check_rejects_an_invalid_plugin_with_a_clear_message() {
    let dir = crate::support::temp_dir("cli-check");
    let path = dir.join("broken.wasm");
    std::fs::write(&path, wat::parse_str("(module)").unwrap()).unwrap();
    let out = Command::new(BIN).arg("check").arg(&path).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&path.display().to_string()), "{stderr}");
    assert!(stderr.contains("not a component"), "{stderr}");
}

#[test]
fn wit_prints_the_contract() {
    let out = Command::new(BIN).arg("wit").output().unwrap();
    assert!(out.status.success());
    let wit = std::fs::read_to_string(crate::support::repo().join("wit/plugin.wit")).unwrap();
    assert_eq!(String::from_utf8(out.stdout).unwrap(), wit);
    assert!(wit.contains("package pgnotifier:plugin@0.5.0;"));
    assert!(wit.contains("world batched-plugin"));
}

/// The contract docs/plugins.md shows, condensed, is the contract: the same
/// interfaces, types, functions and worlds as `wit/plugin.wit`, comments aside.
#[test]
fn the_contract_in_the_plugin_guide_is_the_real_one() {
    let guide = std::fs::read_to_string(crate::support::repo().join("docs/plugins.md")).unwrap();
    let shown = guide
        .split_once("```wit\n")
        .and_then(|(_, rest)| rest.split_once("\n```"))
        .map(|(wit, _)| wit)
        .expect("docs/plugins.md shows the contract in a ```wit block");
    let real = std::fs::read_to_string(crate::support::repo().join("wit/plugin.wit")).unwrap();
    assert_eq!(printed(shown), printed(&real), "docs/plugins.md's WIT");
}

/// `wit` as the WIT printer writes it, without doc comments.
fn printed(wit: &str) -> String {
    let mut resolve = wit_parser::Resolve::default();
    let package = resolve
        .push_str("plugin.wit", wit)
        .unwrap_or_else(|e| panic!("{e:?}"));
    let mut printer = wit_component::WitPrinter::default();
    printer.emit_docs(false);
    printer.print(&resolve, package, &[]).unwrap();
    printer.output.to_string()
}

#[test]
fn run_without_a_plugins_folder_says_what_is_missing() {
    let out = Command::new(BIN)
        .args(["run", "--database-url", crate::support::database_url()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no plugins folder: pass --plugins DIR"));
}

/// `run` follows the plugins folder: a plugin dropped in while it runs is
/// loaded and LISTENed without a restart.
#[tokio::test]
async fn run_loads_a_plugin_dropped_into_the_folder() {
    let dir = crate::support::temp_dir("cli-hot");
    let ch = channel("hot");
    let host = Host::run(&dir, crate::support::database_url());
    host.wait_for(&["starting"]);
    WatPlugin::new(&[ch.as_str()], Notify::Echo).write(&dir, "dropped");
    host.wait_for(&["LISTEN set updated", &ch]);
    Sender::connect().await.notify(&ch, "hot hello").await;
    host.wait_for(&["hot hello", "subscriber=dropped"]);
    host.signal("TERM");
    let (status, output) = host.wait();
    assert!(status.success(), "{status}\n{output}");
}

/// verify-full against an address the server's certificate does not name:
/// the host keeps retrying and says why it cannot connect.
#[tokio::test]
async fn a_tls_verification_failure_is_a_clear_error() {
    let sender = Sender::connect().await;
    let cert: String = sender
        .client
        .query_one("show ssl_cert_file", &[])
        .await
        .unwrap()
        .get(0);
    let base = crate::support::database_url();
    let joiner = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{joiner}sslmode=verify-full&sslrootcert={cert}");
    let dir = crate::support::temp_dir("cli-tls");
    let host = Host::run(&dir, &url);
    let line = host.wait_for(&["cannot connect", "sslmode=verify-full", "TLS"]);
    assert!(line.contains("not valid for name"), "{line}");
    host.signal("TERM");
    let (status, output) = host.wait();
    assert!(status.success(), "{status}\n{output}");
}

/// libpq's ways of naming a Unix socket, as the host must take them. libpq
/// never uses TLS on a socket, so `sslmode` changes nothing there.
#[tokio::test]
async fn the_host_connects_over_a_unix_socket_in_every_form_libpq_accepts() {
    let (socket, port) = crate::support::socket_dir().await;
    let dir = socket.display().to_string();
    let encoded = crate::support::url_encoded(&socket);
    let forms: Vec<(&str, Vec<(&str, String)>)> = vec![
        (
            "PGHOST",
            vec![("PGHOST", dir.clone()), ("PGPORT", port.to_string())],
        ),
        (
            "query host",
            vec![(
                "DATABASE_URL",
                format!("postgres:///postgres?host={dir}&port={port}"),
            )],
        ),
        (
            "encoded host",
            vec![(
                "DATABASE_URL",
                format!("postgres://{encoded}:{port}/postgres"),
            )],
        ),
        (
            "key=value",
            vec![(
                "DATABASE_URL",
                format!("host={dir} port={port} dbname=postgres"),
            )],
        ),
        (
            "sslmode=disable",
            vec![(
                "DATABASE_URL",
                format!("postgres://{encoded}:{port}/postgres?sslmode=disable"),
            )],
        ),
        (
            "sslmode=require",
            vec![(
                "DATABASE_URL",
                format!("postgres://{encoded}:{port}/postgres?sslmode=require"),
            )],
        ),
    ];
    let sender = Sender::connect().await;
    for (form, env) in forms {
        let plugins = crate::support::temp_dir("cli-socket");
        let ch = channel("socket");
        WatPlugin::new(&[ch.as_str()], Notify::Echo).write(&plugins, "echo");
        let mut command = without_database_settings(Host::command());
        command.args(["run", "--plugins"]).arg(&plugins).envs(env);
        let host = Host::start(command);
        let connected = host.wait_for(&["connected"]);
        assert!(connected.contains(&dir), "{form}: {connected}");
        host.wait_for(&["LISTEN set updated", &ch]);
        sender.notify(&ch, "over the socket").await;
        host.wait_for(&["over the socket", "subscriber=echo"]);
        let output = host.stop();
        assert!(!output.contains("TLS"), "{form}:\n{output}");
    }
}

/// With no database settings at all, the host connects where libpq does:
/// the default socket directory.
#[tokio::test]
async fn with_no_database_settings_the_host_uses_the_default_socket() {
    let default = std::path::Path::new("/var/run/postgresql/.s.PGSQL.5432");
    assert!(
        default.exists(),
        "this test needs a PostgreSQL listening on libpq's default socket, {}",
        default.display()
    );
    let plugins = crate::support::temp_dir("cli-default-socket");
    let ch = channel("default_socket");
    WatPlugin::new(&[ch.as_str()], Notify::Echo).write(&plugins, "echo");
    let mut command = without_database_settings(Host::command());
    command.args(["run", "--plugins"]).arg(&plugins);
    let host = Host::start(command);
    host.wait_for(&["connected", "@[/var/run/postgresql]"]);
    host.wait_for(&["LISTEN set updated", &ch]);
    Sender::connect().await.notify(&ch, "by default").await;
    host.wait_for(&["by default", "subscriber=echo"]);
    host.stop();
}

/// The demo probes and uses a socket `DATABASE_URL` as the host would.
#[test]
fn the_demo_uses_a_socket_database_url() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (socket, port) = runtime.block_on(crate::support::socket_dir());
    let url = format!(
        "postgres://{}:{port}/postgres",
        crate::support::url_encoded(&socket)
    );
    let out = without_database_settings(Command::new(BIN))
        .args(["demo", "--once"])
        .env("DATABASE_URL", &url)
        .output()
        .expect("run the demo");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("using DATABASE_URL: postgres://"), "{text}");
    assert!(!text.contains("throwaway"), "{text}");
}

/// A command with none of the settings that name a database.
fn without_database_settings(mut command: Command) -> Command {
    for var in [
        "DATABASE_URL",
        "PGHOST",
        "PGPORT",
        "PGUSER",
        "PGDATABASE",
        "PGPASSWORD",
        "PGSSLMODE",
    ] {
        command.env_remove(var);
    }
    command
}

/// `record` writes one JSON object per notification: the channel, the
/// payload exactly as sent (text, JSON, empty, 7,999 bytes), the sender's
/// pid and when it came. `--count` ends it; so does Ctrl-C, whole.
#[tokio::test(flavor = "multi_thread")]
async fn record_captures_exactly_what_was_sent() {
    let (a, b) = (channel("rec_a"), channel("rec_b"));
    let dir = crate::support::temp_dir("record");
    let out = dir.join("session.jsonl");
    let mut command = Command::new(BIN);
    command
        .args([
            "record",
            "--channels",
            &format!("{a},{b}"),
            "--count",
            "5",
            "--out",
        ])
        .arg(&out)
        .args(["--database-url", crate::support::database_url()]);
    let recorder = Host::start(command);
    recorder.wait_for(&["recording", &a, &b]);
    let long = "x".repeat(7_999);
    let sent = [
        (a.as_str(), "plain text"),
        (
            a.as_str(),
            r#"{"id": 7, "items": [1, 2.5, "three"], "ok": true}"#,
        ),
        (b.as_str(), ""),
        (b.as_str(), long.as_str()),
        (a.as_str(), "ünïcødé ✓"),
    ];
    let sender = Sender::connect().await;
    let pid: i32 = sender
        .client
        .query_one("select pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    for (channel, payload) in sent {
        sender
            .client
            .execute("select pg_notify($1, $2)", &[&channel, &payload])
            .await
            .unwrap();
    }
    let (status, log) = recorder.wait();
    assert!(status.success(), "{status}: {log}");
    assert!(log.contains("recorded 5 notifications"), "{log}");
    let text = std::fs::read_to_string(&out).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 5, "{text}");
    for (line, (channel, payload)) in lines.iter().zip(sent) {
        assert_eq!(line["channel"], channel);
        assert_eq!(line["payload"], payload, "exactly as sent");
        assert_eq!(line["pid"], pid);
        let at = line["received_at"].as_str().unwrap();
        assert!(
            at.len() == 27 && at.ends_with('Z') && at.as_bytes()[10] == b'T',
            "RFC 3339 UTC to the microsecond: {at}"
        );
    }

    // Replayed into a plugin, the recording gives it the typed values again.
    for speed in ["max", "1x"] {
        let replayed = Command::new(BIN)
            .arg("replay")
            .arg(&out)
            .arg(crate::support::example_plugin("logger"))
            .args(["--json", "--speed", speed])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&replayed.stdout);
        assert!(replayed.status.success(), "{stdout}");
        let calls: Vec<serde_json::Value> = stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(calls.len(), 7, "register, five calls, a summary: {stdout}");
        assert_eq!(calls[1]["typed"], r#"Payload::Text("plain text")"#);
        assert_eq!(
            calls[2]["typed"],
            r#"Payload::Json("{\"id\":7,\"items\":[1,2.5,\"three\"],\"ok\":true}")"#
        );
        assert_eq!(calls[5]["typed"], r#"Payload::Text("ünïcødé ✓")"#);
        assert_eq!(calls[4]["payload"].as_str().map(str::len), Some(7_999));
        assert_eq!(calls[6]["summary"]["calls"], 5);
        assert_eq!(calls[6]["summary"]["failures"], 0);
    }

    // Without --count, Ctrl-C (SIGINT) ends it, with what came before.
    let out = dir.join("stopped.jsonl");
    let mut command = Command::new(BIN);
    command
        .args(["record", "--channels", &a, "--out"])
        .arg(&out)
        .args(["--database-url", crate::support::database_url()]);
    let recorder = Host::start(command);
    recorder.wait_for(&["recording"]);
    sender.notify(&a, "before the stop").await;
    crate::support::until(
        crate::support::SOON,
        || "the line never reached the file".to_owned(),
        || {
            std::fs::read_to_string(&out)
                .ok()
                .filter(|t| t.contains("before the stop"))
        },
    );
    recorder.signal("INT");
    let (status, log) = recorder.wait();
    assert!(status.success(), "{status}: {log}");
    assert!(
        log.contains("recorded 1 notification\n") || log.ends_with("recorded 1 notification"),
        "{log}"
    );

    // A bad channel is refused, naming it.
    let bad = Command::new(BIN)
        .args(["record", "--channels", &"c".repeat(64), "--out", "-"])
        .args(["--database-url", crate::support::database_url()])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        stderr.contains(&format!("channel \"{}\"", "c".repeat(64))),
        "{stderr}"
    );
}

/// `call` runs a plugin without PostgreSQL: register, then on-notify with
/// the typed payload, saying what each returned; non-zero exit when any
/// call fails, traps or runs past its deadline.
/// `pgnotifier call ARGS`, with `DATABASE_URL` set (which call ignores):
/// whether it succeeded, and its stdout then stderr.
fn call(args: &[&str]) -> (bool, String) {
    let out = Command::new(BIN)
        .arg("call")
        .args(args)
        .env("DATABASE_URL", crate::support::database_url())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// `call PLUGIN --channel in --payload PAYLOAD EXTRA…`.
fn call_in(plugin: &Path, payload: &str, extra: &[&str]) -> (bool, String) {
    let plugin = plugin.to_str().unwrap();
    let args = [plugin, "--channel", "in", "--payload", payload];
    call(&[&args[..], extra].concat())
}

#[test]
fn call_runs_a_plugin_offline_and_fails_loudly() {
    let logger = crate::support::example_plugin("logger");
    let logger = logger.to_str().unwrap();
    let (ok, out) = call(&[
        logger,
        "--channel",
        "orders",
        "--payload",
        r#"{"id": 7}"#,
        "--pid",
        "42",
    ]);
    assert!(ok, "{out}");
    for words in [
        "register: ok",
        r#"on-notify(orders, Payload::Json("{\"id\":7}"), pid 42): ok in"#,
        r#"(logger, "orders", json {"id":7}, 42)"#,
    ] {
        assert!(out.contains(words), "{words:?} in:\n{out}");
    }

    let dir = crate::support::temp_dir("call");
    for (id, notify, words) in [
        ("trapping", Notify::Trap, "failed: trapped"),
        ("looping", Notify::Spin, "failed: ran past its deadline"),
        ("erring", Notify::Fail, "failed: returned an error: nope"),
    ] {
        WatPlugin::new(&["work"], notify).write(&dir, id);
        let plugin = dir.join(format!("{id}.wasm"));
        let (ok, out) = call(&[
            plugin.to_str().unwrap(),
            "--channel",
            "work",
            "--payload",
            "x",
        ]);
        assert!(!ok, "{id} must fail the command:\n{out}");
        assert!(out.contains(words), "{id}: {words:?} in:\n{out}");
    }

    // A recording as input, and --json: one object per call.
    let input = dir.join("input.jsonl");
    std::fs::write(
        &input,
        "{\"channel\":\"orders\",\"payload\":\"1\",\"pid\":5,\"received_at\":\"2026-12-02T06:40:00.123456Z\"}\n\
         {\"channel\":\"orders\",\"payload\":\"two\",\"pid\":6}\n",
    )
    .unwrap();
    let (ok, out) = call(&[logger, "--input", input.to_str().unwrap(), "--json"]);
    assert!(ok, "{out}");
    let calls: Vec<serde_json::Value> = out
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(calls.len(), 3, "register and two calls: {out}");
    assert_eq!(calls[1]["typed"], "Payload::Integer(1)");
    assert_eq!(calls[2]["pid"], 6);
    assert!(calls.iter().all(|c| c["ok"] == true), "{out}");

    // --config reaches register: a bad value fails it, named.
    let sink = crate::support::test_plugin("durable-sink");
    let (ok, out) = call(&[
        sink.to_str().unwrap(),
        "--config",
        "fail_attempts=many",
        "--channel",
        "work",
        "--payload",
        "x",
    ]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("register: failed")
            && out.contains(r#"fail_attempts = "many" is not a whole number"#),
        "{out}"
    );
    let (ok, out) = call(&[logger]);
    assert!(
        !ok && out.contains("--channel CH --payload TEXT, or --input FILE.jsonl"),
        "{out}"
    );
}

/// `call` with capabilities: the sidecar's grants hold as in the host;
/// without a database `publish` says what it would send and `query` says
/// it needs one; with `--database-url` the notification is sent.
#[tokio::test(flavor = "multi_thread")]
async fn call_publishes_dry_unless_given_a_database() {
    let dir = crate::support::temp_dir("call-capable");
    let out = channel("call_out");
    let plugin = dir.join("capable.wasm");
    std::fs::copy(crate::support::test_plugin("capable"), &plugin).unwrap();
    std::fs::write(
        dir.join("capable.toml"),
        format!("channels = [\"in\"]\n[grants]\npublish = [\"{out}\"]\n"),
    )
    .unwrap();
    let call = |payload: &str, extra: &[&str]| call_in(&plugin, payload, extra).1;
    let dry = call(&format!(r#"{{"publish": ["{out}", "hello"]}}"#), &[]);
    assert!(
        dry.contains(&format!("would publish {out} hello")) && dry.contains("publish ok"),
        "a dry run, though DATABASE_URL is set:\n{dry}"
    );
    let ungranted = call(r#"{"publish": ["elsewhere", "x"]}"#, &[]);
    assert!(
        ungranted.contains("publish err") && ungranted.contains("not granted"),
        "{ungranted}"
    );
    let query = call(r#"{"query": ["select 1"]}"#, &[]);
    assert!(
        query.contains("query err") && query.contains("is not granted"),
        "{query}"
    );

    let listener = Sender::connect().await;
    let (client, mut connection) =
        tokio_postgres::connect(crate::support::database_url(), tokio_postgres::NoTls)
            .await
            .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(Ok(message)) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            if let tokio_postgres::AsyncMessage::Notification(n) = message {
                let _ = tx.send(n.payload().to_owned());
            }
        }
    });
    client
        .batch_execute(&format!("LISTEN {out}"))
        .await
        .unwrap();
    let sent = call(
        &format!(r#"{{"publish": ["{out}", "for real"]}}"#),
        &["--database-url", crate::support::database_url()],
    );
    assert!(
        sent.contains("publish ok") && !sent.contains("would publish"),
        "{sent}"
    );
    let got = tokio::time::timeout(crate::support::SOON, rx.recv())
        .await
        .unwrap();
    assert_eq!(got.as_deref(), Some("for real"));
    drop(listener);
}

/// `query` from `call` needs a database or a fixture: against the real
/// PostgreSQL with `--database-url`, from `--query-fixture` rows without one
/// (matched by SQL whatever its spacing), and otherwise it fails saying so.
#[tokio::test]
async fn call_queries_a_database_or_a_fixture() {
    crate::support::plugin_role("pgnotifier_test_reader", &[]).await;
    let dir = crate::support::temp_dir("call-query");
    let plugin = dir.join("reader.wasm");
    std::fs::copy(crate::support::test_plugin("capable"), &plugin).unwrap();
    std::fs::write(
        dir.join("reader.toml"),
        "channels = [\"in\"]\n[grants]\nquery = true\nquery_role = \"pgnotifier_test_reader\"\n",
    )
    .unwrap();
    let fixture = dir.join("rows.json");
    std::fs::write(
        &fixture,
        r#"{"SELECT id, total\n   FROM orders WHERE id = $1": [{"id": 7, "total": 12.5}]}"#,
    )
    .unwrap();
    let call = |payload: &str, extra: &[&str]| call_in(&plugin, payload, extra);
    let real = r#"{"query": ["select 6 * $1::int as answer", "7"]}"#;
    let (ok, out) = call(real, &["--database-url", crate::support::database_url()]);
    assert!(ok && out.contains(r#"query ok [{"answer":42}]"#), "{out}");
    let (_, out) = call(real, &[]);
    assert!(
        out.contains("query err no database here") && out.contains("--database-url"),
        "without a database (DATABASE_URL is ignored), query says what it needs:\n{out}"
    );

    let fixture_arg = ["--query-fixture", fixture.to_str().unwrap()];
    let (ok, out) = call(
        r#"{"query": ["SELECT id, total FROM orders WHERE id = $1;", "7"]}"#,
        &fixture_arg,
    );
    assert!(
        ok && out.contains(r#"query ok [{"id":7,"total":12.5}]"#),
        "{out}"
    );
    let (_, out) = call(r#"{"query!": ["SELECT 1"]}"#, &fixture_arg);
    assert!(
        out.contains(r#"no rows for \"SELECT 1\" in the query fixture"#)
            || out.contains(r#"no rows for "SELECT 1" in the query fixture"#),
        "a query the fixture lacks fails, naming it:\n{out}"
    );

    std::fs::write(&fixture, "[1, 2]").unwrap();
    let (ok, out) = call(real, &fixture_arg);
    assert!(!ok, "a malformed fixture fails the call");
    assert!(
        out.contains("query fixture") && out.contains("expected a JSON object from SQL to rows"),
        "{out}"
    );
}

/// HTTP from `call` reaches a granted origin only with `--allow-http`;
/// otherwise it is refused, and the log says how to allow it.
#[test]
fn call_sends_http_only_when_allowed() {
    let hooks = crate::support::webhook::WebhookServer::start();
    let dir = crate::support::temp_dir("call-http");
    let plugin = dir.join("poster.wasm");
    std::fs::copy(crate::support::test_plugin("capable"), &plugin).unwrap();
    std::fs::write(
        dir.join("poster.toml"),
        format!(
            "channels = [\"in\"]\n[grants]\nhttp = [\"{}\"]\n",
            hooks.origin()
        ),
    )
    .unwrap();
    let payload = format!(r#"{{"http": ["{}/hook", "{{}}"]}}"#, hooks.origin());
    let call = |extra: &[&str]| call_in(&plugin, &payload, extra).1;
    let refused = call(&[]);
    assert!(
        refused.contains("http err") && refused.contains("unless --allow-http is given"),
        "{refused}"
    );
    assert!(hooks.requests().is_empty(), "nothing was sent");
    let allowed = call(&["--allow-http"]);
    assert!(allowed.contains("http ok 200"), "{allowed}");
    assert_eq!(hooks.requests().len(), 1);
}
