//! The `pgnotifier` schema: installing and migrating it (also from the
//! CLI), `pgnotifier.send` and `notify_row`.

use crate::support::durable::*;
use crate::support::host::BIN;
use pgnotifier::durable::schema::{self, Installed};
use tokio_postgres::NoTls;

/// The schema's functions once installed, by name.
const INSTALLED_FUNCTIONS: [&str; 14] = [
    "event_key",
    "horizon",
    "horizon",
    "max_payload_bytes",
    "notify_row",
    "read",
    "read_batch",
    "row_change",
    "send",
    "send_row",
    "slot_to_drain",
    "stamp_commit",
    "stamp_unstamped",
    "typed_json",
];

#[tokio::test]
async fn the_install_is_idempotent_and_migrates_an_older_schema() {
    let (_, mut client) = fresh_database("migrate").await;
    let v1 = schema::migrate(&mut client, 1).await.unwrap();
    assert_eq!(v1, Installed { from: 0, to: 1 });
    assert_eq!(functions(&client).await, ["send"]);
    let latest = schema::install(&mut client).await.unwrap();
    assert_eq!(
        latest,
        Installed {
            from: 1,
            to: schema::VERSION
        }
    );
    assert_eq!(functions(&client).await, INSTALLED_FUNCTIONS);
    let again = schema::install(&mut client).await.unwrap();
    assert_eq!(again.from, again.to, "a second install changes nothing");
    let versions: Vec<i32> = (client.query(
        "select version from pgnotifier.schema_version order by 1",
        &[],
    ))
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect();
    assert_eq!(versions, (1..=schema::VERSION as i32).collect::<Vec<_>>());

    // A newer schema than this host knows is refused, not touched.
    client
        .batch_execute("insert into pgnotifier.schema_version (version) values (99)")
        .await
        .unwrap();
    let err = schema::install(&mut client).await.unwrap_err().to_string();
    assert!(err.contains("version 99, newer than this host's"), "{err}");
}

#[tokio::test]
async fn send_records_only_committed_events_and_wakes_the_host_once_per_channel() {
    let (url, mut client) = fresh_database("send").await;
    schema::install(&mut client).await.unwrap();
    let (_listener, mut rx) = wakes(&url).await;

    // Rolled back: no event, no wake-up. The marker after it proves the
    // wake-up would have come first.
    client
        .batch_execute("begin; select pgnotifier.send('orders', 'lost'); rollback")
        .await
        .unwrap();
    client
        .batch_execute("select pgnotifier.send('marker', 'm')")
        .await
        .unwrap();
    assert_eq!(next_wake(&mut rx).await, "marker");

    let tx = client.transaction().await.unwrap();
    let mut ids = Vec::new();
    for (channel, payload) in [
        ("orders", "1"),
        ("orders", "2"),
        ("other", "x"),
        ("orders", "3"),
    ] {
        let row = tx
            .query_one("select pgnotifier.send($1, $2)", &[&channel, &payload])
            .await
            .unwrap();
        ids.push(row.get::<_, i64>(0));
    }
    tx.commit().await.unwrap();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids increase: {ids:?}");
    let mut woken = vec![next_wake(&mut rx).await, next_wake(&mut rx).await];
    woken.sort();
    assert_eq!(
        woken,
        ["orders", "other"],
        "one wake-up per channel of the transaction"
    );

    let rows = client
        .query(
            "select channel, payload, txid::text from pgnotifier.outbox order by id",
            &[],
        )
        .await
        .unwrap();
    let events: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(
        events,
        [
            ("marker", "m"),
            ("orders", "1"),
            ("orders", "2"),
            ("other", "x"),
            ("orders", "3")
        ]
        .map(|(c, p)| (c.to_owned(), p.to_owned()))
    );
    let txids: Vec<String> = rows.iter().skip(1).map(|r| r.get(2)).collect();
    assert!(
        txids.windows(2).all(|w| w[0] == w[1]),
        "one transaction: {txids:?}"
    );
}

/// Channel names as `pg_notify` takes them; payloads past its 8000 bytes
/// are `max_payload_bytes`'s (tests/durable/payloads.rs).
#[tokio::test]
async fn send_refuses_the_channel_names_pg_notify_refuses_in_its_words() {
    let (_, mut client) = fresh_database("refuse").await;
    schema::install(&mut client).await.unwrap();
    let long_channel = "c".repeat(64);
    let cases = [
        (
            "select pgnotifier.send('', 'x')".to_owned(),
            "channel name cannot be empty",
        ),
        (
            format!("select pgnotifier.send('{long_channel}', 'x')"),
            "channel name too long",
        ),
    ];
    for (sql, message) in cases {
        let got = error_of(&client, &sql).await;
        assert_eq!(got, format!("pgnotifier.send: {message}"), "{sql}");
        // pg_notify says the same of the same input.
        let plain = error_of(&client, &sql.replace("pgnotifier.send", "pg_notify")).await;
        assert_eq!(plain, message, "{sql}");
    }
    client
        .batch_execute("select pgnotifier.send('c', repeat('x', 8000))")
        .await
        .expect("a payload of 8000 bytes, which pg_notify refuses, is taken");
    let count: i64 = (client.query_one("select count(*) from pgnotifier.outbox", &[]))
        .await
        .unwrap()
        .get(0);
    assert_eq!(count, 1, "refused sends record nothing");
}

#[tokio::test]
async fn notify_row_sends_each_row_change_as_json() {
    let (_, mut client) = fresh_database("rows").await;
    schema::install(&mut client).await.unwrap();
    client
        .batch_execute(
            "create table orders (id int primary key, status text);
             create trigger orders_changed after insert or update or delete on orders
                 for each row execute function pgnotifier.notify_row('orders');
             insert into orders values (1, 'new');
             update orders set status = 'shipped' where id = 1;
             delete from orders where id = 1;",
        )
        .await
        .unwrap();
    let rows = (client.query(
        "select channel, payload from pgnotifier.outbox order by id",
        &[],
    ))
    .await
    .unwrap();
    let events: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            assert_eq!(r.get::<_, String>(0), "orders");
            serde_json::from_str(&r.get::<_, String>(1)).expect("the payload is JSON")
        })
        .collect();
    let expected = [
        serde_json::json!({"op": "insert", "schema": "public", "table": "orders", "new": {"id": 1, "status": "new"}}),
        serde_json::json!({"op": "update", "schema": "public", "table": "orders", "new": {"id": 1, "status": "shipped"}, "old": {"id": 1, "status": "new"}}),
        serde_json::json!({"op": "delete", "schema": "public", "table": "orders", "old": {"id": 1, "status": "shipped"}}),
    ];
    assert_eq!(events, expected);

    // Misused, it says how it is meant to be used.
    let err = error_of(
        &client,
        "create table t (x int);
         create trigger t_changed after insert on t for each statement execute function pgnotifier.notify_row('t');
         insert into t values (1);",
    )
    .await;
    assert!(err.contains("a row trigger with one argument"), "{err}");
}

#[tokio::test]
async fn the_cli_installs_the_schema_and_prints_a_script_that_does_the_same() {
    let (url, client) = fresh_database("cli").await;
    let install = || {
        let out = std::process::Command::new(BIN)
            .args(["schema", "install", "--database-url", &url])
            .env_remove("DATABASE_URL")
            .output()
            .expect("run pgnotifier schema install");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{stdout}{stderr}");
        stdout
    };
    assert_eq!(
        install(),
        format!("pgnotifier schema: version 0 -> {}\n", schema::VERSION)
    );
    assert_eq!(
        install(),
        format!(
            "pgnotifier schema: already at version {}\n",
            schema::VERSION
        )
    );

    // The printed script: on a fresh database, on an older schema, and twice.
    let out = std::process::Command::new(BIN)
        .args(["schema", "install", "--print"])
        .output()
        .expect("run pgnotifier schema install --print");
    assert!(out.status.success());
    let script = String::from_utf8(out.stdout).unwrap();
    assert!(script.starts_with("-- pgnotifier schema"), "{script}");
    let (_, mut older) = fresh_database("script").await;
    schema::migrate(&mut older, 1).await.unwrap();
    for _ in 0..2 {
        older.batch_execute(&script).await.expect("the script runs");
    }
    let latest = schema::install(&mut older).await.unwrap();
    assert_eq!(
        latest.from,
        schema::VERSION,
        "the script brought it up to date"
    );
    older
        .batch_execute("select pgnotifier.send('orders', 'from the script')")
        .await
        .unwrap();

    // Nothing listens here: a bad URL is a clear error, not a hang.
    let out = std::process::Command::new(BIN)
        .args([
            "schema",
            "install",
            "--database-url",
            "postgres://nobody@127.0.0.1:1/none?connect_timeout=2",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("connecting to postgres://nobody@127.0.0.1:1/none"),
        "{stderr}"
    );
    assert_eq!(functions(&client).await, INSTALLED_FUNCTIONS);
}

/// An older schema's positions and unread events carry over: each position
/// resumes after what it had read, and what it had not comes next.
#[tokio::test]
async fn positions_and_unread_events_carry_over_the_commit_order_migration() {
    use pgnotifier::durable::reader::position;
    let (_url, mut client) = fresh_database("stamp_migration").await;
    schema::migrate(&mut client, 5).await.unwrap();
    for payload in ["a", "b", "c"] {
        client
            .execute("select pgnotifier.send('work', $1)", &[&payload])
            .await
            .unwrap();
    }
    // Version 5 positions were (txid, id): "reader" had read a, "fresh" nothing.
    client
        .batch_execute(
            "insert into pgnotifier.positions (subscriber, txid, id)
               select 'reader', txid, id from pgnotifier.outbox where payload = 'a';
             insert into pgnotifier.positions (subscriber, txid, id) values ('fresh', '0', 0)",
        )
        .await
        .unwrap();
    schema::install(&mut client).await.unwrap();
    let work = ["work".to_owned()];
    for (subscriber, expected) in [("reader", vec!["b", "c"]), ("fresh", vec!["a", "b", "c"])] {
        let at = position(&client, subscriber).await.unwrap().unwrap();
        let events = next_events(&client, at, &work, 10).await.unwrap();
        let payloads: Vec<&str> = events.iter().map(|e| e.payload.as_str()).collect();
        assert_eq!(payloads, expected, "{subscriber} resumes where it was");
    }
    client
        .execute("select pgnotifier.send('work', 'd')", &[])
        .await
        .unwrap();
    let at = position(&client, "reader").await.unwrap().unwrap();
    let events = next_events(&client, at, &work, 10).await.unwrap();
    assert_eq!(
        events.last().map(|e| e.payload.as_str()),
        Some("d"),
        "sent after the migration, stamped as it commits"
    );
}

/// The upgrade that drops the commits' durable column lets a sender that
/// runs as it installs commit (stamped the version 7 way), and its events
/// and the ones sent after it are read in commit order.
#[tokio::test]
async fn a_sender_running_during_the_durable_column_migration_commits_and_is_read() {
    use pgnotifier::durable::reader::position;
    let (url, mut client) = fresh_database("durable_column").await;
    schema::migrate(&mut client, 7).await.unwrap();
    client
        .execute("select pgnotifier.send('work', 'before')", &[])
        .await
        .unwrap();
    client
        .batch_execute(
            "insert into pgnotifier.positions (subscriber, stamp, id) values ('reader', 0, 0)",
        )
        .await
        .unwrap();
    let (sender, connection) = tokio_postgres::connect(&url, NoTls).await.unwrap();
    tokio::spawn(connection);
    sender
        .batch_execute("begin; select pgnotifier.send('work', 'during')")
        .await
        .unwrap();
    let upgrade = tokio::spawn(async move {
        let installed = schema::install(&mut client).await;
        (client, installed)
    });
    // The upgrade waits for the running sender; give it time to queue.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(!upgrade.is_finished(), "the upgrade waits for the sender");
    sender
        .batch_execute("commit")
        .await
        .expect("a sender that ran as the schema upgraded commits");
    let (client, installed) = upgrade.await.unwrap();
    assert_eq!(
        installed.unwrap(),
        Installed {
            from: 7,
            to: schema::VERSION
        }
    );
    client
        .execute("select pgnotifier.send('work', 'after')", &[])
        .await
        .unwrap();
    let at = position(&client, "reader").await.unwrap().unwrap();
    let events = next_events(&client, at, &["work".to_owned()], 10)
        .await
        .unwrap();
    let payloads: Vec<&str> = events.iter().map(|e| e.payload.as_str()).collect();
    assert_eq!(payloads, ["before", "during", "after"]);
}
