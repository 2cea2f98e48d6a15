//! The election, on the LISTEN connection: `pg_try_advisory_lock` on the
//! key `hashtextextended('pgnotifier cluster NAME/GROUP', 0)`. The lock is
//! the session's, so it goes when the connection does (a SIGKILLed host, a
//! terminated backend, a server restart); PostgreSQL is the referee.

use super::{ClusterSettings, ClusterStatus};
use crate::pg::advisory;
use crate::printable::with_causes;
use std::time::SystemTime;
use tokio_postgres::Client;

/// How a campaign ended.
pub(crate) enum Campaign {
    /// This host leads. `after` is when another leader was last seen, if
    /// one was: what it may not have dispatched since is a gap.
    Won { after: Option<(SystemTime, String)> },
    /// The connection failed, or gave no answer within a takeover.
    Failed(String),
}

/// Try the lock on `client` until it is won, every [`ClusterSettings::poll`],
/// standing by meanwhile. A host that has just lost its leadership (`yield`)
/// waits a takeover first, so a standby takes over rather than the host
/// whose connection just failed. The caller races this against the
/// connection's end and a stop.
pub(crate) async fn campaign(
    client: &Client,
    settings: &ClusterSettings,
    status: &ClusterStatus,
    yield_first: bool,
) -> Campaign {
    let key = settings.lock_name();
    let mut seen: Option<(SystemTime, String)> = None;
    if yield_first {
        tokio::time::sleep(settings.takeover).await;
    }
    loop {
        let won = match answered(settings, advisory::try_lock(client, &key)).await {
            Ok(won) => won,
            Err(e) => return Campaign::Failed(e),
        };
        let holder = match answered(settings, advisory::holder(client, &key)).await {
            Ok(holder) => holder,
            Err(e) => return Campaign::Failed(e),
        };
        if won {
            // Itself, as the standbys see it.
            status.lead(holder.unwrap_or_else(|| "this host".to_owned()));
            return Campaign::Won { after: seen };
        }
        if seen.as_ref().map(|(_, who)| who) != holder.as_ref() {
            tracing::info!(cluster = %settings.name, group = settings.group.as_deref().unwrap_or(""), leader = holder.as_deref().unwrap_or("none seen"), "standing by");
        }
        if let Some(holder) = &holder {
            seen = Some((SystemTime::now(), holder.clone()));
        }
        status.stand_by(holder);
        tokio::time::sleep(settings.poll()).await;
    }
}

/// `query`'s answer, or why there is none: a stalled connection must not
/// leave a standby waiting forever.
async fn answered<T>(
    settings: &ClusterSettings,
    query: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, String> {
    match tokio::time::timeout(settings.takeover, query).await {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(e)) => Err(with_causes(&e)),
        Err(_) => Err(format!("no answer within {:?}", settings.takeover)),
    }
}
