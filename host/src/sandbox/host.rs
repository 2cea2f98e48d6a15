//! What a plugin's store holds, and the host functions it may call.

use super::stdio::{GuestOutput, Stdio};
use crate::bindings::pgnotifier::plugin::{host, types};
use crate::bindings::Level;
use std::sync::Arc;
use wasmtime::component::ResourceTable;
use wasmtime::{StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

/// The longest log message kept from a plugin; the rest is cut.
const MAX_LOG_MESSAGE: usize = 64 * 1024;

/// Per-store state: the subscriber id, WASI with nothing granted, and limits.
pub struct HostState {
    pub(crate) id: Arc<str>,
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) limits: StoreLimits,
}

impl HostState {
    pub(crate) fn new(id: Arc<str>, memory_bytes: usize) -> Self {
        // No preopened directories, no environment, no arguments, no network:
        // the builder grants none of these unless asked.
        let wasi = WasiCtx::builder()
            .stdout(GuestOutput::new(id.clone(), Stdio::Stdout))
            .stderr(GuestOutput::new(id.clone(), Stdio::Stderr))
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        let limits = StoreLimitsBuilder::new()
            .memory_size(memory_bytes)
            .trap_on_grow_failure(true)
            .build();
        Self {
            id,
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

impl types::Host for HostState {}

impl host::Host for HostState {
    fn log(&mut self, level: Level, message: String) {
        let id = &*self.id;
        let (message, cut) = if message.len() > MAX_LOG_MESSAGE {
            let mut end = MAX_LOG_MESSAGE;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            (&message[..end], " [message truncated]")
        } else {
            (message.as_str(), "")
        };
        match level {
            Level::Trace => {
                tracing::trace!(target: "pgnotifier::plugin", subscriber = %id, "{message}{cut}")
            }
            Level::Debug => {
                tracing::debug!(target: "pgnotifier::plugin", subscriber = %id, "{message}{cut}")
            }
            Level::Info => {
                tracing::info!(target: "pgnotifier::plugin", subscriber = %id, "{message}{cut}")
            }
            Level::Warn => {
                tracing::warn!(target: "pgnotifier::plugin", subscriber = %id, "{message}{cut}")
            }
            Level::Error => {
                tracing::error!(target: "pgnotifier::plugin", subscriber = %id, "{message}{cut}")
            }
        }
    }
}
