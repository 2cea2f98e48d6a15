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
//!   written at `(horizon, minimum)`, where every transaction stamped up to
//!   the horizon has ended (the reader's rule), with a backfill that is not
//!   taken yet. Everything after that position is kept for it.
//! - **The snapshot.** Then, in one `REPEATABLE READ` transaction, whose
//!   snapshot is taken after the horizon was known: the tables' rows go to
//!   `pgnotifier.snapshot_rows` at ids below zero, and the backfill records
//!   the snapshot. Every transaction stamped up to the horizon is in it. A
//!   crash before its commit leaves the backfill not taken, and the next
//!   feeder takes it.
//! - **The seam.** `read_batch` hands the rows out first, then the events
//!   after the horizon, skipping each event on a backfilled channel whose
//!   writer the snapshot saw (`pg_visible_in_snapshot`): its change is in
//!   the rows already. A relayed event knows its writer from pgoutput's
//!   Begin; an event the outbox transport wrote is its writer's own row.
//!   Once every event the snapshot saw is behind the position, the seam
//!   and the rows are gone.

use super::reader::{self, Channels, Position, ReadError};
use super::rows::TableName;
use super::schema::PRUNE_LOCK;
use crate::pg::describe;
use tokio_postgres::{Client, IsolationLevel};

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
        id: i64::MIN,
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
    let names: Vec<String> = tables.iter().map(|(table, _)| table.to_string()).collect();
    let table_channels: Vec<&String> = tables.iter().map(|(_, channel)| channel).collect();
    tx.execute(
        "INSERT INTO pgnotifier.backfills (subscriber, stamp, tables, channels)
              VALUES ($1, $2, $3, $4)
         ON CONFLICT (subscriber) DO UPDATE
             SET (stamp, tables, channels, snapshot, taken_at, row_count, lsn, end_stamp, salt)
               = (excluded.stamp, excluded.tables, excluded.channels, NULL, NULL, NULL, NULL,
                  NULL, pg_catalog.gen_random_uuid())",
        &[&subscriber, &horizon, &names, &table_channels],
    )
    .await?;
    tx.commit().await?;
    Ok(start)
}

/// Take `subscriber`'s backfill if it is recorded and not taken yet: the
/// tables' rows, each within `max_payload_bytes` as `notify_row` sends
/// it; how many rows, if there was one to take.
pub async fn take_pending(
    client: &mut Client,
    subscriber: &str,
    max_payload_bytes: u32,
) -> Result<Option<u64>, BackfillError> {
    let database = |source| BackfillError::Database {
        subscriber: subscriber.to_owned(),
        source,
    };
    let pending = client
        .query_opt(
            "SELECT tables, channels FROM pgnotifier.backfills
              WHERE subscriber = $1 AND snapshot IS NULL",
            &[&subscriber],
        )
        .await
        .map_err(database)?;
    let Some(pending) = pending else {
        return Ok(None);
    };
    let tables: Vec<String> = reader::column(&pending, "tables")?;
    let channels: Vec<String> = reader::column(&pending, "channels")?;
    let max_bytes = i32::try_from(max_payload_bytes).unwrap_or(i32::MAX);
    let tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .start()
        .await
        .map_err(database)?;
    // The first statement takes the transaction's snapshot.
    tx.batch_execute("SELECT pg_catalog.pg_current_snapshot()")
        .await
        .map_err(database)?;
    let mut rows = 0;
    for (name, channel) in tables.iter().zip(&channels) {
        let table = TableName::parse(name).map_err(|why| {
            ReadError::Malformed(format!("pgnotifier.backfills names {name:?}: {why}"))
        })?;
        // Rendered in SQL; only a row over the cap goes through
        // `row_change` (its key columns), which costs three times as much.
        let copy = format!(
            "INSERT INTO pgnotifier.snapshot_rows (subscriber, channel, payload)
             SELECT $1, $2, CASE WHEN pg_catalog.octet_length(x.payload) <= $5 THEN x.payload
                                 ELSE pgnotifier.row_change(r.raw, $5, false) END
               FROM (SELECT pg_catalog.jsonb_build_object('op', 'snapshot', 'schema', $3::text,
                                'table', $4::text, 'new', pg_catalog.to_jsonb(t)) AS raw
                       FROM {} t) r
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
                ],
            )
            .await
            .map_err(|source| BackfillError::Table {
                subscriber: subscriber.to_owned(),
                table: name.clone(),
                source,
            })?;
    }
    tx.execute(
        "UPDATE pgnotifier.backfills
            SET snapshot = pg_catalog.pg_current_snapshot(), taken_at = pg_catalog.now(),
                row_count = $2, lsn = pg_catalog.pg_current_wal_insert_lsn()
          WHERE subscriber = $1",
        &[&subscriber, &(rows as i64)],
    )
    .await
    .map_err(database)?;
    tx.commit().await.map_err(database)?;
    Ok(Some(rows))
}
