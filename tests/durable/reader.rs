//! The reader: every committed event once, in commit order, from a
//! position that lives in the database and only moves forward.

use crate::support::durable::*;
use crate::support::SOON;
use pgnotifier::durable::schema;
use tokio_postgres::NoTls;

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
