//! At-least-once delivery under the faults a hostile review found: events
//! lost to pruning or never stamped, gap events lost, ids reused, two
//! dispatchers of one subscriber, and a database whose senders all stall.
//! Each test gets a database of its own.

use crate::support::durable::*;
use crate::support::{eventually, logs, SOON};
use pgnotifier::cluster::ClusterSettings;
use pgnotifier::durable::reader::{self, Channels};
use pgnotifier::durable::{schema, RetryPolicy};
use pgnotifier::{DatabaseSettings, Notifier, Payload, PayloadMode, Subscriber};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_postgres::{Client, NoTls};

/// One call of a recording subscriber: on which host, with what, when.
#[derive(Clone, Debug)]
struct Call {
    host: &'static str,
    payload: String,
    started: Instant,
    ended: Instant,
}

type Calls = Arc<Mutex<Vec<Call>>>;

/// An at-least-once native subscriber that records every call, each
/// taking `each`.
fn recording(host: &'static str, calls: &Calls, each: Duration) -> Subscriber {
    let calls = calls.clone();
    Subscriber::native(move |_, _, payload, _| {
        let started = Instant::now();
        std::thread::sleep(each);
        let Payload::Text(payload) = payload else {
            panic!("raw payloads are text")
        };
        calls.lock().unwrap().push(Call {
            host,
            payload: payload.clone(),
            started,
            ended: Instant::now(),
        });
    })
    .payload_mode(PayloadMode::Raw)
    .at_least_once(RetryPolicy {
        max_attempts: 5,
        backoff: Duration::from_millis(10),
    })
}

fn payloads(calls: &Calls) -> Vec<String> {
    calls
        .lock()
        .unwrap()
        .iter()
        .map(|c| c.payload.clone())
        .collect()
}

/// A host of cluster `name` on `url`, taking over within a second.
fn in_cluster(url: &str, name: &str) -> Notifier {
    let mut cluster = ClusterSettings::new(name);
    cluster.takeover = Duration::from_secs(1);
    Notifier::builder(DatabaseSettings::from_url(url).unwrap())
        .cluster(cluster)
        .build()
}

async fn connect(url: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await.unwrap();
    tokio::spawn(connection);
    client
}

/// Send `count` events on `channel`, one transaction each, payloads `PREFIX-i`.
async fn send_each(client: &Client, channel: &str, prefix: &str, count: usize) {
    for i in 0..count {
        client
            .execute(
                "select pgnotifier.send($1, $2)",
                &[&channel, &format!("{prefix}-{i}")],
            )
            .await
            .unwrap();
    }
}

async fn count_of(client: &Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).await.unwrap().get(0)
}

#[tokio::test]
async fn a_channel_added_to_a_position_keeps_its_events_until_the_subscriber_passes_them() {
    let (_, mut client) = fresh_database("added").await;
    schema::install(&mut client).await.unwrap();
    let x = ["x".to_owned()];
    let start = reader::start_at_end(&mut client, "s", &x).await.unwrap();
    // Sent once the subscriber also has `y`, before its feeder recorded it.
    client
        .batch_execute("select pgnotifier.send('y', 'on y')")
        .await
        .unwrap();
    let week = Duration::from_secs(7 * 24 * 3600);
    let pruned = pgnotifier::durable::pruner::prune(&mut client, week)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        pruned.passed, 0,
        "the position's channels are known only up to its start"
    );
    let both = ["x".to_owned(), "y".to_owned()];
    let batch = reader::read(&client, "s", start, &both, 10).await.unwrap();
    let got: Vec<&str> = batch.events.iter().map(|e| &*e.payload).collect();
    assert_eq!(got, ["on y"]);

    // Channels known through a later stamp let the others' events go.
    client
        .batch_execute("select pgnotifier.send('z', 'on z')")
        .await
        .unwrap();
    let now = reader::end_of_outbox(&client).await.unwrap();
    let known = Channels {
        names: &both,
        through: now.stamp,
    };
    reader::save_position(&client, "s", batch.covered, Some(known))
        .await
        .unwrap();
    let pruned = pgnotifier::durable::pruner::prune(&mut client, week)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(pruned.passed, 2, "y's passed, z's needed by nobody");
}

#[tokio::test]
async fn a_channel_subscribed_to_while_feeding_loses_nothing_to_a_prune() {
    let (url, client) = fresh_database("subscribed").await;
    let n = notifier_on(&url);
    let calls: Calls = Default::default();
    n.subscribe(
        "late",
        "x",
        recording("a", &calls, Duration::from_millis(200)),
    )
    .unwrap();
    feeding(&client, "late").await;
    // The feeder is busy with x's events, so it has not seen the new
    // channel yet when the prune runs.
    send_each(&client, "x", "x", 5).await;
    assert!(eventually(SOON, || !payloads(&calls).is_empty()).await);
    n.subscribe_to("late", "y").unwrap();
    client
        .batch_execute("select pgnotifier.send('y', 'on y')")
        .await
        .unwrap();
    n.prune_outbox().await.unwrap();
    assert!(
        eventually(SOON, || payloads(&calls).contains(&"on y".to_owned())).await,
        "{:?}",
        payloads(&calls)
    );
    n.shutdown(SOON).await;
}

#[tokio::test]
async fn senders_in_replica_mode_or_with_a_forged_session_marker_are_stamped_and_delivered() {
    let (url, client) = fresh_database("unforged").await;
    let n = notifier_on(&url);
    let calls: Calls = Default::default();
    n.subscribe("all", "work", recording("a", &calls, Duration::ZERO))
        .unwrap();
    feeding(&client, "all").await;
    let replica = connect(&url).await;
    replica
        .batch_execute(
            "SET session_replication_role = replica; SELECT pgnotifier.send('work', 'replica')",
        )
        .await
        .unwrap();
    let forger = connect(&url).await;
    forger
        .batch_execute("SET pgnotifier.stamping = 'on'; SELECT pgnotifier.send('work', 'forged')")
        .await
        .unwrap();
    assert!(
        eventually(SOON, || payloads(&calls).len() == 2).await,
        "{:?}",
        payloads(&calls)
    );
    assert_eq!(payloads(&calls), ["replica", "forged"]);
    n.shutdown(SOON).await;
}

#[tokio::test]
async fn an_event_committed_without_a_stamp_is_counted_logged_stamped_and_delivered() {
    logs::install();
    let (url, client) = fresh_database("unstamped").await;
    let n = notifier_on(&url);
    let calls: Calls = Default::default();
    n.subscribe("all", "work", recording("a", &calls, Duration::ZERO))
        .unwrap();
    feeding(&client, "all").await;
    client
        .batch_execute(
            "ALTER TABLE pgnotifier.outbox DISABLE TRIGGER stamp_commit;
             SELECT pgnotifier.send('work', 'unstamped');
             ALTER TABLE pgnotifier.outbox ENABLE ALWAYS TRIGGER stamp_commit;
             -- Past the few seconds an unstamped event is given.
             UPDATE pgnotifier.outbox SET sent_at = sent_at - interval '1 minute';",
        )
        .await
        .unwrap();
    let metric = || {
        crate::support::host::parse_metrics(&n.metrics())
            .get("pgnotifier_outbox_unstamped_events_total")
            .copied()
    };
    assert_eq!(metric(), Some(0.0));
    // The host looks for them every ten seconds.
    assert!(
        eventually(SOON, || metric() == Some(1.0)).await,
        "{:?}",
        metric()
    );
    assert!(
        logs::errors()
            .iter()
            .any(|line| line.contains("had no commit stamp")),
        "{:?}",
        logs::errors()
    );
    assert!(
        eventually(SOON, || payloads(&calls) == ["unstamped"]).await,
        "{:?}",
        payloads(&calls)
    );
    n.shutdown(SOON).await;
}

#[tokio::test]
async fn a_gap_is_told_until_on_gap_returns_ok_and_only_then_forgotten() {
    let (url, client) = fresh_database("gap_retried").await;
    let n = notifier_on(&url);
    let told = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let calls = told.clone();
    let subscriber = Subscriber::native(|_, _, _, _| {})
        .on_gap(move |_, _| {
            if calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
                panic!("the first on-gap fails");
            }
        })
        .at_least_once(RetryPolicy {
            max_attempts: 3,
            backoff: Duration::from_millis(10),
        });
    n.subscribe("slow", "work", subscriber).unwrap();
    feeding(&client, "slow").await;
    n.mute_subscriber("slow", pgnotifier::Selection::All)
        .unwrap();
    send_range(&client, 0..3).await;
    let ageing = Notifier::builder(DatabaseSettings::from_url(&url).unwrap())
        .outbox_retention(Duration::ZERO)
        .build();
    let pruned = ageing.prune_outbox().await.unwrap().unwrap();
    assert_eq!(pruned.expired, 3);
    n.unmute_subscriber("slow", pgnotifier::Selection::All)
        .unwrap();
    let count = || told.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        eventually(SOON, || count() >= 2).await,
        "on-gap calls: {}",
        count()
    );
    let deadline = Instant::now() + SOON;
    while count_of(&client, "select count(*) from pgnotifier.gaps").await > 0 {
        assert!(Instant::now() < deadline, "the gap's row stays");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(count(), 2, "told once more after the failure, then no more");
    n.shutdown(SOON).await;
}

#[tokio::test]
async fn a_gap_does_not_count_events_the_subscriber_already_had_in_hand() {
    let (url, client) = fresh_database("gap_in_hand").await;
    let n = notifier_on(&url);
    let seen: Arc<Mutex<Vec<String>>> = Default::default();
    let gate = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
    let gaps: Arc<Mutex<Vec<pgnotifier::Gap>>> = Default::default();
    let (record, held, told) = (seen.clone(), gate.clone(), gaps.clone());
    let subscriber = Subscriber::native(move |_, _, payload, _| {
        if let Payload::Text(text) = payload {
            if text == "10" {
                let (open, opened) = &*held;
                let mut open = open.lock().unwrap();
                while !*open {
                    open = opened.wait(open).unwrap();
                }
            }
            record.lock().unwrap().push(text.clone());
        }
    })
    .payload_mode(PayloadMode::Raw)
    .on_gap(move |_, _| {
        told.lock()
            .unwrap()
            .push(pgnotifier::current_gap().unwrap())
    })
    .at_least_once(RetryPolicy::default());
    n.subscribe("held", "work", subscriber).unwrap();
    feeding(&client, "held").await;
    send_range(&client, 0..20).await;
    assert!(eventually(SOON, || seen.lock().unwrap().len() == 10).await);
    // Every event is older than a retention of zero: all twenty go, while
    // the subscriber holds the last ten, read but not yet handled.
    let ageing = Notifier::builder(DatabaseSettings::from_url(&url).unwrap())
        .outbox_retention(Duration::ZERO)
        .build();
    let pruned = ageing.prune_outbox().await.unwrap().unwrap();
    assert_eq!(pruned.expired, 20);
    *gate.0.lock().unwrap() = true;
    gate.1.notify_all();
    assert!(eventually(SOON, || seen.lock().unwrap().len() == 20).await);
    let deadline = Instant::now() + SOON;
    while count_of(&client, "select count(*) from pgnotifier.gaps").await > 0 {
        assert!(Instant::now() < deadline, "the gap's row stays");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    n.shutdown(SOON).await;
    assert_eq!(
        *gaps.lock().unwrap(),
        [],
        "it had every event the prune removed"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_asynchronous_commit_is_delivered_durable_under_a_key_of_its_own() {
    let (url, client) = fresh_database("durable_key").await;
    let n = notifier_on(&url);
    // The subscriber asks, during each call, how far the WAL is flushed.
    let (ask, mut asked) =
        tokio::sync::mpsc::unbounded_channel::<std::sync::mpsc::Sender<String>>();
    let flusher = connect(&url).await;
    tokio::spawn(async move {
        while let Some(reply) = asked.recv().await {
            let row = flusher
                .query_one("select pg_current_wal_flush_lsn()::text", &[])
                .await
                .unwrap();
            let _ = reply.send(row.get(0));
        }
    });
    /// Payload, key, attempt, and the WAL flushed as it was delivered.
    type Seen = Arc<Mutex<Vec<(String, String, u32, String)>>>;
    let seen: Seen = Default::default();
    let record = seen.clone();
    let subscriber = Subscriber::native(move |_, _, payload, _| {
        let event = pgnotifier::current_event().expect("a durable event");
        let (reply, flushed) = std::sync::mpsc::channel();
        ask.send(reply).unwrap();
        let flushed = flushed.recv().unwrap();
        let Payload::Text(text) = payload else {
            panic!("raw")
        };
        record
            .lock()
            .unwrap()
            .push((text.clone(), event.key.to_string(), event.attempt, flushed));
        assert!(
            event.attempt > 1,
            "the first attempt fails, so keys are seen twice"
        );
    })
    .payload_mode(PayloadMode::Raw)
    .at_least_once(RetryPolicy {
        max_attempts: 3,
        backoff: Duration::from_millis(1),
    });
    n.subscribe("keyed", "work", subscriber).unwrap();
    feeding(&client, "keyed").await;
    // Asynchronous commits going on all the time, as on a busy server: the
    // WAL writer, never idle, flushes them only every `wal_writer_delay`
    // (an idle one wakes at once for the first).
    let noise = {
        let writer = connect(&url).await;
        tokio::spawn(async move {
            writer
                .batch_execute("SET synchronous_commit = off; CREATE TABLE noise (n int)")
                .await
                .unwrap();
            loop {
                let _ = writer.execute("insert into noise values (1)", &[]).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    // Each commit is asynchronous: visible before it is flushed. The WAL
    // position before it is taken inside the transaction. The first thirty
    // senders stamp early, and only then turn synchronous commit off.
    let mut before_commit = Vec::new();
    let sender = connect(&url).await;
    for i in 0..40 {
        let send = match i {
            30.. => format!(
                "SET LOCAL synchronous_commit = off; SELECT pgnotifier.send('work', 'e{i}');"
            ),
            _ => format!(
                "SET CONSTRAINTS ALL IMMEDIATE; SELECT pgnotifier.send('work', 'e{i}');
                 SET LOCAL synchronous_commit = off;"
            ),
        };
        let rows = sender
            .simple_query(&format!(
                "BEGIN; {send} SELECT pg_current_wal_insert_lsn()::text; COMMIT;"
            ))
            .await
            .unwrap();
        let lsn = rows.iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row)
                if row.get(0).is_some_and(|v| v.contains('/')) =>
            {
                row.get(0).map(str::to_owned)
            }
            _ => None,
        });
        before_commit.push(lsn.expect("the insert position"));
    }
    assert!(eventually(SOON, || seen.lock().unwrap().len() >= 80).await);
    noise.abort();
    n.shutdown(SOON).await;
    let seen = seen.lock().unwrap().clone();
    for (i, before) in before_commit.iter().enumerate() {
        let payload = format!("e{i}");
        for (_, _, attempt, flushed) in seen.iter().filter(|(p, ..)| *p == payload) {
            let durable: bool = client
                .query_one(
                    "select $1::text::pg_lsn > $2::text::pg_lsn",
                    &[flushed, before],
                )
                .await
                .unwrap()
                .get(0);
            assert!(
                durable,
                "{payload} (attempt {attempt}) was delivered with the WAL flushed to {flushed}, not past its commit after {before}"
            );
        }
    }
    let truth: Vec<(String, String)> = client
        .query(
            "select o.payload, pgnotifier.event_key(c.salt, o.id)::text
               from pgnotifier.outbox o join pgnotifier.commits c using (txid) order by o.id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    let keys: std::collections::BTreeSet<&str> = truth.iter().map(|(_, k)| &**k).collect();
    assert_eq!(keys.len(), 40, "a key each");
    for (payload, key, _, _) in &seen {
        let own = truth.iter().find(|(p, _)| p == payload).map(|(_, k)| k);
        assert_eq!(Some(key), own, "{payload} is delivered under its own key");
    }
}

/// No call of one host runs while a call of the other does, for the same
/// subscriber: the pairs that overlap.
fn overlaps(calls: &[Call]) -> Vec<(Call, Call)> {
    let mut found = Vec::new();
    for a in calls {
        for b in calls {
            if a.host < b.host && a.started < b.ended && b.started < a.ended {
                found.push((a.clone(), b.clone()));
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread")]
async fn a_leader_that_stands_down_stops_at_the_next_event_and_no_event_is_in_two_calls() {
    logs::install();
    let (url, client) = fresh_database("stand_down").await;
    let name = crate::support::channel("cluster");
    let calls: Calls = Default::default();
    let a = in_cluster(&url, &name);
    a.subscribe(
        "sink",
        "work",
        recording("a", &calls, Duration::from_millis(10)),
    )
    .unwrap();
    crate::support::listen(&a).await;
    assert!(
        eventually(SOON, || a.cluster().role
            == pgnotifier::cluster::Role::Leader)
        .await
    );
    let b = in_cluster(&url, &name);
    b.subscribe(
        "sink",
        "work",
        recording("b", &calls, Duration::from_millis(10)),
    )
    .unwrap();
    b.start().await.unwrap();
    feeding(&client, "sink").await;
    send_range(&client, 0..300).await;
    assert!(eventually(SOON, || payloads(&calls).len() >= 20).await);
    // The leader's LISTEN connection, and with it its leadership, goes.
    let pid = a.backend_pid().expect("the leader is connected");
    client
        .execute("select pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap();
    let all_in = || {
        let got: std::collections::BTreeSet<String> = payloads(&calls).into_iter().collect();
        (0..300).all(|i| got.contains(&i.to_string()))
    };
    assert!(eventually(SOON, all_in).await, "every event delivered");
    a.shutdown(SOON).await;
    b.shutdown(SOON).await;
    let calls = calls.lock().unwrap().clone();
    assert_eq!(overlaps(&calls).len(), 0, "{:?}", overlaps(&calls).first());
    let first_of_b = calls
        .iter()
        .filter(|c| c.host == "b")
        .map(|c| c.started)
        .min();
    let first_of_b = first_of_b.expect("b took over");
    let late = calls
        .iter()
        .filter(|c| c.host == "a" && c.ended > first_of_b)
        .count();
    assert_eq!(
        late, 0,
        "the old leader called nothing once the new one began"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn skip_stops_at_the_next_event_and_a_standby_refuses_it_naming_the_leader() {
    let (url, client) = fresh_database("skip").await;
    let name = crate::support::channel("cluster");
    let calls: Calls = Default::default();
    let a = in_cluster(&url, &name);
    a.subscribe(
        "sink",
        "work",
        recording("a", &calls, Duration::from_millis(50)),
    )
    .unwrap();
    crate::support::listen(&a).await;
    assert!(
        eventually(SOON, || a.cluster().role
            == pgnotifier::cluster::Role::Leader)
        .await
    );
    let b = in_cluster(&url, &name);
    b.subscribe("sink", "work", recording("b", &calls, Duration::ZERO))
        .unwrap();
    b.start().await.unwrap();
    assert!(eventually(SOON, || b.cluster().leader.is_some()).await);
    let refused = b.skip_ahead("sink").await.unwrap_err().to_string();
    let leader = b.cluster().leader.unwrap();
    assert!(
        refused.contains("standby") && refused.contains(&leader),
        "{refused}"
    );

    feeding(&client, "sink").await;
    send_range(&client, 0..300).await;
    assert!(eventually(SOON, || payloads(&calls).len() >= 5).await);
    let before = payloads(&calls).len();
    a.skip_ahead("sink").await.unwrap();
    let after = payloads(&calls).len();
    assert!(
        after - before <= 2,
        "{} calls while skipping: only the one in progress may finish",
        after - before
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(payloads(&calls).len(), after, "the rest is skipped");
    a.shutdown(SOON).await;
    b.shutdown(SOON).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn one_subscriber_id_on_two_hosts_outside_a_cluster_is_fed_by_one() {
    logs::install();
    let (url, client) = fresh_database("twins").await;
    let calls: Calls = Default::default();
    let a = notifier_on(&url);
    let b = notifier_on(&url);
    a.subscribe("twin", "work", recording("a", &calls, Duration::ZERO))
        .unwrap();
    b.subscribe("twin", "work", recording("b", &calls, Duration::ZERO))
        .unwrap();
    feeding(&client, "twin").await;
    send_range(&client, 0..100).await;
    assert!(eventually(SOON, || payloads(&calls).len() >= 100).await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut got = payloads(&calls);
    got.sort_by_key(|p| p.parse::<u32>().unwrap());
    let expected: Vec<String> = (0..100).map(|i| i.to_string()).collect();
    assert_eq!(got, expected, "each event once, by one of them");
    let elsewhere = |n: &Notifier| {
        (n.subscribers().into_iter())
            .find(|s| s.id == "twin")
            .and_then(|s| s.durable)
            .is_some_and(|d| d.fed_elsewhere)
    };
    assert!(
        eventually(SOON, || elsewhere(&a) != elsewhere(&b)).await,
        "exactly one says another host feeds it"
    );
    assert!(
        logs::errors()
            .iter()
            .any(|l| l.contains("already feeds this subscriber")),
        "{:?}",
        logs::errors()
    );
    // The one that feeds goes away: the other takes over, from its position.
    let (feeding, other) = if elsewhere(&a) { (b, a) } else { (a, b) };
    feeding.shutdown(SOON).await;
    send_range(&client, 100..110).await;
    assert!(
        eventually(SOON, || payloads(&calls).len() >= 110).await,
        "{} delivered",
        payloads(&calls).len()
    );
    assert!(eventually(SOON, || !elsewhere(&other)).await);
    other.shutdown(SOON).await;
    let mut got = payloads(&calls);
    got.sort_by_key(|p| p.parse::<u32>().unwrap());
    let expected: Vec<String> = (0..110).map(|i| i.to_string()).collect();
    assert_eq!(got, expected, "each event once");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reload_that_changes_the_retry_policy_starts_no_second_feeder() {
    crate::support::logs::install();
    let (url, client) = fresh_database("reload_retry").await;
    let n = notifier_on(&url);
    let dir = crate::support::temp_dir("durable-reload-retry");
    let id = crate::support::channel("sink_retry");
    durable_sink(
        &n,
        &dir,
        &id,
        "retry_max_attempts = 5\n[config]\nspin = \"2000\"\n",
    )
    .await;
    feeding(&client, &id).await;
    send_each(&client, "work", "e", 200).await;
    assert!(eventually(SOON, || sunk(&id).len() >= 5).await);
    std::fs::write(
        dir.join(format!("{id}.toml")),
        "delivery = \"at-least-once\"\nretry_backoff_ms = 1\nfailure_threshold = 0\nretry_max_attempts = 6\n[config]\nspin = \"2000\"\n",
    )
    .unwrap();
    n.reload_plugin(&id).await.unwrap();
    assert!(eventually(SOON, || sunk(&id).len() >= 200).await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = sunk(&id);
    let distinct: std::collections::BTreeSet<&str> = got.iter().map(|(p, _, _)| &**p).collect();
    assert_eq!(distinct.len(), 200);
    assert_eq!(
        got.len(),
        200,
        "no event twice: one feeder, before and after"
    );
    n.shutdown(SOON).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sender_whose_commit_waits_stalls_no_other_sender() {
    let (url, mut client) = fresh_database("stall").await;
    schema::install(&mut client).await.unwrap();
    client
        .batch_execute(
            "CREATE TABLE parent (id int PRIMARY KEY); INSERT INTO parent VALUES (1);
             CREATE TABLE child (parent int REFERENCES parent DEFERRABLE INITIALLY DEFERRED);",
        )
        .await
        .unwrap();
    let start = reader::end_of_outbox(&client).await.unwrap();
    // A transaction holds the parent row; a sender's deferred foreign key,
    // checked at commit after its stamp, waits for it.
    let holder = connect(&url).await;
    holder
        .batch_execute("BEGIN; SELECT FROM parent WHERE id = 1 FOR UPDATE")
        .await
        .unwrap();
    let stuck = connect(&url).await;
    let stuck = tokio::spawn(async move {
        stuck
            .batch_execute(
                "BEGIN; SELECT pgnotifier.send('a', 'stuck'); INSERT INTO child VALUES (1); COMMIT",
            )
            .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let reader_client = connect(&url).await;
    let channels = vec!["a".to_owned(), "b".to_owned()];
    let read = tokio::spawn(async move {
        reader::read(&reader_client, "r", start, &channels, 10)
            .await
            .map(|b| b.events.len())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let other = connect(&url).await;
    let sent = tokio::time::timeout(
        Duration::from_secs(2),
        other.batch_execute("BEGIN; SELECT pgnotifier.send('b', 'free'); COMMIT"),
    )
    .await;
    assert!(
        matches!(sent, Ok(Ok(()))),
        "an unrelated sender waited behind the reader: {sent:?}"
    );
    assert!(!read.is_finished(), "the reader waits for the stuck sender");
    holder.batch_execute("COMMIT").await.unwrap();
    stuck.await.unwrap().unwrap();
    assert_eq!(read.await.unwrap().unwrap(), 1, "the stuck sender's event");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_read_cancelled_or_timed_out_leaves_no_lock_behind() {
    let (url, mut client) = fresh_database("no_leak").await;
    schema::install(&mut client).await.unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut senders = Vec::new();
    for _ in 0..4 {
        let (url, stop) = (url.clone(), stop.clone());
        senders.push(tokio::spawn(async move {
            let sender = connect(&url).await;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = sender
                    .batch_execute("BEGIN; SELECT pgnotifier.send('w', 'x'); COMMIT")
                    .await;
            }
        }));
    }
    let dba = connect(&url).await;
    let pid: i32 = dba
        .query_one("select pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    for round in 0..200 {
        let timeout = ["lock_timeout", "statement_timeout"][round % 2];
        let ms = 1 + round % 3;
        let _ = dba
            .batch_execute(&format!(
                "SET {timeout} = '{ms}ms'; SELECT pgnotifier.horizon(); RESET {timeout};"
            ))
            .await;
        let _ = dba.batch_execute(&format!("RESET {timeout}")).await;
        let held: i64 = client
            .query_one(
                "select count(*) from pg_locks where pid = $1 and locktype = 'advisory'",
                &[&pid],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(held, 0, "round {round}: the session kept an advisory lock");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for sender in senders {
        tokio::time::timeout(SOON, sender).await.unwrap().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn application_advisory_locks_block_no_sender_reader_prune_or_install() {
    let (url, mut client) = fresh_database("app_locks").await;
    schema::install(&mut client).await.unwrap();
    let app = connect(&url).await;
    // The keys one-number locks of old used, and numbers near ours.
    app.batch_execute(
        "SELECT pg_advisory_lock(1436477641), pg_advisory_lock(721555285),
                pg_advisory_lock(1450382228), pg_advisory_lock(1885826676),
                pg_advisory_lock(1885826680), pg_advisory_lock(1), pg_advisory_lock(2)",
    )
    .await
    .unwrap();
    let two_seconds = Duration::from_secs(2);
    let sender = connect(&url).await;
    let sent = tokio::time::timeout(
        two_seconds,
        sender.batch_execute("BEGIN; SELECT pgnotifier.send('w', 'x'); COMMIT"),
    )
    .await;
    assert!(matches!(sent, Ok(Ok(()))), "a sender: {sent:?}");
    let read = tokio::time::timeout(
        two_seconds,
        reader::read(&client, "r", Default::default(), &["w".to_owned()], 10),
    )
    .await;
    assert!(matches!(read, Ok(Ok(_))), "a reader: {read:?}");
    let week = Duration::from_secs(7 * 24 * 3600);
    let pruned = tokio::time::timeout(
        two_seconds,
        pgnotifier::durable::pruner::prune(&mut client, week),
    )
    .await;
    assert!(matches!(pruned, Ok(Ok(Some(_)))), "a prune: {pruned:?}");
    let installed = tokio::time::timeout(two_seconds, schema::install(&mut client)).await;
    assert!(matches!(installed, Ok(Ok(_))), "an install: {installed:?}");
}

#[tokio::test]
async fn a_subscriber_on_a_quiet_channel_moves_past_the_other_channels_commits() {
    let (url, client) = fresh_database("quiet").await;
    let n = notifier_on(&url);
    let calls: Calls = Default::default();
    n.subscribe("quiet", "rare", recording("a", &calls, Duration::ZERO))
        .unwrap();
    feeding(&client, "quiet").await;
    send_each(&client, "busy", "b", 200).await;
    let last = count_of(&client, "select max(stamp) from pgnotifier.commits").await;
    let deadline = Instant::now() + SOON;
    loop {
        let at = count_of(
            &client,
            "select stamp from pgnotifier.positions where subscriber = 'quiet'",
        )
        .await;
        if at >= last {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the position stays at stamp {at}, behind {last}: each read would scan those commits again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    n.shutdown(SOON).await;
}

#[tokio::test]
async fn a_null_in_the_outbox_stops_no_feeder() {
    let (url, mut client) = fresh_database("null_pid").await;
    schema::install(&mut client).await.unwrap();
    let n = notifier_on(&url);
    let calls: Calls = Default::default();
    n.subscribe("all", "work", recording("a", &calls, Duration::ZERO))
        .unwrap();
    feeding(&client, "all").await;
    client
        .batch_execute(
            "ALTER TABLE pgnotifier.outbox ALTER COLUMN pid DROP NOT NULL;
             INSERT INTO pgnotifier.outbox (channel, payload, pid) VALUES ('work', 'no pid', NULL);
             SELECT pgnotifier.send('work', 'after');",
        )
        .await
        .unwrap();
    assert!(
        eventually(SOON, || payloads(&calls) == ["no pid", "after"]).await,
        "{:?}",
        payloads(&calls)
    );
    let stats = (n.subscribers().into_iter())
        .find(|s| s.id == "all")
        .and_then(|s| s.durable)
        .unwrap();
    assert_eq!(stats.feeder_restarts, 0);
    n.shutdown(SOON).await;
}

#[tokio::test]
async fn an_event_dead_lettered_again_after_a_crash_has_one_letter() {
    let (url, client) = fresh_database("one_letter").await;
    let n = notifier_on(&url);
    let subscriber =
        Subscriber::native(|_, _, _, _| panic!("always fails")).at_least_once(RetryPolicy {
            max_attempts: 2,
            backoff: Duration::from_millis(1),
        });
    n.subscribe("doomed", "work", subscriber).unwrap();
    feeding(&client, "doomed").await;
    n.mute_subscriber("doomed", pgnotifier::Selection::All)
        .unwrap();
    // As if a host dead-lettered it, and crashed before its position moved.
    client
        .batch_execute(
            "SELECT pgnotifier.send('work', 'poison');
             INSERT INTO pgnotifier.dead_letters (subscriber, event_id, channel, payload, sent_at, error, attempts)
             SELECT 'doomed', id, channel, payload, sent_at, 'before the crash', 2 FROM pgnotifier.outbox;",
        )
        .await
        .unwrap();
    n.unmute_subscriber("doomed", pgnotifier::Selection::All)
        .unwrap();
    let deadline = Instant::now() + SOON;
    while count_of(
        &client,
        "select count(*) from pgnotifier.dead_letters where attempts > 2",
    )
    .await
        == 0
    {
        assert!(Instant::now() < deadline, "never dead-lettered again");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        count_of(&client, "select count(*) from pgnotifier.dead_letters").await,
        1
    );
    n.shutdown(SOON).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_leader_whose_lock_a_pooler_reset_freed_stands_down() {
    use crate::support::proxy::{database_target, url_via, InjectingProxy};
    use pgnotifier::cluster::Role;
    logs::install();
    let proxy = InjectingProxy::start(database_target()).await;
    let name = crate::support::channel("cluster");
    // In the clear, so the proxy can read the protocol.
    let a = in_cluster(&url_via(proxy.port, "?sslmode=disable"), &name);
    a.start().await.unwrap();
    assert!(eventually(SOON, || a.cluster().role == Role::Leader).await);
    let b = in_cluster(crate::support::database_url(), &name);
    b.start().await.unwrap();
    assert!(eventually(SOON, || b.cluster().leader.is_some()).await);
    assert_eq!(b.cluster().role, Role::Standby);
    // A pooler's reset on the leader's connection: the lock goes, the
    // connection stays.
    proxy.inject("DISCARD ALL");
    assert!(
        eventually(SOON, || a.cluster().role == Role::Standby).await,
        "the old leader still leads"
    );
    assert!(eventually(SOON, || b.cluster().role == Role::Leader).await);
    a.shutdown(SOON).await;
    b.shutdown(SOON).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gap_told_as_its_host_stops_is_not_told_again() {
    let (url, client) = fresh_database("gap_at_stop").await;
    let told = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let started = Arc::new(tokio::sync::Notify::new());
    // `on-gap` takes half a second, so the host stops while it runs.
    let subscriber = |told: &Arc<std::sync::atomic::AtomicU32>,
                      started: &Arc<tokio::sync::Notify>| {
        let (count, start) = (told.clone(), started.clone());
        Subscriber::native(|_, _, _, _| {})
            .on_gap(move |_, _| {
                start.notify_one();
                std::thread::sleep(Duration::from_millis(500));
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            })
            .at_least_once(RetryPolicy::default())
    };
    let n = notifier_on(&url);
    n.subscribe("gapped", "work", subscriber(&told, &started))
        .unwrap();
    feeding(&client, "gapped").await;
    n.mute_subscriber("gapped", pgnotifier::Selection::All)
        .unwrap();
    send_range(&client, 0..3).await;
    let ageing = Notifier::builder(DatabaseSettings::from_url(&url).unwrap())
        .outbox_retention(Duration::ZERO)
        .build();
    assert_eq!(ageing.prune_outbox().await.unwrap().unwrap().expired, 3);
    n.unmute_subscriber("gapped", pgnotifier::Selection::All)
        .unwrap();
    tokio::time::timeout(SOON, started.notified())
        .await
        .expect("on-gap is called");
    n.shutdown(SOON).await;
    let count = || told.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(count(), 1, "the call in progress ran to its end");
    assert_eq!(
        count_of(&client, "select count(*) from pgnotifier.gaps").await,
        0,
        "and the gap is recorded as told"
    );
    // The same subscriber on a host started afresh: nothing more to tell.
    let again = notifier_on(&url);
    again
        .subscribe("gapped", "work", subscriber(&told, &started))
        .unwrap();
    send_range(&client, 3..4).await;
    feeding(&client, "gapped").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    again.shutdown(SOON).await;
    assert_eq!(count(), 1, "the gap was told once");
}

/// A plugin with grants waits in the database for seconds, using little
/// CPU. When the connection of the host that feeds it goes, that host cuts
/// the call short, so the host that takes over never calls while it runs.
#[tokio::test(flavor = "multi_thread")]
async fn a_call_of_a_host_that_lost_its_lock_ends_before_another_host_calls() {
    logs::install();
    crate::support::plugin_role("pgnotifier_test_reader", &[]).await;
    let (url, client) = fresh_database("cut_short").await;
    let role = "pgnotifier_test_host_cut_short";
    let a_url = host_a_url(&client, &url, role).await;
    let id = crate::support::channel("cut");
    let sidecar = |tag: &str| {
        format!(
            "timeout_ms = 1000\nquery_timeout_ms = 1000\nhttp_timeout_ms = 1000\n\
             [grants]\nquery = true\nquery_role = \"pgnotifier_test_reader\"\n\
             [config]\nlog_start = \"true\"\nwait_queries = \"25\"\ntag = \"{tag}\"\n"
        )
    };
    let a = notifier_on(&a_url);
    let a_dir = crate::support::temp_dir("durable-cut-a");
    durable_sink(&a, &a_dir, &id, &sidecar("a")).await;
    feeding(&client, &id).await;
    send_each(&client, "work", "e", 1).await;
    let lines = || sunk_lines(&id);
    assert!(
        eventually(SOON, || lines()
            .iter()
            .any(|l| l.starts_with("sink-wait e-0 a 2")))
        .await,
        "{:?}",
        lines()
    );
    // A's feeder connection goes (a terminated backend, a network cut):
    // the server frees its feed lock at once.
    cut_host_a(&client, role, &id).await;
    let b = notifier_on(&url);
    let b_dir = crate::support::temp_dir("durable-cut-b");
    durable_sink(&b, &b_dir, &id, &sidecar("b")).await;
    assert!(
        eventually(Duration::from_secs(30), || lines()
            .iter()
            .any(|l| l.starts_with("sink e-0 ")))
        .await,
        "B delivers the event: {:?}",
        lines()
    );
    a.shutdown(SOON).await;
    b.shutdown(SOON).await;
    let lines = lines();
    let b_started = (lines.iter())
        .position(|l| l.starts_with("sink-start e-0 ") && l.ends_with(" b"))
        .expect("B started a call");
    let late: Vec<&String> = lines[b_started..]
        .iter()
        .filter(|l| l.starts_with("sink-wait e-0 a "))
        .collect();
    assert_eq!(
        late,
        Vec::<&String>::new(),
        "A's call still ran once B's began"
    );
}

/// A role of its own for host A (`role`, one per test: tests run at
/// once), so it can be kept from connecting again and taking the lock
/// back before B: the URL that logs in as it.
async fn host_a_url(client: &Client, url: &str, role: &str) -> String {
    client
        .batch_execute(&format!(
            "DO $$ BEGIN CREATE ROLE {role}; EXCEPTION WHEN duplicate_object THEN NULL; END $$;
             ALTER ROLE {role} LOGIN SUPERUSER"
        ))
        .await
        .unwrap();
    let (scheme, rest) = url.split_once("://").unwrap();
    format!(
        "{scheme}://{role}@{}",
        rest.split_once('@').map_or(rest, |(_, r)| r)
    )
}

/// Host A (logged in as `role`) cannot log in again.
async fn keep_out(client: &Client, role: &str) {
    client
        .batch_execute(&format!("ALTER ROLE {role} NOLOGIN"))
        .await
        .unwrap();
}

/// Host A's feeder connection for `subscriber` goes, as after a terminated
/// backend or a network cut, and A (logged in as `role`) cannot log in again.
async fn cut_host_a(client: &Client, role: &str, subscriber: &str) {
    keep_out(client, role).await;
    let killed: i64 = client
        .query_one(
            "select count(pg_terminate_backend(l.pid)) from pg_locks l
              where l.locktype = 'advisory' and l.granted and l.objsubid = 1
                and ((l.classid::bigint << 32) | l.objid::bigint)
                    = hashtextextended('pgnotifier feed ' || $1, 0)",
            &[&subscriber],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(killed, 1, "A's feeder holds the feed lock");
}

/// Two hosts in one process (or two containers, both pid 1 under one host
/// name) are two feeders: the one that takes over waits for a call of the
/// other, which a lost lock cannot cut short (a plugin without grants
/// spinning on the CPU), to end.
#[tokio::test(flavor = "multi_thread")]
async fn a_host_that_looks_like_another_still_waits_for_its_call() {
    takeover_waits_for_the_call_in_progress("look_alike", 2_000_000, 8000).await;
}

/// A host that takes over waits as long as the host it follows said a call
/// of it may run, not by its own shorter deadline.
#[tokio::test(flavor = "multi_thread")]
async fn a_host_that_takes_over_waits_by_the_deadline_of_the_host_it_follows() {
    takeover_waits_for_the_call_in_progress("shorter_deadline", 5_000_000, 1000).await;
}

/// The end of a call a host may still run is kept until it passes: a host
/// that takes over waits for it, and when that host stops while it waits,
/// the next one waits for what is left of it, not from zero.
#[tokio::test(flavor = "multi_thread")]
async fn a_host_that_stops_while_it_waits_for_a_call_leaves_the_wait_to_the_next() {
    logs::install();
    let name = "stops_while_waiting";
    let (url, client) = fresh_database(name).await;
    let role = format!("pgnotifier_test_host_{name}");
    let a_url = host_a_url(&client, &url, &role).await;
    let id = crate::support::channel(name);
    let sidecar = |tag: &str, timeout_ms: u64, spin: u64| {
        format!(
            "timeout_ms = {timeout_ms}\n[config]\nlog_start = \"true\"\nspin = \"{spin}\"\ntag = \"{tag}\"\n"
        )
    };
    // About 5 s of CPU under an 8 s deadline: B and C, with a 1 s
    // deadline, would wait 4 s by their own settings.
    let a = notifier_on(&a_url);
    let a_dir = crate::support::temp_dir(&format!("durable-{name}-a"));
    durable_sink(&a, &a_dir, &id, &sidecar("a", 8000, 5_000_000)).await;
    feeding(&client, &id).await;
    send_each(&client, "work", "e", 1).await;
    let started = |tag: &'static str| {
        let id = id.clone();
        move || {
            sunk_lines(&id)
                .iter()
                .any(|l| l.starts_with("sink-start e-0 ") && l.ends_with(&format!(" {tag}")))
        }
    };
    assert!(eventually(SOON, started("a")).await);
    cut_host_a(&client, &role, &id).await;
    let b = notifier_on(&url);
    let b_dir = crate::support::temp_dir(&format!("durable-{name}-b"));
    durable_sink(&b, &b_dir, &id, &sidecar("b", 1000, 0)).await;
    let waiting = || {
        logs::of(&id)
            .iter()
            .any(|l| l.message.contains("may still run: waiting"))
    };
    assert!(eventually(SOON, waiting).await, "B waits for A's call");
    b.shutdown(SOON).await;
    let c = notifier_on(&url);
    let c_dir = crate::support::temp_dir(&format!("durable-{name}-c"));
    durable_sink(&c, &c_dir, &id, &sidecar("c", 1000, 0)).await;
    assert!(
        eventually(Duration::from_secs(60), started("c")).await,
        "C takes over: {:?}",
        sunk_lines(&id)
    );
    a.shutdown(SOON).await;
    c.shutdown(SOON).await;
    let messages: Vec<String> = logs::of(&id).into_iter().map(|l| l.message).collect();
    let c_started = (messages.iter())
        .position(|l| l.starts_with("sink-start e-0 ") && l.ends_with(" c"))
        .expect("C started a call");
    let a_ended = messages[..c_started]
        .iter()
        .any(|l| l.starts_with("sink e-0 ") || l.contains("ran past its deadline"));
    assert!(a_ended, "C called while A's call still ran: {messages:?}");
}

/// Host A calls a sink that spins `spin` thousand rounds (about a second
/// per million) under an 8 s deadline; its feeder connection goes; host B,
/// whose deadline is `b_timeout_ms`, takes over. B must start its call
/// only once A's has ended.
async fn takeover_waits_for_the_call_in_progress(name: &str, spin: u64, b_timeout_ms: u64) {
    logs::install();
    let (url, client) = fresh_database(name).await;
    let role = format!("pgnotifier_test_host_{name}");
    let a_url = host_a_url(&client, &url, &role).await;
    let id = crate::support::channel(name);
    let sidecar = |tag: &str, timeout_ms: u64| {
        format!(
            "timeout_ms = {timeout_ms}\n[config]\nlog_start = \"true\"\nspin = \"{spin}\"\ntag = \"{tag}\"\n"
        )
    };
    let a = notifier_on(&a_url);
    let a_dir = crate::support::temp_dir(&format!("durable-{name}-a"));
    durable_sink(&a, &a_dir, &id, &sidecar("a", 8000)).await;
    feeding(&client, &id).await;
    send_each(&client, "work", "e", 1).await;
    let lines = || sunk_lines(&id);
    assert!(
        eventually(SOON, || lines()
            .iter()
            .any(|l| l.starts_with("sink-start e-0 ")))
        .await,
        "{:?}",
        lines()
    );
    cut_host_a(&client, &role, &id).await;
    let b = notifier_on(&url);
    let b_dir = crate::support::temp_dir(&format!("durable-{name}-b"));
    durable_sink(&b, &b_dir, &id, &sidecar("b", b_timeout_ms)).await;
    let b_started = || {
        lines()
            .iter()
            .any(|l| l.starts_with("sink-start e-0 ") && l.ends_with(" b"))
    };
    assert!(
        eventually(Duration::from_secs(60), b_started).await,
        "B takes over: {:?}",
        lines()
    );
    a.shutdown(SOON).await;
    b.shutdown(SOON).await;
    // The sink's lines and the host's, in order: A's call ended (returned,
    // or cut at its deadline) before B's began.
    let messages: Vec<String> = logs::of(&id).into_iter().map(|l| l.message).collect();
    let b_started = (messages.iter())
        .position(|l| l.starts_with("sink-start e-0 ") && l.ends_with(" b"))
        .expect("B started a call");
    let a_ended = messages[..b_started]
        .iter()
        .any(|l| l.starts_with("sink e-0 ") || l.contains("ran past its deadline"));
    assert!(a_ended, "B called while A's call still ran: {messages:?}");
}

/// A host whose lock goes while it waits to retry a failed call finds out
/// within a heartbeat, and never calls again: the retry would run beside
/// the calls of the host that took over.
#[tokio::test(flavor = "multi_thread")]
async fn a_lock_lost_during_a_retry_backoff_ends_the_retry() {
    use crate::support::proxy::{url_of_via, InjectingProxy};
    logs::install();
    let (url, client) = fresh_database("lost_in_backoff").await;
    let role = "pgnotifier_test_host_in_backoff";
    host_a_url(&client, &url, role).await;
    let proxy = InjectingProxy::start(crate::support::proxy::database_target()).await;
    let proxied = url_of_via(&url, Some(role), proxy.port, "?sslmode=disable");
    let id = crate::support::channel("backoff");
    let backoff = Duration::from_secs(8);
    let a = notifier_on(&proxied);
    let a_dir = crate::support::temp_dir("durable-backoff-a");
    let sidecar = format!(
        "retry_backoff_ms = {}\n[config]\nlog_start = \"true\"\nfail_attempts = \"1\"\ntag = \"a\"\n",
        backoff.as_millis()
    );
    durable_sink(&a, &a_dir, &id, &sidecar).await;
    feeding(&client, &id).await;
    send_each(&client, "work", "e", 1).await;
    let lines = || sunk_lines(&id);
    assert!(
        eventually(SOON, || lines()
            .iter()
            .any(|l| l.starts_with("sink-start e-0 ")))
        .await,
        "{:?}",
        lines()
    );
    let failed_at = Instant::now();
    // A pooler's reset frees A's feed lock while A waits to retry; A
    // cannot log in again to take it back.
    keep_out(&client, role).await;
    proxy.inject("DISCARD ALL");
    let b = notifier_on(&url);
    let b_dir = crate::support::temp_dir("durable-backoff-b");
    durable_sink(
        &b,
        &b_dir,
        &id,
        "[config]\ntag = \"b\"\nlog_start = \"true\"\n",
    )
    .await;
    assert!(
        eventually(Duration::from_secs(30), || lines()
            .iter()
            .any(|l| l.starts_with("sink-start e-0 ") && l.ends_with(" b")))
        .await,
        "B takes over: {:?}",
        lines()
    );
    // Past the end of A's backoff: its retry would have come by now.
    tokio::time::sleep(
        (failed_at + backoff + Duration::from_secs(1)).saturating_duration_since(Instant::now()),
    )
    .await;
    a.shutdown(SOON).await;
    b.shutdown(SOON).await;
    let retried: Vec<String> = (lines().into_iter())
        .filter(|l| l.starts_with("sink-start e-0 ") && l.ends_with(" a"))
        .skip(1)
        .collect();
    assert_eq!(retried, Vec::<String>::new(), "A retried without its lock");
}

/// The sink's own log lines, in order.
fn sunk_lines(id: &str) -> Vec<String> {
    logs::plugin_messages(id)
}

/// A feeder whose calls are short still looks at its lock every heartbeat:
/// a pooler's reset that frees it ends the session, and the feeder takes
/// the lock again.
#[tokio::test(flavor = "multi_thread")]
async fn a_feed_lock_freed_between_short_calls_is_noticed() {
    use crate::support::proxy::{url_of_via, InjectingProxy};
    logs::install();
    let (url, client) = fresh_database("freed_between").await;
    let proxy = InjectingProxy::start(crate::support::proxy::database_target()).await;
    let proxied = url_of_via(&url, None, proxy.port, "?sslmode=disable");
    let calls: Calls = Default::default();
    let n = notifier_on(&proxied);
    n.subscribe(
        "brief",
        "work",
        recording("a", &calls, Duration::from_millis(5)),
    )
    .unwrap();
    feeding(&client, "brief").await;
    // Events keep coming, so calls keep the feeder busy.
    let sending = {
        let url = url.clone();
        tokio::spawn(async move {
            let sender = connect(&url).await;
            for i in 0..400 {
                send_each(&sender, "work", &format!("s{i}"), 1).await;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    assert!(eventually(SOON, || payloads(&calls).len() >= 20).await);
    proxy.inject("DISCARD ALL");
    let noticed = || {
        logs::of("brief")
            .iter()
            .any(|l| l.message.contains("freed this feeder's lock"))
    };
    assert!(
        eventually(SOON, noticed).await,
        "the feeder went on without its lock"
    );
    sending.abort();
    n.shutdown(SOON).await;
}
