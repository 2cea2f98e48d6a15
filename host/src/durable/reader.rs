//! Reading the outbox in order, never skipping a committed event and never
//! returning an aborted one.
//!
//! Ids are assigned at insert, but transactions commit in another order, so
//! "the highest id seen" is no position: a transaction that inserted id 5
//! may commit after the one that inserted id 6 was read. Instead:
//!
//! - Every event carries its transaction's id (`txid`, an `xid8`, which
//!   never wraps). A position is the pair `(txid, id)` of the last event
//!   read, and events are read in `(txid, id)` order.
//! - A read takes only events whose `txid` is below the snapshot's `xmin`,
//!   the oldest transaction still running (`pg_snapshot_xmin`). Every
//!   transaction below `xmin` has ended, so its events are all visible if it
//!   committed, and none are if it aborted: nothing below `xmin` can still
//!   appear or vanish.
//! - Every transaction that has not ended has a `txid` at or above `xmin`,
//!   and one that has no `txid` yet will get a larger one. So every event
//!   that becomes readable later sorts after every event readable now: a
//!   position only moves forward, and nothing behind it is ever skipped.
//! - The `xmin` and the rows come from the same statement's snapshot, so the
//!   two agree.
//!
//! Events of one transaction come in the order they were sent, and
//! transactions in the order of their ids, which is the order they first
//! wrote. A long transaction holds back the events of every transaction
//! after it until it ends; that is the price of never skipping one.

use crate::pg::describe;

/// Where a reader is: the last event it has read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    pub txid: u64,
    pub id: i64,
}

/// One event from the outbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub id: i64,
    pub txid: u64,
    pub channel: String,
    pub payload: String,
    /// When `pgnotifier.send` ran, as PostgreSQL's clock saw it.
    pub sent_at: std::time::SystemTime,
    /// The backend pid of the sender.
    pub pid: i32,
}

impl Event {
    pub fn position(&self) -> Position {
        Position {
            txid: self.txid,
            id: self.id,
        }
    }
}

/// Why the outbox could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("reading the outbox: {}", describe(.0))]
    Database(#[from] tokio_postgres::Error),
    #[error("reading the outbox: txid {0:?} is not a number")]
    BadTxid(String),
}

const NEXT: &str = "
SELECT id, txid::text, channel, payload, sent_at, pid
  FROM pgnotifier.outbox
 WHERE (txid, id) > ($1::text::xid8, $2)
   AND txid < pg_catalog.pg_snapshot_xmin(pg_catalog.pg_current_snapshot())
   AND channel = ANY($3)
 ORDER BY txid, id
 LIMIT $4";

/// The next events after `after` on any of `channels`, at most `limit`, in order.
pub async fn next_events(
    client: &tokio_postgres::Client,
    after: Position,
    channels: &[String],
    limit: i64,
) -> Result<Vec<Event>, ReadError> {
    let txid = after.txid.to_string();
    let rows = client
        .query(NEXT, &[&txid, &after.id, &channels, &limit.max(1)])
        .await?;
    rows.iter()
        .map(|row| {
            Ok(Event {
                id: row.get(0),
                txid: parse_txid(row.get(1))?,
                channel: row.get(2),
                payload: row.get(3),
                sent_at: row.get(4),
                pid: row.get(5),
            })
        })
        .collect()
}

/// Where `subscriber` is, or `None` if it has no position yet.
pub async fn position(
    client: &tokio_postgres::Client,
    subscriber: &str,
) -> Result<Option<Position>, ReadError> {
    let row = client
        .query_opt(
            "SELECT txid::text, id FROM pgnotifier.positions WHERE subscriber = $1",
            &[&subscriber],
        )
        .await?;
    row.map(|row| position_of(&row)).transpose()
}

/// Record that `subscriber` has handled everything up to `at` on its
/// `channels` (`None`: keep those recorded; none recorded means all, which
/// pruning reads as needing every channel). A position never moves back: an
/// older one (from a host that lost a race) is ignored.
pub async fn save_position(
    client: &tokio_postgres::Client,
    subscriber: &str,
    at: Position,
    channels: Option<&[String]>,
) -> Result<(), ReadError> {
    let txid = at.txid.to_string();
    client
        .execute(
            "INSERT INTO pgnotifier.positions AS p (subscriber, txid, id, channels, updated_at)
                  VALUES ($1, $2::text::xid8, $3, $4, pg_catalog.now())
             ON CONFLICT (subscriber) DO UPDATE
                 SET (txid, id) = (SELECT * FROM (VALUES (p.txid, p.id), (excluded.txid, excluded.id)) v
                                   ORDER BY 1 DESC, 2 DESC LIMIT 1),
                     updated_at = excluded.updated_at,
                     channels = coalesce(excluded.channels, p.channels)
               WHERE (p.txid, p.id) < (excluded.txid, excluded.id)
                  OR excluded.channels IS DISTINCT FROM p.channels AND excluded.channels IS NOT NULL",
            &[&subscriber, &txid, &at.id, &channels],
        )
        .await?;
    Ok(())
}

/// How many events on `channels` come after `after`, readable or not yet,
/// and how long ago the oldest of them was sent (zero when none).
pub async fn lag(
    client: &tokio_postgres::Client,
    after: Position,
    channels: &[String],
) -> Result<(u64, std::time::Duration), ReadError> {
    let txid = after.txid.to_string();
    let row = client
        .query_one(
            "SELECT count(*), coalesce(extract(epoch FROM pg_catalog.now() - min(sent_at)) * 1000, 0)::bigint
               FROM pgnotifier.outbox
              WHERE (txid, id) > ($1::text::xid8, $2) AND channel = ANY ($3)",
            &[&txid, &after.id, &channels],
        )
        .await?;
    let millis = row.get::<_, i64>(1).max(0).unsigned_abs();
    Ok((
        row.get::<_, i64>(0).unsigned_abs(),
        std::time::Duration::from_millis(millis),
    ))
}

/// The position after every event that is readable now: where a new
/// subscriber starts, so it gets what is sent from now on, and every event
/// of a transaction still running.
pub async fn end_of_outbox(client: &tokio_postgres::Client) -> Result<Position, ReadError> {
    newest(
        client,
        "WHERE txid < pg_catalog.pg_snapshot_xmin(pg_catalog.pg_current_snapshot())",
    )
    .await
}

/// The position of the newest event committed now, readable or not yet
/// (a transaction still running below it holds it back).
pub async fn last_committed(client: &tokio_postgres::Client) -> Result<Position, ReadError> {
    newest(client, "").await
}

/// The position of the newest event that `filter` keeps (none: the start).
async fn newest(client: &tokio_postgres::Client, filter: &str) -> Result<Position, ReadError> {
    let sql = format!(
        "SELECT txid::text, id FROM pgnotifier.outbox {filter} ORDER BY txid DESC, id DESC LIMIT 1"
    );
    let row = client.query_opt(&sql, &[]).await?;
    Ok(row
        .map(|row| position_of(&row))
        .transpose()?
        .unwrap_or_default())
}

/// Columns 0 and 1 of a row, `txid::text` and `id`, as a position.
fn position_of(row: &tokio_postgres::Row) -> Result<Position, ReadError> {
    Ok(Position {
        txid: parse_txid(row.get(0))?,
        id: row.get(1),
    })
}

fn parse_txid(text: String) -> Result<u64, ReadError> {
    text.parse().map_err(|_| ReadError::BadTxid(text))
}
