//! Row changes without triggers: a sidecar names tables, and their
//! inserts, updates, deletes and truncates arrive through the WAL
//! transport's publication as the JSON `pgnotifier.notify_row` sends.

use crate::support::durable::*;
use crate::support::SOON;
use serde_json::{json, Value};
use std::time::Duration;
use tokio_postgres::{Client, NoTls};

/// The payloads the durable sink `id` logged, whole (`sink PAYLOAD #ID @N`).
fn sunk_payloads(id: &str) -> Vec<Value> {
    crate::support::logs::plugin_messages(id)
        .iter()
        .filter_map(|m| m.strip_prefix("sink ")?.rsplit_once(" #"))
        .map(|(payload, _)| serde_json::from_str(payload).expect("a JSON payload"))
        .collect()
}

/// The payloads in the outbox on `channel`, in order (JSON, or else a
/// string).
async fn outbox_payloads(client: &Client, channel: &str) -> Vec<Value> {
    client
        .query(
            "select payload from pgnotifier.outbox where channel = $1 order by id",
            &[&channel],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| {
            let text: String = row.get(0);
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        })
        .collect()
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
    // Every kind of value to_jsonb renders its own way; `big` is stored
    // out of line and uncompressed (TOAST), so an update that leaves it
    // alone does not carry it. A notify_row trigger on the same table
    // says what each change must look like.
    let Setup { client, n, id } = setup(
        "rows",
        "create table public.orders (
             id int primary key, note text, amount numeric, ratio float8, paid bool,
             tags text[], at timestamptz, doc jsonb, big text);
         alter table public.orders alter column big set storage external;
         alter table public.orders replica identity full;",
        &[],
        "[\"public.orders\"]",
        &["public.orders"],
    )
    .await
    .unwrap();
    client
        .batch_execute(
            "insert into public.orders values
                 (1, 'first', 12.50, 0.25, true, '{a,\"b c\"}', '2026-01-02 03:04:05.678+01',
                  '{\"k\": [1, 2]}', repeat('x', 10000));
             update public.orders set note = 'second', amount = amount * 2 where id = 1;
             delete from public.orders where id = 1;
             insert into public.orders (id, big) values (2, repeat('y', 5 * 1024 * 1024));
             truncate public.orders;
             insert into public.orders (id, note, amount, ratio, paid, at, doc)
                 values (3, 'with \"quotes\" and \\', 'NaN', '-Infinity', false,
                         '1850-01-01 00:00:00+00', '{\"a\": null}');",
        )
        .await
        .unwrap();
    let got = until_sunk(&id, 6).await;
    let trig = outbox_payloads(&client, "trig").await;
    assert_eq!(trig.len(), 5, "the trigger's: {trig:?}");
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
        got[5], trig[4],
        "an insert the host renders itself (no array, no type of its own)"
    );
    assert_eq!(
        outbox_payloads(&client, "public.orders").await,
        got[..6],
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
async fn a_table_without_a_trigger_on_the_outbox_transport_is_refused_naming_both_ways() {
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
        refused.contains("public.orders")
            && refused.contains("durable_transport = \"wal\"")
            && refused.contains("notify_row"),
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

/// Wait until `channel` holds `count` events in the outbox (the relay has
/// relayed them); what it holds then.
async fn until_relayed(client: &Client, channel: &str, count: usize) -> Vec<Value> {
    until_relayed_within(client, channel, count, SOON).await
}

async fn until_relayed_within(
    client: &Client,
    channel: &str,
    count: usize,
    within: Duration,
) -> Vec<Value> {
    let deadline = std::time::Instant::now() + within;
    loop {
        let got = outbox_payloads(client, channel).await;
        if got.len() >= count {
            return got;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{channel}: {} of {count} relayed within {within:?}: {got:?}",
            got.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

struct Setup {
    client: Client,
    n: pgnotifier::Notifier,
    /// The sink's subscriber id.
    id: String,
}

/// A WAL-transport host on a fresh database where `ddl` ran (and then
/// `database_settings`, for every later session), with the durable sink
/// loaded with `tables`; `trigger` tables get a notify_row('trig') trigger.
async fn setup(
    name: &str,
    ddl: &str,
    database_settings: &[&str],
    tables: &str,
    trigger: &[&str],
) -> Result<Setup, String> {
    crate::support::logs::install();
    let via = Via::Wal;
    let name = via.name(name);
    let (url, client) = fresh_database_on(via.server(), &name).await;
    client.batch_execute(ddl).await.unwrap();
    let db: String = client
        .query_one("select current_database()::text", &[])
        .await
        .unwrap()
        .get(0);
    for setting in database_settings {
        client
            .batch_execute(&format!("ALTER DATABASE \"{db}\" SET {setting}"))
            .await
            .unwrap();
    }
    // A new session, which takes the database's settings.
    let (client, connection) = tokio_postgres::connect(&url, NoTls).await.unwrap();
    tokio::spawn(connection);
    let n = via.notifier(&url, &name);
    n.start().await.unwrap();
    via.ready(&client).await;
    for table in trigger {
        client
            .batch_execute(&format!(
                "create trigger changed after insert or update or delete on {table}
                     for each row execute function pgnotifier.notify_row('trig')"
            ))
            .await
            .unwrap();
    }
    let dir = crate::support::temp_dir(&format!("durable-{name}"));
    let id = crate::support::channel(&format!("sink_{name}"));
    load_sink(&n, &dir, &id, &format!("tables = {tables}\n")).await?;
    feeding(&client, &id).await;
    Ok(Setup { client, n, id })
}

/// A `regclass` column naming a table in `public`: relayed qualified, as
/// notify_row (whose search path is pg_catalog's) writes it, and nothing
/// behind it waits.
#[tokio::test(flavor = "multi_thread")]
async fn a_regclass_column_is_relayed_as_notify_row_renders_it_and_stalls_nothing() {
    let s = setup(
        "rows_regclass",
        "create table public.audit (id int primary key, tbl regclass)",
        &[],
        "[\"public.audit\"]",
        &["public.audit"],
    )
    .await
    .unwrap();
    s.client
        .batch_execute("insert into public.audit values (1, 'public.audit')")
        .await
        .unwrap();
    s.client
        .batch_execute("select pgnotifier.send('work', 'after')")
        .await
        .unwrap();
    until_relayed(&s.client, "work", 1).await;
    let trig = until_relayed(&s.client, "trig", 1).await;
    let got = until_relayed(&s.client, "public.audit", 1).await;
    assert_eq!(got[0], trig[0]);
    s.n.shutdown(Duration::from_secs(5)).await;
}

/// A domain constraint added NOT VALID (PostgreSQL does not check rows
/// already written) on an array's element type: the value written before
/// no longer reads back as its type (23514). Its batch goes as text; the
/// relay goes on.
#[tokio::test(flavor = "multi_thread")]
async fn a_domain_constraint_added_not_valid_stalls_nothing() {
    let s = setup(
        "rows_domain",
        "create domain public.qty as int;
         create table public.lines (id int primary key, qtys public.qty[])",
        &[],
        "[\"public.lines\"]",
        &[],
    )
    .await
    .unwrap();
    s.client
        .batch_execute(
            "begin;
             insert into public.lines values (1, '{5}');
             alter domain public.qty add constraint qty_big check (value > 10) not valid;
             commit;
             insert into public.lines values (2, '{20}');
             select pgnotifier.send('work', 'after');",
        )
        .await
        .unwrap();
    until_relayed(&s.client, "work", 1).await;
    let got = until_relayed(&s.client, "public.lines", 2).await;
    let ids: Vec<String> = (got.iter())
        .map(|event| event["new"]["id"].to_string().replace('"', ""))
        .collect();
    assert_eq!(ids, ["1", "2"], "{got:?}");
    s.n.shutdown(Duration::from_secs(5)).await;
}

/// A database with DateStyle = 'SQL, DMY' and TimeZone = 'Asia/Kolkata':
/// in that style the zone would be written "IST", which reads back as
/// Israel's; the relay reads the values in the ISO style, and the instant
/// is notify_row's.
#[tokio::test(flavor = "multi_thread")]
async fn a_timestamp_under_a_non_iso_datestyle_is_relayed_as_the_same_instant() {
    let s = setup(
        "rows_datestyle",
        "create table public.shifts (id int primary key, at timestamptz)",
        &["DateStyle = 'SQL, DMY'", "TimeZone = 'Asia/Kolkata'"],
        "[\"public.shifts\"]",
        &["public.shifts"],
    )
    .await
    .unwrap();
    s.client
        .batch_execute("insert into public.shifts values (1, '2026-01-02 03:04:05+00')")
        .await
        .unwrap();
    let trig = until_relayed(&s.client, "trig", 1).await;
    let got = until_relayed(&s.client, "public.shifts", 1).await;
    assert_eq!(got[0], trig[0], "the relay's vs notify_row's");
    s.n.shutdown(Duration::from_secs(5)).await;
}

/// A partitioned table: its partitions' changes arrive on the table's
/// channel, the one its sidecar names.
#[tokio::test(flavor = "multi_thread")]
async fn a_partitioned_tables_changes_arrive_on_its_own_channel() {
    let s = setup(
        "rows_partition",
        "create table public.orders (id int, region text, primary key (id, region))
             partition by list (region);
         create table public.orders_eu partition of public.orders for values in ('eu')",
        &[],
        "[\"public.orders\"]",
        &[],
    )
    .await
    .unwrap();
    s.client
        .batch_execute(
            "insert into public.orders values (1, 'eu');
             select pgnotifier.send('work', 'after');",
        )
        .await
        .unwrap();
    until_relayed(&s.client, "work", 1).await;
    let channels: Vec<String> = s
        .client
        .query(
            "select distinct channel from pgnotifier.outbox where lsn is not null and channel <> 'work'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(channels, vec!["public.orders".to_owned()]);
    s.n.shutdown(Duration::from_secs(5)).await;
}

/// A sidecar naming one of the host's own tables is refused: each relay
/// transaction updates pgnotifier.relayed, and relaying its changes would
/// update it again, forever.
#[tokio::test(flavor = "multi_thread")]
async fn the_hosts_own_tables_are_refused() {
    let refused = setup("rows_own", "select 1", &[], "[\"pgnotifier.relayed\"]", &[])
        .await
        .err()
        .expect("refused");
    assert!(
        refused.contains("pgnotifier.relayed") && refused.contains("the host's own tables"),
        "{refused}"
    );
}

/// A 140 MB file in a bytea column: its text (hex) is 280 MB, more than a
/// jsonb string holds, so not even its values as text can be rendered: it
/// arrives as the bare operation, and nothing behind it waits.
#[tokio::test(flavor = "multi_thread")]
async fn a_row_past_what_jsonb_holds_arrives_bare_and_stalls_nothing() {
    let s = setup(
        "rows_bytea",
        "create table public.files (id int primary key, body bytea)",
        &[],
        "[\"public.files\"]",
        &[],
    )
    .await
    .unwrap();
    s.client
        .batch_execute(
            "insert into public.files values (1, convert_to(repeat('x', 140000000), 'UTF8'));
             select pgnotifier.send('work', 'after');",
        )
        .await
        .unwrap();
    // Decoding 140 MB takes PostgreSQL a while, the longer while other
    // tests share the machine's cores; what counts is that it ends.
    let decoding = Duration::from_secs(90);
    until_relayed_within(&s.client, "work", 1, decoding).await;
    let got = until_relayed_within(&s.client, "public.files", 1, decoding).await;
    assert_eq!(got[0]["truncated"], true, "{got:?}");
    s.n.shutdown(Duration::from_secs(5)).await;
}

/// A mixed-case schema, a column added and one dropped while the relay
/// reads, a truncate of two tables with CASCADE, a key moved by an update,
/// and many types, each as notify_row renders it.
#[tokio::test(flavor = "multi_thread")]
async fn types_schemas_keys_and_column_changes_render_as_notify_row_does() {
    let s = setup(
        "rows_probe",
        r#"create schema "Sales";
         create type public.pair as (a int, b text);
         create domain public.pos as int check (value > 0);
         create table "Sales"."Orders" (id int primary key, d public.pos, r int4range,
             m money, by bytea, iv interval, n numeric, f float8, ps public.pair[], t timestamp,
             x int);
         create table "Sales".items (id int primary key, order_id int references "Sales"."Orders");"#,
        &[],
        "[\"Sales.Orders\", \"Sales.items\", \"Sales.Orders\"]",
        &["\"Sales\".\"Orders\""],
    )
    .await
    .unwrap();
    s.client
        .batch_execute(
            r#"insert into "Sales"."Orders" values (1, 5, '[1,5)', 12.34, '\x00ff', '1 day -2 hours',
                 'NaN', '-Infinity', array[row(1,'a "q"')::public.pair, null], '2026-01-02 03:04:05.5', 9);
             alter table "Sales"."Orders" add column added text default 'dflt';
             alter table "Sales"."Orders" drop column x;
             update "Sales"."Orders" set id = 2, f = 1e308 where id = 1;
             insert into "Sales".items values (1, 2);
             truncate "Sales"."Orders" cascade;"#,
        )
        .await
        .unwrap();
    let trig = until_relayed(&s.client, "trig", 2).await;
    let got = until_relayed(&s.client, "Sales.Orders", 3).await;
    let items = until_relayed(&s.client, "Sales.items", 2).await;
    eprintln!("REVIEW probe got {got:#?}\nitems {items:#?}\ntrig {trig:#?}");
    assert_eq!(got[0], trig[0]);
    assert_eq!(got[1]["new"], trig[1]["new"]);
    assert_eq!(got[1]["old"], serde_json::json!({"id": 1}));
    assert_eq!(got[2]["op"], "truncate");
    assert_eq!(items[1]["op"], "truncate");
    s.n.shutdown(Duration::from_secs(5)).await;
}

crate::on_both_transports!(
    a_snapshot_then_its_changes_miss_and_double_nothing_under_concurrent_writers
);

/// Backfill: a new subscriber with `start = "snapshot"` receives the
/// table's 10k rows from one snapshot, then every change after it, while
/// four writers insert, update and delete throughout. Replaying what it
/// received gives the table as it ends: every row came once, as a snapshot
/// row or later as a change, never both and never neither. On the outbox
/// transport the changes come from the table's notify_row trigger, on its
/// channel.
async fn a_snapshot_then_its_changes_miss_and_double_nothing_under_concurrent_writers(via: Via) {
    crate::support::logs::install();
    let name = via.name("rows_backfill");
    let (url, mut client) = fresh_database_on(via.server(), &name).await;
    client
        .batch_execute(
            "create table public.items (id int primary key, n int not null default 0);
             insert into public.items select g from generate_series(1, 10000) g;
             create table public.sunk (n bigint generated always as identity primary key,
                                       payload jsonb not null);
             do $$ begin create role pgn_test_sunk_writer;
                   exception when duplicate_object then null; end $$;
             grant insert on public.sunk to pgn_test_sunk_writer;",
        )
        .await
        .unwrap();
    if via == Via::Outbox {
        pgnotifier::durable::schema::install(&mut client)
            .await
            .unwrap();
        client
            .batch_execute(
                "create trigger changed after insert or update or delete on public.items
                     for each row execute function pgnotifier.notify_row('items_changed')",
            )
            .await
            .unwrap();
    }
    let n = via.notifier(&url, &name);
    n.start().await.unwrap();
    via.ready(&client).await;
    let writing = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let mut writers = Vec::new();
    for w in 0..4i32 {
        let (url, writing) = (url.clone(), writing.clone());
        writers.push(tokio::spawn(async move {
            let (writer, connection) = tokio_postgres::connect(&url, NoTls).await.unwrap();
            tokio::spawn(connection);
            let mut round = 0i32;
            while writing.load(std::sync::atomic::Ordering::Relaxed) {
                // Each transaction inserts a row of its own, updates two old
                // ones and deletes one: changes in one transaction, spread
                // over the table.
                let fresh = 100_000 + w * 1_000_000 + round;
                let old = 1 + (round * 37 + w * 2_501) % 10_000;
                writer
                    .batch_execute(&format!(
                        "begin;
                         insert into public.items values ({fresh}, 1);
                         update public.items set n = n + 1 where id in ({old}, {});
                         delete from public.items where id = {};
                         commit;",
                        1 + (old + 5_000) % 10_000,
                        1 + (round * 13 + w * 7_919 + 3) % 10_000,
                    ))
                    .await
                    .unwrap();
                round += 1;
            }
            round
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let dir = crate::support::temp_dir("durable-rows-backfill");
    let id = crate::support::channel("sink_backfill");
    load_sink(
        &n,
        &dir,
        &id,
        // More events than logs keep: the sink writes each to `sunk`.
        "tables = [\"items\"]\nstart = \"snapshot\"\n
         [grants]\nquery_write = true\nquery_role = \"pgn_test_sunk_writer\"\n
         [config]\nrecord = \"insert into public.sunk (payload) values ($1::jsonb)\"\n",
    )
    .await
    .unwrap();
    feeding(&client, &id).await;
    // The rows not delivered yet count in its lag.
    let lag = || {
        (n.subscribers().into_iter())
            .find(|s| s.id == id)
            .and_then(|s| s.durable)
            .map_or(0, |d| d.lag_events)
    };
    assert!(
        crate::support::eventually(SOON, || lag() >= 1_000).await,
        "lag {}: {:?}",
        lag(),
        n.subscribers().into_iter().find(|s| s.id == id)
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    writing.store(false, std::sync::atomic::Ordering::Relaxed);
    let mut rounds = 0;
    for writer in writers {
        rounds += writer.await.unwrap();
    }
    assert!(rounds > 100, "the writers wrote {rounds} transactions");
    let table: std::collections::BTreeMap<i32, i32> = client
        .query("select id, n from public.items", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    // Replay until it matches the table; every step must make sense.
    let deadline = std::time::Instant::now() + SOON * 4;
    loop {
        let got: Vec<Value> = client
            .query("select payload::text from public.sunk order by n", &[])
            .await
            .unwrap()
            .iter()
            .map(|row| serde_json::from_str(row.get(0)).unwrap())
            .collect();
        let mut replayed = std::collections::BTreeMap::new();
        let mut snapshot_rows = 0;
        for (i, event) in got.iter().enumerate() {
            let row = |part: &str| event[part]["id"].as_i64().unwrap() as i32;
            match event["op"].as_str().unwrap() {
                "snapshot" => {
                    assert_eq!(snapshot_rows, i, "a snapshot row after a change: {event}");
                    snapshot_rows += 1;
                    let fresh = replayed.insert(row("new"), event["new"]["n"].as_i64().unwrap());
                    assert!(fresh.is_none(), "a row twice in the snapshot: {event}");
                }
                "insert" => {
                    let doubled = replayed.insert(row("new"), event["new"]["n"].as_i64().unwrap());
                    assert!(
                        doubled.is_none(),
                        "an insert the snapshot had already: {event}"
                    );
                }
                "update" => {
                    let before = replayed.insert(row("new"), event["new"]["n"].as_i64().unwrap());
                    assert!(before.is_some(), "an update of a row never seen: {event}");
                }
                "delete" => {
                    let before = replayed.remove(&row("old"));
                    assert!(before.is_some(), "a delete of a row never seen: {event}");
                }
                other => panic!("an unexpected operation {other}: {event}"),
            }
        }
        let replayed: std::collections::BTreeMap<i32, i32> =
            replayed.into_iter().map(|(k, v)| (k, v as i32)).collect();
        if replayed == table {
            assert!(snapshot_rows >= 9_000, "{snapshot_rows} snapshot rows");
            assert!(
                got.len() > snapshot_rows + 100,
                "changes after the snapshot: {}",
                got.len() - snapshot_rows
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "after {} events ({snapshot_rows} of the snapshot), the replay has {} rows and the table {}",
            got.len(),
            replayed.len(),
            table.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The seam is gone once passed, and the rows with it.
    let deadline = std::time::Instant::now() + SOON;
    loop {
        let left: i64 = client
            .query_one(
                "select (select count(*) from pgnotifier.backfills)
                      + (select count(*) from pgnotifier.snapshot_rows)",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if left == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{left} backfill rows left"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    n.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn start_snapshot_without_tables_is_refused_naming_the_key() {
    crate::support::logs::install();
    let (url, _client) = fresh_database("rows_start").await;
    let n = notifier_on(&url);
    let dir = crate::support::temp_dir("durable-rows-start");
    let refused = load_sink(&n, &dir, "sink_rows_start", "start = \"snapshot\"\n")
        .await
        .unwrap_err();
    assert!(
        refused.contains("start = \"snapshot\"") && refused.contains("tables"),
        "{refused}"
    );
    let unknown = load_sink(&n, &dir, "sink_rows_start", "start = \"yesterday\"\n")
        .await
        .unwrap_err();
    assert!(
        unknown.contains("yesterday") && unknown.contains("snapshot"),
        "{unknown}"
    );
}

/// A row over `max_payload_bytes` in a backfill arrives as its key, with
/// `"truncated": true`, as `notify_row` sends it; the rows around it whole.
#[tokio::test(flavor = "multi_thread")]
async fn a_snapshot_row_over_the_cap_arrives_as_its_key() {
    crate::support::logs::install();
    let via = Via::Wal;
    let name = via.name("rows_backfill_cap");
    let (url, client) = fresh_database_on(via.server(), &name).await;
    client
        .batch_execute(
            "create table public.docs (id int primary key, body text);
             alter table public.docs alter column body set storage external;
             insert into public.docs values (1, 'small'), (2, repeat('y', 2 * 1024 * 1024));",
        )
        .await
        .unwrap();
    let n = via.notifier(&url, &name);
    n.start().await.unwrap();
    via.ready(&client).await;
    let dir = crate::support::temp_dir("durable-rows-backfill-cap");
    let id = crate::support::channel("sink_backfill_cap");
    let sidecar = "tables = [\"docs\"]\nstart = \"snapshot\"\n";
    load_sink(&n, &dir, &id, sidecar).await.unwrap();
    let mut got = until_sunk(&id, 2).await;
    got.sort_by_key(|event| event["new"]["id"].as_i64());
    assert_eq!(
        got,
        vec![
            json!({"op": "snapshot", "schema": "public", "table": "docs",
                   "new": {"id": 1, "body": "small"}}),
            json!({"op": "snapshot", "schema": "public", "table": "docs",
                   "new": {"id": 2}, "truncated": true}),
        ]
    );
    n.shutdown(Duration::from_secs(5)).await;
}
