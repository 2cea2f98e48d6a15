//! What a crash or a bad row leaves: NULLs in the outbox, a dead letter
//! written twice, a gap told as its host stops.

use super::*;

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
