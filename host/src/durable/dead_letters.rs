//! Dead letters: events a subscriber failed on every attempt. An operator
//! lists them, and asks for one to be delivered again (its subscriber's
//! feeder takes it before its next events, and the letter is gone once a
//! call succeeds) or discards it.

use super::reader::{column, save_position, Event, ReadError, READ_BYTES};
use super::schema::WAKE_CHANNEL;
use super::DurableError;
use serde::{Deserialize, Serialize};

/// One dead letter, as `ctl dead-letters` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub id: i64,
    pub subscriber: String,
    /// The outbox event it was.
    pub event_id: i64,
    /// That event's key (see `DurableEvent::key`).
    pub event_key: String,
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

const COLUMNS: &str = "id, subscriber, event_id,
    coalesce(event_key, pgnotifier.event_key(NULL, event_id))::text AS event_key, channel, payload,
    to_char(sent_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') AS sent_at,
    to_char(dead_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') AS dead_at,
    error, attempts, redeliver";

fn letter(row: &tokio_postgres::Row) -> Result<DeadLetter, ReadError> {
    Ok(DeadLetter {
        id: column(row, "id")?,
        subscriber: column(row, "subscriber")?,
        event_id: column(row, "event_id")?,
        event_key: column(row, "event_key")?,
        channel: column(row, "channel")?,
        payload: column(row, "payload")?,
        sent_at: column(row, "sent_at")?,
        dead_at: column(row, "dead_at")?,
        error: column(row, "error")?,
        attempts: column(row, "attempts")?,
        redeliver: column(row, "redeliver")?,
    })
}

/// Every dead letter, oldest first.
pub async fn list(client: &tokio_postgres::Client) -> Result<Vec<DeadLetter>, DurableError> {
    let sql = format!("SELECT {COLUMNS} FROM pgnotifier.dead_letters ORDER BY id");
    let rows = client.query(&sql, &[]).await?;
    Ok(rows.iter().map(letter).collect::<Result<_, _>>()?)
}

/// Dead-letter `event` for `subscriber` after `attempts` failed calls, the
/// last with `error`, and move its position past the event, in one
/// transaction: a crash leaves both or neither. An event dead-lettered
/// again (its position was lost) updates its letter, never adds one.
pub(crate) async fn insert(
    client: &mut tokio_postgres::Client,
    subscriber: &str,
    event: &Event,
    error: &str,
    attempts: i32,
) -> Result<(), ReadError> {
    let tx = client.transaction().await?;
    let key = event.key.to_string();
    tx.execute(
        "INSERT INTO pgnotifier.dead_letters AS d
             (subscriber, event_id, event_key, channel, payload, sent_at, error, attempts)
         VALUES ($1, $2, $3::text::uuid, $4, $5, $6, $7, $8)
         ON CONFLICT (subscriber, event_id) DO UPDATE
            SET error = excluded.error, attempts = d.attempts + excluded.attempts,
                dead_at = pg_catalog.now(), redeliver = false",
        &[
            &subscriber,
            &event.id,
            &key,
            &event.channel,
            &event.payload,
            &event.sent_at,
            &error,
            &attempts,
        ],
    )
    .await?;
    save_position(&tx, subscriber, event.position(), None).await?;
    tx.commit().await?;
    Ok(())
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
    let letter = letter(&row.ok_or(DurableError::UnknownDeadLetter(id))?)?;
    // Wake the feeders, so the letter goes now rather than at the next poll.
    client
        .execute(
            "SELECT pg_catalog.pg_notify($1, $2)",
            &[&WAKE_CHANNEL, &letter.channel],
        )
        .await?;
    Ok(letter)
}

/// Discard dead letter `id`: its event is not delivered again. What it
/// held, as it was.
pub async fn discard(client: &tokio_postgres::Client, id: i64) -> Result<DeadLetter, DurableError> {
    let sql = format!("DELETE FROM pgnotifier.dead_letters WHERE id = $1 RETURNING {COLUMNS}");
    let row = client.query_opt(&sql, &[&id]).await?;
    Ok(letter(&row.ok_or(DurableError::UnknownDeadLetter(id))?)?)
}

/// A dead letter asked to be delivered again.
pub struct Redelivery {
    /// The letter's id.
    pub id: i64,
    /// Attempts made before it was dead-lettered (and at earlier redeliveries).
    pub attempts: u32,
    /// The event it holds. It is out of the outbox's order: no position.
    pub event: Event,
}

/// The letters of `subscriber` waiting to be delivered again, oldest
/// first, as a read of the outbox brings events: up to the first whose
/// payload starts past [`READ_BYTES`] (the first always). Each is handled
/// before the next look, so the rest come then.
pub async fn waiting(
    client: &tokio_postgres::Client,
    subscriber: &str,
) -> Result<Vec<Redelivery>, DurableError> {
    let rows = client
        .query(
            "SELECT id, event_id, coalesce(event_key, pgnotifier.event_key(NULL, event_id))::text AS event_key,
                    channel, payload, sent_at, attempts
               FROM (SELECT d.*, coalesce(sum(octet_length(d.payload)) OVER (
                                ORDER BY d.id ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0)
                                AS bytes_before
                       FROM pgnotifier.dead_letters d
                      WHERE d.subscriber = $1 AND d.redeliver) w
              WHERE bytes_before < $2
              ORDER BY id",
            &[&subscriber, &READ_BYTES],
        )
        .await?;
    let redelivery = |row: &tokio_postgres::Row| {
        let key: String = column(row, "event_key")?;
        Ok::<_, ReadError>(Redelivery {
            id: column(row, "id")?,
            attempts: u32::try_from(column::<i32>(row, "attempts")?).unwrap_or(0),
            event: Event {
                id: column(row, "event_id")?,
                key: key.parse().map_err(|_| {
                    ReadError::Malformed(format!("dead letter key {key:?} is not a UUID"))
                })?,
                stamp: 0,
                channel: column(row, "channel")?,
                payload: column(row, "payload")?,
                sent_at: column(row, "sent_at")?,
                pid: 0,
            },
        })
    };
    Ok(rows.iter().map(redelivery).collect::<Result<_, _>>()?)
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
