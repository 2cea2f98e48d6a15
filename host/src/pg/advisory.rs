//! Session advisory locks named by text, as a cluster's election and a
//! subscriber's feeder take them on their own connections, and the server
//! settings that make such a lock go only after its holder has given up.
//!
//! A name's key is `hashtextextended(name, 0)`: one 64-bit number, which
//! PostgreSQL keeps while the session lives, frees when it ends, and shows
//! in `pg_locks` with the backend that holds it.

use std::time::Duration;
use tokio_postgres::Client;

/// Take the lock named `name` for this session, without waiting: whether
/// it is now held (a session that holds it already takes it again).
pub(crate) async fn try_lock(client: &Client, name: &str) -> Result<bool, tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT pg_catalog.pg_try_advisory_lock(pg_catalog.hashtextextended($1, 0))",
            &[&name],
        )
        .await?;
    row.try_get(0)
}

/// Give the lock named `name` back, if this session holds it.
pub(crate) async fn unlock(client: &Client, name: &str) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "SELECT pg_catalog.pg_advisory_unlock(pg_catalog.hashtextextended($1, 0))",
            &[&name],
        )
        .await?;
    Ok(())
}

/// The part of a query that is true while this session holds the lock
/// named by the text parameter `$n`: a `DISCARD ALL` or an unlock on the
/// connection frees it without the session noticing otherwise.
pub(crate) fn held(n: usize) -> String {
    format!(
        "EXISTS (SELECT FROM pg_catalog.pg_locks l
                  WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
                    AND l.pid = pg_catalog.pg_backend_pid()
                    AND ((l.classid::bigint << 32) | l.objid::bigint) = pg_catalog.hashtextextended(${n}, 0))"
    )
}

/// Who holds the lock named `name`, as `pg_stat_activity` shows its
/// backend: its application name, pid and address.
pub(crate) async fn holder(
    client: &Client,
    name: &str,
) -> Result<Option<String>, tokio_postgres::Error> {
    let row = client
        .query_opt(
            "SELECT coalesce(nullif(a.application_name, ''), 'a client') || ' (backend ' || a.pid
                    || coalesce(' at ' || host(a.client_addr), '') || ')'
               FROM pg_catalog.pg_locks l
               JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid
              WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
                AND l.database = (SELECT oid FROM pg_catalog.pg_database
                                   WHERE datname = pg_catalog.current_database())
                AND ((l.classid::bigint << 32) | l.objid::bigint) = pg_catalog.hashtextextended($1, 0)",
            &[&name],
        )
        .await?;
    row.map(|row| row.try_get(0)).transpose()
}

/// Settings for a session whose lock must outlive this host's use of it:
/// the server, probing every second once nothing has come for a second,
/// drops the connection, and frees its locks, only once nothing it sent
/// was acknowledged for `user_timeout`.
pub(crate) fn server_keepalives(user_timeout: Duration) -> String {
    format!(
        "SET tcp_keepalives_idle = 1; SET tcp_keepalives_interval = 1; \
         SET tcp_keepalives_count = 3; SET tcp_user_timeout = {}",
        user_timeout.as_millis()
    )
}

/// A name for one holder of locks, as another host shows it: the
/// machine's host name, the process id, and a random tag of its own, so
/// that two containers that are both pid 1 under one host name, or two
/// notifiers in one process, are told apart.
pub(crate) fn new_holder_name() -> String {
    use std::hash::{BuildHasher, Hasher};
    // Seeded from the OS's randomness, and different at each call.
    let tag = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    format!(
        "{} (pid {}, {:08x})",
        host_name(),
        std::process::id(),
        tag as u32
    )
}

/// The machine's host name.
fn host_name() -> String {
    let mut name = [0u8; 256];
    // SAFETY: the buffer is writable for its whole length, which is passed.
    let got = unsafe { libc::gethostname(name.as_mut_ptr().cast(), name.len()) };
    let end = name.iter().position(|b| *b == 0).unwrap_or(name.len());
    match got {
        0 if end > 0 => String::from_utf8_lossy(&name[..end]).into_owned(),
        _ => "a host without a name".to_owned(),
    }
}
