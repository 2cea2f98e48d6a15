//! Backfill: a new subscriber that asks for `start = "snapshot"` receives
//! its tables' current rows, from one consistent snapshot, as `"op":
//! "snapshot"` events, then every change committed after that snapshot.
//! No change is lost or doubled at the seam, whatever writers do meanwhile.
//!
//! Positions alone cannot make the seam exact: a change may commit after
//! the snapshot is taken and before the rows are written, and it belongs
//! after them. So the seam is drawn by transaction, not by position:
//!
//! - **The start.** Under the pruner's lock, the subscriber's position is
//!   written after every event stamped up to the horizon, where every
//!   transaction so stamped has ended (the reader's rule), with a backfill
//!   that is not taken yet. Everything after that position is kept for it.
//! - **The snapshot.** First, every transaction that was writing when the
//!   backfill began is waited for: one that wrote a table before the table
//!   was published (or had its trigger) has changes nothing relays, so its
//!   rows must be in the snapshot. Then, in one `REPEATABLE READ`
//!   transaction, the tables locked against a rewrite before its snapshot
//!   is taken: the tables' rows go to `pgnotifier.snapshot_rows`, at ids
//!   between the start and the next stamp, and the backfill records the
//!   snapshot. Every transaction stamped up to the horizon is in it. A
//!   crash before its commit leaves the backfill not taken, and the next
//!   feeder takes it, with the tables its subscriber names then.
//! - **The seam.** `read_batch` hands the rows out first, then the events
//!   after the horizon, skipping each change of a backfilled table, on its
//!   channel, whose writer the snapshot saw (`pg_visible_in_snapshot`): it
//!   is in the rows already. Every other event on that channel (another
//!   table's change, a send) passes. A relayed event knows its writer from
//!   pgoutput's Begin; an event the outbox transport wrote is its writer's
//!   own row. Each row change knows its table (`outbox.source`), a
//!   partition's as its partitioned table's; a backfilled table is the one
//!   its name meant as the backfill started and as the snapshot was taken
//!   (a writer may swap one for another in between).
//! - **What is copied.** A relayed change has the rows and columns the
//!   publication publishes (not a generated column, nor one outside a
//!   column list, nor a row outside its row filter), and so do the rows the
//!   WAL transport copies; a trigger's change has them all.
//!   Once every event the snapshot saw is behind the position, the seam
//!   and the rows are gone.

use super::reader::{self, Channels, Position, ReadError};
use super::rows::TableName;
use super::schema::PRUNE_LOCK;
use crate::pg::describe;
use std::time::{Duration, Instant};
use tokio_postgres::{Client, IsolationLevel};

/// The tables a new subscriber starts with, each with the channel its rows
/// and changes arrive on (`schema.table`, or its trigger's channel).
pub type Tables = std::sync::Arc<[(TableName, String)]>;

/// Where a backfilling subscriber starts: after every event of the
/// horizon's stamp (whose ids stay below 2^62), before the snapshot's rows
/// (2^62 and up, as `pgnotifier.snapshot_rows` numbers them).
const BEFORE_SNAPSHOT_ROWS: i64 = (1 << 62) - 1;
/// How often the wait for earlier writers looks again, and says whom it
/// waits for.
const WRITERS_POLL: Duration = Duration::from_millis(50);
const WRITERS_TELL: Duration = Duration::from_secs(10);

/// Why a backfill could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum BackfillError {
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error("backfilling {table} for subscriber {subscriber:?}: {}", describe(.source))]
    Table {
        subscriber: String,
        table: String,
        source: tokio_postgres::Error,
    },
    #[error("backfilling {table} for subscriber {subscriber:?}: it is a partition of {root}, whose changes its own come as: name {root} in `tables`")]
    Partition {
        subscriber: String,
        table: String,
        root: String,
    },
    #[error("backfilling for subscriber {subscriber:?}: {}", describe(.source))]
    Database {
        subscriber: String,
        source: tokio_postgres::Error,
    },
}

/// Start `subscriber` on `channels` with a backfill of `tables`, each with
/// the channel its rows and changes arrive on, unless it has a position;
/// where it is now. The backfill is recorded, not taken: [`take_pending`]
/// takes it.
pub async fn start(
    client: &mut Client,
    subscriber: &str,
    channels: &[String],
    tables: &[(TableName, String)],
) -> Result<Position, ReadError> {
    let tx = client.transaction().await?;
    tx.batch_execute(PRUNE_LOCK).await?;
    let horizon = reader::end_of_outbox(&tx).await?.stamp;
    let start = Position {
        stamp: horizon,
        id: BEFORE_SNAPSHOT_ROWS,
    };
    if let Some(at) = reader::position(&tx, subscriber).await? {
        tx.commit().await?;
        return Ok(at);
    }
    let known = Channels {
        names: channels,
        through: horizon,
    };
    reader::save_position(&tx, subscriber, start, Some(known)).await?;
    // An earlier backfill's rows, if its position was removed meanwhile.
    tx.execute(
        "DELETE FROM pgnotifier.snapshot_rows WHERE subscriber = $1",
        &[&subscriber],
    )
    .await?;
    let names: Vec<String> = tables.iter().map(|(table, _)| table.to_string()).collect();
    let table_channels: Vec<&String> = tables.iter().map(|(_, channel)| channel).collect();
    // The tables as their names mean them now: a writer open meanwhile may
    // swap one for another before the snapshot, and its changes to this
    // one are in the snapshot too.
    let quoted: Vec<String> = tables.iter().map(|(table, _)| table.quoted()).collect();
    tx.execute(
        "INSERT INTO pgnotifier.backfills
                (subscriber, stamp, tables, channels, relations, relation_channels)
         SELECT $1, $2, $3, $4, coalesce(array_agg(t.relation), '{}'), coalesce(array_agg(t.channel), '{}')
           FROM (SELECT pg_catalog.to_regclass(q.name)::oid AS relation, q.channel
                   FROM unnest($5::text[], $4::text[]) AS q(name, channel)) t
          WHERE t.relation IS NOT NULL
         ON CONFLICT (subscriber) DO UPDATE
             SET (stamp, tables, channels, relations, relation_channels, snapshot, taken_at,
                  row_count, lsn, end_stamp, salt)
               = (excluded.stamp, excluded.tables, excluded.channels, excluded.relations,
                  excluded.relation_channels, NULL, NULL, NULL, NULL, NULL,
                  pg_catalog.gen_random_uuid())",
        &[&subscriber, &horizon, &names, &table_channels, &quoted],
    )
    .await?;
    tx.commit().await?;
    Ok(start)
}

/// Drop what a backfill of `subscriber` left: its seam and its rows. A
/// subscriber that starts afresh without one must not inherit them.
pub async fn forget(client: &Client, subscriber: &str) -> Result<(), ReadError> {
    client
        .execute(
            "WITH rows AS (DELETE FROM pgnotifier.snapshot_rows WHERE subscriber = $1)
             DELETE FROM pgnotifier.backfills WHERE subscriber = $1",
            &[&subscriber],
        )
        .await?;
    Ok(())
}

/// A table as a backfill copies it (`$1`, quoted): its kind; the
/// partitioned table it is a partition of, if any, and whether that is
/// among the tables named (`$3`); and, when publication
/// `$2` relays its changes (NULL: its trigger does), the columns those
/// changes lack and the rows they leave out. A publication's column list
/// leaves columns out, and a generated column is published only where
/// PostgreSQL 18's `publish_generated_columns` says so (read as JSON:
/// older servers have no such column); its row filter leaves rows out.
const DESCRIBE_TABLE: &str = "
SELECT c.relkind::text AS kind,
       CASE WHEN c.relispartition
            THEN pg_catalog.pg_partition_root(c.oid)::regclass::text END AS partition_of,
       pg_catalog.pg_partition_root(c.oid) IN (SELECT pg_catalog.to_regclass(t)::oid
                                                 FROM unnest($3::text[]) t) AS root_named,
       ARRAY(SELECT a.attname::text FROM pg_catalog.pg_attribute a
              WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND $2::text IS NOT NULL
                AND (EXISTS (SELECT FROM pg_catalog.pg_publication_tables t
                              WHERE t.pubname = $2::text AND t.schemaname = n.nspname
                                AND t.tablename = c.relname AND NOT a.attname = ANY (t.attnames))
                     OR a.attgenerated <> '' AND NOT (a.attgenerated = 's' AND EXISTS (
                            SELECT FROM pg_catalog.pg_publication p
                             WHERE p.pubname = $2::text
                               AND pg_catalog.to_jsonb(p) ->> 'pubgencols' = 's')))) AS unpublished,
       (SELECT t.rowfilter FROM pg_catalog.pg_publication_tables t
         WHERE t.pubname = $2::text AND t.schemaname = n.nspname AND t.tablename = c.relname)
           AS row_filter
  FROM pg_catalog.pg_class c
  JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
 WHERE c.oid = $1::text::regclass";

/// Take `subscriber`'s backfill if it is recorded and not taken yet: the
/// rows of `tables` (what its sidecar names now), each within
/// `max_payload_bytes` as `notify_row` sends it, with the columns that
/// `publication` publishes if their changes come from one (`None`: from
/// their triggers, every column); how many rows, if there was one to take.
/// With no tables (the sidecar no longer asks for a snapshot), the
/// backfill is given up, and the subscriber starts with what is sent from
/// its start on.
pub async fn take_pending(
    client: &mut Client,
    subscriber: &str,
    tables: &[(TableName, String)],
    publication: Option<&str>,
    max_payload_bytes: u32,
) -> Result<Option<u64>, BackfillError> {
    let database = |source| BackfillError::Database {
        subscriber: subscriber.to_owned(),
        source,
    };
    let about = |table: &TableName| {
        let table = table.to_string();
        move |source| BackfillError::Table {
            subscriber: subscriber.to_owned(),
            table,
            source,
        }
    };
    let pending = client
        .query_opt(
            "SELECT stamp FROM pgnotifier.backfills WHERE subscriber = $1 AND snapshot IS NULL",
            &[&subscriber],
        )
        .await
        .map_err(database)?;
    let Some(pending) = pending else {
        return Ok(None);
    };
    if tables.is_empty() {
        let stamp: i64 = reader::column(&pending, "stamp")?;
        let tx = client.transaction().await.map_err(database)?;
        tx.execute(
            "DELETE FROM pgnotifier.backfills WHERE subscriber = $1",
            &[&subscriber],
        )
        .await
        .map_err(database)?;
        reader::save_position(&tx, subscriber, Position::after_stamp(stamp), None).await?;
        tx.commit().await.map_err(database)?;
        tracing::info!(
            subscriber,
            "backfill given up: the sidecar no longer asks for start = \"snapshot\""
        );
        return Ok(None);
    }
    let quoted: Vec<String> = tables.iter().map(|(table, _)| table.quoted()).collect();
    (wait_for_earlier_writers(client, subscriber, &quoted).await).map_err(|source| {
        BackfillError::Table {
            subscriber: subscriber.to_owned(),
            table: tables
                .iter()
                .map(|(t, _)| t.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            source,
        }
    })?;
    let max_bytes = i32::try_from(max_payload_bytes).unwrap_or(i32::MAX);
    let tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .start()
        .await
        .map_err(database)?;
    // Locked before the snapshot is taken (LOCK takes none): a rewrite
    // (ALTER TABLE ... TYPE, TRUNCATE) that committed after the snapshot
    // would leave the snapshot an empty table.
    for (table, _) in tables {
        tx.batch_execute(&format!(
            "LOCK TABLE {} IN ACCESS SHARE MODE",
            table.quoted()
        ))
        .await
        .map_err(about(table))?;
    }
    // The first statement that reads takes the transaction's snapshot.
    tx.batch_execute("SELECT pg_catalog.pg_current_snapshot()")
        .await
        .map_err(database)?;
    let mut rows = 0;
    let named: Vec<String> = tables.iter().map(|(table, _)| table.quoted()).collect();
    for (table, channel) in tables {
        let described = tx
            .query_one(DESCRIBE_TABLE, &[&table.quoted(), &publication, &named])
            .await
            .map_err(about(table))?;
        let kind: String = described.try_get("kind").map_err(about(table))?;
        let partition_of: Option<String> =
            described.try_get("partition_of").map_err(about(table))?;
        let unpublished: Vec<String> = described.try_get("unpublished").map_err(about(table))?;
        let row_filter: Option<String> = described.try_get("row_filter").map_err(about(table))?;
        // A partition's changes come as its partitioned table's: with that
        // table named, its rows are copied with it; alone, its changes
        // cannot be told from the other partitions'.
        if let Some(root) = partition_of {
            if described.try_get("root_named").map_err(about(table))? {
                continue;
            }
            return Err(BackfillError::Partition {
                subscriber: subscriber.to_owned(),
                table: table.to_string(),
                root,
            });
        }
        // A plain table's own rows: an inheritance child's changes come
        // on the child's channel, not the table's. A partitioned table's
        // rows are its partitions', whose changes come as the table's.
        let only = if kind == "p" { "" } else { "ONLY " };
        // The publication's row filter, as PostgreSQL wrote it: the rows
        // whose changes it relays.
        let filter = row_filter.map_or(String::new(), |f| format!(" WHERE {f}"));
        // A trigger's change names the partition it fired in, so its row
        // does too; a published change names the partitioned table.
        let partition = if kind == "p" && publication.is_none() {
            " LEFT JOIN (SELECT c.oid AS pgn_oid, n.nspname::text AS pgn_schema, c.relname::text AS pgn_table
                           FROM pg_catalog.pg_class c
                           JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace) p
                     ON p.pgn_oid = t.tableoid"
        } else {
            " LEFT JOIN (SELECT NULL::text AS pgn_schema, NULL::text AS pgn_table) p ON false"
        };
        // Rendered in SQL; only a row over the cap goes through
        // `row_change` (its key columns), which costs three times as much.
        let copy = format!(
            "INSERT INTO pgnotifier.snapshot_rows (subscriber, channel, payload)
             SELECT $1, $2, CASE WHEN pg_catalog.octet_length(x.payload) <= $5 THEN x.payload
                                 ELSE pgnotifier.row_change(r.raw, $5, false) END
               FROM (SELECT pg_catalog.jsonb_build_object(
                                'op', 'snapshot', 'schema', coalesce(p.pgn_schema, $3::text),
                                'table', coalesce(p.pgn_table, $4::text),
                                'new', pg_catalog.to_jsonb(t) OPERATOR(pg_catalog.-) $6::text[]) AS raw
                       FROM {only}{} t{partition}{filter}) r
              CROSS JOIN LATERAL (SELECT r.raw::text AS payload) x",
            table.quoted()
        );
        rows += tx
            .execute(
                &copy,
                &[
                    &subscriber,
                    channel,
                    &table.schema,
                    &table.table,
                    &max_bytes,
                    &unpublished,
                ],
            )
            .await
            .map_err(about(table))?;
    }
    let names: Vec<String> = tables.iter().map(|(table, _)| table.to_string()).collect();
    let channels: Vec<&String> = tables.iter().map(|(_, channel)| channel).collect();
    tx.execute(
        "UPDATE pgnotifier.backfills
            SET snapshot = pg_catalog.pg_current_snapshot(), taken_at = pg_catalog.now(),
                row_count = $2, lsn = pg_catalog.pg_current_wal_insert_lsn(),
                tables = $3, channels = $4,
                -- NULL: started before version 15, its seam by channel.
                relations = CASE WHEN relations IS NOT NULL THEN relations || ARRAY(
                                SELECT pg_catalog.to_regclass(n)::oid FROM unnest($5::text[]) n) END,
                relation_channels = CASE WHEN relations IS NOT NULL THEN relation_channels || $4 END
          WHERE subscriber = $1",
        &[&subscriber, &(rows as i64), &names, &channels, &named],
    )
    .await
    .map_err(database)?;
    // A message past `lsn` for the relay, which it reads and confirms even
    // in a database where nothing else is written: the seam ends then,
    // not at the next event.
    tx.batch_execute("SELECT pg_catalog.pg_logical_emit_message(true, 'pgnotifier', 'backfill')")
        .await
        .map_err(database)?;
    tx.commit().await.map_err(database)?;
    Ok(Some(rows))
}

/// Wait until every transaction that was writing `tables` (or their
/// partitions) when this was called has ended: one that wrote a table
/// before it was published, or before its trigger was made, sends none of
/// those changes, so they must be in the snapshot. A writer holds its
/// lock on the table until it ends; looking at the locks blocks no one,
/// where taking a lock that waits for writers would queue new ones behind
/// it. Says now and then whom it waits for.
async fn wait_for_earlier_writers(
    client: &Client,
    subscriber: &str,
    tables: &[String],
) -> Result<(), tokio_postgres::Error> {
    // The writers as the wait begins, by their transaction's virtual id:
    // pg_locks shows it to every role (pg_stat_activity hides another
    // role's transaction start), and a later transaction of the same
    // backend has another.
    let writers = "FROM pg_catalog.pg_locks l
         WHERE l.locktype = 'relation' AND l.granted
           AND l.mode IN ('RowExclusiveLock', 'ShareRowExclusiveLock', 'ExclusiveLock',
                          'AccessExclusiveLock')
           AND l.database = (SELECT d.oid FROM pg_catalog.pg_database d
                              WHERE d.datname = pg_catalog.current_database())
           AND l.relation IN (
               SELECT t.name::regclass FROM pg_catalog.unnest($1::text[]) t(name)
               UNION ALL
               SELECT p.relid FROM pg_catalog.unnest($1::text[]) t(name),
                      pg_catalog.pg_partition_tree(t.name::regclass) p)
           AND l.pid IS DISTINCT FROM pg_catalog.pg_backend_pid()";
    let first: Vec<String> = client
        .query_one(
            &format!(
                "SELECT coalesce(array_agg(DISTINCT l.virtualtransaction), '{{}}') AS writers {writers}"
            ),
            &[&tables],
        )
        .await?
        .try_get("writers")?;
    if first.is_empty() {
        return Ok(());
    }
    let still = format!(
        "SELECT string_agg(DISTINCT coalesce('pid ' || l.pid, 'a prepared transaction'), ', ') AS who
           {writers} AND l.virtualtransaction = ANY ($2)"
    );
    let mut told = Instant::now();
    loop {
        let row = client.query_one(&still, &[&tables, &first]).await?;
        let Some(who) = row.try_get::<_, Option<String>>("who")? else {
            return Ok(());
        };
        if told.elapsed() >= WRITERS_TELL {
            tracing::warn!(subscriber, writers = %who, "backfill waits for transactions that were writing its tables when it began, so that their rows are in its snapshot");
            told = Instant::now();
        }
        tokio::time::sleep(WRITERS_POLL).await;
    }
}
