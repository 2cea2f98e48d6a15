//! Backfill (`start = "snapshot"`) at its seams: writers that span the
//! snapshot, a table rewritten or dropped meanwhile, a relay commit during
//! a read, a feeder cut off, a position removed, a table named twice, and
//! the seam removed once passed. Each failed before its fix.

use crate::support::durable::*;
use crate::support::SOON;
use serde_json::Value;
use std::time::{Duration, Instant};
use tokio_postgres::{Client, NoTls};

/// A table `sunk` the sink records every payload in, in delivery order.
const SUNK: &str = "
    create table public.sunk (n bigint generated always as identity primary key,
                              payload jsonb not null);
    do $$ begin create role pgn_test_sunk_writer;
          exception when duplicate_object then null; end $$;
    grant insert on public.sunk to pgn_test_sunk_writer;";

/// The sidecar lines that make the sink record into `sunk`; `slow`: each
/// call takes 0.3 s (in the database, little CPU).
fn recording(slow: bool) -> String {
    let record = if slow {
        "insert into public.sunk (payload) select $1::jsonb from pg_sleep(0.3)"
    } else {
        "insert into public.sunk (payload) values ($1::jsonb)"
    };
    format!(
        "timeout_ms = 5000\nquery_timeout_ms = 5000\n\
         [grants]\nquery_write = true\nquery_role = \"pgn_test_sunk_writer\"\n\
         [config]\nrecord = \"{record}\"\n"
    )
}

/// A WAL-transport host on a fresh database where `ddl` ran, relaying.
async fn wal_host(name: &str, ddl: &str) -> (String, Client, pgnotifier::Notifier) {
    host(Via::Wal, name, ddl).await
}

/// A host on `via` on a fresh database where `ddl` ran after the schema
/// was installed (so it may create `notify_row` triggers), ready.
async fn host(via: Via, name: &str, ddl: &str) -> (String, Client, pgnotifier::Notifier) {
    crate::support::logs::install();
    let name = via.name(name);
    let (url, mut client) = fresh_database_on(via.server(), &name).await;
    pgnotifier::durable::schema::install(&mut client)
        .await
        .unwrap();
    client.batch_execute(ddl).await.unwrap();
    client.batch_execute(SUNK).await.unwrap();
    let n = via.notifier(&url, &name);
    n.start().await.unwrap();
    via.ready(&client).await;
    (url, client, n)
}

async fn connect(url: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await.unwrap();
    tokio::spawn(connection);
    client
}

/// What the sink recorded, in delivery order.
async fn sunk_rows(client: &Client) -> Vec<Value> {
    client
        .query("select payload::text from public.sunk order by n", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| serde_json::from_str(row.get(0)).unwrap())
        .collect()
}

/// Wait until `done` holds of what the sink recorded.
async fn until_sunk(client: &Client, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + SOON;
    loop {
        let got = sunk_rows(client).await;
        if done(&got) {
            return got;
        }
        assert!(Instant::now() < deadline, "never {what}: {got:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Send `"after"` on `work` and wait until the sink has it, and a moment
/// more for anything late: what it received before, in delivery order.
async fn received_until_after(client: &Client) -> Vec<Value> {
    client
        .batch_execute("select pgnotifier.send('work', '\"after\"')")
        .await
        .unwrap();
    until_sunk(client, "\"after\"", |g| g.iter().any(|e| e == "after")).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = sunk_rows(client).await;
    got.into_iter().filter(|e| *e != "after").collect()
}

fn ops(got: &[Value], op: &str) -> usize {
    got.iter().filter(|e| e["op"] == op).count()
}

/// Wait until a backend runs a statement matching `like` and waits on a
/// heavyweight lock (a row or a table).
async fn until_waiting_on_lock(client: &Client, like: &str) {
    let deadline = Instant::now() + SOON;
    loop {
        let waiting: bool = client
            .query_one(
                "select exists (select from pg_stat_activity
                                 where wait_event_type = 'Lock' and query like $1
                                   and datname = current_database())",
                &[&like],
            )
            .await
            .unwrap()
            .get(0);
        if waiting {
            return;
        }
        assert!(Instant::now() < deadline, "no backend waits in {like}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn until_snapshot_taken(client: &Client, id: &str) {
    let deadline = Instant::now() + SOON;
    loop {
        let taken = client
            .query_opt(
                "select from pgnotifier.backfills where subscriber = $1 and snapshot is not null",
                &[&id],
            )
            .await
            .is_ok_and(|row| row.is_some());
        if taken {
            return;
        }
        assert!(Instant::now() < deadline, "the backfill was never taken");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Wait until the backfill of a feeder waits for the transactions that
/// were writing its tables (it looks at their locks now and then), and
/// check it has not taken its snapshot meanwhile.
async fn until_backfill_waits_for_writers(client: &Client, id: &str) {
    let deadline = Instant::now() + SOON;
    loop {
        let waiting: bool = client
            .query_one(
                "select exists (select from pg_stat_activity
                                 where query like '%pg_partition_tree%' and datname = current_database()
                                   and pid <> pg_backend_pid())",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if waiting {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the backfill never waited for writers"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let taken: bool = client
        .query_one(
            "select exists (select from pgnotifier.backfills
                             where subscriber = $1 and snapshot is not null)",
            &[&id],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        !taken,
        "the snapshot was taken while a writer of its table ran"
    );
}

/// Load the recording sink (`slow`: 0.3 s a call) as `sink_NAME`, with
/// `start = "snapshot"` of `items`; its folder and id.
async fn load_backfilling(
    n: &pgnotifier::Notifier,
    name: &str,
    slow: bool,
) -> (std::path::PathBuf, String) {
    let dir = crate::support::temp_dir(&format!("durable-{name}"));
    let id = crate::support::channel(&format!("sink_{name}"));
    let sidecar = format!(
        "tables = [\"items\"]\nstart = \"snapshot\"\n{}",
        recording(slow)
    );
    load_sink(n, &dir, &id, &sidecar).await.unwrap();
    (dir, id)
}

/// Hold every feeder's start (the pruner's lock, which a start takes)
/// until the returned session commits.
async fn hold_starts(url: &str) -> Client {
    let held = connect(url).await;
    held.batch_execute("begin; select pg_advisory_xact_lock(1885826676, 2)")
        .await
        .unwrap();
    held
}

const ITEMS: &str = "create table public.items (id int primary key, n int not null default 0);
                     insert into public.items select g from generate_series(1, 3) g;";

/// The seam and the rows are gone once passed, also in a database where
/// nothing is written after the snapshot (the relay confirms the
/// backfill's own message past it).
#[tokio::test(flavor = "multi_thread")]
async fn the_seam_is_removed_once_passed_in_a_quiet_database() {
    let (_url, client, n) = wal_host("bf_quiet", ITEMS).await;
    let (_, id) = load_backfilling(&n, "bf_quiet", false).await;
    feeding(&client, &id).await;
    let got = until_sunk(&client, "3 snapshot rows", |g| g.len() >= 3).await;
    assert_eq!(ops(&got, "snapshot"), 3, "{got:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let row = client
            .query_one(
                "select (select count(*) from pgnotifier.backfills),
                        (select count(*) from pgnotifier.snapshot_rows)",
                &[],
            )
            .await
            .unwrap();
        let (seams, rows): (i64, i64) = (row.get(0), row.get(1));
        if seams + rows == 0 {
            break;
        }
        if Instant::now() >= deadline {
            let state = client
                .query_one(
                    "select row_to_json(b)::text || ' relayed ' || coalesce((select string_agg(r.through::text || '/' || s.confirmed_flush_lsn::text, ',')
                              from pgnotifier.relayed r join pg_replication_slots s on s.slot_name = r.slot), '-')
                            || ' positions ' || (select string_agg(p.stamp || ':' || p.id, ',') from pgnotifier.positions p)
                            || ' stamps ' || (select last_value from pgnotifier.commit_stamps)
                       from pgnotifier.backfills b",
                    &[],
                )
                .await
                .map(|r| r.get::<_, Option<String>>(0));
            panic!(
                "10 s after the 3 rows were delivered: {seams} backfill row(s), {rows} snapshot row(s) left: {state:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    n.shutdown(Duration::from_secs(5)).await;
}

/// A sidecar that names one table twice ("items" and "public.items") gets
/// each row once.
#[tokio::test(flavor = "multi_thread")]
async fn a_table_named_twice_is_snapshotted_once() {
    let (_url, client, n) = wal_host("bf_twice", ITEMS).await;
    let dir = crate::support::temp_dir("durable-bf-twice");
    let id = crate::support::channel("sink_bf_twice");
    let sidecar = format!(
        "tables = [\"items\", \"public.items\"]\nstart = \"snapshot\"\n{}",
        recording(false)
    );
    load_sink(&n, &dir, &id, &sidecar).await.unwrap();
    feeding(&client, &id).await;
    until_sunk(&client, "3 snapshot rows", |g| g.len() >= 3).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let got = sunk_rows(&client).await;
    assert_eq!(ops(&got, "snapshot"), 3, "each row once: {got:?}");
    n.shutdown(Duration::from_secs(5)).await;
}

/// A backfilling subscriber gets, on its other channels, what is sent
/// from its start on, as any new subscriber: nothing of the transaction
/// relayed last before it.
#[tokio::test(flavor = "multi_thread")]
async fn an_event_sent_before_the_start_is_not_delivered_on_another_channel() {
    let (_url, client, n) = wal_host("bf_before", ITEMS).await;
    client
        .batch_execute("select pgnotifier.send('work', '\"before\"')")
        .await
        .unwrap();
    // Relayed (stamped) before the subscriber starts.
    let deadline = Instant::now() + SOON;
    while client
        .query_opt(
            "select from pgnotifier.outbox where channel = 'work' and payload = '\"before\"'",
            &[],
        )
        .await
        .unwrap()
        .is_none()
    {
        assert!(Instant::now() < deadline, "never relayed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_, id) = load_backfilling(&n, "bf_before", false).await;
    feeding(&client, &id).await;
    client
        .batch_execute("select pgnotifier.send('work', '\"after\"')")
        .await
        .unwrap();
    let got = until_sunk(&client, "\"after\"", |g| g.iter().any(|e| e == "after")).await;
    assert_eq!(ops(&got, "snapshot"), 3, "{got:?}");
    assert!(
        !got.iter().any(|e| e == "before"),
        "sent and relayed before the subscriber existed, yet delivered: {got:?}"
    );
    n.shutdown(Duration::from_secs(5)).await;
}

/// Never both: a relay commit that lands while a read runs (between its
/// horizon and its look at how far the relay is) must not end the seam
/// before the change it carries, whose row the snapshot has. The window
/// is held open with row locks (the relay's `pgnotifier.relayed` row; the
/// snapshot's rows, whose DELETE the read waits in); under load, the
/// DELETE of a large snapshot is the same window.
#[tokio::test(flavor = "multi_thread")]
async fn a_relay_commit_during_a_read_does_not_end_the_seam_too_early() {
    relay_commit_during_a_read(true).await
}

/// The same steps with the window not held open: the relay commits
/// between reads, and nothing is doubled (the control: it passes).
#[tokio::test(flavor = "multi_thread")]
async fn control_a_relay_commit_between_reads_doubles_nothing() {
    relay_commit_during_a_read(false).await
}

async fn relay_commit_during_a_read(widen: bool) {
    let name = if widen { "bf_race" } else { "bf_race_control" };
    let (url, client, n) = wal_host(name, ITEMS).await;
    // Published already, as when another subscriber has the table.
    client
        .batch_execute(&format!(
            "alter publication pgn_{name}_wal add table public.items"
        ))
        .await
        .unwrap();
    // Hold the relay: its next write waits on the relayed row.
    let relay_lock = connect(&url).await;
    relay_lock
        .batch_execute("begin; select from pgnotifier.relayed for update")
        .await
        .unwrap();
    // Committed before the snapshot: its row is in the snapshot, and its
    // change must be skipped.
    client
        .batch_execute("insert into public.items values (100, 0)")
        .await
        .unwrap();
    until_waiting_on_lock(&client, "%pgnotifier.relayed%").await;
    let dir = crate::support::temp_dir(&format!("durable-{name}"));
    let id = crate::support::channel("sink_bf_race");
    let sidecar = format!(
        "tables = [\"items\"]\nstart = \"snapshot\"\n{}",
        recording(true)
    );
    load_sink(&n, &dir, &id, &sidecar).await.unwrap();
    until_snapshot_taken(&client, &id).await;
    // Rows are delivered slowly: lock them before the reader passes them.
    let rows_lock = connect(&url).await;
    if widen {
        rows_lock
            .batch_execute("begin; select from pgnotifier.snapshot_rows for update")
            .await
            .unwrap();
        // The reader has passed the rows, took its horizon, and waits in the DELETE.
        until_waiting_on_lock(&client, "%read_batch%").await;
    } else {
        until_sunk(&client, "4 snapshot rows", |g| g.len() >= 4).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let got = sunk_rows(&client).await;
    assert_eq!(ops(&got, "snapshot"), 4, "{got:?}");
    // After the snapshot: must be delivered.
    client
        .batch_execute("insert into public.items values (101, 0)")
        .await
        .unwrap();
    relay_lock.batch_execute("commit").await.unwrap();
    // The relay is past the backfill's lsn (or the seam is gone already).
    let deadline = Instant::now() + SOON;
    loop {
        let past: bool = client
            .query_one(
                "select coalesce((select min(r.through) from pgnotifier.relayed r)
                                 >= (select b.lsn from pgnotifier.backfills b), true)",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if past {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the relay never passed the snapshot"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if widen {
        rows_lock.batch_execute("commit").await.unwrap();
    }
    until_sunk(&client, "the insert of 101", |g| {
        g.iter()
            .any(|e| e["op"] == "insert" && e["new"]["id"] == 101)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = sunk_rows(&client).await;
    let doubled: Vec<&Value> = got
        .iter()
        .filter(|e| e["op"] == "insert" && e["new"]["id"] == 100)
        .collect();
    assert!(
        doubled.is_empty(),
        "row 100 came in the snapshot and again as a change: {got:?}"
    );
    n.shutdown(Duration::from_secs(5)).await;
}

/// A subscriber whose position is removed in the middle of a backfill
/// starts a new one, and gets each row once: the old snapshot's rows are
/// gone with it.
#[tokio::test(flavor = "multi_thread")]
async fn a_backfill_started_again_after_its_position_is_removed_gives_each_row_once() {
    let via = Via::Wal;
    let (url, client, n) = wal_host("bf_again", ITEMS).await;
    let dir = crate::support::temp_dir("durable-bf-again");
    let id = crate::support::channel("sink_bf_again");
    let sidecar = format!(
        "tables = [\"items\"]\nstart = \"snapshot\"\n{}",
        recording(true)
    );
    load_sink(&n, &dir, &id, &sidecar).await.unwrap();
    until_sunk(&client, "a snapshot row", |g| !g.is_empty()).await;
    n.shutdown(Duration::from_secs(5)).await;
    let left: i64 = client
        .query_one("select count(*) from pgnotifier.snapshot_rows", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 3, "the rows stay until passed");
    client
        .batch_execute(&format!(
            "delete from pgnotifier.positions where subscriber = '{id}'; truncate public.sunk;"
        ))
        .await
        .unwrap();
    let n = via.notifier(&url, &via.name("bf_again"));
    n.start().await.unwrap();
    load_sink(&n, &dir, &id, &sidecar).await.unwrap();
    until_sunk(&client, "3 snapshot rows", |g| ops(g, "snapshot") >= 3).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let got = sunk_rows(&client).await;
    assert_eq!(ops(&got, "snapshot"), 3, "each row once: {got:?}");
    n.shutdown(Duration::from_secs(5)).await;
}

/// A table dropped between the load and the snapshot gets an error naming
/// it, and once the sidecar no longer names it, the backfill takes the
/// tables it names then, and the subscriber is fed.
#[tokio::test(flavor = "multi_thread")]
async fn a_table_dropped_before_the_snapshot_is_named_and_does_not_wedge_the_subscriber() {
    let (url, client, n) = wal_host(
        "bf_dropped",
        &format!("{ITEMS} create table public.other (id int primary key);"),
    )
    .await;
    // Hold the feeder's start (the pruner's lock) until the table is gone.
    let prune_lock = hold_starts(&url).await;
    let dir = crate::support::temp_dir("durable-bf-dropped");
    let id = crate::support::channel("sink_bf_dropped");
    let sidecar = |tables: &str| {
        format!(
            "tables = {tables}\nstart = \"snapshot\"\n{}",
            recording(false)
        )
    };
    load_sink(&n, &dir, &id, &sidecar("[\"items\"]"))
        .await
        .unwrap();
    client
        .batch_execute("drop table public.items")
        .await
        .unwrap();
    prune_lock.batch_execute("commit").await.unwrap();
    let named = || {
        crate::support::logs::of(&id)
            .iter()
            .any(|l| l.message.contains("public.items") && l.message.contains("does not exist"))
    };
    assert!(
        crate::support::eventually(SOON, named).await,
        "no error naming public.items: {:?}",
        crate::support::logs::of(&id)
    );
    // The fix: the sidecar no longer names the dropped table.
    load_sink(&n, &dir, &id, &sidecar("[\"other\"]"))
        .await
        .unwrap();
    client
        .batch_execute(
            "insert into public.other values (1);
             select pgnotifier.send('work', '\"work\"')",
        )
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = sunk_rows(&client).await;
        if got.iter().any(|e| e == "work") {
            break;
        }
        let state = client
            .query_one(
                "select tables::text, snapshot is null from pgnotifier.backfills where subscriber = $1",
                &[&id],
            )
            .await
            .map(|r| (r.get::<_, String>(0), r.get::<_, bool>(1)));
        assert!(
            Instant::now() < deadline,
            "10 s after the sidecar dropped the table, nothing delivered ({got:?}); \
             backfill (tables, not taken) = {state:?}; last log: {:?}",
            crate::support::logs::of(&id)
                .last()
                .map(|l| l.message.clone())
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    n.shutdown(Duration::from_secs(5)).await;
}

/// Never neither: a table rewrite (ALTER TABLE ... TYPE, which is not
/// MVCC-safe) in progress as the backfill begins is waited for, and the
/// tables are locked before the snapshot is taken, so the snapshot never
/// sees a rewritten table as empty.
#[tokio::test(flavor = "multi_thread")]
async fn a_table_rewritten_while_the_snapshot_waits_for_it_loses_no_row() {
    let (url, client, n) = wal_host("bf_rewrite", ITEMS).await;
    let prune_lock = hold_starts(&url).await;
    let (_, id) = load_backfilling(&n, "bf_rewrite", false).await;
    let rewrite = connect(&url).await;
    rewrite
        .batch_execute("begin; alter table public.items alter column n type bigint")
        .await
        .unwrap();
    prune_lock.batch_execute("commit").await.unwrap();
    // The rewrite holds the table: the snapshot waits for it.
    until_backfill_waits_for_writers(&client, &id).await;
    rewrite.batch_execute("commit").await.unwrap();
    until_snapshot_taken(&client, &id).await;
    client
        .batch_execute("select pgnotifier.send('work', '\"after\"')")
        .await
        .unwrap();
    let got = until_sunk(&client, "\"after\"", |g| g.iter().any(|e| e == "after")).await;
    let table: i64 = client
        .query_one("select count(*) from public.items", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(table, 3);
    assert_eq!(
        ops(&got, "snapshot"),
        3,
        "the table has 3 rows, none changed since the snapshot: {got:?}"
    );
    n.shutdown(Duration::from_secs(5)).await;
}

/// The feeder's connection terminated while its backfill waits for a
/// writer: nothing is taken; the next feeder takes the backfill, whose
/// snapshot sees the writer's update, so the update is not delivered
/// again. Rows once each.
#[tokio::test(flavor = "multi_thread")]
async fn a_feeder_terminated_during_the_snapshot_resumes_and_doubles_nothing() {
    let (url, client, n) = wal_host("bf_terminated", ITEMS).await;
    let prune_lock = hold_starts(&url).await;
    let (_, id) = load_backfilling(&n, "bf_terminated", false).await;
    let writer = connect(&url).await;
    writer
        .batch_execute(
            "begin; lock table public.items in access exclusive mode;
             update public.items set n = 7 where id = 1;",
        )
        .await
        .unwrap();
    prune_lock.batch_execute("commit").await.unwrap();
    until_backfill_waits_for_writers(&client, &id).await;
    let killed: i64 = client
        .query_one(
            "select count(*) from (select pg_terminate_backend(pid) from pg_stat_activity
              where query like '%pg_partition_tree%' and datname = current_database()
                and pid <> pg_backend_pid()) t",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(killed, 1);
    writer.batch_execute("commit").await.unwrap();
    until_snapshot_taken(&client, &id).await;
    client
        .batch_execute("update public.items set n = 9 where id = 2")
        .await
        .unwrap();
    let got = until_sunk(&client, "3 rows and the update of 2", |g| {
        ops(g, "snapshot") >= 3 && g.iter().any(|e| e["op"] == "update")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let got2 = sunk_rows(&client).await;
    assert_eq!(got, got2, "more came later");
    assert_eq!(ops(&got, "snapshot"), 3, "{got:?}");
    let one = got
        .iter()
        .find(|e| e["op"] == "snapshot" && e["new"]["id"] == 1)
        .unwrap();
    // Either the update of 1 is in the snapshot, or it comes as a change: not both.
    let updates_of_1 = got
        .iter()
        .filter(|e| e["op"] == "update" && e["new"]["id"] == 1)
        .count();
    assert_eq!((one["new"]["n"] == 7) as usize + updates_of_1, 1, "{got:?}");
    let updates_of_2 = got
        .iter()
        .filter(|e| e["op"] == "update" && e["new"]["id"] == 2)
        .count();
    assert_eq!(updates_of_2, 1, "{got:?}");
    n.shutdown(Duration::from_secs(5)).await;
}

/// Replay what the sink recorded into the table it describes (id -> n).
fn replay(got: &[Value]) -> std::collections::BTreeMap<i64, i64> {
    let mut rows = std::collections::BTreeMap::new();
    for e in got {
        let id = |part: &str| e[part]["id"].as_i64().unwrap();
        match e["op"].as_str() {
            Some("snapshot" | "insert" | "update") => {
                rows.insert(id("new"), e["new"]["n"].as_i64().unwrap());
            }
            Some("delete") => {
                rows.remove(&id("old"));
            }
            _ => {}
        }
    }
    rows
}

async fn table(client: &Client) -> std::collections::BTreeMap<i64, i64> {
    client
        .query("select id::int8, n::int8 from public.items", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

/// A transaction with savepoints (one rolled back) that writes the table
/// while the backfill begins: the snapshot waits for it, and what the
/// subscriber receives replays to the table.
#[tokio::test(flavor = "multi_thread")]
async fn savepoints_in_a_transaction_open_across_the_snapshot() {
    let (url, client, n) = wal_host("bf_savepoints", ITEMS).await;
    let prune_lock = hold_starts(&url).await;
    let (_, id) = load_backfilling(&n, "bf_savepoints", false).await;
    let writer = connect(&url).await;
    writer
        .batch_execute(
            "begin;
             savepoint a; insert into public.items values (200, 1); release savepoint a;
             savepoint b; update public.items set n = 50 where id = 2; rollback to savepoint b;
             savepoint c; update public.items set n = 5 where id = 1;
             savepoint d; delete from public.items where id = 3; release savepoint d;",
        )
        .await
        .unwrap();
    prune_lock.batch_execute("commit").await.unwrap();
    until_backfill_waits_for_writers(&client, &id).await;
    writer.batch_execute("commit").await.unwrap();
    until_snapshot_taken(&client, &id).await;
    client
        .batch_execute("select pgnotifier.send('work', '\"after\"')")
        .await
        .unwrap();
    let got = until_sunk(&client, "\"after\"", |g| g.iter().any(|e| e == "after")).await;
    assert_eq!(ops(&got, "snapshot"), 3, "{got:?}");
    assert_eq!(replay(&got), table(&client).await, "{got:?}");
    n.shutdown(Duration::from_secs(5)).await;
}

/// Never neither: a transaction that wrote the table before the sidecar
/// named it (before the load published the table, so pgoutput sends none
/// of its changes) is waited for, and its rows are in the snapshot.
#[tokio::test(flavor = "multi_thread")]
async fn a_transaction_that_wrote_before_the_load_and_commits_after_the_snapshot() {
    let (url, client, n) = wal_host("bf_early_writer", ITEMS).await;
    let writer = connect(&url).await;
    writer
        .batch_execute(
            "begin;
             insert into public.items values (200, 1);
             update public.items set n = 5 where id = 1;",
        )
        .await
        .unwrap();
    let (_, id) = load_backfilling(&n, "bf_early_writer", false).await;
    until_backfill_waits_for_writers(&client, &id).await;
    writer.batch_execute("commit").await.unwrap();
    until_snapshot_taken(&client, &id).await;
    let got = received_until_after(&client).await;
    assert_eq!(
        replay(&got),
        table(&client).await,
        "what the subscriber received does not replay to the table: {got:?}"
    );
    n.shutdown(Duration::from_secs(5)).await;
}
/// WAL transport, the host connected as a role of its own (not superuser,
/// no pg_read_all_stats: what a deployment gives it), the application
/// writing as another. A transaction that wrote the table before the load
/// published it and commits after the snapshot must be waited for (its
/// changes are never relayed). The wait reads `pg_stat_activity.xact_start`
/// of the writer, which PostgreSQL hides (NULL) from a role that is not the
/// writer's: the writer is not waited for, and its changes are lost.
#[tokio::test(flavor = "multi_thread")]
async fn an_unprivileged_host_waits_for_a_writer_of_another_role() {
    crate::support::logs::install();
    let via = Via::Wal;
    let name = via.name("bf_unprivileged");
    let (url, client) = fresh_database_on(via.server(), &name).await;
    let db: String = client
        .query_one("select current_database()::text", &[])
        .await
        .unwrap()
        .get(0);
    client
        .batch_execute(&format!(
            "do $$ begin create role pgn_test_bf_host login replication;
                   exception when duplicate_object then null; end $$;
             alter database {db} owner to pgn_test_bf_host;
             {ITEMS}
             alter table public.items owner to pgn_test_bf_host;
             {SUNK}
             grant pgn_test_sunk_writer to pgn_test_bf_host;"
        ))
        .await
        .unwrap();
    let host_url = url.replacen("postgres@", "pgn_test_bf_host@", 1);
    assert_ne!(host_url, url, "the URL names the superuser: {url}");
    let n = via.notifier(&host_url, &name);
    n.start().await.unwrap();
    via.ready(&client).await;
    // The application (here the superuser, any other role does the same).
    let writer = connect(&url).await;
    writer
        .batch_execute(
            "begin;
             insert into public.items values (200, 1);
             update public.items set n = 5 where id = 1;",
        )
        .await
        .unwrap();
    load_backfilling(&n, "bf_unprivileged", false).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Rows are delivered only once the snapshot is taken.
    let taken_while_writing = !sunk_rows(&client).await.is_empty();
    writer.batch_execute("commit").await.unwrap();
    until_sunk(&client, "3 snapshot rows", |g| ops(g, "snapshot") >= 3).await;
    let got = received_until_after(&client).await;
    assert_eq!(
        replay(&got),
        table(&client).await,
        "what the subscriber received does not replay to the table \
         (snapshot taken while the writer was open: {taken_while_writing}): {got:?}"
    );
    n.shutdown(Duration::from_secs(5)).await;
    client
        .batch_execute(&format!("alter database {db} owner to postgres"))
        .await
        .ok();
}

/// A table with inheritance children (pre-10 partitioning, still common):
/// the snapshot reads `FROM items` (children's rows included, labelled as
/// `items`), but the changes of a child's rows come on the child's own
/// channel (pgoutput publishes the children as themselves; on the outbox
/// transport the parent's trigger does not fire for them), which the
/// subscriber does not follow. A child row is in the snapshot and its
/// delete never comes: what the subscriber received no longer replays to
/// any view of the table.
#[tokio::test(flavor = "multi_thread")]
async fn an_inheritance_childs_rows_are_not_in_the_snapshot() {
    let (_url, client, n) = wal_host(
        "bf_inherit",
        &format!(
            "{ITEMS}
             create table public.items_old (primary key (id)) inherits (public.items);
             insert into public.items_old values (100, 100), (101, 101);"
        ),
    )
    .await;
    let (_, id) = load_backfilling(&n, "bf_inherit", false).await;
    feeding(&client, &id).await;
    until_snapshot_taken(&client, &id).await;
    client
        .batch_execute(
            "delete from public.items where id = 100;
             update public.items set n = 7 where id = 101;
             select pgnotifier.send('work', '\"after\"');",
        )
        .await
        .unwrap();
    until_sunk(&client, "\"after\"", |g| g.iter().any(|e| e == "after")).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = sunk_rows(&client)
        .await
        .into_iter()
        .filter(|e| *e != "after")
        .collect::<Vec<_>>();
    let only: std::collections::BTreeMap<i64, i64> = client
        .query("select id::int8, n::int8 from only public.items", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let replayed = replay(&got);
    assert!(
        replayed == only || replayed == table(&client).await,
        "the replay {replayed:?} is neither `only public.items` {only:?} nor `public.items` \
         with its children {:?}: {got:?}",
        table(&client).await
    );
    n.shutdown(Duration::from_secs(5)).await;
}

/// A backfill left pending (here: a writer holds it back as the host
/// stops), then given up the way an operator would: the sidecar no longer
/// asks for a snapshot, and the subscriber's position is removed so that
/// it starts afresh at the end. The new start is at the end, but the
/// stale pending backfill is "given up" by saving the position at the OLD
/// start's stamp: the position moves backwards, and events sent while the
/// subscriber had no position (before its new start) are delivered.
#[tokio::test(flavor = "multi_thread")]
async fn a_stale_pending_backfill_does_not_move_a_fresh_start_backwards() {
    let via = Via::Wal;
    let (url, client, n) = wal_host("bf_rewind", ITEMS).await;
    let writer = connect(&url).await;
    writer
        .batch_execute("begin; update public.items set n = 1 where id = 1;")
        .await
        .unwrap();
    let dir = crate::support::temp_dir("durable-bf-rewind");
    let id = crate::support::channel("sink_bf_rewind");
    let sidecar = format!(
        "tables = [\"items\"]\nstart = \"snapshot\"\n{}",
        recording(false)
    );
    load_sink(&n, &dir, &id, &sidecar).await.unwrap();
    until_backfill_waits_for_writers(&client, &id).await;
    n.shutdown(Duration::from_secs(5)).await;
    // Stopped: no feeder waits any more.
    let deadline = Instant::now() + SOON;
    while client
        .query_one(
            "select exists (select from pg_stat_activity
                             where query like '%pg_partition_tree%' and datname = current_database()
                               and pid <> pg_backend_pid())",
            &[],
        )
        .await
        .unwrap()
        .get::<_, bool>(0)
    {
        assert!(Instant::now() < deadline, "the feeder never stopped");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    writer.batch_execute("commit").await.unwrap();
    // Given up: no snapshot, and a fresh start.
    client
        .batch_execute(&format!(
            "delete from pgnotifier.positions where subscriber = '{id}';
             select pgnotifier.send('work', '\"while-no-position\"');"
        ))
        .await
        .unwrap();
    let n = via.notifier(&url, &via.name("bf_rewind"));
    n.start().await.unwrap();
    via.ready(&client).await;
    // Relayed before the subscriber starts again.
    let deadline = Instant::now() + SOON;
    while client
        .query_opt(
            "select from pgnotifier.outbox where payload = '\"while-no-position\"'",
            &[],
        )
        .await
        .unwrap()
        .is_none()
    {
        assert!(Instant::now() < deadline, "never relayed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let sidecar = recording(false);
    load_sink(&n, &dir, &id, &sidecar).await.unwrap();
    feeding(&client, &id).await;
    client
        .batch_execute("select pgnotifier.send('work', '\"after\"')")
        .await
        .unwrap();
    until_sunk(&client, "\"after\"", |g| g.iter().any(|e| e == "after")).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = sunk_rows(&client).await;
    assert!(
        !got.iter().any(|e| e == "while-no-position"),
        "sent and relayed before the subscriber's fresh start, yet delivered \
         (its position was moved back to the given-up backfill's): {got:?}"
    );
    n.shutdown(Duration::from_secs(5)).await;
}

/// The host stopped (SIGTERM, a leader standing down, a plugin removed)
/// while a backfill waits for a writer of its table: the wait polls
/// `pg_locks` in a loop that nothing cancels, so `shutdown` (whatever its
/// drain timeout) does not return until the application's transaction
/// ends, and the feeder keeps its feed lock meanwhile.
#[tokio::test(flavor = "multi_thread")]
async fn the_host_stops_while_a_backfill_waits_for_a_writer() {
    let (url, client, n) = wal_host("bf_stop_waiting", ITEMS).await;
    let writer = connect(&url).await;
    writer
        .batch_execute("begin; update public.items set n = 1 where id = 1;")
        .await
        .unwrap();
    let (_, id) = load_backfilling(&n, "bf_stop_waiting", false).await;
    until_backfill_waits_for_writers(&client, &id).await;
    let stopped = tokio::time::timeout(Duration::from_secs(20), n.shutdown(Duration::from_secs(5)))
        .await
        .is_ok();
    let still_waiting: bool = client
        .query_one(
            "select exists (select from pg_stat_activity
                             where query like '%pg_partition_tree%' and datname = current_database()
                               and pid <> pg_backend_pid())",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    // Let the test end either way.
    writer.batch_execute("commit").await.unwrap();
    assert!(
        stopped,
        "shutdown(5 s) had not returned 20 s later, while a backfill waited for a writer \
         (its wait still polling: {still_waiting})"
    );
}

crate::on_both_transports!(
    a_send_and_another_tables_change_on_the_backfilled_channel_are_delivered
);

/// A backfilled table's channel may be shared: another table's changes
/// and the sends on it committed while the backfill waits for a writer of
/// the table (so before its snapshot, which sees them) are not the
/// table's rows, and must arrive. The seam skipped every event on the
/// channel whose writer the snapshot saw, and lost them. On the WAL
/// transport the table's channel is `public.a`, and the other table's
/// trigger sends on it.
async fn a_send_and_another_tables_change_on_the_backfilled_channel_are_delivered(via: Via) {
    let shared = match via {
        Via::Outbox => "shared",
        Via::Wal => "public.a",
    };
    let own_trigger = match via {
        Via::Outbox => format!(
            "create trigger a_changed after insert or update or delete on public.a
                 for each row execute function pgnotifier.notify_row('{shared}');"
        ),
        Via::Wal => String::new(),
    };
    let ddl = format!(
        "create table public.a (id int primary key, n int not null default 0);
         create table public.b (id int primary key, n int not null default 0);
         insert into public.a select g from generate_series(1, 3) g;
         {own_trigger}
         create trigger b_changed after insert or update or delete on public.b
             for each row execute function pgnotifier.notify_row('{shared}');"
    );
    let (url, client, n) = host(via, "bf_shared", &ddl).await;
    let writer = connect(&url).await;
    writer
        .batch_execute("begin; update public.a set n = 7 where id = 1")
        .await
        .unwrap();
    let dir = crate::support::temp_dir(&format!("durable-{}", via.name("bf-shared")));
    let id = crate::support::channel(&format!("sink_{}", via.name("bf_shared")));
    let sidecar = format!(
        "tables = [\"a\"]\nstart = \"snapshot\"\n{}",
        recording(false)
    );
    load_sink(&n, &dir, &id, &sidecar).await.unwrap();
    until_backfill_waits_for_writers(&client, &id).await;
    client
        .batch_execute(&format!(
            "insert into public.b values (1, 1);
             select pgnotifier.send('{shared}', '\"custom\"');"
        ))
        .await
        .unwrap();
    writer.batch_execute("commit").await.unwrap();
    until_snapshot_taken(&client, &id).await;
    client
        .batch_execute("select pgnotifier.send('work', '\"after\"')")
        .await
        .unwrap();
    until_sunk(&client, "\"after\"", |g| g.iter().any(|e| e == "after")).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = sunk_rows(&client).await;
    let rows: Vec<&Value> = got.iter().filter(|e| e["op"] == "snapshot").collect();
    assert_eq!(rows.len(), 3, "the table's rows, once each: {got:?}");
    assert!(
        rows.iter()
            .any(|e| e["new"]["id"] == 1 && e["new"]["n"] == 7),
        "the writer the backfill waited for is in the snapshot: {got:?}"
    );
    assert_eq!(
        got.iter().filter(|e| e["table"] == "b").count(),
        1,
        "the other table's change on the shared channel: {got:?}"
    );
    assert_eq!(
        got.iter().filter(|e| **e == "custom").count(),
        1,
        "the send on the shared channel: {got:?}"
    );
    assert_eq!(
        got.iter().filter(|e| e["op"] == "update").count(),
        0,
        "the waited-for update is in the snapshot, not doubled: {got:?}"
    );
    n.shutdown(Duration::from_secs(5)).await;
}

/// On the WAL transport a table's rows have the columns its relayed
/// changes have: a stored generated column is not published (before
/// PostgreSQL 18), nor is a column outside the publication's column list,
/// so neither is in a snapshot row.
#[tokio::test(flavor = "multi_thread")]
async fn wal_a_snapshot_row_has_the_columns_its_changes_have() {
    let (_url, client, n) = wal_host(
        "bf_columns",
        "create table public.items (id int primary key, n int not null default 0,
                                    secret text default 'hidden');
         create table public.doubled (id int primary key, n int not null default 0,
                                      twice int generated always as (n * 2) stored);
         insert into public.items (id) select g from generate_series(1, 3) g;
         insert into public.doubled (id) select g from generate_series(1, 3) g;",
    )
    .await;
    // Narrowed by a column list, as an operator may.
    client
        .batch_execute("alter publication pgn_bf_columns_wal add table public.items (id, n)")
        .await
        .unwrap();
    let dir = crate::support::temp_dir("durable-bf-columns");
    let id = crate::support::channel("sink_bf_columns");
    let sidecar = format!(
        "tables = [\"items\", \"doubled\"]\nstart = \"snapshot\"\n{}",
        recording(false)
    );
    load_sink(&n, &dir, &id, &sidecar).await.unwrap();
    feeding(&client, &id).await;
    until_sunk(&client, "6 snapshot rows", |g| ops(g, "snapshot") >= 6).await;
    client
        .batch_execute(
            "update public.items set n = 5 where id = 2;
             update public.doubled set n = 5 where id = 2;",
        )
        .await
        .unwrap();
    let got = until_sunk(&client, "the updates", |g| ops(g, "update") >= 2).await;
    let keys = |e: &Value| {
        let mut keys: Vec<String> = e["new"].as_object().unwrap().keys().cloned().collect();
        keys.sort();
        keys
    };
    for table in ["items", "doubled"] {
        let of = |op: &str| {
            got.iter()
                .filter(|e| e["table"] == table && e["op"] == op)
                .collect::<Vec<_>>()
        };
        let update = of("update");
        assert_eq!(
            keys(update[0]),
            ["id", "n"],
            "{table}'s relayed change: {got:?}"
        );
        let rows = of("snapshot");
        assert_eq!(rows.len(), 3, "{got:?}");
        for row in rows {
            assert_eq!(keys(row), ["id", "n"], "a snapshot row of {table}: {row}");
        }
    }
    n.shutdown(Duration::from_secs(5)).await;
}

/// Outbox transport, a partitioned table whose `notify_row` trigger is on
/// the parent. A transaction the snapshot sees inserts into partition
/// `items_old`; then, still before the snapshot, the partition is detached
/// (archiving an old partition). The snapshot sees `items` without that
/// partition, so the insert, which the snapshot saw, must not come after
/// it. The seam knew only the partitions the snapshot listed, and
/// delivered it: the subscriber held a row the table never has again (no
/// delete will ever come). A partition's change now records its
/// partitioned table as its source.
#[tokio::test(flavor = "multi_thread")]
async fn outbox_a_change_of_a_partition_detached_before_the_snapshot_is_not_delivered() {
    let ddl = "create table public.items (id int primary key, n int not null default 0)
                   partition by range (id);
               create table public.items_new partition of public.items for values from (1) to (100);
               create table public.items_old partition of public.items for values from (100) to (200);
               insert into public.items select g from generate_series(1, 3) g;
               create trigger items_changed after insert or update or delete on public.items
                   for each row execute function pgnotifier.notify_row('items');";
    let (url, client, n) = host(Via::Outbox, "bf_detached", ddl).await;
    // A writer of another partition, open as the backfill begins: the
    // backfill waits for it, and the detach commits meanwhile.
    let holder = connect(&url).await;
    holder
        .batch_execute("begin; lock table public.items_new in row exclusive mode")
        .await
        .unwrap();
    let writer = connect(&url).await;
    writer
        .batch_execute("begin; insert into public.items values (150, 1)")
        .await
        .unwrap();
    let (_, id) = load_backfilling(&n, "bf_detached", false).await;
    until_backfill_waits_for_writers(&client, &id).await;
    // Both committed before the snapshot: the snapshot sees the insert,
    // and sees `items` without `items_old`.
    writer.batch_execute("commit").await.unwrap();
    client
        .batch_execute("alter table public.items detach partition public.items_old")
        .await
        .unwrap();
    holder.batch_execute("commit").await.unwrap();
    until_snapshot_taken(&client, &id).await;
    let got = received_until_after(&client).await;
    assert_eq!(ops(&got, "snapshot"), 3, "{got:?}");
    assert_eq!(
        replay(&got),
        table(&client).await,
        "a change the snapshot saw (the insert of 150 into the partition detached before it) \
         came after the snapshot: {got:?}"
    );
    n.shutdown(Duration::from_secs(5)).await;
}

/// An upgrade across migration 15 while a backfill's seam is open: the
/// backfill was taken by a host at schema version 14 (its seam recorded by
/// channel; no `relations`), and a change the snapshot saw, committed
/// after the start, is still ahead of the subscriber's position. Version
/// 14 skipped it (its channel is the backfilled table's, its writer in the
/// snapshot). A seam by table knows no relations of that backfill and no
/// source of that event, and skipped nothing: the row came twice. Such a
/// backfill keeps version 14's seam.
#[tokio::test(flavor = "multi_thread")]
async fn a_backfill_taken_under_version_14_doubles_nothing_after_the_upgrade() {
    use pgnotifier::durable::{reader, schema};
    crate::support::logs::install();
    let via = Via::Outbox;
    let name = via.name("bf_upgrade14");
    let (url, mut client) = fresh_database_on(via.server(), &name).await;
    schema::migrate(&mut client, 14).await.unwrap();
    client
        .batch_execute(&format!(
            "{ITEMS}
             create trigger items_changed after insert or update or delete on public.items
                 for each row execute function pgnotifier.notify_row('items');
             {SUNK}"
        ))
        .await
        .unwrap();
    let id = crate::support::channel("sink_bf_upgrade14");
    // A version 14 host starts the subscriber with a backfill, as its
    // start() did...
    let horizon = reader::end_of_outbox(&client).await.unwrap().stamp;
    let channels = ["items".to_owned(), "work".to_owned()];
    let start = reader::Position {
        stamp: horizon,
        id: (1 << 62) - 1,
    };
    let known = reader::Channels {
        names: &channels,
        through: horizon,
    };
    reader::save_position(&client, &id, start, Some(known))
        .await
        .unwrap();
    client
        .execute(
            "insert into pgnotifier.backfills (subscriber, stamp, tables, channels)
             values ($1, $2, '{public.items}', '{items}')",
            &[&id, &horizon],
        )
        .await
        .unwrap();
    // ...a change commits after the start and before the snapshot...
    client
        .batch_execute("insert into public.items values (200, 1)")
        .await
        .unwrap();
    // ...and it takes the snapshot, as version 14's take_pending did.
    client
        .batch_execute(&format!(
            "begin isolation level repeatable read;
             lock table public.items in access share mode;
             select pg_catalog.pg_current_snapshot();
             insert into pgnotifier.snapshot_rows (subscriber, channel, payload)
             select '{id}', 'items',
                    jsonb_build_object('op', 'snapshot', 'schema', 'public', 'table', 'items',
                                       'new', to_jsonb(t))::text
               from only public.items t;
             update pgnotifier.backfills
                set snapshot = pg_current_snapshot(), taken_at = now(),
                    row_count = (select count(*) from public.items),
                    lsn = pg_current_wal_insert_lsn()
              where subscriber = '{id}';
             commit;"
        ))
        .await
        .unwrap();
    // The host is upgraded (version 15) before the subscriber read on.
    let n = via.notifier(&url, &name);
    n.start().await.unwrap();
    let dir = crate::support::temp_dir("durable-bf-upgrade14");
    let sidecar = format!(
        "tables = [\"items\"]\nstart = \"snapshot\"\n{}",
        recording(false)
    );
    load_sink(&n, &dir, &id, &sidecar).await.unwrap();
    until_sunk(&client, "4 snapshot rows", |g| ops(g, "snapshot") >= 4).await;
    client
        .batch_execute("select pgnotifier.send('work', '\"after\"')")
        .await
        .unwrap();
    until_sunk(&client, "\"after\"", |g| g.iter().any(|e| e == "after")).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = sunk_rows(&client).await;
    assert_eq!(ops(&got, "snapshot"), 4, "{got:?}");
    assert_eq!(
        got.iter()
            .filter(|e| e["op"] == "insert" && e["new"]["id"] == 200)
            .count(),
        0,
        "row 200 came in the snapshot (taken under version 14) and again as a change: {got:?}"
    );
    n.shutdown(Duration::from_secs(5)).await;
}

/// WAL transport, the publication narrowed by a row filter, as an
/// operator may (a row filter may name only replica identity columns,
/// here `id < 3`). Changes of a row outside the filter are never relayed,
/// so the snapshot must not copy it either: row 3 came as a snapshot row,
/// and nothing about it ever after (its delete is not relayed).
#[tokio::test(flavor = "multi_thread")]
async fn wal_a_snapshot_row_outside_the_publications_row_filter_is_not_delivered() {
    let (_url, client, n) = wal_host("bf_rowfilter", ITEMS).await;
    client
        .batch_execute(
            "alter publication pgn_bf_rowfilter_wal add table public.items where (id < 3)",
        )
        .await
        .unwrap();
    let (_, id) = load_backfilling(&n, "bf_rowfilter", false).await;
    feeding(&client, &id).await;
    until_snapshot_taken(&client, &id).await;
    client
        .batch_execute(
            "delete from public.items where id = 3;
             select pgnotifier.send('work', '\"after\"');",
        )
        .await
        .unwrap();
    until_sunk(&client, "\"after\"", |g| g.iter().any(|e| e == "after")).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = sunk_rows(&client).await;
    let got: Vec<Value> = got.into_iter().filter(|e| *e != "after").collect();
    assert_eq!(
        replay(&got),
        table(&client).await,
        "row 3, outside the publication's row filter (id < 3), came as a snapshot row and \
         its delete never came: {got:?}"
    );
    n.shutdown(Duration::from_secs(5)).await;
}

/// The same hole without partitions: a table swapped for a rebuilt copy
/// (`items` renamed away and `items_rebuilt`, with the same trigger and
/// channel, renamed to `items`: the usual way to rebuild a table without
/// downtime) in the transaction that also inserted row 500 into the old
/// table, committed while the backfill waits for that writer, so before
/// the snapshot. The snapshot is the new `items`, without row 500; the
/// insert, which the snapshot saw, must not come after it. The seam knew
/// only the table `items` named at the snapshot, not the one it named as
/// the backfill started, and delivered it.
#[tokio::test(flavor = "multi_thread")]
async fn outbox_a_change_of_a_table_swapped_out_before_the_snapshot_is_not_delivered() {
    let ddl = "create table public.items (id int primary key, n int not null default 0);
               insert into public.items select g from generate_series(1, 3) g;
               create trigger items_changed after insert or update or delete on public.items
                   for each row execute function pgnotifier.notify_row('items');
               create table public.items_rebuilt (id int primary key, n int not null default 0);
               insert into public.items_rebuilt select g from generate_series(1, 3) g;
               create trigger items_changed after insert or update or delete on public.items_rebuilt
                   for each row execute function pgnotifier.notify_row('items');";
    let (url, client, n) = host(Via::Outbox, "bf_swapped", ddl).await;
    let writer = connect(&url).await;
    writer
        .batch_execute("begin; insert into public.items values (500, 1)")
        .await
        .unwrap();
    let (_, id) = load_backfilling(&n, "bf_swapped", false).await;
    until_backfill_waits_for_writers(&client, &id).await;
    writer
        .batch_execute(
            "alter table public.items rename to items_old;
             alter table public.items_rebuilt rename to items;
             commit;",
        )
        .await
        .unwrap();
    until_snapshot_taken(&client, &id).await;
    let got = received_until_after(&client).await;
    assert_eq!(ops(&got, "snapshot"), 3, "{got:?}");
    assert_eq!(
        replay(&got),
        table(&client).await,
        "a change the snapshot saw (the insert of 500 into the table swapped out before it) \
         came after the snapshot: {got:?}"
    );
    n.shutdown(Duration::from_secs(5)).await;
}

/// A sidecar that names a partitioned table and one of its partitions
/// (`tables = ["items", "items_low"]`) on the outbox transport, where
/// both follow the one trigger (the partition's is the parent's clone, on
/// channel `items`): the copy reads `items` (every partition) and then
/// `ONLY items_low`, so each row of `items_low` comes twice on channel
/// `items` (once labelled `items`, once `items_low`), where its changes
/// come once. A partition named with its partitioned table is copied
/// with it.
#[tokio::test(flavor = "multi_thread")]
async fn outbox_a_partition_named_with_its_table_is_snapshotted_once() {
    let ddl = "create table public.items (id int primary key, n int not null default 0)
                   partition by range (id);
               create table public.items_low partition of public.items for values from (1) to (100);
               create table public.items_high partition of public.items for values from (100) to (200);
               insert into public.items values (1, 0), (2, 0), (150, 0);
               create trigger items_changed after insert or update or delete on public.items
                   for each row execute function pgnotifier.notify_row('items');";
    let (_url, client, n) = host(Via::Outbox, "bf_part_twice", ddl).await;
    let dir = crate::support::temp_dir("durable-bf-part-twice");
    let id = crate::support::channel("sink_bf_part_twice");
    let sidecar = format!(
        "tables = [\"items\", \"items_low\"]\nstart = \"snapshot\"\n{}",
        recording(false)
    );
    load_sink(&n, &dir, &id, &sidecar).await.unwrap();
    feeding(&client, &id).await;
    until_sunk(&client, "3 snapshot rows", |g| ops(g, "snapshot") >= 3).await;
    client
        .batch_execute("select pgnotifier.send('work', '\"after\"')")
        .await
        .unwrap();
    until_sunk(&client, "\"after\"", |g| g.iter().any(|e| e == "after")).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = sunk_rows(&client).await;
    assert_eq!(
        ops(&got, "snapshot"),
        3,
        "the table has 3 rows; each once: {got:?}"
    );
    n.shutdown(Duration::from_secs(5)).await;
}

/// A partition named alone: its changes come as its partitioned table's,
/// so the seam could not tell them from the other partitions'. The
/// backfill is refused, naming the partition and the table to name; the
/// subscriber is not fed a partial snapshot.
#[tokio::test(flavor = "multi_thread")]
async fn outbox_a_partition_named_alone_is_refused_naming_its_table() {
    let ddl = "create table public.items (id int primary key, n int not null default 0)
                   partition by range (id);
               create table public.items_low partition of public.items for values from (1) to (100);
               insert into public.items values (1, 0), (2, 0);
               create trigger items_changed after insert or update or delete on public.items
                   for each row execute function pgnotifier.notify_row('items');";
    let (_url, client, n) = host(Via::Outbox, "bf_part_alone", ddl).await;
    let dir = crate::support::temp_dir("durable-bf-part-alone");
    let id = crate::support::channel("sink_bf_part_alone");
    let sidecar = format!(
        "tables = [\"items_low\"]\nstart = \"snapshot\"\n{}",
        recording(false)
    );
    load_sink(&n, &dir, &id, &sidecar).await.unwrap();
    let named = || {
        crate::support::logs::of(&id).iter().any(|l| {
            l.message.contains("public.items_low") && l.message.contains("a partition of items")
        })
    };
    assert!(
        crate::support::eventually(SOON, named).await,
        "no error naming the partition and its table: {:?}",
        crate::support::logs::of(&id)
    );
    assert_eq!(sunk_rows(&client).await, Vec::<Value>::new());
    n.shutdown(Duration::from_secs(5)).await;
}

/// Outbox transport, a partitioned table: its trigger's changes name the
/// partition they fired in (`TG_TABLE_NAME`), so its snapshot rows name
/// the same: a subscriber that keys rows by table and id finds a row's
/// later change where its snapshot row put it.
#[tokio::test(flavor = "multi_thread")]
async fn outbox_a_partitions_snapshot_row_names_the_table_its_changes_name() {
    let ddl = "create table public.items (id int primary key, n int not null default 0)
                   partition by range (id);
               create table public.items_low partition of public.items for values from (1) to (100);
               create table public.items_high partition of public.items for values from (100) to (200);
               insert into public.items values (1, 0), (150, 0);
               create trigger items_changed after insert or update or delete on public.items
                   for each row execute function pgnotifier.notify_row('items');";
    let (_url, client, n) = host(Via::Outbox, "bf_part_names", ddl).await;
    let (_, id) = load_backfilling(&n, "bf_part_names", false).await;
    feeding(&client, &id).await;
    until_sunk(&client, "2 snapshot rows", |g| ops(g, "snapshot") >= 2).await;
    client
        .batch_execute("update public.items set n = 1")
        .await
        .unwrap();
    let got = until_sunk(&client, "2 updates", |g| ops(g, "update") >= 2).await;
    for key in [1, 150] {
        let table_of = |op: &str| {
            (got.iter())
                .find(|e| e["op"] == op && e["new"]["id"] == key)
                .map(|e| e["table"].clone())
        };
        assert_eq!(
            table_of("snapshot"),
            table_of("update"),
            "row {key}: {got:?}"
        );
    }
    n.shutdown(Duration::from_secs(5)).await;
}
