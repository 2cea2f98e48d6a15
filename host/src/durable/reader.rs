//! Reading the outbox in commit order, never skipping a committed event and
//! never returning an aborted one, nor one whose commit is not yet durable.
//!
//! Ids are assigned at insert, but transactions commit in another order, so
//! "the highest id seen" is no position: a transaction that inserted id 5
//! may commit after the one that inserted id 6 was read. Transaction ids
//! have the same flaw: a transaction takes its id at its first write. So:
//!
//! - As a sending transaction commits, a deferred trigger (which fires in
//!   every session, replication role included) takes an advisory lock on
//!   the transaction's own key, then stamps it from a sequence
//!   (`pgnotifier.commits`); the lock is held until the commit is visible.
//!   A position is the pair `(stamp, id)` of the last event read; events
//!   are read in that order.
//! - A read (`pgnotifier.read_batch`) takes the last stamp handed out,
//!   `last`, then waits for each sender holding its key at that moment, on
//!   that key alone: those are the only transactions that can hold a stamp
//!   up to `last` and still be committing. No sender ever waits for a
//!   reader. Then, in one new snapshot, it reads events with stamps up to
//!   `last`: every one of those transactions has ended, so all of its
//!   events are visible if it committed, and none are if it aborted.
//!   Nothing at or below `last` can appear later, so a position only moves
//!   forward and nothing behind it is ever skipped.
//! - An asynchronous commit (`synchronous_commit = off`) is visible before
//!   it is durable: a crash can undo it. A read says how far the WAL must
//!   be flushed before its events are delivered, when it is not yet
//!   ([`flush`]). Whatever a sender set, and when, nothing is delivered
//!   that a crash can undo.
//! - Stamps follow commits: a transaction that waits on another's row lock
//!   stamps only after that one committed. Two transactions that touch
//!   nothing in common commit in either order, and the stamps pick one.
//! - Only sending transactions as they commit are waited for. A long
//!   transaction, sending or not, holds nothing back while it runs.
//!
//! Events of one transaction come together, in the order they were sent.

use crate::dispatch::EventKey;
use crate::pg::describe;
use tokio_postgres::types::PgLsn;
use tokio_postgres::Row;

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
    /// Never the same for two events, unlike `id` after a crash that lost
    /// an asynchronous commit, or a failover to a replica that lagged.
    pub key: EventKey,
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

/// Events pruning removed before a subscriber had them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrunedGap {
    /// The row in `pgnotifier.gaps`, removed once the subscriber was told.
    pub id: i64,
    /// The channels of the events removed after the read's position.
    pub channels: Vec<String>,
    /// How many of the events removed come after the read's position:
    /// those before it were read before they were removed.
    pub events: u64,
    pub first_sent_at: std::time::SystemTime,
    /// Why the events are gone, when pruning did not remove them: the WAL
    /// transport's slot was lost. `events` is then unknown (0).
    pub cause: Option<String>,
}

/// What one read returns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    /// The events after the position, in order.
    pub events: Vec<Event>,
    /// Gaps pruning left for the subscriber, oldest first: they come
    /// before the events.
    pub gaps: Vec<PrunedGap>,
    /// The last stamp whose transactions had all ended when the read began.
    pub horizon: i64,
    /// How far the read looked: past the last event when it returned as
    /// many as asked for, else past everything committed at the horizon.
    /// A position may move here once the events are handled, even when
    /// there were none on the subscriber's channels.
    pub covered: Position,
    /// Flush the WAL up to here before delivering the events (see
    /// [`flush`]); `None` when it is flushed already.
    pub flush_to: Option<PgLsn>,
}

impl Batch {
    /// How far the WAL must be flushed before the events are delivered or
    /// the gaps told (a prune that a crash undid would be told in vain), if
    /// there are any and it is not flushed that far yet.
    pub fn needs_flush(&self) -> Option<PgLsn> {
        self.flush_to
            .filter(|_| !self.events.is_empty() || !self.gaps.is_empty())
    }
}

/// Why the outbox could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("reading the outbox: {}", describe(.0))]
    Database(#[from] tokio_postgres::Error),
    #[error("reading the outbox: {0}")]
    Malformed(String),
}

/// `column` of `row`, or the error that names it: the tables live in the
/// user's database, and a changed column is an error, never a panic.
pub(crate) fn column<'a, T: tokio_postgres::types::FromSql<'a>>(
    row: &'a Row,
    column: &str,
) -> Result<T, ReadError> {
    Ok(row.try_get(column)?)
}

const READ: &str = "
SELECT kind, id, stamp, channel, payload, sent_at, pid, pg_catalog.uuid_send(salt) AS salt,
       events, gap_channels, flush_to
  FROM pgnotifier.read_batch($1, $2, $3, $4, $5, $6)";

/// Where one read stops: at the first event whose payload starts past this
/// many bytes of the read's payloads. So a read brings at most this plus
/// one payload (the first event always comes, whatever its size):
/// payloads may be large, and a batch is held in memory until delivered.
pub const READ_BYTES: i64 = 16 << 20;

/// What `subscriber` reads next after `after` on `channels`: at most
/// `limit` events in order (fewer when their payloads pass
/// [`READ_BYTES`]), and the gaps pruning left it.
pub async fn read(
    client: &tokio_postgres::Client,
    subscriber: &str,
    after: Position,
    channels: &[String],
    limit: usize,
) -> Result<Batch, ReadError> {
    let limit32 = i32::try_from(limit.max(1)).unwrap_or(i32::MAX);
    let rows = client
        .query(
            READ,
            &[
                &subscriber,
                &after.stamp,
                &after.id,
                &channels,
                &limit32,
                &READ_BYTES,
            ],
        )
        .await?;
    let mut horizon = after.stamp;
    let mut flush_to = None;
    let mut events = Vec::new();
    let mut gaps = Vec::new();
    // The first event past the byte budget: the read stops before it.
    let mut over_budget: Option<Position> = None;
    for row in &rows {
        match column::<i8>(row, "kind")? as u8 {
            b'h' => {
                horizon = column(row, "stamp")?;
                flush_to = column(row, "flush_to")?;
            }
            b'e' => events.push(event(row)?),
            b'o' => {
                let at = Position {
                    stamp: column(row, "stamp")?,
                    id: column(row, "id")?,
                };
                over_budget = Some(over_budget.map_or(at, |first| first.min(at)));
            }
            _ => {
                let gap = PrunedGap {
                    id: column(row, "id")?,
                    channels: column::<Option<Vec<String>>>(row, "gap_channels")?
                        .unwrap_or_default(),
                    events: column::<Option<i64>>(row, "events")?
                        .unwrap_or(0)
                        .unsigned_abs(),
                    first_sent_at: column(row, "sent_at")?,
                    cause: column(row, "payload")?,
                };
                gaps.push(gap);
            }
        }
    }
    events.sort_unstable_by_key(Event::position);
    if let Some(first) = over_budget {
        events.retain(|e| e.position() < first);
    }
    events.truncate(limit.max(1));
    // A read cut short (by the count or the bytes) covers what it returned;
    // one that was not, everything committed up to the horizon.
    let covered = match (events.last(), over_budget) {
        (Some(last), _) if events.len() >= limit.max(1) => last.position(),
        (Some(last), Some(_)) => last.position(),
        (None, Some(_)) => after,
        _ => Position::after_stamp(horizon).max(after),
    };
    gaps.sort_unstable_by_key(|g| g.id);
    Ok(Batch {
        events,
        gaps,
        horizon,
        covered,
        flush_to,
    })
}

fn event(row: &Row) -> Result<Event, ReadError> {
    let id = column(row, "id")?;
    let salt: Option<&[u8]> = column(row, "salt")?;
    let salt = salt
        .map(|bytes| <[u8; 16]>::try_from(bytes).map(u128::from_be_bytes))
        .transpose()
        .map_err(|_| ReadError::Malformed("a transaction's salt is not 16 bytes".into()))?;
    Ok(Event {
        id,
        key: event_key(salt, id),
        stamp: column(row, "stamp")?,
        channel: column(row, "channel")?,
        payload: column::<Option<String>>(row, "payload")?.unwrap_or_default(),
        sent_at: column::<Option<std::time::SystemTime>>(row, "sent_at")?
            .unwrap_or(std::time::UNIX_EPOCH),
        pid: column::<Option<i32>>(row, "pid")?.unwrap_or(0),
    })
}

/// An event's key, as `pgnotifier.event_key` makes it: its transaction's
/// random salt with the id folded into the low half, or, for an event
/// stamped before transactions had salts, one made from the id alone.
pub fn event_key(salt: Option<u128>, id: i64) -> EventKey {
    let id = u128::from(id as u64);
    match salt {
        Some(salt) => EventKey(salt ^ id),
        None => EventKey(0x4000_8000_0000_0000_0000 | (id & 0xffff_ffff_ffff)),
    }
}

/// Make the WAL durable up to `lsn`, which `read_batch` found not flushed
/// after waiting for it briefly (a commit in flight elsewhere flushes it;
/// an asynchronous one waits for the WAL writer, up to `wal_writer_delay`):
/// commit a transaction of this connection's own, with a local flush,
/// whose commit record comes after `lsn`. It writes a logical message,
/// because PostgreSQL commits a transaction that wrote no WAL
/// asynchronously, whatever `synchronous_commit` says.
pub async fn flush(client: &mut tokio_postgres::Client, lsn: PgLsn) -> Result<(), ReadError> {
    let tx = client.transaction().await?;
    tx.batch_execute(
        "SET LOCAL synchronous_commit = local;
         SELECT pg_catalog.pg_logical_emit_message(true, 'pgnotifier', 'flush')",
    )
    .await?;
    tx.commit().await?;
    tracing::debug!(%lsn, "WAL flushed before delivering events");
    Ok(())
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
    row.map(|row| {
        Ok(Position {
            stamp: column(&row, "stamp")?,
            id: column(&row, "id")?,
        })
    })
    .transpose()
}

/// A subscriber's channels, and the stamp through which they are known:
/// every channel it had before that stamp was handed out is in the list.
/// Pruning trusts the list for events up to that stamp only.
#[derive(Clone, Copy, Debug)]
pub struct Channels<'a> {
    pub names: &'a [String],
    pub through: i64,
}

/// Record that `subscriber` has handled everything up to `at`, and its
/// `channels` when given (none ever recorded means all, which pruning reads
/// as needing every channel). A position never moves back: an older one
/// (from a host that lost a race) is ignored.
pub async fn save_position(
    client: &impl tokio_postgres::GenericClient,
    subscriber: &str,
    at: Position,
    channels: Option<Channels<'_>>,
) -> Result<(), ReadError> {
    let (names, through) = match channels {
        Some(c) => (Some(c.names), Some(c.through)),
        None => (None, None),
    };
    client
        .execute(
            "INSERT INTO pgnotifier.positions AS p (subscriber, stamp, id, channels, channels_through, updated_at)
                  VALUES ($1, $2, $3, $4::text[], coalesce($5::bigint, 0), pg_catalog.now())
             ON CONFLICT (subscriber) DO UPDATE
                 SET (stamp, id) = (SELECT * FROM (VALUES (p.stamp, p.id), (excluded.stamp, excluded.id)) v
                                    ORDER BY 1 DESC, 2 DESC LIMIT 1),
                     updated_at = excluded.updated_at,
                     channels = coalesce($4, p.channels),
                     channels_through = coalesce($5, p.channels_through)
               WHERE (p.stamp, p.id) < (excluded.stamp, excluded.id)
                  OR $4::text[] IS NOT NULL AND ($4 IS DISTINCT FROM p.channels
                                                 OR $5 IS DISTINCT FROM p.channels_through)",
            &[&subscriber, &at.stamp, &at.id, &names, &through],
        )
        .await?;
    Ok(())
}

/// How many events on `channels` come after `after` for `subscriber`,
/// readable or not yet (a backfill's rows included), and how long ago the
/// oldest of them was sent (zero when none).
pub async fn lag(
    client: &tokio_postgres::Client,
    subscriber: &str,
    after: Position,
    channels: &[String],
) -> Result<(u64, std::time::Duration), ReadError> {
    let row = client
        .query_one(
            "WITH backfill AS (
                 SELECT count(*) AS rows, min(b.taken_at) AS taken_at
                   FROM pgnotifier.backfills b
                   JOIN pgnotifier.snapshot_rows r ON r.subscriber = b.subscriber
                  WHERE b.subscriber = $4::text AND b.stamp = $1::bigint AND r.id > $2::bigint
                    AND r.channel = ANY ($3::text[]))
             SELECT count(*) + (SELECT rows FROM backfill) AS events,
                    coalesce(extract(epoch FROM pg_catalog.now() - least(min(o.sent_at),
                        (SELECT taken_at FROM backfill))) * 1000, 0)::bigint AS millis
               FROM pgnotifier.commits c
               JOIN pgnotifier.outbox o ON o.txid = c.txid
              WHERE c.stamp >= $1 AND (c.stamp, o.id) > ($1, $2) AND o.channel = ANY ($3)",
            &[&after.stamp, &after.id, &channels, &subscriber],
        )
        .await?;
    let millis = column::<i64>(&row, "millis")?.max(0).unsigned_abs();
    Ok((
        column::<i64>(&row, "events")?.unsigned_abs(),
        std::time::Duration::from_millis(millis),
    ))
}

/// The position after every event committed now: where a new subscriber
/// starts, so it gets what is sent from now on, including every event of
/// a transaction still running.
pub async fn end_of_outbox(
    client: &impl tokio_postgres::GenericClient,
) -> Result<Position, ReadError> {
    let row = client
        .query_one("SELECT pgnotifier.horizon() AS horizon", &[])
        .await?;
    Ok(Position::after_stamp(column(&row, "horizon")?))
}

/// Start `subscriber` at the end of the outbox, on `channels`, unless it
/// has a position; where it is now.
///
/// The start holds the pruner's lock, so a prune that runs meanwhile
/// either has finished (and removed only what comes before the start) or
/// sees the position.
pub async fn start_at_end(
    client: &mut tokio_postgres::Client,
    subscriber: &str,
    channels: &[String],
) -> Result<Position, ReadError> {
    let tx = client.transaction().await?;
    tx.batch_execute(super::schema::PRUNE_LOCK).await?;
    let end = end_of_outbox(&tx).await?;
    // Pruning reads the channels only for events the position has passed.
    let channels = Channels {
        names: channels,
        through: end.stamp,
    };
    save_position(&tx, subscriber, end, Some(channels)).await?;
    let at = position(&tx, subscriber).await?.unwrap_or(end);
    tx.commit().await?;
    Ok(at)
}
