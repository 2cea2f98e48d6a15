//! Capabilities (publish, query, http): each used by a plugin whose sidecar
//! grants it, and refused — as an error returned to the guest, not a trap —
//! for one whose sidecar does not. Also: plugins built for every earlier WIT
//! version still load beside current ones, and the order-webhook example
//! does its job end to end.
//!
//! The fixture `tests/plugins/capable` turns each payload into one call and
//! logs `<op> ok <value>` or `<op> err <message>`.

use crate::support::wat::{Notify, WatPlugin};
use crate::support::webhook::WebhookServer;
use crate::support::{channel, eventually, logs, stats_of, Sender, SOON};
use pgnotifier::registry::SubscriberSource;
use pgnotifier::Notifier;
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

/// Install the `capable` fixture as `dir/ID.wasm` with `sidecar`.
fn install(dir: &Path, id: &str, sidecar: &str) {
    std::fs::copy(
        crate::support::test_plugin("capable"),
        dir.join(format!("{id}.wasm")),
    )
    .unwrap();
    std::fs::write(dir.join(format!("{id}.toml")), sidecar).unwrap();
}

async fn host(dir: &Path) -> Notifier {
    let n = Notifier::new(crate::support::database());
    n.load_plugins(dir).await.expect("plugins load");
    crate::support::listen(&n).await;
    n
}

/// The plugin's own lines that start with `prefix`.
fn lines(id: &str, prefix: &str) -> Vec<String> {
    logs::plugin_messages(id)
        .into_iter()
        .filter(|m| m.starts_with(prefix))
        .collect()
}

/// Wait for `id` to have logged `n` lines starting with `prefix`, and return them.
async fn wait_lines(id: &str, prefix: &str, n: usize) -> Vec<String> {
    let arrived = eventually(SOON, || lines(id, prefix).len() >= n).await;
    let got = lines(id, prefix);
    assert!(arrived, "{id}: wanted {n} `{prefix}` lines, got {got:#?}");
    got
}

/// No call failed and no instance was recycled: refusals are plain errors.
fn assert_no_failures(n: &Notifier, id: &str) {
    let stats = stats_of(n, id);
    assert_eq!(stats.failed, 0, "{id}: {stats:?}");
    assert_eq!(stats.timed_out, 0, "{id}: {stats:?}");
}

fn command(op: &str, args: &[&str]) -> String {
    serde_json::json!({ op: args }).to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn publish_chains_plugins_within_its_allow_list_and_the_size_limit() {
    logs::install();
    let dir = crate::support::temp_dir("publish");
    let (input, output) = (channel("pub_in"), channel("pub_out"));
    install(
        &dir,
        "relay",
        &format!("channels = [\"{input}\"]\n[grants]\npublish = [\"{output}\"]\n"),
    );
    install(&dir, "sink", &format!("channels = [\"{output}\"]\n"));
    install(&dir, "ungranted", &format!("channels = [\"{input}\"]\n"));
    let n = host(&dir).await;
    let sender = Sender::connect().await;

    sender
        .notify(&input, &command("publish", &[&output, "hello chain"]))
        .await;
    sender
        .notify(&input, &command("publish", &["elsewhere", "x"]))
        .await;
    sender
        .notify(&input, &command("publish_sized", &[&output, "8000"]))
        .await;
    sender
        .notify(&input, &command("publish_sized", &[&output, "7999"]))
        .await;

    let relay = wait_lines("relay", "publish", 4).await;
    assert_eq!(relay[0], "publish ok ");
    assert!(
        relay[1].starts_with("publish err publish to \"elsewhere\" is not granted"),
        "{}",
        relay[1]
    );
    assert_eq!(
        relay[2],
        "publish_sized err payload is 8000 bytes; NOTIFY takes fewer than 8000"
    );
    assert_eq!(relay[3], "publish_sized ok ");

    let sink = wait_lines("sink", "received", 2).await;
    assert_eq!(sink[0], format!("received {output} hello chain"));
    assert_eq!(sink[1], format!("received {output} {}", "x".repeat(7999)));

    let refused = wait_lines("ungranted", "publish", 4).await;
    assert!(
        refused
            .iter()
            .all(|l| l.contains(" err publish to ") && l.contains("is not granted")),
        "{refused:#?}"
    );
    for id in ["relay", "sink", "ungranted"] {
        assert_no_failures(&n, id);
    }
    n.shutdown(SOON).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn query_reads_rows_refuses_writes_unless_granted_and_is_cut_by_its_limits() {
    logs::install();
    let sender = Sender::connect().await;
    let table = channel("cap_orders");
    sender
        .client
        .batch_execute(&format!(
            "create table {table} (id int primary key, status text, total numeric(8,2));
             insert into {table} values (7, 'shipped', 12.50), (9, 'new', 1)"
        ))
        .await
        .unwrap();
    let (reader_role, writer_role) = ("pgnotifier_test_reader", "pgnotifier_test_writer");
    crate::support::plugin_role(
        reader_role,
        &[format!("grant select on {table} to {reader_role}")],
    )
    .await;
    crate::support::plugin_role(
        writer_role,
        &[format!("grant select, insert on {table} to {writer_role}")],
    )
    .await;
    let dir = crate::support::temp_dir("query");
    let ch = channel("query");
    // timeout_ms is below the query timeout: time waiting on the database
    // must not count against the plugin's own deadline.
    let limits = "timeout_ms = 200\nquery_timeout_ms = 400\nquery_max_rows = 3\n";
    install(
        &dir,
        "reader",
        &format!("channels = [\"{ch}\"]\n{limits}[grants]\nquery = true\nquery_role = \"{reader_role}\"\n"),
    );
    install(
        &dir,
        "writer",
        &format!("channels = [\"{ch}\"]\n{limits}[grants]\nquery_write = true\nquery_role = \"{writer_role}\"\n"),
    );
    install(&dir, "ungranted", &format!("channels = [\"{ch}\"]\n"));
    let n = host(&dir).await;

    let select = format!("select id, status, total from {table} where id = $1");
    sender.notify(&ch, &command("query", &[&select, "7"])).await;
    let insert = format!("insert into {table} values ($1, 'new', 3)");
    sender.notify(&ch, &command("query", &[&insert, "8"])).await;
    sender
        .notify(&ch, &command("query", &["select pg_sleep(5)"]))
        .await;
    sender
        .notify(
            &ch,
            &command("query", &["select generate_series(1, 10) as n;"]),
        )
        .await;

    let reader = wait_lines("reader", "query", 4).await;
    let row = reader[0]
        .strip_prefix("query ok ")
        .unwrap_or_else(|| panic!("{}", reader[0]));
    let rows: Value = serde_json::from_str(row).unwrap();
    assert_eq!(
        rows,
        serde_json::json!([{ "id": 7, "status": "shipped", "total": 12.50 }])
    );
    assert_eq!(
        reader[1],
        "query err ERROR: cannot execute INSERT in a read-only transaction"
    );
    assert_eq!(
        reader[2],
        "query err ERROR: canceling statement due to statement timeout"
    );
    assert_eq!(
        reader[3],
        "query err query returned more than 3 rows (query_max_rows)"
    );

    let writer = wait_lines("writer", "query", 4).await;
    assert!(
        writer[0].starts_with("query ok [{\"id\":7"),
        "{}",
        writer[0]
    );
    assert_eq!(writer[1], "query ok []");
    let written: i64 = sender
        .client
        .query_one(&format!("select count(*) from {table} where id = 8"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(written, 1, "the writer's insert is committed");

    let refused = wait_lines("ungranted", "query", 4).await;
    assert!(
        refused
            .iter()
            .all(|l| l.starts_with("query err query is not granted")),
        "{refused:#?}"
    );
    for id in ["reader", "writer", "ungranted"] {
        assert_no_failures(&n, id);
    }
    n.shutdown(SOON).await;
    sender
        .client
        .batch_execute(&format!("drop table {table}"))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn http_reaches_granted_origins_only_with_a_timeout_and_a_size_cap() {
    logs::install();
    let hooks = WebhookServer::start();
    let other = WebhookServer::start();
    let dir = crate::support::temp_dir("http");
    let ch = channel("http");
    install(
        &dir,
        "poster",
        &format!(
            "channels = [\"{ch}\"]\ntimeout_ms = 200\nhttp_timeout_ms = 500\nhttp_max_response_bytes = 1000\n[grants]\nhttp = [\"{}\"]\n",
            hooks.origin()
        ),
    );
    install(&dir, "ungranted", &format!("channels = [\"{ch}\"]\n"));
    let n = host(&dir).await;
    let sender = Sender::connect().await;

    let hook = format!("{}/hook", hooks.origin());
    let body = r#"{"order":42}"#;
    sender.notify(&ch, &command("http", &[&hook, body])).await;
    let elsewhere = format!("{}/hook", other.origin());
    sender
        .notify(&ch, &command("http", &[&elsewhere, body]))
        .await;
    let big = format!("{}/big", hooks.origin());
    sender.notify(&ch, &command("http", &[&big, ""])).await;
    let slow = format!("{}/slow", hooks.origin());
    sender.notify(&ch, &command("http", &[&slow, ""])).await;

    let poster = wait_lines("poster", "http", 4).await;
    assert_eq!(poster[0], "http ok 200 ok");
    assert_eq!(
        poster[1],
        "http err request denied: the origin is not in the sidecar's [grants] http"
    );
    assert!(
        poster[2].contains("response body size exceeds limit: 1000 bytes"),
        "{}",
        poster[2]
    );
    assert!(
        poster[3].starts_with("http err") && poster[3].contains("Timeout"),
        "{}",
        poster[3]
    );

    let refused = wait_lines("ungranted", "http", 4).await;
    assert!(
        refused
            .iter()
            .all(|l| l
                == "http err request denied: the origin is not in the sidecar's [grants] http"),
        "{refused:#?}"
    );
    // Only the granted plugin's three requests reached the server; the
    // other origin was never connected to.
    let got = hooks.requests();
    assert_eq!(got.len(), 3, "{got:#?}");
    assert_eq!(got[0].method, "POST");
    assert_eq!(got[0].path, "/hook");
    assert_eq!(got[0].content_type.as_deref(), Some("application/json"));
    assert_eq!(got[0].body, body);
    assert_eq!(other.connections(), 0, "a refused origin was connected to");
    for id in ["poster", "ungranted"] {
        assert_no_failures(&n, id);
    }
    n.shutdown(SOON).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn grants_are_checked_when_the_plugin_loads() {
    logs::install();
    let dir = crate::support::temp_dir("grants");
    install(
        &dir,
        "bad",
        "[grants]\nhttp = [\"https://example.com/path\"]\n",
    );
    let n = Notifier::new(crate::support::database());
    let err = n
        .load_plugin(&dir.join("bad.wasm"))
        .await
        .expect_err("a grant with a path is refused");
    let text = err.to_string();
    assert!(
        text.contains("bad.toml: grants.http: \"https://example.com/path\" has a path"),
        "{text}"
    );
    std::fs::write(dir.join("bad.toml"), "[grants]\nqueries = true\n").unwrap();
    let err = n.load_plugin(&dir.join("bad.wasm")).await.unwrap_err();
    assert!(err.to_string().contains("unknown field `queries`"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn plugins_built_for_0_1_0_to_0_4_0_still_load_beside_0_5_0_ones() {
    logs::install();
    let dir = crate::support::temp_dir("versions");
    let ch = channel("versions");
    // The WAT fixtures are built against the frozen wit/v0.1.0 to v0.4.0,
    // and against the current WIT.
    for version in ["0.1.0", "0.2.0", "0.3.0", "0.4.0", "0.5.0"] {
        let name = format!("v{}", version.replace('.', "_"));
        (WatPlugin::new(&[&ch], Notify::Echo).wit_version(version)).write(&dir, &name);
    }
    install(&dir, "new", &format!("channels = [\"{ch}\"]\n"));
    let n = host(&dir).await;
    let versions: Vec<(String, String)> = (n.subscribers().into_iter())
        .filter_map(|s| match s.source {
            SubscriberSource::Plugin { wit, .. } => Some((s.id, wit.into_owned())),
            SubscriberSource::Native => None,
        })
        .collect();
    for (id, wit) in [
        ("v0_1_0", "0.1.0"),
        ("v0_2_0", "0.2.0"),
        ("v0_3_0", "0.3.0"),
        ("v0_4_0", "0.4.0"),
        ("v0_5_0", "0.5.0"),
        ("new", "0.5.0"),
    ] {
        assert!(
            versions.contains(&(id.into(), wit.into())),
            "{id} at {wit}: {versions:?}"
        );
    }
    Sender::connect().await.notify(&ch, "all").await;
    for old in ["v0_1_0", "v0_2_0", "v0_3_0", "v0_4_0", "v0_5_0"] {
        wait_lines(old, "all", 1).await;
    }
    wait_lines("new", &format!("received {ch} all"), 1).await;
    n.shutdown(SOON).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_order_webhook_example_posts_each_changed_row() {
    logs::install();
    let hooks = WebhookServer::start();
    let mut sender = Sender::connect().await;
    // As the example's README says: the schema first, then its SQL.
    pgnotifier::durable::schema::install(&mut sender.client)
        .await
        .unwrap();
    // What an earlier run left: this run starts afresh.
    (sender.client.batch_execute(
        "delete from pgnotifier.positions where subscriber = 'order-webhook';
         delete from pgnotifier.outbox where channel = 'orders_changed'",
    ))
    .await
    .unwrap();
    let example = crate::support::repo().join("examples/order-webhook");
    let sql = std::fs::read_to_string(example.join("orders.sql")).unwrap();
    sender.client.batch_execute(&sql).await.unwrap();

    let dir = crate::support::temp_dir("order-webhook");
    std::fs::copy(
        crate::support::examples_plugin("order-webhook"),
        dir.join("order-webhook.wasm"),
    )
    .unwrap();
    // The example's own sidecar, pointed at this test's server.
    let sidecar = std::fs::read_to_string(example.join("order-webhook.toml"))
        .unwrap()
        .replace("127.0.0.1:8080", &format!("127.0.0.1:{}", hooks.port));
    std::fs::write(dir.join("order-webhook.toml"), sidecar).unwrap();
    let n = host(&dir).await;
    // A new at-least-once subscriber starts with what is sent once it reads.
    let reading = || async {
        (sender.client.query_opt(
            "select 1 from pgnotifier.positions where subscriber = 'order-webhook'",
            &[],
        ))
        .await
        .unwrap()
        .is_some()
    };
    let deadline = std::time::Instant::now() + SOON;
    while !reading().await {
        assert!(
            std::time::Instant::now() < deadline,
            "never started reading"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let id: i64 = sender
        .client
        .query_one(
            "insert into orders (customer, total) values ('ada', 12.50) returning id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(eventually(SOON, || hooks.requests().len() == 1).await);
    sender
        .client
        .execute("update orders set status = 'shipped' where id = $1", &[&id])
        .await
        .unwrap();
    assert!(eventually(SOON, || hooks.requests().len() == 2).await);
    sender
        .client
        .execute("delete from orders where id = $1", &[&id])
        .await
        .unwrap();
    assert!(eventually(SOON, || hooks.requests().len() == 3).await);

    let bodies: Vec<Value> = hooks
        .requests()
        .iter()
        .map(|r| {
            assert_eq!((r.method.as_str(), r.path.as_str()), ("POST", "/orders"));
            serde_json::from_str(&r.body).unwrap()
        })
        .collect();
    assert_eq!(bodies[0]["op"], "INSERT");
    assert_eq!(bodies[0]["id"], id);
    assert_eq!(bodies[0]["order"]["customer"], "ada");
    assert_eq!(bodies[0]["order"]["total"], 12.50);
    assert_eq!(bodies[0]["order"]["status"], "new");
    assert_eq!(bodies[1]["op"], "UPDATE");
    assert_eq!(bodies[1]["order"]["status"], "shipped");
    assert_eq!(bodies[2]["op"], "DELETE");
    assert_eq!(bodies[2]["order"], Value::Null);
    // Delivered durably: each post names its outbox event, once per event.
    let outbox: Vec<String> = sender
        .client
        .query(
            "select pgnotifier.event_key(c.salt, o.id)::text from pgnotifier.outbox o join pgnotifier.commits c using (txid)
              where o.channel = 'orders_changed' order by o.id desc limit 3",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .rev()
        .map(|row| format!("order-event-{}", row.get::<_, String>(0)))
        .collect();
    let keys: Vec<String> = (hooks.requests().iter())
        .map(|r| {
            r.idempotency_key
                .clone()
                .expect("an Idempotency-Key header")
        })
        .collect();
    assert_eq!(keys, outbox);
    assert_no_failures(&n, "order-webhook");
    n.shutdown(SOON).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plugin_with_grants_that_spins_is_still_cut_off() {
    logs::install();
    crate::support::plugin_role("pgnotifier_test_reader", &[]).await;
    let dir = crate::support::temp_dir("granted-spin");
    let ch = channel("granted_spin");
    // With grants the deadline counts CPU time; spinning uses it up all the same.
    WatPlugin::new(&[&ch], Notify::Spin).write(&dir, "spinner");
    std::fs::write(
        dir.join("spinner.toml"),
        "timeout_ms = 50\nfailure_threshold = 0\n[grants]\nquery = true\nquery_role = \"pgnotifier_test_reader\"\n",
    )
    .unwrap();
    let n = host(&dir).await;
    Sender::connect().await.notify(&ch, "spin").await;
    assert!(
        eventually(SOON, || stats_of(&n, "spinner").timed_out == 1).await,
        "{:?}",
        stats_of(&n, "spinner")
    );
    n.shutdown(Duration::from_secs(1)).await;
}

/// The capability pool connects the way the listener does: a notifier
/// configured with a Unix socket URL serves a plugin's query and publish.
#[tokio::test(flavor = "multi_thread")]
async fn query_and_publish_work_over_a_unix_socket() {
    logs::install();
    crate::support::plugin_role("pgnotifier_test_reader", &[]).await;
    let (socket, port) = crate::support::socket_dir().await;
    let url = format!(
        "postgres://{}:{port}/postgres",
        crate::support::url_encoded(&socket)
    );
    let dir = crate::support::temp_dir("socket-pool");
    let (ch, out) = (channel("socket_pool"), channel("socket_pool_out"));
    install(
        &dir,
        "socket_reader",
        &format!("channels = [\"{ch}\"]\n[grants]\nquery = true\nquery_role = \"pgnotifier_test_reader\"\npublish = [\"{out}\"]\n"),
    );
    let n = Notifier::new(pgnotifier::DatabaseSettings::from_url(&url).unwrap());
    n.load_plugins(&dir).await.expect("plugins load");
    let (recorder, seen) = crate::support::recorder();
    n.subscribe("socket_sink", out.as_str(), recorder).unwrap();
    crate::support::listen(&n).await;

    let sender = Sender::connect().await;
    sender
        .notify(&ch, &command("query", &["select 40 + 2 as answer"]))
        .await;
    sender
        .notify(&ch, &command("publish", &[&out, "via the socket"]))
        .await;
    let query = wait_lines("socket_reader", "query", 1).await;
    assert_eq!(query[0], "query ok [{\"answer\":42}]");
    wait_lines("socket_reader", "publish ok", 1).await;
    assert!(
        eventually(SOON, || crate::support::count(&seen) == 1).await,
        "the published notification did not arrive"
    );
    assert_eq!(
        seen.lock().unwrap()[0].payload,
        pgnotifier::Payload::Text("via the socket".into())
    );
    assert_no_failures(&n, "socket_reader");
    n.shutdown(SOON).await;
}

/// A query grant runs as its `query_role`, and nothing inside the plugin's
/// statement can leave that role, the read-only transaction or the
/// statement timeout.
#[tokio::test(flavor = "multi_thread")]
async fn a_query_role_confines_the_plugin_and_nothing_inside_undoes_it() {
    logs::install();
    let sender = Sender::connect().await;
    let secret = channel("cap_secret");
    sender
        .client
        .batch_execute(&format!(
            "create table {secret} (v text); insert into {secret} values ('hidden')"
        ))
        .await
        .unwrap();
    let role = "pgnotifier_test_confined";
    crate::support::plugin_role(role, &[]).await;
    let dir = crate::support::temp_dir("confined");
    let ch = channel("confined");
    install(
        &dir,
        "confined",
        &format!(
            "channels = [\"{ch}\"]\ntimeout_ms = 5000\nquery_timeout_ms = 300\n\
             [grants]\nquery = true\nquery_role = \"{role}\"\n"
        ),
    );
    let n = host(&dir).await;
    let listener_pid = n.backend_pid().expect("connected");
    let attacks: Vec<(String, &str)> = vec![
        (format!("select v from {secret}"), "permission denied for table"),
        ("select pg_read_file('/etc/passwd')".into(), "permission denied for function pg_read_file"),
        ("select set_config('role', 'postgres', true)".into(), "cannot set parameter \"role\""),
        (
            "select query_to_xml('select set_config(''role'', ''postgres'', true)', true, false, '')".into(),
            "cannot set parameter \"role\"",
        ),
        (
            "select set_config('session_authorization', 'postgres', true)".into(),
            "cannot set parameter \"session_authorization\"",
        ),
        ("reset role".into(), "syntax error"),
        ("set role postgres".into(), "syntax error"),
        ("set transaction read write".into(), "syntax error"),
        (
            "select set_config('transaction_read_only', 'off', true)".into(),
            "read-write mode must be set before any query",
        ),
        (
            "select set_config('statement_timeout', '0', true), pg_sleep(3)".into(),
            "canceling statement due to statement timeout",
        ),
        (
            format!("select 1; select v from {secret}"),
            "cannot insert multiple commands into a prepared statement",
        ),
        (format!("select pg_terminate_backend({listener_pid})"), "to terminate superuser process"),
    ];
    for (sql, _) in &attacks {
        sender.notify(&ch, &command("query", &[sql])).await;
    }
    sender
        .notify(
            &ch,
            &command("query", &["select current_user::text as who"]),
        )
        .await;
    let got = wait_lines("confined", "query", attacks.len() + 1).await;
    for ((sql, expected), line) in attacks.iter().zip(&got) {
        assert!(
            line.starts_with("query err ERROR: ") && line.contains(expected),
            "{sql}\n  wanted an error with {expected:?}\n  got {line}"
        );
    }
    assert_eq!(
        got[attacks.len()],
        format!("query ok [{{\"who\":\"{role}\"}}]")
    );
    assert_eq!(n.backend_pid(), Some(listener_pid), "the listener survived");
    assert_no_failures(&n, "confined");
    n.shutdown(SOON).await;
    sender
        .client
        .batch_execute(&format!("drop table {secret}"))
        .await
        .unwrap();
}

/// Without `query_role`, a query grant would run as the host's role: refused
/// at load when that role is a superuser. A role the host cannot become is
/// refused naming both roles.
#[tokio::test(flavor = "multi_thread")]
async fn a_query_grant_needs_a_query_role_the_host_can_become() {
    logs::install();
    let dir = crate::support::temp_dir("query-role-refused");
    let n = Notifier::new(crate::support::database());
    install(
        &dir,
        "unconfined",
        "channels = [\"x\"]\n[grants]\nquery = true\n",
    );
    let err = n
        .load_plugin(&dir.join("unconfined.wasm"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("unconfined.toml")
            && err.contains("is a superuser")
            && err.contains("query_role"),
        "{err}"
    );
    install(
        &dir,
        "nobody",
        "channels = [\"x\"]\n[grants]\nquery = true\nquery_role = \"pgnotifier_no_such_role\"\n",
    );
    let err = n
        .load_plugin(&dir.join("nobody.wasm"))
        .await
        .unwrap_err()
        .to_string();
    let host_role = (crate::support::database_url().parse::<tokio_postgres::Config>())
        .unwrap()
        .get_user()
        .unwrap()
        .to_owned();
    assert!(
        err.contains(&format!(
            "the host's role {host_role:?} cannot become query_role \"pgnotifier_no_such_role\""
        )),
        "{err}"
    );
    assert!(n.subscribers().is_empty());
}

/// `publish` binds the channel and payload as values: SQL in either is
/// only text, sent on exactly the channel named.
#[tokio::test(flavor = "multi_thread")]
async fn publish_is_no_way_to_run_other_sql() {
    logs::install();
    let dir = crate::support::temp_dir("publish-sql");
    let ch = channel("publish_sql");
    let tricky = "x'); select pg_sleep(5); --\"";
    install(
        &dir,
        "publisher",
        &format!(
            "channels = [\"{ch}\"]\n[grants]\npublish = [{}]\n",
            toml::Value::String(tricky.into())
        ),
    );
    let n = host(&dir).await;
    let (recorder, seen) = crate::support::recorder();
    n.subscribe("tricky_sink", tricky, recorder).unwrap();
    n.wait_until_listening(SOON).await.unwrap();
    let payload = "'); drop table orders; --";
    Sender::connect()
        .await
        .notify(&ch, &command("publish", &[tricky, payload]))
        .await;
    wait_lines("publisher", "publish ok", 1).await;
    assert!(eventually(SOON, || crate::support::count(&seen) == 1).await);
    let got = seen.lock().unwrap()[0].clone();
    assert_eq!(got.channel, tricky);
    assert_eq!(got.payload, pgnotifier::Payload::Text(payload.into()));
    n.shutdown(SOON).await;
}

/// A plugin that builds its SQL on the fly cannot grow a connection's
/// prepared statements without bound: past 256 they are let go.
#[tokio::test(flavor = "multi_thread")]
async fn statements_prepared_for_a_query_role_stay_bounded() {
    logs::install();
    let role = "pgnotifier_test_reader";
    crate::support::plugin_role(role, &[]).await;
    let dir = crate::support::temp_dir("prepared-bound");
    let ch = channel("prepared_bound");
    install(
        &dir,
        "builder",
        &format!("channels = [\"{ch}\"]\n[grants]\nquery = true\nquery_role = \"{role}\"\n"),
    );
    let n = host(&dir).await;
    let sender = Sender::connect().await;
    let distinct = 300;
    for i in 0..distinct {
        sender
            .notify(&ch, &command("query", &[&format!("select {i} as n")]))
            .await;
    }
    let count = "select count(*)::int as prepared from pg_prepared_statements where name like 'pgnotifier\\_%'";
    sender.notify(&ch, &command("query", &[count])).await;
    let got = wait_lines("builder", "query", distinct + 1).await;
    assert_eq!(got[7], "query ok [{\"n\":7}]");
    let last: Value =
        serde_json::from_str(got[distinct].strip_prefix("query ok ").unwrap()).unwrap();
    let prepared = last[0]["prepared"].as_i64().unwrap();
    assert!(
        (1..=257).contains(&prepared),
        "{prepared} statements prepared on one connection"
    );
    assert_no_failures(&n, "builder");
    n.shutdown(SOON).await;
}
