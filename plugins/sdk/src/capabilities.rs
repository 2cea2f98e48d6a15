//! What the host lets a plugin do beyond its own memory: log, publish,
//! query, and read the delivery it is in. Built for wasm these are the WIT
//! imports; built natively (`cargo test`) they go to the thread's
//! [`crate::testing::MockHost`].

use crate::{Event, Gap};
use anyhow::{anyhow, Result};
use serde::de::DeserializeOwned;

/// Send `NOTIFY channel, payload` on the host's database. Needs
/// `[grants] publish = ["channel"]`.
pub fn publish(channel: &str, payload: &str) -> Result<()> {
    host::publish(channel, payload).map_err(anyhow::Error::msg)
}

/// Run one SQL statement with `$1`, `$2`, ... bound to `params` (as text),
/// and read each row as a `T`: a struct with the column names as fields, or
/// `serde_json::Value`. Needs `[grants] query = true` (read-only) or
/// `query_write = true`.
pub fn query<T: DeserializeOwned>(sql: &str, params: &[&str]) -> Result<Vec<T>> {
    let params: Vec<String> = params.iter().map(|p| (*p).to_owned()).collect();
    let rows = host::query(sql, &params).map_err(anyhow::Error::msg)?;
    serde_json::from_str(&rows).map_err(|e| {
        anyhow!(
            "rows of {sql:?} are not {}: {e}",
            crate::config::short_type_name::<T>()
        )
    })
}

/// In [`crate::Plugin::on_gap`]: when the gap began and ended, and why.
pub fn current_gap() -> Option<Gap> {
    host::current_gap()
}

pub(crate) fn current_event() -> Option<Event> {
    host::current_event()
}

#[cfg(target_arch = "wasm32")]
pub(crate) mod host {
    use crate::bindings::pgnotifier::plugin::{delivery, host, publish, query};
    pub use delivery::{current_event, current_gap};
    pub use host::log;
    pub use publish::publish;
    pub use query::query;
}

#[cfg(not(target_arch = "wasm32"))]
pub(crate) use crate::testing::host;
