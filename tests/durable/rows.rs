//! Row changes without triggers: a sidecar names tables, and their
//! inserts, updates, deletes and truncates arrive through the WAL
//! transport's publication as the JSON `pgnotifier.notify_row` sends.

use crate::support::durable::*;
use crate::support::SOON;
use serde_json::{json, Value};
use std::time::Duration;
use tokio_postgres::Client;

/// The payloads the durable sink `id` logged, whole (`sink PAYLOAD #ID @N`).
fn sunk_payloads(id: &str) -> Vec<Value> {
    crate::support::logs::plugin_messages(id)
        .iter()
        .filter_map(|m| m.strip_prefix("sink ")?.rsplit_once(" #"))
        .map(|(payload, _)| serde_json::from_str(payload).expect("a JSON payload"))
        .collect()
}

/// The payloads in the outbox on `channel`, in order.
async fn outbox_payloads(client: &Client, channel: &str) -> Vec<Value> {
    client
        .query(
            "select payload from pgnotifier.outbox where channel = $1 order by id",
            &[&channel],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| serde_json::from_str(row.get(0)).unwrap())
        .collect()
}

/// Load the durable sink as `id` with `sidecar`; the load's outcome.
async fn load_sink(
    n: &pgnotifier::Notifier,
    dir: &std::path::Path,
    id: &str,
    sidecar: &str,
) -> Result<String, String> {
    std::fs::copy(
        crate::support::test_plugin("durable-sink"),
        dir.join(format!("{id}.wasm")),
    )
    .unwrap();
    std::fs::write(
        dir.join(format!("{id}.toml")),
        // Raw: the sink logs text payloads.
        format!("delivery = \"at-least-once\"\npayload = \"raw\"\nretry_backoff_ms = 1\n{sidecar}"),
    )
    .unwrap();
    let mut outcomes = n.load_plugins(dir).await.unwrap();
    assert_eq!(outcomes.len(), 1);
    outcomes.remove(0).1.map_err(|e| format!("{e:#}"))
}

async fn until_sunk(id: &str, count: usize) -> Vec<Value> {
    let deadline = std::time::Instant::now() + SOON;
    loop {
        let got = sunk_payloads(id);
        if got.len() >= count {
            return got;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{id} received {} of {count}: {got:?}",
            got.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn row_changes_of_a_named_table_arrive_in_order_as_notify_row_renders_them() {
    crate::support::logs::install();
    let via = Via::Wal;
    let name = via.name("rows");
    let (url, client) = fresh_database_on(via.server(), &name).await;
    // Every kind of value to_jsonb renders its own way; `big` is stored
    // out of line and uncompressed (TOAST), so an update that leaves it
    // alone does not carry it. A notify_row trigger on the same table
    // says what each change must look like.
    client
        .batch_execute(
            "create table public.orders (
                 id int primary key, note text, amount numeric, ratio float8, paid bool,
                 tags text[], at timestamptz, doc jsonb, big text);
             alter table public.orders alter column big set storage external;
             alter table public.orders replica identity full;",
        )
        .await
        .unwrap();
    let n = via.notifier(&url, &name);
    n.start().await.unwrap();
    via.ready(&client).await;
    client
        .batch_execute(
            "create trigger orders_changed after insert or update or delete on public.orders
                 for each row execute function pgnotifier.notify_row('trig')",
        )
        .await
        .unwrap();
    let dir = crate::support::temp_dir("durable-rows");
    let id = crate::support::channel("sink_rows");
    load_sink(&n, &dir, &id, "tables = [\"public.orders\"]\n")
        .await
        .unwrap();
    feeding(&client, &id).await;
    client
        .batch_execute(
            "insert into public.orders values
                 (1, 'first', 12.50, 0.25, true, '{a,\"b c\"}', '2026-01-02 03:04:05.678+01',
                  '{\"k\": [1, 2]}', repeat('x', 10000));
             update public.orders set note = 'second', amount = amount * 2 where id = 1;
             delete from public.orders where id = 1;
             insert into public.orders (id, big) values (2, repeat('y', 5 * 1024 * 1024));
             truncate public.orders;",
        )
        .await
        .unwrap();
    let got = until_sunk(&id, 5).await;
    let trig = outbox_payloads(&client, "trig").await;
    assert_eq!(trig.len(), 4, "the trigger's: {trig:?}");
    assert_eq!(
        got[0], trig[0],
        "an insert, every type as to_jsonb renders it"
    );
    let mut update = trig[1].clone();
    update["new"].as_object_mut().unwrap().remove("big");
    update["unchanged"] = json!(["big"]);
    assert_eq!(
        got[1], update,
        "an update: the TOASTed column it left alone is named, not sent"
    );
    assert_eq!(
        got[2], trig[2],
        "a delete, with the old row (identity full)"
    );
    assert_eq!(
        got[3],
        json!({"op": "insert", "schema": "public", "table": "orders", "truncated": true,
               "new": {"id": 2}}),
        "a row past max_payload_bytes: its key"
    );
    assert_eq!(
        got[4],
        json!({"op": "truncate", "schema": "public", "table": "orders"})
    );
    assert_eq!(
        outbox_payloads(&client, "public.orders").await,
        got[..5],
        "each once, in commit order"
    );
    n.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_table_without_a_replica_identity_is_refused_naming_it_and_its_writers_go_on() {
    crate::support::logs::install();
    let via = Via::Wal;
    let name = via.name("rows_nokey");
    let (url, client) = fresh_database_on(via.server(), &name).await;
    client
        .batch_execute("create table public.readings (sensor int, value float8)")
        .await
        .unwrap();
    let n = via.notifier(&url, &name);
    n.start().await.unwrap();
    via.ready(&client).await;
    let dir = crate::support::temp_dir("durable-rows-nokey");
    let id = crate::support::channel("sink_nokey");
    let refused = load_sink(&n, &dir, &id, "tables = [\"readings\"]\n")
        .await
        .unwrap_err();
    assert!(
        refused.contains("public.readings")
            && refused.contains("no replica identity")
            && refused.contains("REPLICA IDENTITY FULL"),
        "{refused}"
    );
    let missing = load_sink(&n, &dir, &id, "tables = [\"public.nothing\"]\n")
        .await
        .unwrap_err();
    assert!(
        missing.contains("public.nothing") && missing.contains("no such table"),
        "{missing}"
    );
    // Not published, so its writers' updates still work.
    client
        .batch_execute(
            "insert into public.readings values (1, 0.5);
             update public.readings set value = 1.5;",
        )
        .await
        .unwrap();
    // With the whole row as its identity, it is taken: old values are the
    // whole row.
    client
        .batch_execute("alter table public.readings replica identity full")
        .await
        .unwrap();
    load_sink(&n, &dir, &id, "tables = [\"readings\"]\n")
        .await
        .unwrap();
    feeding(&client, &id).await;
    client
        .batch_execute("update public.readings set value = 2.5 where sensor = 1")
        .await
        .unwrap();
    let got = until_sunk(&id, 1).await;
    assert_eq!(
        got[0],
        json!({"op": "update", "schema": "public", "table": "readings",
               "new": {"sensor": 1, "value": 2.5}, "old": {"sensor": 1, "value": 1.5}})
    );
    n.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn tables_on_the_outbox_transport_are_refused_naming_the_setting() {
    crate::support::logs::install();
    let (url, client) = fresh_database("rows_outbox").await;
    client
        .batch_execute("create table public.orders (id int primary key)")
        .await
        .unwrap();
    let n = notifier_on(&url);
    let dir = crate::support::temp_dir("durable-rows-outbox");
    let refused = load_sink(&n, &dir, "sink_rows_outbox", "tables = [\"orders\"]\n")
        .await
        .unwrap_err();
    assert!(
        refused.contains("durable_transport = \"wal\"") && refused.contains("notify_row"),
        "{refused}"
    );
    let at_most_once = std::fs::write(
        dir.join("sink_rows_outbox.toml"),
        "delivery = \"at-most-once\"\ntables = [\"orders\"]\n",
    );
    at_most_once.unwrap();
    let outcome = n.load_plugins(&dir).await.unwrap().remove(0).1;
    let refused = format!("{:#}", outcome.unwrap_err());
    assert!(refused.contains("at-least-once"), "{refused}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_value_that_no_longer_reads_as_its_type_is_relayed_as_text_and_stops_nothing() {
    crate::support::logs::install();
    let via = Via::Wal;
    let name = via.name("rows_renamed");
    let (url, client) = fresh_database_on(via.server(), &name).await;
    client
        .batch_execute(
            "create type public.mood as enum ('fine', 'sad');
             create table public.moods (id int primary key, mood public.mood)",
        )
        .await
        .unwrap();
    let dir = crate::support::temp_dir("durable-rows-renamed");
    let id = crate::support::channel("sink_renamed");
    let first = via.notifier(&url, &name);
    first.start().await.unwrap();
    via.ready(&client).await;
    load_sink(&first, &dir, &id, "tables = [\"moods\"]\n")
        .await
        .unwrap();
    feeding(&client, &id).await;
    first.shutdown(Duration::from_secs(5)).await;
    // Written while no host relays; by the time one does, the value it
    // holds is no longer the enum's.
    client
        .batch_execute(
            "insert into public.moods values (1, 'sad');
             alter type public.mood rename value 'sad' to 'blue';
             insert into public.moods values (2, 'blue');",
        )
        .await
        .unwrap();
    let second = via.notifier(&url, &name);
    second.start().await.unwrap();
    load_sink(&second, &dir, &id, "tables = [\"moods\"]\n")
        .await
        .unwrap();
    let got = until_sunk(&id, 2).await;
    assert_eq!(
        got[0]["new"],
        json!({"id": "1", "mood": "sad"}),
        "every value of its batch as its text"
    );
    assert_eq!(got[1]["new"]["mood"], "blue", "{:?}", got[1]);
    second.shutdown(Duration::from_secs(5)).await;
}
