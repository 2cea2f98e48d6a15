//! The `publish` and `query` capabilities, on a small connection pool of
//! their own so the LISTEN connection never waits behind a plugin's SQL.

use super::confinement;
use super::{CapabilityError, PluginCapabilities, QueryAccess};
use crate::channel;
use crate::pg::DatabaseSettings;
use bytes::BytesMut;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime, Timeouts};
use futures_util::TryStreamExt;
use std::future::Future;
use std::time::Duration;
use tokio_postgres::types::{to_sql_checked, Format, IsNull, ToSql, Type};

/// PostgreSQL refuses a `NOTIFY` payload of this many bytes or more.
pub const MAX_NOTIFY_PAYLOAD: usize = 8000;

/// Prepared statements kept per pooled connection before the cache is cleared.
const MAX_CACHED_STATEMENTS: usize = 256;

/// Connections for capability calls, shared by every plugin, opened on demand.
pub struct CapabilityPool {
    runtime: tokio::runtime::Handle,
    pool: Pool,
}

impl CapabilityPool {
    /// A pool of at most `size` connections with the listener's settings; no
    /// connection is opened until a plugin needs one. Call it inside the
    /// runtime that will run the connections.
    pub fn new(database: &DatabaseSettings, size: usize) -> Result<Self, CapabilityError> {
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|_| CapabilityError::NoRuntime)?;
        let manager = Manager::from_config(
            database.pg_config().clone(),
            database.tls_connector(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(size.max(1))
            .runtime(Runtime::Tokio1)
            .build()?;
        Ok(Self { runtime, pool })
    }

    /// Run `work` to completion from a thread outside the runtime.
    fn block_on<T>(&self, work: impl Future<Output = T>) -> T {
        self.runtime.block_on(work)
    }

    async fn client(&self, wait: Duration) -> Result<deadpool_postgres::Object, CapabilityError> {
        let timeouts = Timeouts {
            wait: Some(wait),
            create: Some(wait.max(Duration::from_secs(10))),
            recycle: Some(wait),
        };
        Ok(self.pool.timeout_get(&timeouts).await?)
    }
}

impl PluginCapabilities {
    /// At load: a query grant runs as `query_role` (whose barrier is
    /// installed now, after checking the host's role can become it), or as
    /// the host's role only if that role reaches nothing beyond the database.
    pub(crate) fn confine_queries(&self) -> Result<(), CapabilityError> {
        let Some(pool) = self.pool.as_deref() else {
            return Ok(()); // no database here (`pgnotifier check`)
        };
        if self.grants.query == QueryAccess::None {
            return Ok(());
        }
        pool.block_on(async {
            let mut client = pool.client(Duration::from_secs(10)).await?;
            match &self.grants.query_role {
                Some(role) => confinement::install_barrier(&mut client, role).await,
                None => match confinement::host_role_danger(&client).await {
                    Ok(None) => Ok(()),
                    Ok(Some(danger)) => Err(CapabilityError::BadGrant(format!(
                        "grants.query: {danger}, so the plugin's SQL could reach beyond the database \
                         (read server files, signal other backends); set [grants] query_role to a role \
                         with only the rights the plugin needs"
                    ))),
                    Err(e) => Err(e.into()),
                },
            }
        })
    }

    /// `publish`: NOTIFY `channel` with `payload`, if granted.
    pub(crate) fn publish(&self, channel_name: &str, payload: &str) -> Result<(), CapabilityError> {
        if !self.grants.publish.iter().any(|c| c == channel_name) {
            return Err(CapabilityError::NotGranted(format!(
                "publish to {channel_name:?} is not granted; the sidecar's [grants] publish lists {:?}",
                self.grants.publish
            )));
        }
        channel::validate(channel_name)?;
        if payload.len() >= MAX_NOTIFY_PAYLOAD {
            return Err(CapabilityError::Limit(format!(
                "payload is {} bytes; NOTIFY takes fewer than {MAX_NOTIFY_PAYLOAD}",
                payload.len()
            )));
        }
        if self.offline.publish_dry_run {
            // Beside the plugin's own lines: it is what the plugin did.
            tracing::info!(target: "pgnotifier::plugin", subscriber = %self.id, "would publish {channel_name} {payload}");
            return Ok(());
        }
        let pool = self.pool()?;
        let wait = self.limits.query_timeout;
        pool.block_on(async {
            let client = pool.client(wait).await?;
            let notify = client.prepare_cached("SELECT pg_notify($1, $2)").await?;
            client.execute(&notify, &[&channel_name, &payload]).await?;
            Ok(())
        })
    }

    /// `query`: one statement in a transaction of its own, rows as a JSON array.
    pub(crate) fn query(&self, sql: &str, params: &[String]) -> Result<String, CapabilityError> {
        let write = match self.grants.query {
            QueryAccess::None => {
                return Err(CapabilityError::NotGranted(
                    "query is not granted; the sidecar needs [grants] query = true (or query_write = true)"
                        .into(),
                ))
            }
            QueryAccess::ReadOnly => false,
            QueryAccess::ReadWrite => true,
        };
        if let Some(fixture) = &self.offline.query_fixture {
            return fixture.answer(sql);
        }
        let pool = self.pool()?;
        let limits = self.limits;
        pool.block_on(async {
            let mut client = pool.client(limits.query_timeout).await?;
            // Prepared statements are cached per connection; a plugin that
            // builds its SQL on the fly must not grow the cache for ever.
            if client.statement_cache.size() > MAX_CACHED_STATEMENTS {
                client.statement_cache.clear();
            }
            let tx = client.build_transaction().read_only(!write).start().await?;
            let sql = sql.trim_end().trim_end_matches(';');
            let params: Vec<TextParam<'_>> = params.iter().map(|p| TextParam(p)).collect();
            let mut setup = format!(
                "SET LOCAL statement_timeout = {}",
                limits.query_timeout.as_millis().max(1)
            );
            if let Some(role) = &self.grants.query_role {
                setup.push_str("; SET LOCAL ROLE ");
                setup.push_str(&channel::quote_ident(role));
            }
            // Pipelined: one round trip for both.
            let (_, statement) =
                tokio::try_join!(tx.batch_execute(&setup), tx.prepare_cached(sql))?;
            if let Some(role) = &self.grants.query_role {
                // Only parsed above (one statement, and whether it has rows): it runs in the barrier.
                let call = tx.prepare_cached(&confinement::barrier_call(role)).await?;
                let params: Vec<&str> = params.iter().map(|p| p.0).collect();
                let returns_rows = !statement.columns().is_empty();
                let max_rows = i32::try_from(limits.query_max_rows).unwrap_or(i32::MAX);
                let rows = tx
                    .query_raw(
                        &call,
                        [
                            &sql as &(dyn ToSql + Sync),
                            &params,
                            &returns_rows,
                            &max_rows,
                        ],
                    )
                    .await?;
                let json = collect_rows(rows, limits.query_max_rows).await?;
                tx.commit().await?;
                return Ok(json);
            }
            if statement.columns().is_empty() {
                tx.execute_raw(&statement, &params).await?;
                tx.commit().await?;
                return Ok("[]".to_owned());
            }
            // The server renders every type as JSON; a CTE also takes
            // INSERT/UPDATE/DELETE ... RETURNING.
            let wrapped = format!("WITH q AS ({sql}\n) SELECT row_to_json(q)::text FROM q");
            let wrapped = tx.prepare_cached(&wrapped).await?;
            let rows = tx.query_raw(&wrapped, &params).await?;
            let json = collect_rows(rows, limits.query_max_rows).await?;
            tx.commit().await?;
            Ok(json)
        })
    }

    fn pool(&self) -> Result<&CapabilityPool, CapabilityError> {
        self.pool.as_deref().ok_or(CapabilityError::NoDatabase)
    }
}

/// Join the rows' JSON objects into one array, failing past `max_rows`.
async fn collect_rows(
    rows: tokio_postgres::RowStream,
    max_rows: usize,
) -> Result<String, CapabilityError> {
    let mut rows = std::pin::pin!(rows);
    let mut json = String::from("[");
    let mut count = 0usize;
    while let Some(row) = rows.try_next().await? {
        if count == max_rows {
            return Err(CapabilityError::Limit(format!(
                "query returned more than {max_rows} rows (query_max_rows)"
            )));
        }
        let object: &str = row.try_get(0)?;
        if count > 0 {
            json.push(',');
        }
        json.push_str(object);
        count += 1;
    }
    json.push(']');
    Ok(json)
}

/// A parameter sent in PostgreSQL's text format, converted by the server to
/// whatever type the statement gives it, as `psql` would.
#[derive(Debug)]
struct TextParam<'a>(&'a str);

impl ToSql for TextParam<'_> {
    fn to_sql(
        &self,
        _: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        out.extend_from_slice(self.0.as_bytes());
        Ok(IsNull::No)
    }

    fn accepts(_: &Type) -> bool {
        true
    }

    fn encode_format(&self, _: &Type) -> Format {
        Format::Text
    }

    to_sql_checked!();
}
