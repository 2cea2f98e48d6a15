//! Keeping a connection up: how the LISTEN connection reconnects, the
//! backoff between attempts, the wait for a server that refuses
//! connections to come back, the check that LISTEN works at all, and the
//! one driver of a connection whose notifications wake its owner.

use super::DatabaseSettings;
use crate::channel::quote_ident;
use std::future::poll_fn;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_postgres::{AsyncMessage, Connection, Notification};

/// How the LISTEN connection is kept up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectionSettings {
    /// First wait before reconnecting; doubles after each failed attempt,
    /// with jitter, up to `reconnect_max`. Attempts never stop.
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    /// How often a cheap query checks the connection, so a silently dead one
    /// is noticed within about twice this; `None` turns it off (TCP keepalive
    /// still applies).
    pub heartbeat: Option<Duration>,
    /// Warn when PostgreSQL's notification queue is fuller than this, in
    /// percent, read at each heartbeat. At 100% every NOTIFY fails.
    pub queue_warn_percent: u8,
}

impl Default for ConnectionSettings {
    fn default() -> Self {
        Self {
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(30),
            heartbeat: Some(Duration::from_secs(30)),
            queue_warn_percent: 25,
        }
    }
}

/// Exponential backoff, each wait between half and all of its ceiling.
pub(crate) struct Backoff {
    min: Duration,
    max: Duration,
    /// Failed attempts since the last success.
    pub(crate) attempt: u32,
}

impl Backoff {
    /// From `min`, doubling up to `max`.
    pub(crate) fn new(min: Duration, max: Duration) -> Self {
        Self {
            min,
            max,
            attempt: 0,
        }
    }

    /// A success: the next failure waits `min` again.
    pub(crate) fn reset(&mut self) {
        self.attempt = 0;
    }

    /// The wait after one more failure.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let ceiling = self
            .min
            .saturating_mul(1 << self.attempt.min(16))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        // Jitter in [ceiling/2, ceiling], from the clock's low bits: no RNG dependency needed.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let fraction = 0.5 + f64::from(nanos % 1000) / 2000.0;
        ceiling.mul_f64(fraction)
    }
}

/// How long [`check_listen_works`] waits for its notification.
pub(crate) const PROBE_WAIT: Duration = Duration::from_secs(3);

/// Whether a notification reaches a LISTENing connection: LISTEN on one
/// connection, NOTIFY from another, and wait. Behind a pooler in transaction
/// mode LISTEN is accepted and nothing ever arrives, silently; this finds
/// out at start. False only when both connections worked and the
/// notification did not come; a database that cannot be reached is the
/// listener's to retry, not a reason to refuse.
pub(crate) async fn check_listen_works(database: &DatabaseSettings) -> bool {
    // A server that does not answer soon is the listener's to wait for.
    let connect = || async {
        tokio::time::timeout(PROBE_WAIT, database.connect())
            .await
            .ok()?
            .ok()
    };
    let probe = async {
        let (listening, connection) = connect().await?;
        let (arrived, mut got) = tokio::sync::mpsc::unbounded_channel();
        let driver = tokio::spawn(drive(connection, move |_| arrived.send(()).is_ok()));
        let channel = format!("pgnotifier_probe_{}", std::process::id());
        let listened = listening
            .batch_execute(&format!("LISTEN {}", quote_ident(&channel)))
            .await;
        let sent = async {
            let (sender, connection) = connect().await?;
            let sender_driver = tokio::spawn(connection);
            let sent = sender
                .execute("SELECT pg_catalog.pg_notify($1, 'probe')", &[&channel])
                .await;
            sender_driver.abort();
            sent.ok()
        };
        let came = match (listened, sent.await) {
            (Ok(()), Some(_)) => tokio::time::timeout(PROBE_WAIT, got.recv()).await.is_ok(),
            // Could not even try: not this check's to judge.
            _ => true,
        };
        let _ = listening
            .batch_execute(&format!("UNLISTEN {}", quote_ident(&channel)))
            .await;
        driver.abort();
        Some(came)
    };
    probe.await.unwrap_or(true)
}

/// How often a server that refuses connections is checked for its return.
const PROBE_EVERY: Duration = Duration::from_millis(200);

/// Resolve once the server goes from refusing TCP connections to accepting
/// them, so a long backoff does not delay reconnecting after an outage. A
/// server that already accepts (and failed for another reason, such as TLS
/// or authentication) never resolves this: those failures keep the backoff.
/// A probe is one TCP connect, closed at once: nothing a server notices.
pub(crate) async fn comes_back(database: &DatabaseSettings) {
    if database.accepts_connections().await {
        return std::future::pending().await;
    }
    loop {
        tokio::time::sleep(PROBE_EVERY).await;
        if database.accepts_connections().await {
            return;
        }
    }
}

/// Drive `connection` until it ends, handing each notification to
/// `on_notification` (which returns false to stop): `Ok` when the server
/// closed it or the callback stopped, the error when it was lost. The
/// listener's own driver routes notifications as it polls, for speed; every
/// other connection that LISTENs is driven by this.
pub async fn drive<S, T>(
    mut connection: Connection<S, T>,
    mut on_notification: impl FnMut(Notification) -> bool,
) -> Result<(), tokio_postgres::Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
    T: AsyncRead + AsyncWrite + Unpin,
{
    while let Some(message) = poll_fn(|cx| connection.poll_message(cx)).await {
        if let AsyncMessage::Notification(n) = message? {
            if !on_notification(n) {
                break;
            }
        }
    }
    Ok(())
}
