//! Payloads past `pg_notify`'s 8000 bytes: `pgnotifier.send` takes them up
//! to `max_payload_bytes`, `notify_row` never fails a writer over a large
//! row, reads are bounded in bytes, and an at-least-once plugin must have
//! room for them.

use crate::support::durable::*;
use crate::support::{eventually, SOON};
use pgnotifier::durable::reader::{self, Position};
use pgnotifier::durable::{schema, RetryPolicy};
use pgnotifier::{Payload, PayloadMode, Subscriber};
use std::sync::{Arc, Mutex};

const MIB: usize = 1 << 20;

#[tokio::test]
async fn send_takes_payloads_up_to_max_payload_bytes_and_refuses_more_naming_the_cap() {
    let (_, mut client) = fresh_database("payload_cap").await;
    schema::install(&mut client).await.unwrap();
    client
        .batch_execute(&format!("select pgnotifier.send('c', repeat('x', {MIB}))"))
        .await
        .expect("a payload of 1 MiB is taken by default");
    let sql = format!("select pgnotifier.send('c', repeat('x', {}))", 2 * MIB);
    assert_eq!(
        error_of(&client, &sql).await,
        "pgnotifier.send: a payload of 2097152 bytes is over max_payload_bytes (1048576)"
    );
    schema::set_max_payload_bytes(&client, 3 * MIB as u32)
        .await
        .unwrap();
    client
        .batch_execute(&sql)
        .await
        .expect("2 MiB is taken under a cap of 3 MiB");
    assert_eq!(
        outbox_count(&client, "c").await,
        2,
        "the refused one is not there"
    );
}

#[tokio::test]
async fn a_read_brings_at_most_its_byte_budget_and_the_next_one_goes_on() {
    let (_, mut client) = fresh_database("read_budget").await;
    schema::install(&mut client).await.unwrap();
    let events = 40;
    // One transaction of 40 events of 1 MiB each, then a small one.
    client
        .batch_execute(&format!(
            "begin;
             select pgnotifier.send('big', i::text || repeat('x', {MIB} - 8)) from generate_series(1, {events}) i;
             select pgnotifier.send('big', 'last');
             commit"
        ))
        .await
        .unwrap();
    let channels = ["big".to_owned()];
    let mut at = Position::default();
    let (mut got, mut reads) = (Vec::new(), 0);
    while got.len() < events + 1 {
        let batch = reader::read(&client, "s", at, &channels, 500)
            .await
            .unwrap();
        let bytes: usize = batch.events.iter().map(|e| e.payload.len()).sum();
        assert!(
            bytes <= reader::READ_BYTES as usize + MIB,
            "one read brought {bytes} bytes"
        );
        assert!(
            !batch.events.is_empty(),
            "a read after {at:?} found nothing"
        );
        got.extend(batch.events.iter().map(|e| e.payload.clone()));
        at = batch.covered;
        reads += 1;
    }
    assert!(reads >= 3, "41 MiB came in {reads} reads");
    let heads: Vec<String> = got
        .iter()
        .map(|p| p.trim_end_matches('x').to_owned())
        .collect();
    let mut want: Vec<String> = (1..=events).map(|i| i.to_string()).collect();
    want.push("last".to_owned());
    assert_eq!(heads, want, "every event once, in order");
    let whole =
        (got.iter().zip(&want).take(events)).all(|(p, head)| p.len() == head.len() + MIB - 8);
    assert!(whole, "every payload came whole");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_event_of_a_mebibyte_reaches_an_at_least_once_subscriber_whole() {
    let (url, client) = fresh_database("big_event").await;
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let sink = seen.clone();
    let subscriber = Subscriber::native(move |_, _, payload, _| {
        if let Payload::Text(text) = payload {
            sink.lock().unwrap().push(text.clone());
        }
    })
    .payload_mode(PayloadMode::Raw)
    .at_least_once(RetryPolicy::default());
    let n = notifier_on(&url);
    n.subscribe("big", "work", subscriber).unwrap();
    feeding(&client, "big").await;
    let big = format!("{{\"id\": 7, \"blob\": \"{}\"}}", "y".repeat(MIB - 30));
    client
        .execute("select pgnotifier.send('work', $1)", &[&big])
        .await
        .unwrap();
    client
        .batch_execute("select pgnotifier.send('work', 'small')")
        .await
        .unwrap();
    assert!(eventually(SOON, || seen.lock().unwrap().len() >= 2).await);
    n.shutdown(SOON).await;
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2);
    assert!(
        seen[0] == big,
        "the large payload came whole ({} bytes)",
        seen[0].len()
    );
    assert_eq!(seen[1], "small");
}

#[tokio::test]
async fn notify_row_sends_a_large_row_whole_and_one_past_the_cap_as_its_key() {
    let (_, mut client) = fresh_database("big_rows").await;
    schema::install(&mut client).await.unwrap();
    client
        .batch_execute(
            "create table docs (tenant int, id int, body text, primary key (tenant, id));
             create trigger docs_changed after insert or update or delete on docs
               for each row execute function pgnotifier.notify_row('docs');
             create table loose (body text);
             create trigger loose_changed after insert on loose
               for each row execute function pgnotifier.notify_row('loose');",
        )
        .await
        .unwrap();
    // 100 KB goes whole; 5 MiB, past the cap, goes as the key, and the
    // writer's transaction commits either way.
    client
        .batch_execute(&format!(
            "insert into docs values (1, 7, repeat('a', 100000));
             update docs set body = repeat('b', {}) where id = 7;
             insert into loose values (repeat('c', {}));",
            5 * MIB,
            5 * MIB
        ))
        .await
        .expect("a large row fails no writer");
    let events = next_events(
        &client,
        Position::default(),
        &["docs".into(), "loose".into()],
        10,
    )
    .await
    .unwrap();
    let json: Vec<serde_json::Value> = (events.iter())
        .map(|e| serde_json::from_str(&e.payload).unwrap())
        .collect();
    assert_eq!(json.len(), 3);
    assert_eq!(json[0]["op"], "insert");
    assert_eq!(json[0]["new"]["body"].as_str().map(str::len), Some(100000));
    assert!(json[0].get("truncated").is_none());
    assert_eq!(
        json[1],
        serde_json::json!({
            "op": "update", "schema": "public", "table": "docs", "truncated": true,
            "new": {"tenant": 1, "id": 7}, "old": {"tenant": 1, "id": 7}
        })
    );
    assert_eq!(
        json[2],
        serde_json::json!({
            "op": "insert", "schema": "public", "table": "loose", "truncated": true, "new": {}
        })
    );
}

#[tokio::test]
async fn an_at_least_once_plugin_without_room_for_four_payloads_is_refused_at_load() {
    let (url, _client) = fresh_database("payload_room").await;
    let n = notifier_on(&url);
    let dir = crate::support::temp_dir("durable-payload-room");
    std::fs::copy(
        crate::support::test_plugin("durable-sink"),
        dir.join("cramped.wasm"),
    )
    .unwrap();
    std::fs::write(
        dir.join("cramped.toml"),
        "delivery = \"at-least-once\"\nmemory_mib = 3\n",
    )
    .unwrap();
    let loaded = n.load_plugins(&dir).await.unwrap();
    let error = match &loaded[..] {
        [(_, Err(e))] => e.to_string(),
        other => panic!("loaded: {other:?}"),
    };
    assert!(
        error.contains(
            "memory_mib = 3 is too small for at-least-once delivery with max_payload_bytes = 1048576: give the plugin at least 4 MiB"
        ),
        "{error}"
    );
    assert!(error.contains("cramped.wasm"), "names the file: {error}");
    n.shutdown(SOON).await;
}
