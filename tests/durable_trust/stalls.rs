//! Stalls of the whole database: senders that wait, reads cancelled
//! mid-lock, application advisory locks, and a quiet channel's reads.

use super::*;

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
