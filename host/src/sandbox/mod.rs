//! The sandbox: one wasmtime engine, plugin components, and their instances.
//!
//! Linking happens once per component (`PluginPre`); each subscriber gets one
//! long-lived instance in its own store, with a memory cap and a per-call
//! epoch deadline. A trap or timeout throws that instance away; the next call
//! gets a fresh one, with `register` run again. Plugins may target the
//! current WIT (0.5.0, with or without the optional `batch` export), 0.4.0, 0.3.0,
//! 0.2.0 or 0.1.0.

mod guest_log;
mod host;
mod instance;
mod stdio;

pub use instance::PluginLimits;
pub(crate) use instance::WasmSubscriber;

use crate::bindings::{
    v0_1, v0_2, v0_3, v0_4, PluginPre, BATCH_FUNCTION, BATCH_INTERFACE, BATCH_INTERFACE_0_4,
};
use crate::capabilities::{CapabilityPool, Offline};
use crate::printable::{printable, with_causes};
use host::HostState;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use wasmtime::component::{Component, ComponentExportIndex, Linker};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// How often the engine's epoch advances; deadlines are rounded up to it.
/// Each tick wakes a thread, busy or idle, and costs CPU whether or not a
/// call runs, so it is as coarse as a deadline can bear.
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Why a plugin could not be loaded. Always names the file. Printed with
/// control characters escaped: file names and a plugin's own error text
/// come from outside.
#[derive(Debug, thiserror::Error)]
pub struct LoadError {
    pub path: PathBuf,
    pub reason: String,
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let path = self.path.display().to_string();
        write!(
            f,
            "plugin {}: {}",
            printable(&path),
            printable(&self.reason)
        )
    }
}

impl LoadError {
    pub(crate) fn new(path: &Path, reason: impl std::fmt::Display) -> Self {
        Self {
            path: path.to_owned(),
            reason: reason.to_string(),
        }
    }
}

/// Engine-wide settings.
#[derive(Clone, Debug)]
pub struct SandboxSettings {
    /// Where compiled code is cached; `None` disables the cache.
    pub cache_dir: Option<PathBuf>,
    /// How many instances the pooling allocator reserves room for.
    pub max_instances: u32,
    /// The largest payload `pgnotifier.send` accepts, and so the largest a
    /// plugin is handed ([`MAX_PAYLOAD_BYTES`] holds it); an at-least-once
    /// plugin's memory must hold a few.
    pub max_payload_bytes: u32,
}

/// `max_payload_bytes` unless set: 1 MiB.
pub const DEFAULT_MAX_PAYLOAD_BYTES: u32 = 1 << 20;

/// What `max_payload_bytes` may be: from what `pg_notify` takes to 256 MiB,
/// the most a `jsonb` value holds.
pub const MAX_PAYLOAD_BYTES: std::ops::RangeInclusive<u32> = 8000..=256 << 20;

/// How many payloads of `max_payload_bytes` an at-least-once plugin's
/// memory must hold: the payload as the guest receives it, its decoded
/// copy, and room for the plugin's own work.
pub const PAYLOADS_IN_MEMORY: usize = 4;

impl Default for SandboxSettings {
    fn default() -> Self {
        Self {
            cache_dir: default_cache_dir(),
            max_instances: 1000,
            max_payload_bytes: DEFAULT_MAX_PAYLOAD_BYTES,
        }
    }
}

/// `$XDG_CACHE_HOME/pgnotifier/wasm` or `~/.cache/pgnotifier/wasm`.
pub fn default_cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("pgnotifier").join("wasm"))
}

/// Compile cache counters since the engine started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct CacheStats {
    /// Plugins whose compiled code came from the cache.
    pub hits: usize,
    /// Plugins compiled and written to the cache.
    pub misses: usize,
}

/// A compiled and linked plugin, by the WIT version it targets.
#[derive(Clone)]
pub(crate) enum CompiledPlugin {
    /// `batch`: where its `on-notify-batch` is, if it exports one.
    V5 {
        pre: PluginPre<HostState>,
        batch: Option<ComponentExportIndex>,
    },
    V4 {
        pre: v0_4::PluginPre<HostState>,
        batch: Option<ComponentExportIndex>,
    },
    V3(v0_3::PluginPre<HostState>),
    V2(v0_2::PluginPre<HostState>),
    V1(v0_1::PluginPre<HostState>),
}

impl CompiledPlugin {
    /// The version of the `pgnotifier:plugin` package the plugin targets.
    pub(crate) fn wit_version(&self) -> &'static str {
        match self {
            CompiledPlugin::V5 { .. } => "0.5.0",
            CompiledPlugin::V4 { .. } => "0.4.0",
            CompiledPlugin::V3(_) => "0.3.0",
            CompiledPlugin::V2(_) => "0.2.0",
            CompiledPlugin::V1(_) => "0.1.0",
        }
    }
}

/// The engine, the linker and the epoch ticker, shared by every plugin, and
/// the database pool behind the `publish` and `query` capabilities.
pub struct Sandbox {
    engine: Engine,
    linker: Linker<HostState>,
    cache: Option<wasmtime::Cache>,
    ticker_stop: Arc<AtomicBool>,
    pool: Option<Arc<CapabilityPool>>,
    /// How capabilities behave for `pgnotifier call`; the host's by default.
    offline: Offline,
    /// The largest payload a plugin is handed ([`SandboxSettings`]).
    max_payload_bytes: u32,
}

impl Sandbox {
    /// A sandbox without a database: capability calls that need one fail.
    pub fn new(config: &SandboxSettings) -> anyhow::Result<Arc<Self>> {
        Self::with_pool(config, None)
    }

    /// A sandbox whose plugins' `publish` and `query` go through `pool`.
    pub fn with_pool(
        config: &SandboxSettings,
        capability_pool: Option<Arc<CapabilityPool>>,
    ) -> anyhow::Result<Arc<Self>> {
        Self::build(config, capability_pool, Offline::default())
    }

    fn build(
        config: &SandboxSettings,
        capability_pool: Option<Arc<CapabilityPool>>,
        offline: Offline,
    ) -> anyhow::Result<Arc<Self>> {
        let mut wasm = Config::new();
        wasm.epoch_interruption(true);
        wasm.wasm_component_model(true);
        let mut pool = PoolingAllocationConfig::new();
        let instances = config.max_instances.max(1);
        pool.total_component_instances(instances)
            .total_core_instances(instances.saturating_mul(4))
            .total_memories(instances.saturating_mul(2))
            .total_tables(instances.saturating_mul(4))
            .max_memories_per_component(8)
            .max_tables_per_component(16)
            .max_core_instances_per_component(64)
            .table_elements(100_000)
            .max_core_instance_size(8 << 20)
            .max_component_instance_size(8 << 20);
        wasm.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        // wasmtime's cache keys entries by the wasm's hash, the engine's
        // settings and its version, and recompiles when an entry does not load.
        let cache = config.cache_dir.as_ref().and_then(|dir| {
            let mut cache = wasmtime::CacheConfig::new();
            cache.with_directory(dir);
            wasmtime::Cache::new(cache)
                .inspect_err(
                    |e| tracing::warn!(dir = %dir.display(), "compile cache disabled: {e}"),
                )
                .ok()
        });
        wasm.cache(cache.clone());
        // Its whole chain: the top alone ("failed to create memory pool
        // mapping") hides the system's reason.
        let engine = Engine::new(&wasm).map_err(|e| anyhow::anyhow!("{e:#}"))?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)
            .map_err(|e| anyhow::anyhow!("linking WASI: {e}"))?;
        host::add_to_linker(&mut linker)
            .map_err(|e| anyhow::anyhow!("linking the host interface: {e}"))?;

        let ticker_stop = Arc::new(AtomicBool::new(false));
        let ticker_engine = engine.clone();
        let stop = ticker_stop.clone();
        std::thread::Builder::new()
            .name("pgn:epoch".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    ticker_engine.increment_epoch();
                }
            })?;
        Ok(Arc::new(Self {
            engine,
            linker,
            cache,
            ticker_stop,
            pool: capability_pool,
            offline,
            max_payload_bytes: (config.max_payload_bytes)
                .clamp(*MAX_PAYLOAD_BYTES.start(), *MAX_PAYLOAD_BYTES.end()),
        }))
    }

    /// The largest payload a plugin is handed.
    pub fn max_payload_bytes(&self) -> u32 {
        self.max_payload_bytes
    }

    /// Compile and link a plugin's bytes; `path` names it in errors. Compiled
    /// code comes from the cache when the same bytes were compiled before by
    /// the same engine configuration.
    pub(crate) fn compile(&self, path: &Path, bytes: &[u8]) -> Result<CompiledPlugin, LoadError> {
        check_component_header(path, bytes)?;
        let component = Component::new(&self.engine, bytes).map_err(|e| {
            LoadError::new(
                path,
                format!("invalid component: {}", with_causes(e.as_ref())),
            )
        })?;
        let not_a_plugin = |e: wasmtime::Error| {
            LoadError::new(
                path,
                format!(
                    "not a `pgnotifier:plugin/plugin` component: {}",
                    with_causes(e.as_ref())
                ),
            )
        };
        let pre = self
            .linker
            .instantiate_pre(&component)
            .map_err(not_a_plugin)?;
        let batch_in = |interface: &str| {
            (component.get_export_index(None, interface))
                .and_then(|batch| component.get_export_index(Some(&batch), BATCH_FUNCTION))
        };
        // The current version's error names what is missing for it.
        let current = match PluginPre::new(pre.clone()) {
            Ok(current) => {
                return Ok(CompiledPlugin::V5 {
                    pre: current,
                    batch: batch_in(BATCH_INTERFACE),
                });
            }
            Err(e) => e,
        };
        if let Ok(v4) = v0_4::PluginPre::new(pre.clone()) {
            return Ok(CompiledPlugin::V4 {
                pre: v4,
                batch: batch_in(BATCH_INTERFACE_0_4),
            });
        }
        if let Ok(v3) = v0_3::PluginPre::new(pre.clone()) {
            return Ok(CompiledPlugin::V3(v3));
        }
        if let Ok(v2) = v0_2::PluginPre::new(pre.clone()) {
            return Ok(CompiledPlugin::V2(v2));
        }
        v0_1::PluginPre::new(pre)
            .map(CompiledPlugin::V1)
            .map_err(|_| not_a_plugin(current))
    }

    /// Compile cache counters, if the cache is on.
    pub fn cache_stats(&self) -> Option<CacheStats> {
        self.cache.as_ref().map(|c| CacheStats {
            hits: c.cache_hits(),
            misses: c.cache_misses(),
        })
    }

    pub(crate) fn engine(&self) -> &Engine {
        &self.engine
    }

    pub(crate) fn pool(&self) -> Option<Arc<CapabilityPool>> {
        self.pool.clone()
    }

    /// A sandbox for running plugins offline: without a database, `publish`
    /// logs "would publish CHANNEL PAYLOAD" (after the grant checks) and
    /// succeeds, and `query` answers from `query_fixture`, or fails saying it
    /// needs a database. HTTP reaches the sidecar's granted origins only if
    /// `allow_http`.
    pub(crate) fn offline(
        config: &SandboxSettings,
        capability_pool: Option<Arc<CapabilityPool>>,
        query_fixture: Option<Arc<crate::capabilities::QueryFixture>>,
        allow_http: bool,
    ) -> anyhow::Result<Arc<Self>> {
        let offline = Offline {
            publish_dry_run: capability_pool.is_none(),
            refuse_http: !allow_http,
            query_fixture,
        };
        Self::build(config, capability_pool, offline)
    }

    pub(crate) fn offline_mode(&self) -> &Offline {
        &self.offline
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}

/// Tell a core module, a truncated file and a non-wasm file apart up front,
/// since the compiler's own messages for them are cryptic.
fn check_component_header(path: &Path, bytes: &[u8]) -> Result<(), LoadError> {
    const MAGIC: &[u8] = b"\0asm";
    let refuse = |reason: &str| Err(LoadError::new(path, reason));
    if bytes.len() < 8 {
        return refuse(&format!(
            "file is {} bytes; too short to be a WebAssembly component",
            bytes.len()
        ));
    }
    if &bytes[..4] != MAGIC {
        return refuse("not a WebAssembly file (no `\\0asm` header)");
    }
    match bytes[4..8] {
        [0x0d, 0x00, 0x01, 0x00] => Ok(()),
        [0x01, 0x00, 0x00, 0x00] => refuse(
            "is a core WebAssembly module, not a component; build it for the `plugin` world and wrap it with `wasm-tools component new`",
        ),
        _ => refuse("unsupported WebAssembly version or layer"),
    }
}
