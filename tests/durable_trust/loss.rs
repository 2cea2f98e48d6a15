//! Loss and silent skips: channels added while feeding, senders that
//! skip the stamp, gap events, and ids a crash could reuse.

use super::*;

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
