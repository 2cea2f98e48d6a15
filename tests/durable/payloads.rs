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

/// A writer that is not the schema's owner reads the cap through
/// `pgnotifier.max_payload_bytes()`: its large rows go, whole or as keys.
#[tokio::test]
async fn a_writer_without_rights_on_the_schema_tables_sends_large_rows() {
    let (_, mut client) = fresh_database("writer_role").await;
    schema::install(&mut client).await.unwrap();
    client
        .batch_execute(
            "DO $$ BEGIN CREATE ROLE pgnotifier_test_writer; EXCEPTION WHEN duplicate_object THEN NULL; END $$;
             GRANT USAGE ON SCHEMA pgnotifier TO pgnotifier_test_writer;
             CREATE TABLE app_docs (id int PRIMARY KEY, body text);
             ALTER TABLE app_docs OWNER TO pgnotifier_test_writer;
             CREATE TRIGGER app_docs_changed AFTER INSERT ON app_docs
               FOR EACH ROW EXECUTE FUNCTION pgnotifier.notify_row('docs');",
        )
        .await
        .unwrap();
    client
        .batch_execute(&format!(
            "SET ROLE pgnotifier_test_writer;
             INSERT INTO app_docs VALUES (1, repeat('x', 20000)), (2, repeat('y', {}));
             RESET ROLE;",
            2 * MIB
        ))
        .await
        .expect("a writer's large rows are sent");
    let events = next_events(&client, Position::default(), &["docs".into()], 10)
        .await
        .unwrap();
    let sizes: Vec<usize> = events.iter().map(|e| e.payload.len()).collect();
    assert_eq!(sizes.len(), 2);
    assert!(sizes[0] > 20000 && sizes[1] < 200, "{sizes:?}");
}

/// When even the key is over the cap, or the key's index has INCLUDE
/// columns, the change goes as its key columns alone, or as the bare
/// operation.
#[tokio::test]
async fn a_row_whose_key_is_too_large_goes_as_the_bare_operation() {
    let (_, mut client) = fresh_database("big_keys").await;
    schema::install(&mut client).await.unwrap();
    schema::set_max_payload_bytes(&client, 8000).await.unwrap();
    client
        .batch_execute(&format!(
            "CREATE TABLE urls (url text PRIMARY KEY, body text);
             CREATE TRIGGER urls_changed AFTER INSERT OR UPDATE ON urls
               FOR EACH ROW EXECUTE FUNCTION pgnotifier.notify_row('rows');
             CREATE TABLE inc (id int, note text, body text, PRIMARY KEY (id) INCLUDE (note));
             CREATE TRIGGER inc_changed AFTER INSERT ON inc
               FOR EACH ROW EXECUTE FUNCTION pgnotifier.notify_row('rows');
             INSERT INTO urls VALUES (repeat('u', 4018), 'b');
             UPDATE urls SET body = repeat('b', 10000);
             INSERT INTO inc VALUES (1, 'private', repeat('x', {MIB}));"
        ))
        .await
        .expect("no row fails its writer");
    let events = next_events(&client, Position::default(), &["rows".into()], 10)
        .await
        .unwrap();
    let json: Vec<serde_json::Value> = (events.iter())
        .map(|e| serde_json::from_str(&e.payload).unwrap())
        .collect();
    assert_eq!(json.len(), 3);
    assert_eq!(json[0]["op"], "insert");
    assert_eq!(
        json[1],
        serde_json::json!({"op": "update", "schema": "public", "table": "urls", "truncated": true})
    );
    assert_eq!(
        json[2],
        serde_json::json!({
            "op": "insert", "schema": "public", "table": "inc", "truncated": true,
            "new": {"id": 1}
        })
    );
}

/// A cap that changes while rows are written (hosts with different
/// settings) fails no writer: each row's change reads it once.
#[tokio::test(flavor = "multi_thread")]
async fn a_cap_that_changes_while_rows_are_written_fails_no_writer() {
    let (url, mut client) = fresh_database("cap_flips").await;
    schema::install(&mut client).await.unwrap();
    row_table(&client, "racy", "id serial PRIMARY KEY").await;
    let until = std::time::Instant::now() + std::time::Duration::from_millis(1500);
    let flipping = tokio::spawn(async move {
        while std::time::Instant::now() < until {
            for bytes in [8000, MIB as u32] {
                schema::set_max_payload_bytes(&client, bytes).await.unwrap();
            }
        }
    });
    let mut writers = Vec::new();
    for _ in 0..2 {
        let (writer, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(connection);
        writers.push(tokio::spawn(async move {
            let mut written = 0;
            while std::time::Instant::now() < until {
                writer
                    .batch_execute("INSERT INTO racy (body) VALUES (repeat('x', 20000))")
                    .await
                    .map_err(|e| format!("after {written} rows: {e:?}"))?;
                written += 1;
            }
            Ok::<_, String>(written)
        }));
    }
    flipping.await.unwrap();
    for writer in writers {
        let written = writer.await.unwrap().expect("no writer fails");
        assert!(written > 0);
    }
}

/// The row of `pgnotifier.limits` gone means the default cap, not
/// `pg_notify`'s; a host puts it back.
#[tokio::test]
async fn a_missing_limits_row_means_the_default_and_a_host_writes_it_back() {
    let (_, mut client) = fresh_database("limits_gone").await;
    schema::install(&mut client).await.unwrap();
    client
        .batch_execute(
            "DELETE FROM pgnotifier.limits; SELECT pgnotifier.send('c', repeat('x', 9000))",
        )
        .await
        .expect("the default cap, 1 MiB, without the row");
    let before = schema::set_max_payload_bytes(&client, 2 * MIB as u32)
        .await
        .unwrap();
    assert_eq!(before, None, "there was no row");
    let cap: i32 = (client.query_one("SELECT max_payload_bytes FROM pgnotifier.limits", &[]))
        .await
        .unwrap()
        .get(0);
    assert_eq!(cap, 2 * MIB as i32);
}

/// A budget of nothing still brings the first event: every read moves on.
#[tokio::test]
async fn a_read_with_no_byte_budget_still_brings_one_event() {
    let (_, mut client) = fresh_database("no_budget").await;
    schema::install(&mut client).await.unwrap();
    client
        .batch_execute("SELECT pgnotifier.send('c', 'first'), pgnotifier.send('c', 'second')")
        .await
        .unwrap();
    for budget in [Some(0i64), None] {
        let rows = client
            .query(
                "SELECT kind::text, payload FROM pgnotifier.read_batch('s', 0, 0, '{c}', 10, $1)
                  WHERE kind IN ('e', 'o') ORDER BY stamp, id",
                &[&budget],
            )
            .await
            .unwrap();
        let got: Vec<(String, Option<String>)> =
            rows.iter().map(|r| (r.get(0), r.get(1))).collect();
        assert_eq!(
            got,
            [("e".into(), Some("first".into())), ("o".into(), None)],
            "budget {budget:?}"
        );
    }
}

/// A host whose role may not write `pgnotifier.limits` (a DBA installed the
/// schema and granted the rest) feeds all the same, under the table's cap.
#[tokio::test(flavor = "multi_thread")]
async fn a_host_that_may_not_write_the_cap_feeds_all_the_same() {
    let (url, mut client) = fresh_database("cap_read_only").await;
    schema::install(&mut client).await.unwrap();
    let role = "pgnotifier_test_host_no_limits";
    let db: String = (client.query_one("SELECT current_database()", &[]))
        .await
        .unwrap()
        .get(0);
    client
        .batch_execute(&format!(
            "DO $$ BEGIN CREATE ROLE {role} LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$;
             GRANT CREATE ON DATABASE \"{db}\" TO {role};
             GRANT USAGE, CREATE ON SCHEMA pgnotifier TO {role};
             GRANT ALL ON ALL TABLES IN SCHEMA pgnotifier TO {role};
             GRANT ALL ON ALL SEQUENCES IN SCHEMA pgnotifier TO {role};
             REVOKE ALL ON pgnotifier.limits FROM {role};"
        ))
        .await
        .unwrap();
    let (scheme, rest) = url.split_once("://").unwrap();
    let as_role = format!(
        "{scheme}://{role}@{}",
        rest.split_once('@').map_or(rest, |(_, r)| r)
    );
    crate::support::logs::install();
    let n = notifier_on(&as_role);
    let (subscriber, seen) = recording_at_least_once(RetryPolicy::default());
    n.subscribe("cap_read_only", "work", subscriber).unwrap();
    feeding(&client, "cap_read_only").await;
    send_range(&client, 0..5).await;
    assert!(
        eventually(SOON, || seen.lock().unwrap().len() >= 5).await,
        "delivered: {:?}",
        seen.lock().unwrap()
    );
    n.shutdown(SOON).await;
    let warned = crate::support::logs::of("cap_read_only")
        .iter()
        .any(|l| l.message.contains("cannot write max_payload_bytes"));
    assert!(warned, "the host says it could not write its cap");
}

/// Dead letters asked to be delivered again come as a read of the outbox
/// does: up to the first whose payload starts past the read's bytes, the
/// rest at the next look.
#[tokio::test]
async fn dead_letters_to_deliver_again_come_within_the_read_budget() {
    use pgnotifier::durable::dead_letters::waiting;
    let (_, mut client) = fresh_database("letters_budget").await;
    schema::install(&mut client).await.unwrap();
    let each = 10 * MIB;
    client
        .batch_execute(&format!(
            "INSERT INTO pgnotifier.dead_letters
                 (subscriber, event_id, channel, payload, sent_at, error, attempts, redeliver)
             SELECT 's', i, 'c', repeat('x', {each}), now(), 'failed', 1, true
               FROM generate_series(1, 3) i"
        ))
        .await
        .unwrap();
    let ids = |letters: Vec<pgnotifier::durable::dead_letters::Redelivery>| {
        letters.iter().map(|l| l.event.id).collect::<Vec<_>>()
    };
    assert_eq!(
        ids(waiting(&client, "s").await.unwrap()),
        [1, 2],
        "the third starts past {} bytes",
        reader::READ_BYTES
    );
    client
        .batch_execute("UPDATE pgnotifier.dead_letters SET redeliver = false WHERE event_id < 3")
        .await
        .unwrap();
    assert_eq!(ids(waiting(&client, "s").await.unwrap()), [3]);
}

/// A large row costs its writer no subtransaction: a transaction that
/// writes many would overflow each backend's cache of them, which slows
/// every snapshot in the database.
#[tokio::test]
async fn large_rows_cost_their_writer_no_subtransaction() {
    let (_, mut client) = fresh_database("no_subxacts").await;
    schema::install(&mut client).await.unwrap();
    row_table(&client, "wide", "id int PRIMARY KEY").await;
    let tx = client.transaction().await.unwrap();
    tx.batch_execute(&format!(
        "INSERT INTO wide SELECT i, repeat('x', 20000) FROM generate_series(1, 20) i;
         INSERT INTO wide SELECT i, repeat('y', {}) FROM generate_series(21, 25) i;",
        2 * MIB
    ))
    .await
    .unwrap();
    tx.commit().await.unwrap();
    // A row written in a subtransaction carries the subtransaction's id.
    let writers: i64 = client
        .query_one(
            "SELECT count(DISTINCT xmin::text) FROM pgnotifier.outbox WHERE channel = 'wide'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        writers, 1,
        "the events were written by the transaction alone"
    );
    assert_eq!(outbox_count(&client, "wide").await, 25);
}

/// Table `name` (`key`, a `body` text) whose inserts `notify_row` sends on
/// the channel of its name.
async fn row_table(client: &tokio_postgres::Client, name: &str, key: &str) {
    client
        .batch_execute(&format!(
            "CREATE TABLE {name} ({key}, body text);
             CREATE TRIGGER {name}_changed AFTER INSERT ON {name}
               FOR EACH ROW EXECUTE FUNCTION pgnotifier.notify_row('{name}');"
        ))
        .await
        .unwrap();
}
