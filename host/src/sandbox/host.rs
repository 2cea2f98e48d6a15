//! What a plugin's store holds, and the host functions it may call.

use super::guest_log::{cut_at, GuestLog};
use super::stdio::{GuestOutput, Stdio};
use crate::bindings::Level;
use std::sync::Arc;
use wasmtime::component::{Linker, ResourceTable, WasmStr};
use wasmtime::{StoreContextMut, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

/// The longest log message kept from a plugin; the rest is cut.
const MAX_LOG_MESSAGE: usize = 64 * 1024;

/// Per-store state: the subscriber id, WASI with nothing granted, and limits.
pub struct HostState {
    log: Arc<GuestLog>,
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) limits: StoreLimits,
}

impl HostState {
    pub(crate) fn new(id: Arc<str>, memory_bytes: usize) -> Self {
        // No preopened directories, no environment, no arguments, no network:
        // the builder grants none of these unless asked.
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
            limits,
        }
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Link the host interface. `log` takes the message as a view into guest
/// memory, so even a huge message is never copied: only what is kept is read.
pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.instance("pgnotifier:plugin/types@0.1.0")?;
    linker.instance("pgnotifier:plugin/host@0.1.0")?.func_wrap(
        "log",
        |store: StoreContextMut<'_, HostState>, (level, message): (Level, WasmStr)| {
            let text = message.to_str(&store)?;
            let (kept, truncated) = cut_at(&text, MAX_LOG_MESSAGE);
            store.data().log.write(level, None, kept, truncated);
            Ok(())
        },
    )
}
