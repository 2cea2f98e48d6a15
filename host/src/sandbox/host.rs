//! What a plugin's store holds, and the host functions it may call.

use super::guest_log::{cut_at, GuestLog};
use super::stdio::{GuestOutput, Stdio};
use crate::bindings::Level;
use crate::capabilities::{HttpGate, PluginCapabilities};
use std::sync::Arc;
use std::time::Duration;
use wasmtime::component::{Linker, ResourceTable, WasmStr};
use wasmtime::{StoreContextMut, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

/// The longest log message kept from a plugin; the rest is cut.
const MAX_LOG_MESSAGE: usize = 64 * 1024;

/// The WIT versions the host links; a plugin may target any of them.
const VERSIONS: [&str; 2] = ["0.1.0", "0.2.0"];

/// Per-store state: the subscriber id, WASI with nothing granted, the
/// plugin's capabilities, and limits.
pub struct HostState {
    log: Arc<GuestLog>,
    wasi: WasiCtx,
    table: ResourceTable,
    http: WasiHttpCtx,
    http_gate: HttpGate,
    capabilities: Arc<PluginCapabilities>,
    pub(crate) limits: StoreLimits,
    /// Only for plugins with grants: the others never wait in a host call.
    pub(crate) cpu: Option<CpuClock>,
}

impl HostState {
    pub(crate) fn new(
        id: Arc<str>,
        memory_bytes: usize,
        capabilities: Arc<PluginCapabilities>,
        timeout: Duration,
    ) -> Self {
        // No preopened directories, no environment, no arguments, no network:
        // the builder grants none of these unless asked. HTTP goes through
        // `wasi:http` and the plugin's gate, never raw sockets.
        let log = GuestLog::new(id);
        let wasi = WasiCtx::builder()
            .stdout(GuestOutput::new(log.clone(), Stdio::Stdout))
            .stderr(GuestOutput::new(log.clone(), Stdio::Stderr))
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        let limits = StoreLimitsBuilder::new()
            .memory_size(memory_bytes)
            .trap_on_grow_failure(true)
            .build();
        Self {
            log,
            wasi,
            table: ResourceTable::new(),
            http: WasiHttpCtx::new(),
            http_gate: capabilities.http_gate(),
            cpu: (!capabilities.grants.is_empty()).then(|| CpuClock::new(timeout)),
            capabilities,
            limits,
        }
    }

    /// A top-level call into the guest starts.
    pub(crate) fn start_call(&mut self) {
        if let Some(cpu) = &mut self.cpu {
            cpu.start();
        }
    }
}

/// The CPU time the current call has used on this thread. For plugins with
/// grants, the deadline counts CPU time, so waiting on a query or an HTTP
/// response (bounded by that capability's own limit) does not use it up.
pub(crate) struct CpuClock {
    budget: Duration,
    started: Duration,
}

impl CpuClock {
    fn new(budget: Duration) -> Self {
        Self {
            budget,
            started: thread_cpu_time(),
        }
    }

    fn start(&mut self) {
        self.started = thread_cpu_time();
    }

    /// What is left of the budget.
    pub(crate) fn left(&self) -> Duration {
        let used = thread_cpu_time().saturating_sub(self.started);
        self.budget.saturating_sub(used)
    }
}

/// CPU time used by the calling thread.
fn thread_cpu_time() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, writable timespec; the clock id is a constant
    // Linux supports. On failure `now` stays zero and the budget runs out at
    // the wall-clock deadline, as without grants.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    Duration::new(
        now.tv_sec.max(0) as u64,
        now.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for HostState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.http_gate,
        }
    }
}

/// Link the host interfaces of every supported WIT version, and `wasi:http`.
/// `log` takes the message as a view into guest memory, so even a huge
/// message is never copied: only what is kept is read.
pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    wasmtime_wasi_http::p2::add_only_http_to_linker_sync(linker)?;
    for version in VERSIONS {
        linker.instance(&format!("pgnotifier:plugin/types@{version}"))?;
        linker
            .instance(&format!("pgnotifier:plugin/host@{version}"))?
            .func_wrap(
                "log",
                |store: StoreContextMut<'_, HostState>, (level, message): (Level, WasmStr)| {
                    let text = message.to_str(&store)?;
                    let (kept, truncated) = cut_at(&text, MAX_LOG_MESSAGE);
                    store.data().log.write(level, None, kept, truncated);
                    Ok(())
                },
            )?;
    }
    linker
        .instance("pgnotifier:plugin/publish@0.2.0")?
        .func_wrap(
            "publish",
            |store: StoreContextMut<'_, HostState>, (channel, payload): (WasmStr, WasmStr)| {
                let channel = channel.to_str(&store)?;
                let payload = payload.to_str(&store)?;
                Ok((store.data().capabilities.publish(&channel, &payload),))
            },
        )?;
    linker
        .instance("pgnotifier:plugin/query@0.2.0")?
        .func_wrap(
            "query",
            |store: StoreContextMut<'_, HostState>, (sql, params): (String, Vec<String>)| {
                Ok((store.data().capabilities.query(&sql, &params),))
            },
        )?;
    Ok(())
}
