//! Pruning the outbox: an event goes once every at-least-once subscriber of
//! its channel has passed it, or once it is older than the retention,
//! whichever comes first.
//!
//! - "Passed" reads the positions table: a position records its subscriber's
//!   channels (none recorded: all channels). An event on a channel that no
//!   position needs is passed, since a new subscriber starts at the end of
//!   the outbox; it records its start under the pruner's lock
//!   ([`super::reader::start_at_end`]), so a prune never removes what it is
//!   about to read.
//! - An event removed by age before a subscriber had it leaves a row in
//!   `pgnotifier.gaps` for that subscriber: its feeder delivers a gap event
//!   (how many, since when), never a silent skip.
//! - A prune deletes rows already written, which takes no lock that a
//!   sender's insert waits for. Hosts on one database take turns through a
//!   transaction-level advisory lock; one that finds it taken skips.

use super::DurableError;
use crate::pg::DatabaseConfig;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How often a host prunes.
pub const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// How long an event is kept at most, unless configured: a week.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
/// Rows deleted per statement, so one prune never holds a huge transaction.
const BATCH: i64 = 10_000;

/// What one prune removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    /// Events every subscriber of their channel had passed.
    pub passed: u64,
    /// Events older than the retention; some may leave gaps.
    pub expired: u64,
}

/// Taken by a prune, and by a subscriber recording where it starts.
pub(crate) const LOCK: &str =
    "SELECT pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('pgnotifier prune'))";
const TRY_LOCK: &str =
    "SELECT pg_catalog.pg_try_advisory_xact_lock(pg_catalog.hashtext('pgnotifier prune'))";

// An event is stamped as its transaction commits; one with no stamp is
// not visible here, so every event below is committed.
const PRUNE: &str = "
WITH doomed AS (
    SELECT o.id, c.stamp, o.channel, o.sent_at,
           o.sent_at < pg_catalog.now() - $1::text::interval AS expired
      FROM pgnotifier.outbox o
      JOIN pgnotifier.commits c ON c.txid = o.txid
     WHERE o.sent_at < pg_catalog.now() - $1::text::interval
        OR NOT EXISTS (
               SELECT FROM pgnotifier.positions p
                WHERE (p.channels IS NULL OR o.channel = ANY (p.channels))
                  AND (p.stamp, p.id) < (c.stamp, o.id))
     ORDER BY c.stamp, o.id
     LIMIT $2
),
gaps AS (
    INSERT INTO pgnotifier.gaps (subscriber, channels, events, first_sent_at)
    SELECT p.subscriber, array_agg(DISTINCT d.channel ORDER BY d.channel), count(*), min(d.sent_at)
      FROM doomed d
      JOIN pgnotifier.positions p
        ON (p.channels IS NULL OR d.channel = ANY (p.channels)) AND (p.stamp, p.id) < (d.stamp, d.id)
     WHERE d.expired
     GROUP BY p.subscriber
),
deleted AS (
    DELETE FROM pgnotifier.outbox o USING doomed d WHERE o.id = d.id
    RETURNING d.expired
)
SELECT count(*) FILTER (WHERE NOT expired), count(*) FILTER (WHERE expired) FROM deleted";

/// The stamps of transactions whose events are all gone.
const FORGET: &str = "
DELETE FROM pgnotifier.commits c
 WHERE NOT EXISTS (SELECT FROM pgnotifier.outbox o WHERE o.txid = c.txid)";

/// Prune every [`PRUNE_EVERY`] on `runtime` until told to stop, and keep
/// `outbox_events` at the outbox's size after each prune.
pub(crate) fn spawn(
    runtime: &tokio::runtime::Handle,
    database: DatabaseConfig,
    retention: Duration,
    outbox_events: Arc<AtomicU64>,
) -> (watch::Sender<bool>, JoinHandle<()>) {
    let (stop, mut stopped) = watch::channel(false);
    let task = runtime.spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(PRUNE_EVERY) => {}
                _ = stopped.changed() => return,
            }
            let pruned = async {
                let (mut client, connection) =
                    database.connect().await.map_err(DurableError::from)?;
                let driver = tokio::spawn(connection);
                let pruned = prune(&mut client, retention).await;
                if let Ok(events) = self::outbox_events(&client).await {
                    outbox_events.store(events, Ordering::Relaxed);
                }
                driver.abort();
                pruned
            };
            match pruned.await {
                Ok(Some(p)) if p.passed + p.expired > 0 => {
                    tracing::info!(passed = p.passed, expired = p.expired, "outbox pruned")
                }
                Ok(_) => {}
                Err(e) => tracing::warn!("pruning the outbox: {e}"),
            }
        }
    });
    (stop, task)
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
        if !turn.get::<_, bool>(0) {
            return Ok(None);
        }
        let row = tx.query_one(PRUNE, &[&retention, &BATCH]).await?;
        let (passed, expired) = (row.get::<_, i64>(0), row.get::<_, i64>(1));
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
        .query_one("SELECT count(*) FROM pgnotifier.outbox", &[])
        .await?;
    Ok(row.get::<_, i64>(0).unsigned_abs())
}

/// A gap pruning left for a subscriber.
pub(crate) struct PrunedGap {
    pub id: i64,
    pub channels: Vec<String>,
    pub events: u64,
    pub first_sent_at: std::time::SystemTime,
}

/// The gaps waiting for `subscriber`, oldest first.
pub(crate) async fn gaps_of(
    client: &tokio_postgres::Client,
    subscriber: &str,
) -> Result<Vec<PrunedGap>, DurableError> {
    let rows = client
        .query(
            "SELECT id, channels, events, first_sent_at FROM pgnotifier.gaps
              WHERE subscriber = $1 ORDER BY id",
            &[&subscriber],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| PrunedGap {
            id: row.get(0),
            channels: row.get(1),
            events: row.get::<_, i64>(2).unsigned_abs(),
            first_sent_at: row.get(3),
        })
        .collect())
}

/// The subscriber was told of gap `id`.
pub(crate) async fn gap_told(client: &tokio_postgres::Client, id: i64) -> Result<(), DurableError> {
    client
        .execute("DELETE FROM pgnotifier.gaps WHERE id = $1", &[&id])
        .await?;
    Ok(())
}
