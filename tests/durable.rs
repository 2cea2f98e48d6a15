//! Durable delivery: the `pgnotifier` schema, the reader, at-least-once
//! subscribers, dead letters, pruning, and streams under faults. Each test
//! gets a database of its own, since the schema is one per database.

use crate::support::durable::*;
use crate::support::host::BIN;
use crate::support::SOON;
use pgnotifier::durable::schema::{self, Installed};
use tokio_postgres::NoTls;

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
    assert_eq!(
        functions(&client).await,
        [
            "event_key",
            "horizon",
            "horizon",
            "notify_row",
            "read",
            "read_batch",
            "send",
            "stamp_commit",
            "stamp_unstamped"
        ]
    );
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

#[tokio::test]
async fn send_refuses_what_pg_notify_refuses_in_its_words() {
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
        (
            "select pgnotifier.send('c', repeat('x', 8000))".to_owned(),
            "payload string too long",
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
        .batch_execute("select pgnotifier.send('c', repeat('x', 7999))")
        .await
        .expect("a payload of 7999 bytes is taken");
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
    assert_eq!(
        functions(&client).await,
        [
            "event_key",
            "horizon",
            "horizon",
            "notify_row",
            "read",
            "read_batch",
            "send",
            "stamp_commit",
            "stamp_unstamped"
        ]
    );
}

/// Eight producers send at random, in transactions of random length, some
/// rolled back, while a reader follows the outbox from its position. Every
/// committed event is read once; no rolled-back one is; the events of one
/// transaction come together and in order; and the position only moves on.
#[tokio::test]
async fn the_reader_gets_every_committed_event_once_in_order_under_concurrent_producers() {
    use pgnotifier::durable::reader::Position;
    use std::collections::{BTreeMap, BTreeSet};

    let (url, mut client) = fresh_database("producers").await;
    schema::install(&mut client).await.unwrap();
    const PRODUCERS: u64 = 8;
    const TRANSACTIONS: u64 = 25;
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|p| {
            let url = url.clone();
            tokio::spawn(async move {
                let (mut client, connection) = tokio_postgres::connect(&url, NoTls).await.unwrap();
                tokio::spawn(connection);
                // A small deterministic generator: each producer its own stream.
                let mut state = p.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
                let mut next = move |n: u64| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state % n
                };
                let (mut committed, mut aborted) = (Vec::new(), Vec::new());
                for t in 0..TRANSACTIONS {
                    let tx = client.transaction().await.unwrap();
                    let mut ids = Vec::new();
                    for e in 0..=next(4) {
                        let payload = format!("p{p}-t{t}-e{e}");
                        let row = tx
                            .query_one("select pgnotifier.send('work', $1)", &[&payload])
                            .await
                            .unwrap();
                        ids.push(row.get::<_, i64>(0));
                        // Some transactions stay open while others commit.
                        tokio::time::sleep(std::time::Duration::from_millis(next(15))).await;
                    }
                    if next(5) == 0 {
                        tx.rollback().await.unwrap();
                        aborted.extend(ids);
                    } else {
                        let asked = std::time::Instant::now();
                        tx.commit().await.unwrap();
                        committed.push((ids, asked, std::time::Instant::now()));
                    }
                }
                (committed, aborted)
            })
        })
        .collect();

    let channels = ["work".to_owned()];
    let mut position = Position::default();
    let mut read: Vec<(i64, i64)> = Vec::new();
    let mut reads = 0;
    // Follow while the producers run.
    let read_next = async |position: &mut Position, read: &mut Vec<(i64, i64)>| {
        let batch = next_events(&client, *position, &channels, 50)
            .await
            .unwrap();
        for event in &batch {
            assert!(event.position() > *position, "the position only moves on");
            *position = event.position();
            read.push((event.stamp, event.id));
        }
        batch.len()
    };
    while !producers.iter().all(|p| p.is_finished()) {
        reads += 1;
        if read_next(&mut position, &mut read).await == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
    }
    let mut commits = Vec::new();
    let mut aborted: BTreeSet<i64> = BTreeSet::new();
    for producer in producers {
        let (c, a) = producer.await.unwrap();
        commits.extend(c);
        aborted.extend(a);
    }
    let committed: Vec<Vec<i64>> = commits.iter().map(|(ids, _, _)| ids.clone()).collect();
    // Then catch up with the last commits.
    let expected_count: usize = committed.iter().map(Vec::len).sum();
    let deadline = std::time::Instant::now() + SOON;
    while read.len() < expected_count {
        assert!(
            std::time::Instant::now() < deadline,
            "read {} of {expected_count}",
            read.len()
        );
        if read_next(&mut position, &mut read).await == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }
    assert_eq!(read_next(&mut position, &mut read).await, 0, "nothing more");
    assert!(
        !aborted.is_empty() && committed.len() > 100,
        "the mix has both"
    );

    let read_ids: Vec<i64> = read.iter().map(|(_, id)| *id).collect();
    let unique: BTreeSet<i64> = read_ids.iter().copied().collect();
    assert_eq!(unique.len(), read_ids.len(), "no event is read twice");
    let expected: BTreeSet<i64> = committed.iter().flatten().copied().collect();
    assert_eq!(
        unique, expected,
        "every committed event is read, and only those"
    );
    assert!(unique.is_disjoint(&aborted));

    // Each transaction's events come together, in the order they were sent.
    let mut by_stamp: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    for (stamp, id) in &read {
        by_stamp.entry(*stamp).or_default().push(*id);
    }
    let mut groups: Vec<Vec<i64>> = by_stamp.values().cloned().collect();
    let mut sent = committed.clone();
    groups.sort();
    sent.sort();
    assert_eq!(
        groups, sent,
        "one group per committed transaction, in send order"
    );
    // Transactions in commit order: one whose commit returned before
    // another's was asked for comes first. Ids (and transaction ids) would
    // not do: they are taken at the first send, not as it commits.
    let stamp_of: BTreeMap<i64, i64> = read.iter().map(|(stamp, id)| (*id, *stamp)).collect();
    let mut pairs = 0;
    let mut id_order_wrong = 0;
    for (a, _, a_done) in &commits {
        for (b, b_asked, _) in &commits {
            if a_done < b_asked {
                pairs += 1;
                assert!(
                    stamp_of[&a[0]] < stamp_of[&b[0]],
                    "{a:?} committed before {b:?} was asked to, and comes after it"
                );
                id_order_wrong += usize::from(b[0] < a[0]);
            }
        }
    }
    assert!(
        pairs > 1000 && id_order_wrong > 0,
        "the mix has transactions that commit in another order than they start: {pairs} pairs, {id_order_wrong} out of id order"
    );
    assert!(reads > 1, "the reader ran while the producers did");
}

/// A position is kept in PostgreSQL, only moves forward, and a new
/// subscriber starts after what is committed now, not after the events of
/// a transaction still running.
#[tokio::test]
async fn positions_live_in_the_database_and_only_move_forward() {
    use pgnotifier::durable::reader::{end_of_outbox, position, save_position, Position};
    let (url, mut client) = fresh_database("positions").await;
    schema::install(&mut client).await.unwrap();
    assert_eq!(
        end_of_outbox(&client).await.unwrap(),
        Position::after_stamp(0)
    );
    client
        .batch_execute("select pgnotifier.send('work', 'before')")
        .await
        .unwrap();

    // A transaction that is still running when the subscriber starts.
    let (mut other, connection) = tokio_postgres::connect(&url, NoTls).await.unwrap();
    tokio::spawn(connection);
    let running = other.transaction().await.unwrap();
    running
        .batch_execute("select pgnotifier.send('work', 'in flight')")
        .await
        .unwrap();
    let work = ["work".to_owned()];
    let start = end_of_outbox(&client).await.unwrap();
    assert!(
        next_events(&client, start, &work, 10)
            .await
            .unwrap()
            .is_empty(),
        "the start is after what was committed"
    );
    running.commit().await.unwrap();
    client
        .batch_execute("select pgnotifier.send('work', 'after')")
        .await
        .unwrap();
    let events = next_events(&client, start, &work, 10).await.unwrap();
    let payloads: Vec<&str> = events.iter().map(|e| e.payload.as_str()).collect();
    assert_eq!(
        payloads,
        ["in flight", "after"],
        "nothing before the start is read"
    );

    assert_eq!(position(&client, "sink").await.unwrap(), None);
    let last = events[1].position();
    save_position(&client, "sink", last, None).await.unwrap();
    save_position(&client, "sink", events[0].position(), None)
        .await
        .unwrap();
    assert_eq!(
        position(&client, "sink").await.unwrap(),
        Some(last),
        "an older position does not overwrite a newer one"
    );
    assert!(next_events(&client, last, &work, 10)
        .await
        .unwrap()
        .is_empty());
}

/// Delivery follows commits: a transaction that sent first but commits
/// last comes last, and one that stays open holds back nothing else.
#[tokio::test]
async fn events_come_in_commit_order_and_an_open_transaction_holds_nothing_back() {
    use pgnotifier::durable::reader::Position;
    let (url, client) = fresh_database("commit_order").await;
    let mut admin = client;
    schema::install(&mut admin).await.unwrap();
    let connect = async || {
        let (client, connection) = tokio_postgres::connect(&url, NoTls).await.unwrap();
        tokio::spawn(connection);
        client
    };
    let (mut first, mut second, mut idle) = (connect().await, connect().await, connect().await);
    let early = first.transaction().await.unwrap();
    early
        .batch_execute("select pgnotifier.send('work', 'sent first')")
        .await
        .unwrap();
    let late = second.transaction().await.unwrap();
    late.batch_execute("select pgnotifier.send('work', 'sent second')")
        .await
        .unwrap();
    // A transaction that sends nothing and stays open throughout.
    let open = idle.transaction().await.unwrap();
    open.batch_execute("create temp table held (x int); insert into held values (1)")
        .await
        .unwrap();
    late.commit().await.unwrap();
    let work = ["work".to_owned()];
    let events = next_events(&admin, Position::default(), &work, 10)
        .await
        .unwrap();
    let payloads: Vec<&str> = events.iter().map(|e| e.payload.as_str()).collect();
    assert_eq!(
        payloads,
        ["sent second"],
        "readable at once, though an older transaction is still open"
    );
    early.commit().await.unwrap();
    let events = next_events(&admin, events[0].position(), &work, 10)
        .await
        .unwrap();
    let payloads: Vec<&str> = events.iter().map(|e| e.payload.as_str()).collect();
    assert_eq!(
        payloads,
        ["sent first"],
        "after the one that committed before it"
    );
    open.rollback().await.unwrap();
}

/// A transaction is stamped once, at its first event; an event rolled back
/// to a savepoint takes that mark with it, and the next one carries it.
#[tokio::test]
async fn a_savepoint_rolled_back_with_the_first_event_loses_nothing_after_it() {
    use pgnotifier::durable::reader::Position;
    let (_url, mut client) = fresh_database("savepoint").await;
    schema::install(&mut client).await.unwrap();
    client
        .batch_execute(
            "begin;
             savepoint a;
             select pgnotifier.send('work', 'rolled back');
             rollback to savepoint a;
             select pgnotifier.send('work', 'kept 1');
             select pgnotifier.send('work', 'kept 2');
             commit;",
        )
        .await
        .unwrap();
    let work = ["work".to_owned()];
    let events = next_events(&client, Position::default(), &work, 10)
        .await
        .unwrap();
    let payloads: Vec<&str> = events.iter().map(|e| e.payload.as_str()).collect();
    assert_eq!(payloads, ["kept 1", "kept 2"]);
    assert_eq!(
        events[0].stamp, events[1].stamp,
        "one transaction, one stamp"
    );
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

#[tokio::test]
async fn an_at_least_once_subscriber_gets_every_event_across_a_killed_connection_and_a_restart() {
    use pgnotifier::durable::feeder::{SAVE_EVERY, WINDOW};
    use pgnotifier::durable::RetryPolicy;
    let (url, client) = fresh_database("native").await;
    let n = notifier_on(&url);
    let (subscriber, seen) = recording_at_least_once(RetryPolicy::default());
    n.subscribe("sink", "work", subscriber).unwrap();
    feeding(&client, "sink").await;

    send_range(&client, 0..100).await;
    let count = |n: usize| {
        let seen = seen.clone();
        move || {
            seen.lock()
                .unwrap()
                .iter()
                .collect::<std::collections::BTreeSet<_>>()
                .len()
                >= n
        }
    };
    assert!(
        crate::support::eventually(SOON, count(100)).await,
        "{:?}",
        seen.lock().unwrap().len()
    );
    // Every backend of the host: the feeder reconnects and resumes.
    client
        .batch_execute(
            "select pg_terminate_backend(pid) from pg_stat_activity
              where datname = current_database() and pid <> pg_backend_pid()",
        )
        .await
        .unwrap();
    send_range(&client, 100..200).await;
    assert!(crate::support::eventually(SOON, count(200)).await);
    n.shutdown(std::time::Duration::from_secs(5)).await;
    let across_the_kill = assert_all_in_order(&seen.lock().unwrap(), 200);
    assert!(
        across_the_kill < SAVE_EVERY as usize + WINDOW,
        "{across_the_kill} repeats, more than the unsaved window"
    );

    // Sent while no host runs: the next one with the same id gets them, and
    // after a clean shutdown, nothing twice.
    send_range(&client, 200..250).await;
    let again = notifier_on(&url);
    let (subscriber, after) = recording_at_least_once(RetryPolicy::default());
    again.subscribe("sink", "work", subscriber).unwrap();
    let done = {
        let after = after.clone();
        move || after.lock().unwrap().len() >= 50
    };
    assert!(crate::support::eventually(SOON, done).await);
    again.shutdown(std::time::Duration::from_secs(5)).await;
    assert_eq!(*after.lock().unwrap(), (200..250).collect::<Vec<_>>());
}

#[tokio::test]
async fn failures_are_retried_then_dead_lettered_and_delivery_moves_on() {
    use pgnotifier::durable::RetryPolicy;
    let (url, client) = fresh_database("retry").await;
    let n = notifier_on(&url);
    let quick = |max_attempts| RetryPolicy {
        max_attempts,
        backoff: std::time::Duration::from_millis(1),
    };
    // Fails its first two calls of every event. Each call is told which
    // event it has and which attempt this is.
    let calls: std::sync::Arc<std::sync::Mutex<std::collections::BTreeMap<String, u32>>> =
        Default::default();
    let told: std::sync::Arc<std::sync::Mutex<Vec<(String, i64, u32)>>> = Default::default();
    let (counted, noted) = (calls.clone(), told.clone());
    let flaky = pgnotifier::Subscriber::native(move |_, _, payload, _| {
        let count = {
            let mut calls = counted.lock().unwrap();
            let count = calls.entry(format!("{payload:?}")).or_default();
            *count += 1;
            *count
        };
        if let Some(event) = pgnotifier::current_event() {
            noted
                .lock()
                .unwrap()
                .push((format!("{payload:?}"), event.id, event.attempt));
        }
        // Panics outside the lock, which stays usable.
        assert!(count > 2, "attempt {count} fails");
    })
    .failure_threshold(0)
    .at_least_once(quick(5));
    let broken = pgnotifier::Subscriber::native(|_, _, _, _| panic!("always broken"))
        .failure_threshold(0)
        .at_least_once(quick(3));
    n.subscribe("flaky", "work", flaky).unwrap();
    n.subscribe("broken", "work", broken).unwrap();
    feeding(&client, "flaky").await;
    feeding(&client, "broken").await;
    send_range(&client, 0..10).await;

    let dead_letters = || async {
        (client.query(
            "select subscriber, attempts, error from pgnotifier.dead_letters order by id",
            &[],
        ))
        .await
        .unwrap()
    };
    let deadline = std::time::Instant::now() + SOON;
    while dead_letters().await.len() < 10 {
        assert!(
            std::time::Instant::now() < deadline,
            "dead letters: {}",
            dead_letters().await.len()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // The counts show in the subscribers' views and the metrics.
    let durable_of = |id: &str| {
        (n.subscribers().into_iter())
            .find(|s| s.id == id)
            .and_then(|s| s.durable)
            .unwrap_or_else(|| panic!("{id} is at-least-once"))
    };
    let broken = durable_of("broken");
    assert_eq!(
        (broken.retries, broken.dead_letters),
        (20, 10),
        "{broken:?}"
    );
    let metrics = n.metrics();
    assert!(
        metrics.contains("pgnotifier_subscriber_dead_letters_total{subscriber=\"broken\"} 10"),
        "{metrics}"
    );
    for row in dead_letters().await {
        assert_eq!(row.get::<_, String>(0), "broken");
        assert_eq!(row.get::<_, i32>(1), 3);
        assert!(row.get::<_, String>(2).contains("always broken"));
    }
    let deadline = std::time::Instant::now() + SOON;
    while calls.lock().unwrap().values().filter(|c| **c == 3).count() < 10 {
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}",
            calls.lock().unwrap()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let flaky = durable_of("flaky");
    assert_eq!((flaky.retries, flaky.dead_letters), (20, 0), "{flaky:?}");
    n.shutdown(std::time::Duration::from_secs(5)).await;
    assert!(
        calls.lock().unwrap().values().all(|c| *c == 3),
        "each event succeeded at its third call, once: {:?}",
        calls.lock().unwrap()
    );
    // The subscriber saw each event's outbox id, the same on every attempt,
    // with the attempts counted 1, 2, 3.
    let outbox: std::collections::BTreeMap<String, i64> = (client
        .query("select payload, id from pgnotifier.outbox", &[]))
    .await
    .unwrap()
    .iter()
    .map(|row| {
        (
            format!(
                "{:?}",
                pgnotifier::Payload::Integer(row.get::<_, String>(0).parse().unwrap())
            ),
            row.get(1),
        )
    })
    .collect();
    let told = told.lock().unwrap();
    assert_eq!(told.len(), 30, "{told:?}");
    for (payload, id) in &outbox {
        let attempts: Vec<u32> = (told.iter())
            .filter(|(p, _, _)| p == payload)
            .map(|(_, seen, attempt)| {
                assert_eq!(seen, id, "{payload}");
                *attempt
            })
            .collect();
        assert_eq!(attempts, [1, 2, 3], "{payload}");
    }
}

#[tokio::test]
async fn a_plugin_whose_sidecar_says_at_least_once_gets_events_sent_while_it_was_away() {
    use crate::support::wat::{Notify, WatPlugin};
    crate::support::logs::install();
    let (url, client) = fresh_database("plugin").await;
    let dir = crate::support::temp_dir("durable-plugin");
    let id = crate::support::channel("durable_echo");
    WatPlugin::new(&["work"], Notify::Echo).write(&dir, &id);
    std::fs::write(
        dir.join(format!("{id}.toml")),
        "delivery = \"at-least-once\"\nretry_backoff_ms = 5\n",
    )
    .unwrap();
    let n = notifier_on(&url);
    n.load_plugins(&dir)
        .await
        .unwrap()
        .into_iter()
        .for_each(|(_, r)| {
            r.unwrap();
        });
    feeding(&client, &id).await;
    n.shutdown(std::time::Duration::from_secs(5)).await;
    // Sent while no host runs.
    client
        .batch_execute("select pgnotifier.send('work', 'while away')")
        .await
        .unwrap();
    let again = notifier_on(&url);
    again.load_plugins(&dir).await.unwrap();
    let got = || crate::support::logs::plugin_messages(&id).contains(&"while away".to_owned());
    assert!(
        crate::support::eventually(SOON, got).await,
        "{:?}",
        crate::support::logs::plugin_messages(&id)
    );
    again.shutdown(std::time::Duration::from_secs(5)).await;
}

/// `pgnotifier run` killed with SIGKILL mid-stream and started again: every
/// event reaches the plugin, repeats bounded by the unsaved window.
#[tokio::test]
async fn a_host_killed_with_sigkill_redelivers_from_its_position_and_loses_nothing() {
    use crate::support::host::Host;
    use crate::support::wat::{Notify, WatPlugin};
    use pgnotifier::durable::feeder::{SAVE_EVERY, WINDOW};
    let (url, client) = fresh_database("sigkill").await;
    let plugins = crate::support::temp_dir("durable-sigkill");
    let id = "durable_sink";
    // Slow enough per call that the kill lands mid-stream.
    WatPlugin::new(&["work"], Notify::Burn(3_000_000)).write(&plugins, id);
    let sidecar = plugins.join(format!("{id}.toml"));
    std::fs::write(sidecar, "delivery = 'at-least-once'\n").unwrap();
    let token = |i: usize| format!("<{i}>");
    let count = |output: &str, i: usize| {
        let token = token(i);
        (output.lines())
            .filter(|l| l.contains(&token) && l.contains("subscriber=durable_sink"))
            .count()
    };

    let first = Host::run(&plugins, &url);
    first.wait_for(&["plugin loaded", "subscriber=durable_sink"]);
    feeding(&client, id).await;
    for start in (0..300).step_by(10) {
        let values: Vec<String> = (start..start + 10)
            .map(|i| format!("pgnotifier.send('work', '{}')", token(i)))
            .collect();
        let sql = format!("begin; select {}; commit", values.join(", "));
        client.batch_execute(&sql).await.unwrap();
    }
    first.wait_for(&[&token(100), "subscriber=durable_sink"]);
    first.signal("KILL");
    let (status, before) = first.wait();
    assert!(!status.success(), "killed: {status}");
    assert_eq!(count(&before, 299), 0, "the kill came mid-stream");

    let second = Host::run(&plugins, &url);
    second.wait_for(&["plugin loaded", "subscriber=durable_sink"]);
    second.wait_for_within(SOON, &[&token(299), "subscriber=durable_sink"]);
    let after = second.stop();
    let mut repeats = 0;
    for i in 0..300 {
        let total = count(&before, i) + count(&after, i);
        assert!(total >= 1, "event {i} never arrived:\n{after}");
        repeats += total - 1;
    }
    assert!(
        repeats < SAVE_EVERY as usize + WINDOW,
        "{repeats} repeats, more than the unsaved window"
    );
}

/// Dead letters through `ctl`: listed, delivered again once the plugin is
/// fixed (and then gone), and a subscriber skipped past what it missed.
#[tokio::test]
async fn dead_letters_are_listed_redelivered_and_a_subscriber_skipped_through_ctl() {
    use crate::support::host::{ctl_json, ctl_ok, Host};
    use crate::support::wat::{Notify, WatPlugin};
    let (url, client) = fresh_database("ctl").await;
    let dir = crate::support::temp_dir("durable-ctl");
    let plugins = dir.join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    let config = dir.join("pgnotifier.toml");
    std::fs::write(
        &config,
        format!(
            "database_url = {url:?}\nplugins = {:?}\ndata_dir = {:?}\nadmin_addr = \"127.0.0.1:0\"\nwatch_debounce_ms = 25\n",
            plugins.display().to_string(),
            dir.join("data").display().to_string(),
        ),
    )
    .unwrap();
    let id = "letters";
    std::fs::write(
        plugins.join(format!("{id}.toml")),
        "delivery = 'at-least-once'\nretry_max_attempts = 2\nretry_backoff_ms = 1\nfailure_threshold = 0\n",
    )
    .unwrap();
    WatPlugin::new(&["work"], Notify::Fail).write(&plugins, id);
    let host = Host::with_config(&config);
    host.wait_for(&["plugin loaded", "subscriber=letters"]);
    feeding(&client, id).await;
    client
        .batch_execute("select pgnotifier.send('work', 'first'), pgnotifier.send('work', 'second')")
        .await
        .unwrap();
    let letters = crate::support::until(
        SOON,
        || host.output(),
        || {
            let letters = ctl_json(&config, &["dead-letters"]);
            (letters.as_array().map_or(0, Vec::len) == 2).then_some(letters)
        },
    );
    for (letter, payload) in letters.as_array().unwrap().iter().zip(["first", "second"]) {
        assert_eq!(letter["subscriber"], id);
        assert_eq!(letter["payload"], payload);
        assert_eq!(letter["attempts"], 2);
        assert!(
            letter["error"].as_str().unwrap().contains("nope"),
            "{letter}"
        );
    }
    let table = ctl_ok(&config, &["dead-letters"]);
    assert!(
        table.contains("ATTEMPTS") && table.contains("letters"),
        "{table}"
    );

    // Fixed, and the first letter delivered again: it arrives, and is gone.
    WatPlugin::new(&["work"], Notify::Echo).write(&plugins, id);
    host.wait_for(&["plugin reloaded", "subscriber=letters"]);
    let first = letters[0]["id"].to_string();
    ctl_ok(&config, &["redeliver", &first]);
    host.wait_for(&["first", "subscriber=letters"]);
    crate::support::until(
        SOON,
        || host.output(),
        || {
            let left = ctl_json(&config, &["dead-letters"]);
            let left: Vec<&str> = left
                .as_array()
                .unwrap()
                .iter()
                .map(|l| l["payload"].as_str().unwrap())
                .collect();
            (left == ["second"]).then_some(())
        },
    );
    let missing = crate::support::host::ctl(&config, &["redeliver", "999999"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no dead letter 999999"));

    // Muted, it keeps its position; skipped, what was sent meanwhile is passed over.
    ctl_ok(&config, &["mute-subscriber", id]);
    client
        .batch_execute("select pgnotifier.send('work', 'while muted')")
        .await
        .unwrap();
    ctl_ok(&config, &["skip", id]);
    ctl_ok(&config, &["unmute-subscriber", id]);
    client
        .batch_execute("select pgnotifier.send('work', 'after the skip')")
        .await
        .unwrap();
    host.wait_for(&["after the skip", "subscriber=letters"]);
    let output = host.stop();
    assert!(!output.contains("while muted"), "{output}");
}

/// A subscriber failing the first two calls of some events, while events
/// are queued a window at a time: every event succeeds once, and in order,
/// so none after a failing one is called before it succeeds.
#[tokio::test]
async fn retries_keep_the_order_while_events_are_queued_a_window_at_a_time() {
    use pgnotifier::durable::RetryPolicy;
    let (url, client) = fresh_database("order").await;
    let n = notifier_on(&url);
    let calls: std::sync::Arc<std::sync::Mutex<std::collections::BTreeMap<usize, u32>>> =
        Default::default();
    let (counted, delivered) = (calls.clone(), Seen::default());
    let sink = delivered.clone();
    let subscriber = pgnotifier::Subscriber::native(move |_, _, payload, _| {
        let pgnotifier::Payload::Text(text) = payload else {
            return;
        };
        let i: usize = text.parse().expect("a number");
        let count = {
            let mut calls = counted.lock().unwrap();
            let count = calls.entry(i).or_default();
            *count += 1;
            *count
        };
        // Some events fail twice; those after them must wait.
        assert!(i % 7 != 3 || count > 2, "attempt {count} fails");
        sink.lock().unwrap().push(i);
    })
    .payload_mode(pgnotifier::PayloadMode::Raw)
    .failure_threshold(0)
    .at_least_once(RetryPolicy {
        max_attempts: 5,
        backoff: std::time::Duration::from_millis(1),
    });
    n.subscribe("ordered", "work", subscriber).unwrap();
    feeding(&client, "ordered").await;
    send_range(&client, 0..300).await;
    let done = {
        let delivered = delivered.clone();
        move || delivered.lock().unwrap().len() >= 300
    };
    assert!(
        crate::support::eventually(SOON, done).await,
        "{} delivered",
        delivered.lock().unwrap().len()
    );
    n.shutdown(std::time::Duration::from_secs(5)).await;
    assert_eq!(*delivered.lock().unwrap(), (0..300).collect::<Vec<_>>());
    let calls = calls.lock().unwrap();
    let expected = |i: usize| if i % 7 == 3 { 3 } else { 1 };
    assert!(
        calls.iter().all(|(i, c)| *c == expected(*i)),
        "each failing event at its third call, the others at their first: {calls:?}"
    );
}

#[tokio::test]
async fn pruning_leaves_every_event_a_subscriber_still_needs_and_tells_of_what_age_removed() {
    use pgnotifier::durable::RetryPolicy;
    use std::sync::{Arc, Mutex};
    let (url, client) = fresh_database("prune").await;
    let n = notifier_on(&url);
    let recorder = |seen: &Arc<Mutex<Vec<String>>>| {
        let seen = seen.clone();
        move |_: &str, _: &str, payload: &pgnotifier::Payload, _: i32| {
            seen.lock().unwrap().push(format!("{payload:?}"));
        }
    };
    let fast: Arc<Mutex<Vec<String>>> = Default::default();
    let slow: Arc<Mutex<Vec<String>>> = Default::default();
    let gaps: Arc<Mutex<Vec<pgnotifier::Gap>>> = Default::default();
    let told = gaps.clone();
    n.subscribe(
        "fast",
        "work",
        pgnotifier::Subscriber::native(recorder(&fast)).at_least_once(RetryPolicy::default()),
    )
    .unwrap();
    n.subscribe(
        "slow",
        "work",
        pgnotifier::Subscriber::native(recorder(&slow))
            .on_gap(move |_, _| {
                told.lock()
                    .unwrap()
                    .push(pgnotifier::current_gap().unwrap())
            })
            .at_least_once(RetryPolicy::default()),
    )
    .unwrap();
    // Both positions name their channels before the slow one stops.
    let deadline = std::time::Instant::now() + SOON;
    loop {
        let named: i64 = (client.query_one(
            "select count(*) from pgnotifier.positions where channels = '{work}'",
            &[],
        ))
        .await
        .map_or(0, |row| row.get(0));
        if named == 2 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "positions: {named} of 2 named"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    n.mute_subscriber("slow", pgnotifier::Selection::All)
        .unwrap();
    send_range(&client, 0..20).await;
    client
        .batch_execute("select pgnotifier.send('nobody', 'x') from generate_series(1, 5)")
        .await
        .unwrap();
    let got_all = |seen: &Arc<Mutex<Vec<String>>>, count: usize| {
        let seen = seen.clone();
        move || seen.lock().unwrap().len() >= count
    };
    assert!(crate::support::eventually(SOON, got_all(&fast, 20)).await);

    // Its lag shows, counted while it is muted.
    let lag = || {
        (n.subscribers().into_iter())
            .find(|s| s.id == "slow")
            .and_then(|s| s.durable)
            .unwrap()
    };
    assert!(
        crate::support::eventually(SOON, || lag().lag_events == 20).await,
        "{:?}",
        lag()
    );
    assert!(lag().lag_ms > 0, "{:?}", lag());
    // The slow subscriber still needs every `work` event: only `nobody`'s go.
    let pruned = prune_until(&n, 5).await;
    assert_eq!((pruned.passed, pruned.expired), (5, 0));
    assert_eq!(outbox_count(&client, "nobody").await, 0);
    assert_eq!(outbox_count(&client, "work").await, 20);

    // Back, it catches up on all of them; then they are passed by both.
    n.unmute_subscriber("slow", pgnotifier::Selection::All)
        .unwrap();
    assert!(crate::support::eventually(SOON, got_all(&slow, 20)).await);
    let pruned = prune_until(&n, 20).await;
    assert_eq!(pruned.expired, 0);
    assert_eq!(outbox_count(&client, "work").await, 0);
    let stamps: i64 = (client.query_one("select count(*) from pgnotifier.commits", &[]))
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        stamps, 0,
        "the stamps of transactions whose events are all gone go too"
    );

    // Removed by age before the slow one had them: a gap event says so.
    n.mute_subscriber("slow", pgnotifier::Selection::All)
        .unwrap();
    send_range(&client, 100..103).await;
    assert!(crate::support::eventually(SOON, got_all(&fast, 23)).await);
    let ageing =
        pgnotifier::Notifier::builder(pgnotifier::DatabaseSettings::from_url(&url).unwrap())
            .outbox_retention(std::time::Duration::ZERO)
            .build();
    let pruned = ageing.prune_outbox().await.unwrap().unwrap();
    assert_eq!(pruned.passed + pruned.expired, 3, "{pruned:?}");
    n.unmute_subscriber("slow", pgnotifier::Selection::All)
        .unwrap();
    assert!(crate::support::eventually(SOON, || !gaps.lock().unwrap().is_empty()).await);
    n.shutdown(std::time::Duration::from_secs(5)).await;
    let gaps = gaps.lock().unwrap();
    assert_eq!(gaps.len(), 1, "{gaps:?}");
    assert_eq!(&*gaps[0].channels, ["work".to_owned()]);
    assert_eq!(gaps[0].cause, pgnotifier::GapCause::Pruned(3));
    assert!(gaps[0].lost_at.is_some_and(|at| at <= gaps[0].resumed_at));
    assert_eq!(
        slow.lock().unwrap().len(),
        20,
        "the pruned events never came"
    );
}

// Faults during a stream: eight producers send at random (transactions of
// one to four events, some held open, some rolled back) to the durable sink
// plugin, while something goes wrong. Each test ends with every committed
// event delivered, none rolled back, in order, and duplicates within the
// stated redelivery window.

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_from_eight_producers_reaches_a_durable_plugin_complete_in_order_and_once() {
    let (url, client, n, _, id) = sink_stream("stream", "").await;
    let produced = produce(&url, 25).finish().await;
    let got = check_stream(&client, || sunk(&id), &produced, 0).await;
    assert!(
        got.iter().all(|(_, _, attempt)| *attempt == 1),
        "no retries"
    );
    n.shutdown(std::time::Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_survives_its_backends_terminated_twice() {
    let (url, client, n, _, id) = sink_stream("terminated", "").await;
    crate::support::listen(&n).await;
    let stream = produce(&url, 30);
    for _ in 0..2 {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let killed: i64 = client
            .query_one(
                "select count(pg_terminate_backend(pid)) from pg_stat_activity
                  where datname = current_database() and pid <> pg_backend_pid()
                    and application_name = 'pgnotifier'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert!(
            killed >= 1,
            "the listener's and the feeder's backends: {killed}"
        );
    }
    let produced = stream.finish().await;
    check_stream(&client, || sunk(&id), &produced, 2 * WINDOW).await;
    n.shutdown(std::time::Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_survives_postgresql_stopped_and_started() {
    crate::support::logs::install();
    let cluster = pgnotifier_app::local_pg::Cluster::start().expect("a throwaway PostgreSQL");
    let url = cluster.url().to_owned();
    let (mut client, connection) = tokio_postgres::connect(&url, NoTls).await.unwrap();
    tokio::spawn(connection);
    schema::install(&mut client).await.unwrap();
    let n = notifier_on(&url);
    let dir = crate::support::temp_dir("durable-restart");
    let id = crate::support::channel("sink_restart");
    durable_sink(&n, &dir, &id, "").await;
    feeding(&client, &id).await;
    let stream = produce(&url, 40);
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    cluster.stop_server().unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    cluster.start_server().unwrap();
    let produced = stream.finish().await;
    let (client, connection) = tokio_postgres::connect(&url, NoTls).await.unwrap();
    tokio::spawn(connection);
    check_stream(&client, || sunk(&id), &produced, WINDOW).await;
    n.shutdown(std::time::Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_survives_two_hot_reloads_of_the_plugin() {
    let (url, client, n, dir, id) = sink_stream("reloaded", "").await;
    let _watcher = n.watch_plugins(&dir).await.unwrap();
    let loads =
        || crate::support::host::parse_metrics(&n.metrics())["pgnotifier_plugin_loads_total"];
    let stream = produce(&url, 30);
    for reload in 1..=2 {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let before = loads();
        let sidecar = dir.join(format!("{id}.toml"));
        let text = std::fs::read_to_string(&sidecar).unwrap();
        std::fs::write(&sidecar, format!("{text}# reload {reload}\n")).unwrap();
        assert!(
            crate::support::eventually(SOON, || loads() > before).await,
            "reload {reload}"
        );
    }
    let produced = stream.finish().await;
    check_stream(&client, || sunk(&id), &produced, 2 * WINDOW).await;
    n.shutdown(std::time::Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_reaches_a_plugin_that_fails_the_first_two_attempts_at_every_event() {
    let (url, client, n, _, id) = sink_stream("failing", "[config]\nfail_attempts = \"2\"\n").await;
    let produced = produce(&url, 15).finish().await;
    let got = check_stream(&client, || sunk(&id), &produced, 0).await;
    assert!(
        got.iter().all(|(_, _, attempt)| *attempt == 3),
        "each event succeeded at its third attempt, and the plugin was told so"
    );
    n.shutdown(std::time::Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stream_survives_pgnotifier_run_killed_with_sigkill_and_started_again() {
    use crate::support::host::Host;
    let (url, client) = fresh_database("killed").await;
    let plugins = crate::support::temp_dir("durable-killed");
    let id = "sink_killed";
    std::fs::copy(
        crate::support::test_plugin("durable-sink"),
        plugins.join(format!("{id}.wasm")),
    )
    .unwrap();
    std::fs::write(
        plugins.join(format!("{id}.toml")),
        "delivery = \"at-least-once\"\nretry_backoff_ms = 1\n",
    )
    .unwrap();
    let first = Host::run(&plugins, &url);
    first.wait_for(&["plugin loaded", "subscriber=sink_killed"]);
    feeding(&client, id).await;
    let stream = produce(&url, 40);
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    first.signal("KILL");
    let (status, before) = first.wait();
    assert!(!status.success(), "killed: {status}");
    let second = Host::run(&plugins, &url);
    second.wait_for(&["plugin loaded", "subscriber=sink_killed"]);
    let produced = stream.finish().await;
    let both = || {
        let mut all = sunk_in(&before, id);
        all.extend(sunk_in(&second.output(), id));
        all
    };
    check_stream(&client, both, &produced, WINDOW).await;
    assert!(
        !sunk_in(&before, id).is_empty(),
        "the first host delivered some"
    );
    second.stop();
}
