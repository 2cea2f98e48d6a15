//! The WAL transport: `pgnotifier.send` writes a logical decoding message,
//! and the dispatching host relays the slot into the outbox. These run on a
//! throwaway server with `wal_level = logical` (`support::logical_url`).

use crate::support::durable::*;
use crate::support::{eventually, SOON};
use pgnotifier::durable::{RetryPolicy, Transport};
use std::time::Duration;
use tokio_postgres::Client;

/// A database of its own on the logical server, and its slot's name.
async fn wal_database(name: &str) -> (String, Client, Transport) {
    crate::support::logs::install();
    let (url, client) = fresh_database_on(crate::support::logical_url(), name).await;
    let transport = Transport::Wal {
        slot: format!("pgn_{name}"),
    };
    (url, client, transport)
}

fn wal_notifier(url: &str, transport: &Transport) -> pgnotifier::Notifier {
    pgnotifier::Notifier::builder(pgnotifier::DatabaseSettings::from_url(url).unwrap())
        .durable_transport(transport.clone())
        .build()
}

/// Numbers received, and the causes of the gaps told, in order.
type Gaps = std::sync::Arc<std::sync::Mutex<Vec<String>>>;

/// An at-least-once subscriber recording each payload as a number into
/// `seen`, and each gap's cause into `gaps`.
fn recording_gaps(seen: &Seen, gaps: &Gaps) -> pgnotifier::Subscriber {
    let (seen, gaps) = (seen.clone(), gaps.clone());
    pgnotifier::Subscriber::native(move |_, _, payload, _| {
        if let pgnotifier::Payload::Text(text) = payload {
            seen.lock().unwrap().push(text.parse().unwrap());
        }
    })
    .on_gap(move |_, _| {
        let cause = pgnotifier::current_gap().map(|gap| format!("{:?}", gap.cause));
        gaps.lock().unwrap().push(cause.unwrap_or_default());
    })
    .payload_mode(pgnotifier::PayloadMode::Raw)
    .at_least_once(RetryPolicy::default())
}

#[tokio::test(flavor = "multi_thread")]
async fn sends_through_the_wal_reach_an_at_least_once_subscriber_in_order_and_rollbacks_never() {
    let (url, client, transport) = wal_database("wal_order").await;
    let n = wal_notifier(&url, &transport);
    let (subscriber, seen) = recording_at_least_once(RetryPolicy::default());
    n.subscribe("sink", "work", subscriber).unwrap();
    n.start().await.unwrap();
    feeding(&client, "sink").await;
    relaying(&client).await;

    // A send writes no row: the sending transaction sees an empty outbox.
    let rows_seen_by_sender: i64 = {
        client.batch_execute("begin").await.unwrap();
        client
            .execute("select pgnotifier.send('work', '0')", &[])
            .await
            .unwrap();
        let rows = client
            .query_one("select count(*) from pgnotifier.outbox", &[])
            .await
            .unwrap()
            .get(0);
        client.batch_execute("commit").await.unwrap();
        rows
    };
    assert_eq!(rows_seen_by_sender, 0, "send wrote to the outbox");
    client
        .batch_execute("begin; select pgnotifier.send('work', '999'); rollback")
        .await
        .unwrap();
    send_range(&client, 1..300).await;
    let all = || seen.lock().unwrap().len() >= 300;
    assert!(
        eventually(SOON, all).await,
        "{} of 300 delivered",
        seen.lock().unwrap().len()
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let seen = seen.lock().unwrap().clone();
    assert!(!seen.contains(&999), "a rolled-back send was delivered");
    assert_eq!(assert_all_in_order(&seen, 300), 0, "no repeats");
    let relayed: i64 = client
        .query_one(
            "select count(*) from pgnotifier.outbox where channel = 'work' and lsn is not null",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        relayed > 0,
        "events came through the WAL, with their position"
    );
    let metrics = crate::support::host::parse_metrics(&n.metrics());
    assert!(
        metrics["pgnotifier_relay_events_total"] >= 300.0,
        "{:?}",
        metrics.get("pgnotifier_relay_events_total")
    );
    assert!(metrics["pgnotifier_relay_batches_total"] >= 1.0);
    assert_eq!(metrics["pgnotifier_relay_reading"], 1.0);
    // Caught up: at most the WAL written since the server last wrote to it.
    let behind = metrics["pgnotifier_relay_behind_bytes"];
    assert!(behind < 64.0 * 1024.0, "{behind} bytes behind");
    n.shutdown(Duration::from_secs(5)).await;
    let metrics = crate::support::host::parse_metrics(&n.metrics());
    assert_eq!(
        metrics["pgnotifier_relay_reading"], 0.0,
        "stopped with the host"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_without_wal_level_logical_is_refused_at_start_naming_the_setting() {
    let (url, client) = fresh_database("wal_refused").await;
    let level: String = client
        .query_one("select current_setting('wal_level')", &[])
        .await
        .unwrap()
        .get(0);
    assert_ne!(
        level, "logical",
        "this test needs the shared test server at wal_level replica or minimal"
    );
    let n = wal_notifier(
        &url,
        &Transport::Wal {
            slot: "pgn_refused".to_owned(),
        },
    );
    let refused = n
        .start()
        .await
        .expect_err("started without wal_level = logical");
    let text = pgnotifier::printable::with_causes(&refused);
    for needed in [
        "wal_level = logical",
        &format!("wal_level = {level}"),
        "restart PostgreSQL",
        "rds.logical_replication",
        "cloudsql.logical_decoding",
        "Azure",
        "durable_transport = \"outbox\"",
    ] {
        assert!(text.contains(needed), "{needed:?} not in: {text}");
    }
    assert!(!n.is_running(), "refused means not started");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mebibyte_goes_through_the_wal_whole_and_two_are_refused_naming_the_cap() {
    let (url, client, transport) = wal_database("wal_large").await;
    let n = wal_notifier(&url, &transport);
    let got: std::sync::Arc<std::sync::Mutex<Vec<usize>>> = Default::default();
    let sink = got.clone();
    let subscriber = pgnotifier::Subscriber::native(move |_, _, payload, _| {
        if let pgnotifier::Payload::Text(text) = payload {
            sink.lock().unwrap().push(text.len());
        }
    })
    .payload_mode(pgnotifier::PayloadMode::Raw)
    .at_least_once(RetryPolicy::default());
    n.subscribe("big", "large", subscriber).unwrap();
    n.start().await.unwrap();
    feeding(&client, "big").await;
    relaying(&client).await;
    client
        .execute("select pgnotifier.send('large', repeat('x', 1048576))", &[])
        .await
        .unwrap();
    let refused = error_of(
        &client,
        "select pgnotifier.send('large', repeat('y', 2097152))",
    )
    .await;
    assert_eq!(
        refused,
        "pgnotifier.send: a payload of 2097152 bytes is over max_payload_bytes (1048576)"
    );
    let whole = || got.lock().unwrap().first() == Some(&1_048_576);
    assert!(eventually(SOON, whole).await, "{:?}", got.lock().unwrap());
    n.shutdown(Duration::from_secs(5)).await;
    assert_eq!(got.lock().unwrap().len(), 1, "the refused one never came");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_host_stopped_mid_stream_relays_nothing_twice_and_the_next_misses_nothing() {
    let (url, client, transport) = wal_database("wal_restart").await;
    let dir = crate::support::temp_dir("durable-wal-restart");
    let id = crate::support::channel("sink_wal_restart");
    let first = wal_notifier(&url, &transport);
    durable_sink(&first, &dir, &id, "").await;
    first.start().await.unwrap();
    feeding(&client, &id).await;
    relaying(&client).await;
    let stream = produce(&url, 40);
    tokio::time::sleep(Duration::from_millis(400)).await;
    first.shutdown(Duration::from_secs(5)).await;
    // Sent while no host relays: the slot keeps it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = wal_notifier(&url, &transport);
    durable_sink(&second, &dir, &id, "").await;
    second.start().await.unwrap();
    let produced = stream.finish().await;
    relayed_all(&client, &produced).await;
    check_stream(&client, || sunk(&id), &produced, WINDOW).await;
    assert_eq!(relayed_twice(&client, "work").await, vec![]);
    second.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_relay_whose_session_is_killed_relays_nothing_twice() {
    let (url, client, transport) = wal_database("wal_killed").await;
    let n = wal_notifier(&url, &transport);
    let dir = crate::support::temp_dir("durable-wal-killed");
    let id = crate::support::channel("sink_wal_killed");
    durable_sink(&n, &dir, &id, "").await;
    n.start().await.unwrap();
    feeding(&client, &id).await;
    relaying(&client).await;
    let stream = produce(&url, 30);
    // The relay's replication session, killed again and again: the slot's
    // confirmed position lags what the outbox has (it follows within a
    // second), so the server sends again what was relayed.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        // Once the relay has its session again (it reconnects with backoff).
        let deadline = std::time::Instant::now() + SOON;
        loop {
            let killed: i64 = client
                .query_one(
                    "select count(pg_terminate_backend(pid)) from pg_stat_activity
                      where datname = current_database() and backend_type = 'walsender'",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            if killed == 1 {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the relay never read the slot again"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let produced = stream.finish().await;
    relayed_all(&client, &produced).await;
    check_stream(&client, || sunk(&id), &produced, 0).await;
    assert_eq!(relayed_twice(&client, "work").await, vec![]);
    n.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slot_lost_to_max_slot_wal_keep_size_is_a_gap_with_its_cause_then_delivery_goes_on() {
    crate::support::logs::install();
    // A server of its own: the bound is the whole server's.
    let cluster = tokio::task::spawn_blocking(|| {
        pgnotifier_app::local_pg::Cluster::start_with(&[
            ("wal_level", "logical"),
            ("max_slot_wal_keep_size", "1MB"),
        ])
    })
    .await
    .unwrap()
    .expect("a throwaway PostgreSQL with wal_level = logical");
    let url = cluster.url().to_owned();
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    let transport = Transport::Wal {
        slot: "pgn_lost".to_owned(),
    };
    let (seen, gaps): (Seen, Gaps) = Default::default();
    let first = wal_notifier(&url, &transport);
    first
        .subscribe("sink", "work", recording_gaps(&seen, &gaps))
        .unwrap();
    first.start().await.unwrap();
    feeding(&client, "sink").await;
    relaying(&client).await;
    client
        .batch_execute("select pgnotifier.send('work', '1')")
        .await
        .unwrap();
    assert!(eventually(SOON, || seen.lock().unwrap().contains(&1)).await);
    first.shutdown(Duration::from_secs(5)).await;

    // Sent while no host relays, then more WAL than the slot may hold.
    client
        .batch_execute("select pgnotifier.send('work', '2')")
        .await
        .unwrap();
    client
        .batch_execute("create table filler (body text)")
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + SOON;
    loop {
        client
            .batch_execute(
                "insert into filler select repeat('x', 1000) from generate_series(1, 20000);
                 select pg_switch_wal(); checkpoint;",
            )
            .await
            .unwrap();
        let lost: bool = client
            .query_one(
                "select wal_status = 'lost' from pg_replication_slots where slot_name = 'pgn_lost'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if lost {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the slot was never invalidated"
        );
    }

    let second = wal_notifier(&url, &transport);
    second
        .subscribe("sink", "work", recording_gaps(&seen, &gaps))
        .unwrap();
    second.start().await.unwrap();
    let told = || !gaps.lock().unwrap().is_empty();
    assert!(eventually(SOON, told).await, "no gap event");
    let cause = gaps.lock().unwrap()[0].clone();
    assert!(
        cause.contains("pgn_lost") && cause.contains("max_slot_wal_keep_size"),
        "{cause}"
    );
    relaying(&client).await;
    client
        .batch_execute("select pgnotifier.send('work', '3')")
        .await
        .unwrap();
    assert!(eventually(SOON, || seen.lock().unwrap().contains(&3)).await);
    let status: String = client
        .query_one(
            "select wal_status from pg_replication_slots where slot_name = 'pgn_lost'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_ne!(status, "lost", "a new slot took its place");
    second.shutdown(Duration::from_secs(5)).await;
    assert!(!seen.lock().unwrap().contains(&2), "lost with the slot");
    assert_eq!(gaps.lock().unwrap().len(), 1, "told once");
}

#[tokio::test(flavor = "multi_thread")]
async fn schema_install_with_the_wal_transport_makes_the_slot_and_prints_the_sql_for_it() {
    let (url, client, _) = wal_database("wal_cli").await;
    let dir = crate::support::temp_dir("durable-wal-cli");
    let config = dir.join("pgnotifier.toml");
    std::fs::write(
        &config,
        format!("database_url = {url:?}\ndurable_transport = \"wal\"\nwal_slot = \"pgn_cli\"\n"),
    )
    .unwrap();
    let install = |print: bool| {
        let mut command = std::process::Command::new(crate::support::host::BIN);
        command.args(["schema", "install", "--config"]).arg(&config);
        if print {
            command.arg("--print");
        }
        let out = command.output().expect("run pgnotifier schema install");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    };
    assert!(
        install(false).ends_with("pgnotifier slot: created pgn_cli and its publication\n"),
        "the first install makes the slot"
    );
    assert!(install(false).ends_with("pgnotifier slot: pgn_cli is there already\n"));
    let made: i64 = client
        .query_one(
            "select count(*) from pg_replication_slots s join pg_publication p on p.pubname = s.slot_name
              where s.slot_name = 'pgn_cli' and s.plugin = 'pgoutput' and s.database = current_database()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(made, 1);
    let script = install(true);
    assert!(
        script.ends_with(
            "CREATE PUBLICATION \"pgn_cli\" WITH (publish_via_partition_root = true);\nSELECT pg_catalog.pg_create_logical_replication_slot('pgn_cli', 'pgoutput');\n"
        ),
        "{script}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_message_send_would_never_write_is_refused_and_stops_nothing() {
    let (url, client, transport) = wal_database("wal_forged").await;
    let n = wal_notifier(&url, &transport);
    let (subscriber, seen) = recording_at_least_once(RetryPolicy::default());
    n.subscribe("sink", "work", subscriber).unwrap();
    n.start().await.unwrap();
    feeding(&client, "sink").await;
    relaying(&client).await;
    // Any role may write a message with send's prefix: a NUL byte no text
    // holds (which would fail every write of the outbox), a payload over
    // the cap, an empty channel.
    client
        .batch_execute(
            "select pg_logical_emit_message(true, 'pgnotifier:1:work', '\\x610062'::bytea);
             select pg_logical_emit_message(true, 'pgnotifier:1:work', repeat('y', 2000000));
             select pg_logical_emit_message(true, 'pgnotifier:1:', '5');
             select pgnotifier.send('work', '7');",
        )
        .await
        .unwrap();
    assert!(
        eventually(SOON, || seen.lock().unwrap().contains(&7)).await,
        "a send after them never came"
    );
    let metrics = crate::support::host::parse_metrics(&n.metrics());
    assert_eq!(metrics["pgnotifier_relay_refused_total"], 3.0);
    n.shutdown(Duration::from_secs(5)).await;
    assert_eq!(*seen.lock().unwrap(), vec![7], "only what send wrote");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slot_dropped_by_hand_is_a_gap_with_its_cause_and_a_new_slot_reads_on() {
    let (url, client, transport) = wal_database("wal_dropped").await;
    let (seen, gaps): (Seen, Gaps) = Default::default();
    let first = wal_notifier(&url, &transport);
    first
        .subscribe("sink", "work", recording_gaps(&seen, &gaps))
        .unwrap();
    first.start().await.unwrap();
    feeding(&client, "sink").await;
    relaying(&client).await;
    first.shutdown(Duration::from_secs(5)).await;
    // Its walsender ends as the server notices the session closed.
    let inactive =
        "select not active from pg_replication_slots where slot_name = 'pgn_wal_dropped'";
    let deadline = std::time::Instant::now() + SOON;
    while !client
        .query_one(inactive, &[])
        .await
        .unwrap()
        .get::<_, bool>(0)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the slot stayed active"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // As a restore onto another server leaves it: the outbox's records,
    // and no slot. What is sent now goes into the WAL with no slot to keep it.
    client
        .batch_execute(
            "select pg_drop_replication_slot('pgn_wal_dropped');
             select pgnotifier.send('work', '2');",
        )
        .await
        .unwrap();
    let second = wal_notifier(&url, &transport);
    second
        .subscribe("sink", "work", recording_gaps(&seen, &gaps))
        .unwrap();
    second.start().await.unwrap();
    assert!(
        eventually(SOON, || !gaps.lock().unwrap().is_empty()).await,
        "no gap event"
    );
    let cause = gaps.lock().unwrap()[0].clone();
    assert!(cause.contains("was missing"), "{cause}");
    relaying(&client).await;
    client
        .batch_execute("select pgnotifier.send('work', '3')")
        .await
        .unwrap();
    assert!(eventually(SOON, || seen.lock().unwrap().contains(&3)).await);
    second.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_database_not_in_utf8_is_refused_at_start_naming_its_encoding() {
    crate::support::logs::install();
    let base = crate::support::logical_url();
    let (admin, connection) = tokio_postgres::connect(base, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    admin
        .batch_execute(
            "create database pgn_latin1 encoding 'LATIN1' template template0 lc_collate 'C' lc_ctype 'C'",
        )
        .await
        .unwrap();
    let (server, _) = base.rsplit_once('/').unwrap();
    let url = format!("{server}/pgn_latin1");
    let n = wal_notifier(
        &url,
        &Transport::Wal {
            slot: "pgn_latin1".to_owned(),
        },
    );
    let refused = n.start().await.expect_err("started on a LATIN1 database");
    let text = pgnotifier::printable::with_causes(&refused);
    assert!(
        text.contains("UTF8") && text.contains("LATIN1") && text.contains("outbox"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn two_relays_whose_writes_overlap_relay_a_transaction_once() {
    let (url, client, transport) = wal_database("wal_overlap").await;
    let a = wal_notifier(&url, &transport);
    a.start().await.unwrap();
    relaying(&client).await;
    // Another host on the same slot, outside any cluster: it waits.
    let b = wal_notifier(&url, &transport);
    b.start().await.unwrap();
    // A's write is held up (a slow disk, a lock), and meanwhile its
    // session to the slot is cut, so B takes the slot over from the same
    // recorded position.
    let (locker, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    locker
        .batch_execute("begin; lock table pgnotifier.outbox in share mode")
        .await
        .unwrap();
    client
        .batch_execute("select pgnotifier.send('work', 'once')")
        .await
        .unwrap();
    let waiting = "select count(*) from pg_stat_activity
                    where datname = current_database() and wait_event_type = 'Lock'";
    let deadline = std::time::Instant::now() + SOON;
    while client
        .query_one(waiting, &[])
        .await
        .unwrap()
        .get::<_, i64>(0)
        < 1
    {
        assert!(std::time::Instant::now() < deadline, "A never wrote");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    client
        .batch_execute(
            "select pg_terminate_backend(pid) from pg_stat_activity
              where datname = current_database() and backend_type = 'walsender'",
        )
        .await
        .unwrap();
    // B reads the slot and tries to write the same transaction.
    let deadline = std::time::Instant::now() + SOON;
    while client
        .query_one(waiting, &[])
        .await
        .unwrap()
        .get::<_, i64>(0)
        < 2
    {
        assert!(std::time::Instant::now() < deadline, "B never wrote");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    locker.batch_execute("commit").await.unwrap();
    client
        .batch_execute("select pgnotifier.send('work', 'after')")
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + SOON;
    loop {
        let after: i64 = client
            .query_one(
                "select count(*) from pgnotifier.outbox where payload = 'after'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if after > 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "nothing relayed after"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let once: i64 = client
        .query_one(
            "select count(*) from pgnotifier.outbox where payload = 'once'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(once, 1, "relayed by both");
    a.shutdown(Duration::from_secs(5)).await;
    b.shutdown(Duration::from_secs(5)).await;
}
