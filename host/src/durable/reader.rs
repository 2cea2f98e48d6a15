//! Reading the outbox in commit order, never skipping a committed event and
//! never returning an aborted one.
//!
//! Ids are assigned at insert, but transactions commit in another order, so
//! "the highest id seen" is no position: a transaction that inserted id 5
//! may commit after the one that inserted id 6 was read. Transaction ids
//! have the same flaw: a transaction takes its id at its first write. So:
//!
//! - As a sending transaction commits, a deferred trigger stamps it from a
//!   sequence (`pgnotifier.commits`), holding a shared advisory lock from
//!   just before the stamp until the commit is visible. A position is the
//!   pair `(stamp, id)` of the last event read; events are read in that order.
//! - A read (`pgnotifier.read`) takes the last stamp handed out, `last`,
//!   then takes and drops the advisory lock exclusively: that waits for every
//!   transaction holding a stamp up to `last` to finish committing or abort.
//!   Then, in a new snapshot, it reads events with stamps up to `last`: every
//!   one of those transactions has ended, so all of its events are visible
//!   if it committed, and none are if it aborted. Nothing at or below `last`
//!   can appear later, so a position only moves forward and nothing behind
//!   it is ever skipped.
//! - Stamps follow commits: a transaction that waits on another's row lock
//!   stamps only after that one committed. Two transactions that touch
//!   nothing in common commit in either order, and the stamps pick one.
//! - Only sending transactions as they commit are waited for. A long
//!   transaction, sending or not, holds nothing back while it runs.
//!
//! Events of one transaction come together, in the order they were sent.

use crate::pg::describe;

/// Where a reader is: the last event it has read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    /// The commit stamp of the event's transaction.
    pub stamp: i64,
    /// The event's id.
    pub id: i64,
}

impl Position {
    /// After every event of the transaction stamped `stamp`.
    pub fn after_stamp(stamp: i64) -> Self {
        Self {
            stamp,
            id: i64::MAX,
        }
    }
}

/// One event from the outbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub id: i64,
    /// Its transaction's commit stamp.
    pub stamp: i64,
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
            stamp: self.stamp,
            id: self.id,
        }
    }
}

/// Why the outbox could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("reading the outbox: {}", describe(.0))]
    Database(#[from] tokio_postgres::Error),
}

/// The next events after `after` on any of `channels`, at most `limit`, in order.
pub async fn next_events(
    client: &tokio_postgres::Client,
    after: Position,
    channels: &[String],
    limit: i64,
) -> Result<Vec<Event>, ReadError> {
    let limit = i32::try_from(limit.max(1)).unwrap_or(i32::MAX);
    let rows = client
        .query(
            "SELECT id, stamp, channel, payload, sent_at, pid FROM pgnotifier.read($1, $2, $3, $4)",
            &[&after.stamp, &after.id, &channels, &limit],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| Event {
            id: row.get(0),
            stamp: row.get(1),
            channel: row.get(2),
            payload: row.get(3),
            sent_at: row.get(4),
            pid: row.get(5),
        })
        .collect())
}

/// Where `subscriber` is, or `None` if it has no position yet.
pub async fn position(
    client: &impl tokio_postgres::GenericClient,
    subscriber: &str,
) -> Result<Option<Position>, ReadError> {
    let row = client
        .query_opt(
            "SELECT stamp, id FROM pgnotifier.positions WHERE subscriber = $1",
            &[&subscriber],
        )
        .await?;
    Ok(row.map(|row| Position {
        stamp: row.get(0),
        id: row.get(1),
    }))
}

/// Record that `subscriber` has handled everything up to `at` on its
/// `channels` (`None`: keep those recorded; none recorded means all, which
/// pruning reads as needing every channel). A position never moves back: an
/// older one (from a host that lost a race) is ignored.
pub async fn save_position(
    client: &impl tokio_postgres::GenericClient,
    subscriber: &str,
    at: Position,
    channels: Option<&[String]>,
) -> Result<(), ReadError> {
    client
        .execute(
            "INSERT INTO pgnotifier.positions AS p (subscriber, stamp, id, channels, updated_at)
                  VALUES ($1, $2, $3, $4, pg_catalog.now())
             ON CONFLICT (subscriber) DO UPDATE
                 SET (stamp, id) = (SELECT * FROM (VALUES (p.stamp, p.id), (excluded.stamp, excluded.id)) v
                                    ORDER BY 1 DESC, 2 DESC LIMIT 1),
                     updated_at = excluded.updated_at,
                     channels = coalesce(excluded.channels, p.channels)
               WHERE (p.stamp, p.id) < (excluded.stamp, excluded.id)
                  OR excluded.channels IS DISTINCT FROM p.channels AND excluded.channels IS NOT NULL",
            &[&subscriber, &at.stamp, &at.id, &channels],
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
    let row = client
        .query_one(
            "SELECT count(*), coalesce(extract(epoch FROM pg_catalog.now() - min(o.sent_at)) * 1000, 0)::bigint
               FROM pgnotifier.commits c
               JOIN pgnotifier.outbox o ON o.txid = c.txid
              WHERE c.stamp >= $1 AND (c.stamp, o.id) > ($1, $2) AND o.channel = ANY ($3)",
            &[&after.stamp, &after.id, &channels],
        )
        .await?;
    let millis = row.get::<_, i64>(1).max(0).unsigned_abs();
    Ok((
        row.get::<_, i64>(0).unsigned_abs(),
        std::time::Duration::from_millis(millis),
    ))
}

/// The position after every event committed now: where a new subscriber
/// starts, so it gets what is sent from now on, including every event of
/// a transaction still running.
pub async fn end_of_outbox(
    client: &impl tokio_postgres::GenericClient,
) -> Result<Position, ReadError> {
    let row = client.query_one("SELECT pgnotifier.horizon()", &[]).await?;
    Ok(Position::after_stamp(row.get(0)))
}

/// Start `subscriber` at the end of the outbox, on `channels` (see
/// [`save_position`]), unless it has a position; where it is now.
///
/// The start holds the pruner's lock, so a prune that runs meanwhile
/// either has finished (and removed only what comes before the start) or
/// sees the position.
pub async fn start_at_end(
    client: &mut tokio_postgres::Client,
    subscriber: &str,
    channels: Option<&[String]>,
) -> Result<Position, ReadError> {
    let tx = client.transaction().await?;
    tx.batch_execute(super::pruner::LOCK).await?;
    let end = end_of_outbox(&tx).await?;
    save_position(&tx, subscriber, end, channels).await?;
    let at = position(&tx, subscriber).await?.unwrap_or(end);
    tx.commit().await?;
    Ok(at)
}
