//! The election, on the LISTEN connection: `pg_try_advisory_lock` on the
//! key `hashtextextended('pgnotifier cluster NAME/GROUP', 0)`. The lock is
//! the session's, so it goes when the connection does (a SIGKILLed host, a
//! terminated backend, a server restart); PostgreSQL is the referee.

use super::{ClusterSettings, ClusterStatus};
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

const TRY: &str = "SELECT pg_catalog.pg_try_advisory_lock(pg_catalog.hashtextextended($1, 0))";

/// Who holds the lock, as `pg_stat_activity` shows its backend.
const HOLDER: &str = "
SELECT coalesce(nullif(a.application_name, ''), 'a client') || ' (backend ' || a.pid
       || coalesce(' at ' || host(a.client_addr), '') || ')'
  FROM pg_catalog.pg_locks l
  JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid
 WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
   AND l.database = (SELECT oid FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database())
   AND ((l.classid::bigint << 32) | l.objid::bigint) = pg_catalog.hashtextextended($1, 0)";

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
        let won = match answered(settings, client.query_one(TRY, &[&key])).await {
            Ok(row) => row.get::<_, bool>(0),
            Err(e) => return Campaign::Failed(e),
        };
        let holder = match answered(settings, client.query_opt(HOLDER, &[&key])).await {
            Ok(row) => row.map(|row| row.get::<_, String>(0)),
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
