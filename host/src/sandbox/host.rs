//! What a plugin's store holds, and the host functions it may call.

use super::guest_log::{cut_at, GuestLog};
use super::stdio::{GuestOutput, Stdio};
use crate::bindings::pgnotifier::plugin::{delivery, host, publish, query, types};
use crate::bindings::v0_4::pgnotifier::plugin::delivery as delivery_0_4;
use crate::bindings::{Level, Plugin};
use crate::capabilities::{HttpGate, PluginCapabilities};
use crate::dispatch::{CallCancel, DurableEvent, Gap, GapCause};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use wasmtime::component::{HasSelf, Linker, ResourceTable, WasmStr};
use wasmtime::{StoreContextMut, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

/// The longest log message kept from a plugin; the rest is cut.
const MAX_LOG_MESSAGE: usize = 64 * 1024;

/// The current WIT version, whose `host.log` is shadowed by [`log_in_place`].
const CURRENT: &str = "0.5.0";

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
    /// What `delivery` answers during the call in progress.
    pub(crate) event: Option<DurableEvent>,
    pub(crate) gap: Option<Arc<Gap>>,
    /// Asks the call in progress to end: no capability is used after it.
    pub(crate) cancel: Arc<CallCancel>,
}

impl HostState {
    pub(crate) fn new(
        id: Arc<str>,
        memory_bytes: usize,
        capabilities: Arc<PluginCapabilities>,
        timeout: Duration,
        cancel: Arc<CallCancel>,
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
            http_gate: capabilities.http_gate(cancel.clone()),
            cpu: (!capabilities.grants.is_empty()).then(|| CpuClock::new(timeout)),
            capabilities,
            limits,
            event: None,
            gap: None,
            cancel,
        }
    }

    /// Use `cancel` from now on (the mailbox's, once it has one).
    pub(crate) fn set_cancel(&mut self, cancel: Arc<CallCancel>) {
        self.http_gate.set_cancel(cancel.clone());
        self.cancel = cancel;
    }

    /// Refuse a capability once the call is cut short.
    fn refuse_if_cancelled(&self) -> Result<(), String> {
        match self.cancel.is_cancelled() {
            true => Err("cancelled: this host no longer feeds the subscriber".to_owned()),
            false => Ok(()),
        }
    }

    /// A top-level call into the guest starts.
    /// A call starts, with `budget` of CPU time when the deadline counts CPU.
    pub(crate) fn start_call(&mut self, budget: Duration) {
        if let Some(cpu) = &mut self.cpu {
            cpu.start(budget);
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

    fn start(&mut self, budget: Duration) {
        self.budget = budget;
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

// The current WIT's imports, implemented on the generated traits: a change
// to the WIT breaks this build, not a plugin load.
impl types::Host for HostState {}

impl host::Host for HostState {
    /// Shadowed in the linker by [`log_in_place`], which reads the message in
    /// guest memory instead of copying it first; kept as the same behaviour.
    fn log(&mut self, level: Level, message: String) {
        let (kept, truncated) = cut_at(&message, MAX_LOG_MESSAGE);
        self.log.write(level, None, kept, truncated);
    }
}

impl publish::Host for HostState {
    fn publish(&mut self, channel: String, payload: String) -> Result<(), String> {
        self.refuse_if_cancelled()?;
        (self.capabilities.publish(&channel, &payload)).map_err(|e| e.to_string())
    }
}

impl query::Host for HostState {
    fn query(&mut self, sql: String, params: Vec<String>) -> Result<String, String> {
        self.refuse_if_cancelled()?;
        (self.capabilities.query(&sql, &params)).map_err(|e| e.to_string())
    }
}

impl delivery::Host for HostState {
    fn current_event(&mut self) -> Option<delivery::Event> {
        self.event.map(|event| delivery::Event {
            id: event.id,
            key: event.key.to_string(),
            attempt: event.attempt,
            sent_at: unix_micros(event.sent_at),
        })
    }

    fn current_gap(&mut self) -> Option<delivery::Gap> {
        self.gap.as_ref().map(|gap| delivery::Gap {
            lost_at: gap.lost_at.map(unix_micros),
            resumed_at: unix_micros(gap.resumed_at),
            cause: match &gap.cause {
                GapCause::ConnectionLost(why) => delivery::GapCause::ConnectionLost(why.clone()),
                GapCause::Pruned(count) => delivery::GapCause::Pruned(*count),
            },
        })
    }
}

/// The WIT's `timestamp`: microseconds since the Unix epoch.
fn unix_micros(at: SystemTime) -> delivery::Timestamp {
    match at.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(since) => i64::try_from(since.as_micros()).unwrap_or(i64::MAX),
        Err(before) => i64::try_from(before.duration().as_micros()).map_or(i64::MIN, |us| -us),
    }
}

/// `log` taking the message as a view into guest memory, so even a huge
/// message is never copied: only what is kept is read.
fn log_in_place(
    store: StoreContextMut<'_, HostState>,
    (level, message): (Level, WasmStr),
) -> wasmtime::Result<()> {
    let text = message.to_str(&store)?;
    let (kept, truncated) = cut_at(&text, MAX_LOG_MESSAGE);
    store.data().log.write(level, None, kept, truncated);
    Ok(())
}

/// The durable event as 0.3.0 and 0.4.0 plugins see it: without its key.
fn keyless_event(state: &mut HostState) -> Option<delivery_0_4::Event> {
    state.event.map(|event| delivery_0_4::Event {
        id: event.id,
        attempt: event.attempt,
        sent_at: unix_micros(event.sent_at),
    })
}

/// Link `wasi:http`, every import of the current WIT through the generated
/// bindings, and the frozen 0.1.0 to 0.4.0 interfaces. bindgen's `with`
/// shares their types with the current ones, but its generated linker would
/// name the current interfaces, so the older instances are named here.
pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    wasmtime_wasi_http::p2::add_only_http_to_linker_sync(linker)?;
    Plugin::add_to_linker::<HostState, HasSelf<HostState>>(linker, |state| state)?;
    linker.allow_shadowing(true);
    linker
        .instance(&format!("pgnotifier:plugin/host@{CURRENT}"))?
        .func_wrap("log", log_in_place)?;
    linker.allow_shadowing(false);
    for version in ["0.1.0", "0.2.0", "0.3.0", "0.4.0"] {
        linker.instance(&format!("pgnotifier:plugin/types@{version}"))?;
        linker
            .instance(&format!("pgnotifier:plugin/host@{version}"))?
            .func_wrap("log", log_in_place)?;
    }
    for version in ["0.2.0", "0.3.0", "0.4.0"] {
        linker
            .instance(&format!("pgnotifier:plugin/publish@{version}"))?
            .func_wrap(
                "publish",
                |mut store: StoreContextMut<'_, HostState>,
                 (channel, payload): (String, String)| {
                    Ok((publish::Host::publish(store.data_mut(), channel, payload),))
                },
            )?;
        linker
            .instance(&format!("pgnotifier:plugin/query@{version}"))?
            .func_wrap(
                "query",
                |mut store: StoreContextMut<'_, HostState>,
                 (sql, params): (String, Vec<String>)| {
                    Ok((query::Host::query(store.data_mut(), sql, params),))
                },
            )?;
    }
    for version in ["0.3.0", "0.4.0"] {
        let mut keyless = linker.instance(&format!("pgnotifier:plugin/delivery@{version}"))?;
        keyless.func_wrap(
            "current-event",
            |mut store: StoreContextMut<'_, HostState>, (): ()| {
                Ok((keyless_event(store.data_mut()),))
            },
        )?;
        keyless.func_wrap(
            "current-gap",
            |mut store: StoreContextMut<'_, HostState>, (): ()| {
                Ok((delivery::Host::current_gap(store.data_mut()),))
            },
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_log_shadowed_in_place_is_the_current_wit_version() {
        let package = format!("package pgnotifier:plugin@{};", super::CURRENT);
        assert!(crate::bindings::WIT.contains(&package), "{package}");
    }
}
