//! Dead letters: events a subscriber failed on every attempt. An operator
//! lists them, and asks for one to be delivered again: its subscriber's
//! feeder takes it before its next events, and the letter is gone once a
//! call succeeds.

use super::reader::Event;
use super::schema::WAKE_CHANNEL;
use super::DurableError;
use serde::Serialize;

/// One dead letter, as `ctl dead-letters` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct DeadLetter {
    pub id: i64,
    pub subscriber: String,
    /// The outbox event it was.
    pub event_id: i64,
    pub channel: String,
    pub payload: String,
    /// RFC 3339 times, as PostgreSQL writes them.
    pub sent_at: String,
    pub dead_at: String,
    pub error: String,
    pub attempts: i32,
    /// Asked to be delivered again, not yet delivered.
    pub redeliver: bool,
}

const COLUMNS: &str = "id, subscriber, event_id, channel, payload,
    to_char(sent_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'),
    to_char(dead_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'),
    error, attempts, redeliver";

fn letter(row: &tokio_postgres::Row) -> DeadLetter {
    DeadLetter {
        id: row.get(0),
        subscriber: row.get(1),
        event_id: row.get(2),
        channel: row.get(3),
        payload: row.get(4),
        sent_at: row.get(5),
        dead_at: row.get(6),
        error: row.get(7),
        attempts: row.get(8),
        redeliver: row.get(9),
    }
}

/// Every dead letter, oldest first.
pub async fn list(client: &tokio_postgres::Client) -> Result<Vec<DeadLetter>, DurableError> {
    let sql = format!("SELECT {COLUMNS} FROM pgnotifier.dead_letters ORDER BY id");
    Ok(client.query(&sql, &[]).await?.iter().map(letter).collect())
}

/// Ask for dead letter `id` to be delivered again, to its own subscriber only.
pub async fn request_redelivery(
    client: &tokio_postgres::Client,
    id: i64,
) -> Result<DeadLetter, DurableError> {
    let sql = format!(
        "UPDATE pgnotifier.dead_letters SET redeliver = true WHERE id = $1 RETURNING {COLUMNS}"
    );
    let row = client.query_opt(&sql, &[&id]).await?;
    let letter = (row.as_ref().map(letter)).ok_or(DurableError::UnknownDeadLetter(id))?;
    // Wake the feeders, so the letter goes now rather than at the next poll.
    client
        .execute(
            "SELECT pg_catalog.pg_notify($1, $2)",
            &[&WAKE_CHANNEL, &letter.channel],
        )
        .await?;
    Ok(letter)
}

/// A dead letter asked to be delivered again.
pub(crate) struct Redelivery {
    /// The letter's id.
    pub id: i64,
    /// Attempts made before it was dead-lettered (and at earlier redeliveries).
    pub attempts: u32,
    /// The event it holds. It is out of the outbox's order: no position.
    pub event: Event,
}

/// The letters of `subscriber` waiting to be delivered again, oldest first.
pub(crate) async fn waiting(
    client: &tokio_postgres::Client,
    subscriber: &str,
) -> Result<Vec<Redelivery>, DurableError> {
    let rows = client
        .query(
            "SELECT id, event_id, channel, payload, sent_at, attempts
               FROM pgnotifier.dead_letters WHERE subscriber = $1 AND redeliver ORDER BY id",
            &[&subscriber],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| Redelivery {
            id: row.get(0),
            attempts: u32::try_from(row.get::<_, i32>(5)).unwrap_or(0),
            event: Event {
                id: row.get(1),
                stamp: 0,
                channel: row.get(2),
                payload: row.get(3),
                sent_at: row.get(4),
                pid: 0,
            },
        })
        .collect())
}

/// A redelivered letter succeeded: it is gone.
pub(crate) async fn delivered(
    client: &tokio_postgres::Client,
    id: i64,
) -> Result<(), DurableError> {
    client
        .execute("DELETE FROM pgnotifier.dead_letters WHERE id = $1", &[&id])
        .await?;
    Ok(())
}

/// A redelivered letter failed again: it stays, with the new error.
pub(crate) async fn failed_again(
    client: &tokio_postgres::Client,
    id: i64,
    error: &str,
    attempts: i32,
) -> Result<(), DurableError> {
    client
        .execute(
            "UPDATE pgnotifier.dead_letters
                SET redeliver = false, error = $2, attempts = attempts + $3, dead_at = pg_catalog.now()
              WHERE id = $1",
            &[&id, &error, &attempts],
        )
        .await?;
    Ok(())
}
