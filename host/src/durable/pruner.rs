//! Pruning the outbox: an event goes once every at-least-once subscriber of
//! its channel has passed it, or once it is older than the retention,
//! whichever comes first.
//!
//! - "Passed" reads the positions table: a position records its subscriber's
//!   channels (none recorded: all channels). An event on a channel that no
//!   position needs is passed, since a new subscriber starts at the end of
//!   the outbox; it records its start under the pruner's lock
//!   (`PRUNE_LOCK`, taken by [`super::reader::start_at_end`]),
//!   so a prune never removes what it is about to read.
//! - An event removed by age before a subscriber had it leaves a row in
//!   `pgnotifier.gaps` for that subscriber: its feeder delivers a gap event
//!   (how many, since when), never a silent skip.
//! - A position's channels are trusted only for events up to its
//!   `channels_through` stamp: a channel added to a subscriber since is not
//!   in the list yet, and its events stay until the subscriber passes them.
//! - A gap lists the events it removed (their positions and channels), so
//!   the feeder tells of those its subscriber had not read, not of those it
//!   already had in hand.
//! - A prune deletes rows already written, which takes no lock that a
//!   sender's insert waits for. Hosts on one database take turns through a
//!   transaction-level advisory lock; one that finds it taken skips.
//! - Every [`CHECK_EVERY`] the pruner also looks for committed events that
//!   were never stamped (the stamp trigger disabled by hand): it counts
//!   them, says so in the log, and stamps them, so they are delivered late
//!   rather than never.

use super::reader::column;
use super::DurableError;
use crate::pg::DatabaseSettings;
use crate::sync::{bump, AbortOnDrop, Task};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How often a host prunes.
pub const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// How long an event is kept at most, unless configured: a week.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
/// Rows deleted per statement, so one prune never holds a huge transaction.
const BATCH: i64 = 10_000;
/// How often committed events without a stamp are looked for.
pub const CHECK_EVERY: Duration = Duration::from_secs(10);
/// How old an unstamped event must be before it is counted and stamped.
const UNSTAMPED_GRACE: &str = "5 seconds";

/// What one prune removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Events every subscriber of their channel had passed.
    pub passed: u64,
    /// Events older than the retention; some may leave gaps.
    pub expired: u64,
}

const TRY_LOCK: &str = "SELECT pg_catalog.pg_try_advisory_xact_lock(1885826676, 2) AS turn";

// An event is stamped as its transaction commits; one with no stamp is
// not visible here, so every event below is committed. A position needs an
// event it has not passed on one of its channels, or on any channel beyond
// the stamp its channels are known through.
const PRUNE: &str = "
WITH doomed AS (
    SELECT o.id, c.stamp, o.channel, o.sent_at,
           o.sent_at < pg_catalog.now() - $1::text::interval AS expired
      FROM pgnotifier.outbox o
      JOIN pgnotifier.commits c ON c.txid = o.txid
     WHERE o.sent_at < pg_catalog.now() - $1::text::interval
        OR NOT EXISTS (
               SELECT FROM pgnotifier.positions p
                WHERE (p.stamp, p.id) < (c.stamp, o.id)
                  AND (p.channels IS NULL OR o.channel = ANY (p.channels) OR c.stamp > p.channels_through))
     ORDER BY c.stamp, o.id
     LIMIT $2
),
gaps AS (
    INSERT INTO pgnotifier.gaps (subscriber, channels, events, first_sent_at, stamps, ids, event_channels)
    SELECT p.subscriber, array_agg(DISTINCT d.channel ORDER BY d.channel), count(*), min(d.sent_at),
           array_agg(d.stamp ORDER BY d.stamp, d.id), array_agg(d.id ORDER BY d.stamp, d.id),
           array_agg(d.channel ORDER BY d.stamp, d.id)
      FROM doomed d
      JOIN pgnotifier.positions p
        ON (p.stamp, p.id) < (d.stamp, d.id)
       AND (p.channels IS NULL OR d.channel = ANY (p.channels) OR d.stamp > p.channels_through)
     WHERE d.expired
     GROUP BY p.subscriber
),
deleted AS (
    DELETE FROM pgnotifier.outbox o USING doomed d WHERE o.id = d.id
    RETURNING d.expired
)
SELECT count(*) FILTER (WHERE NOT expired) AS passed, count(*) FILTER (WHERE expired) AS expired
  FROM deleted";

/// The stamps of transactions whose events are all gone.
const FORGET: &str = "
DELETE FROM pgnotifier.commits c
 WHERE NOT EXISTS (SELECT FROM pgnotifier.outbox o WHERE o.txid = c.txid)";

/// The outbox as the pruner last saw it.
#[derive(Debug)]
pub(crate) struct OutboxStats {
    /// Events in the outbox at the last prune ([`UNKNOWN`] before one ran).
    events: AtomicU64,
    /// Committed events found without a stamp, and stamped, since start.
    pub(crate) unstamped: AtomicU64,
}

const UNKNOWN: u64 = u64::MAX;

impl Default for OutboxStats {
    fn default() -> Self {
        Self {
            events: AtomicU64::new(UNKNOWN),
            unstamped: AtomicU64::new(0),
        }
    }
}

impl OutboxStats {
    /// Events in the outbox at the last prune, once one has run.
    pub(crate) fn events(&self) -> Option<u64> {
        let events = self.events.load(Ordering::Relaxed);
        (events != UNKNOWN).then_some(events)
    }
}

/// Prune every [`PRUNE_EVERY`], and look for unstamped events every
/// [`CHECK_EVERY`], on `runtime` until stopped; `stats` follows the outbox.
pub(crate) fn spawn(
    runtime: &tokio::runtime::Handle,
    database: DatabaseSettings,
    retention: Duration,
    stats: Arc<OutboxStats>,
) -> Task {
    Task::spawn(runtime, |mut stop| async move {
        let mut next_prune = tokio::time::Instant::now() + PRUNE_EVERY;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(CHECK_EVERY) => {}
                _ = stop.asked() => return,
            }
            let pruning = tokio::time::Instant::now() >= next_prune;
            if pruning {
                next_prune = tokio::time::Instant::now() + PRUNE_EVERY;
            }
            let done = async {
                let (mut client, connection) =
                    database.connect().await.map_err(DurableError::from)?;
                let _driver = AbortOnDrop(tokio::spawn(connection));
                let unstamped = stamp_unstamped(&mut client).await?;
                bump(&stats.unstamped, unstamped);
                if !pruning {
                    return Ok(None);
                }
                let pruned = prune(&mut client, retention).await?;
                stats
                    .events
                    .store(outbox_events(&client).await?, Ordering::Relaxed);
                Ok::<_, DurableError>(pruned)
            };
            match done.await {
                Ok(Some(p)) if p.passed + p.expired > 0 => {
                    tracing::info!(passed = p.passed, expired = p.expired, "outbox pruned")
                }
                Ok(_) => {}
                Err(e) => tracing::warn!("pruning the outbox: {e}"),
            }
        }
    })
}

/// Stamp the committed events that have no stamp and were sent more than
/// a few seconds ago, so they are delivered, after every event stamped so
/// far; how many there were. Each is logged: they mean the stamp trigger
/// was disabled, or its marker set, by hand, and they are out of commit
/// order.
pub async fn stamp_unstamped(client: &mut tokio_postgres::Client) -> Result<u64, DurableError> {
    let tx = client.transaction().await?;
    let row = tx
        .query_one(
            "SELECT events, to_char(oldest AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') AS oldest
               FROM pgnotifier.stamp_unstamped($1::text::interval)",
            &[&UNSTAMPED_GRACE],
        )
        .await?;
    tx.commit().await?;
    let events = column::<i64>(&row, "events")?.unsigned_abs();
    if events > 0 {
        let oldest: Option<String> = column(&row, "oldest")?;
        let oldest = oldest.unwrap_or_default();
        tracing::error!(
            events,
            oldest_sent_at = %oldest,
            "committed events in pgnotifier.outbox had no commit stamp: its stamp_commit trigger did not fire (disabled with ALTER TABLE ... DISABLE TRIGGER, or pgnotifier.stamping set by hand?); stamped now, so they are delivered, after events that committed later"
        );
    }
    Ok(events)
}

/// Prune once, keeping events younger than `retention` that a subscriber
/// still needs. `None` when another host is pruning.
pub async fn prune(
    client: &mut tokio_postgres::Client,
    retention: Duration,
) -> Result<Option<Pruned>, DurableError> {
    let retention = format!("{} milliseconds", retention.as_millis());
    let mut total = Pruned::default();
    loop {
        let tx = client.transaction().await?;
        let turn = tx.query_one(TRY_LOCK, &[]).await?;
        if !column::<bool>(&turn, "turn")? {
            return Ok(None);
        }
        let row = tx.query_one(PRUNE, &[&retention, &BATCH]).await?;
        let passed: i64 = column(&row, "passed")?;
        let expired: i64 = column(&row, "expired")?;
        let last = passed + expired < BATCH;
        if last {
            tx.execute(FORGET, &[]).await?;
        }
        tx.commit().await?;
        total.passed += passed.unsigned_abs();
        total.expired += expired.unsigned_abs();
        if last {
            return Ok(Some(total));
        }
    }
}

/// Events in the outbox now.
pub(crate) async fn outbox_events(client: &tokio_postgres::Client) -> Result<u64, DurableError> {
    let row = client
        .query_one("SELECT count(*) AS events FROM pgnotifier.outbox", &[])
        .await?;
    Ok(column::<i64>(&row, "events")?.unsigned_abs())
}

/// The subscriber was told of gap `id`.
pub(crate) async fn gap_told(client: &tokio_postgres::Client, id: i64) -> Result<(), DurableError> {
    client
        .execute("DELETE FROM pgnotifier.gaps WHERE id = $1", &[&id])
        .await?;
    Ok(())
}
