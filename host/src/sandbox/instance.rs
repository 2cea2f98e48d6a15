//! One subscriber's live instance, called on its worker thread.

use super::host::HostState;
use super::{CompiledPlugin, LoadError, Sandbox, EPOCH_TICK};
use crate::bindings::{v0_1, v0_2, v0_3, v0_4, BatchFailure, BatchItem, Plugin, Registration};
use crate::capabilities::PluginCapabilities;
use crate::dispatch::{
    one_by_one, CallCancel, CallFailure, Deliver, DurableEvent, Gap, Notification,
};
use crate::printable::with_causes;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use wasmtime::component::{ComponentExportIndex, Func};
use wasmtime::{Engine, Store, Trap, UpdateDeadline};

/// Limits applied to every call into one plugin.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct PluginLimits {
    /// Deadline per call (and for `register`): wall-clock time, or CPU
    /// time for a plugin with grants, so waiting on a capability does not
    /// use it up.
    pub timeout: Duration,
    /// Cap on the instance's linear memory, in bytes.
    pub memory_bytes: usize,
}

impl Default for PluginLimits {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(1),
            memory_bytes: 64 << 20,
        }
    }
}

/// Everything needed to (re)create a subscriber's instance.
struct PluginCode {
    id: Arc<str>,
    path: PathBuf,
    pre: CompiledPlugin,
    engine: Engine,
    limits: PluginLimits,
    config: Vec<(String, String)>,
    capabilities: Arc<PluginCapabilities>,
}

struct Live {
    store: Store<HostState>,
    plugin: Instance,
}

/// An instance's exports, by the WIT version it targets.
enum Instance {
    /// `batch`: its `on-notify-batch`, if it exports one.
    V5 {
        plugin: Plugin,
        batch: Option<Func>,
    },
    V4 {
        plugin: v0_4::Plugin,
        batch: Option<Func>,
    },
    V3(v0_3::Plugin),
    V2(v0_2::Plugin),
    V1(v0_1::Plugin),
}

/// Run `$call` on the `subscriber` export of any version; all have the
/// same functions over the same types.
macro_rules! subscriber {
    ($instance:expr, |$s:ident| $call:expr) => {
        match $instance {
            Instance::V5 { plugin, .. } => {
                let $s = plugin.pgnotifier_plugin_subscriber();
                $call
            }
            Instance::V4 { plugin, .. } => {
                let $s = plugin.pgnotifier_plugin_subscriber();
                $call
            }
            Instance::V3(plugin) => {
                let $s = plugin.pgnotifier_plugin_subscriber();
                $call
            }
            Instance::V2(plugin) => {
                let $s = plugin.pgnotifier_plugin_subscriber();
                $call
            }
            Instance::V1(plugin) => {
                let $s = plugin.pgnotifier_plugin_subscriber();
                $call
            }
        }
    };
}

/// A wasm plugin as a subscriber: one long-lived instance, recycled after a
/// trap or timeout.
pub(crate) struct WasmSubscriber {
    code: Arc<PluginCode>,
    live: Option<Live>,
    /// The mailbox's, once the subscriber has one.
    cancel: Arc<CallCancel>,
}

impl WasmSubscriber {
    /// Instantiate a compiled plugin and run its `register`.
    pub(crate) fn start(
        sandbox: &Sandbox,
        id: Arc<str>,
        path: &Path,
        pre: CompiledPlugin,
        limits: PluginLimits,
        config: Vec<(String, String)>,
        capabilities: PluginCapabilities,
    ) -> Result<(Self, Registration), LoadError> {
        let code = Arc::new(PluginCode {
            id,
            path: path.to_owned(),
            pre,
            engine: sandbox.engine().clone(),
            limits,
            config,
            capabilities: Arc::new(capabilities),
        });
        let cancel = Arc::new(CallCancel::default());
        let (live, registration) = code.instantiate(&cancel)?;
        Ok((
            Self {
                code,
                live: Some(live),
                cancel,
            },
            registration,
        ))
    }

    /// The live instance, recreated (with `register` run again) if the last one was thrown away.
    fn live(&mut self) -> Result<&mut Live, CallFailure> {
        if self.live.is_none() {
            let (live, _) = self.code.instantiate(&self.cancel).map_err(|e| {
                CallFailure::Trapped(format!("could not recreate the instance: {}", e.reason))
            })?;
            tracing::info!(subscriber = %self.code.id, "instance recycled");
            self.live = Some(live);
        }
        self.live
            .as_mut()
            .ok_or_else(|| CallFailure::Trapped("no instance".into()))
    }

    /// Run `f` in the live instance with the deadline of `notifications`
    /// calls: the plugin's timeout for each.
    fn call<T>(
        &mut self,
        notifications: usize,
        f: impl FnOnce(&mut Live) -> wasmtime::Result<T>,
    ) -> Result<T, CallFailure> {
        let limits = PluginLimits {
            timeout: (self.code.limits.timeout)
                .saturating_mul(u32::try_from(notifications).unwrap_or(u32::MAX)),
            ..self.code.limits
        };
        let live = self.live()?;
        live.store
            .set_epoch_deadline(first_deadline(&live.store, limits.timeout));
        live.store.data_mut().start_call(limits.timeout);
        match f(live) {
            Ok(value) => Ok(value),
            Err(e) => {
                // The instance may be in any state after a trap: throw it away.
                self.live = None;
                Err(match self.cancel.is_cancelled() {
                    true => CallFailure::Cancelled,
                    false => classify(&e, &limits),
                })
            }
        }
    }

    /// An error the plugin returned; when the host cut the call short, the
    /// plugin only passed on what its capability said.
    fn returned(&self, message: String) -> CallFailure {
        match self.cancel.is_cancelled() {
            true => CallFailure::Cancelled,
            false => CallFailure::Returned(message),
        }
    }
}

/// The first epoch deadline of a call: the plugin's timeout, or the next
/// tick for a plugin with grants, whose callback then looks at its CPU time
/// and at [`CallCancel`] every tick.
fn first_deadline(store: &Store<HostState>, timeout: Duration) -> u64 {
    match store.data().cpu {
        Some(_) => 1,
        None => deadline_ticks(timeout),
    }
}

impl Deliver for WasmSubscriber {
    fn on_notify(
        &mut self,
        n: &Notification,
        event: Option<&DurableEvent>,
    ) -> Result<(), CallFailure> {
        let id = self.code.id.clone();
        self.call(1, |live| {
            live.store.data_mut().event = event.copied();
            let called = subscriber!(&live.plugin, |s| s.call_on_notify(
                &mut live.store,
                &id,
                &n.channel,
                &n.payload,
                n.pid,
            ));
            live.store.data_mut().event = None;
            called
        })?
        .map_err(|message| self.returned(message))
    }

    fn on_gap(&mut self, gap: &Arc<Gap>) -> Result<(), CallFailure> {
        let id = self.code.id.clone();
        self.call(1, |live| {
            live.store.data_mut().gap = Some(gap.clone());
            let called = subscriber!(&live.plugin, |s| s.call_on_gap(
                &mut live.store,
                &id,
                &gap.channels
            ));
            live.store.data_mut().gap = None;
            called
        })
    }

    fn set_cancel(&mut self, cancel: Arc<CallCancel>) {
        if let Some(live) = &mut self.live {
            live.store.data_mut().set_cancel(cancel.clone());
        }
        self.cancel = cancel;
    }

    fn batches(&self) -> bool {
        matches!(
            self.code.pre,
            CompiledPlugin::V5 { batch: Some(_), .. } | CompiledPlugin::V4 { batch: Some(_), .. }
        )
    }

    fn on_notify_batch(
        &mut self,
        batch: &[Arc<Notification>],
    ) -> Result<Vec<(usize, CallFailure)>, CallFailure> {
        let Some(first) = batch.first() else {
            return Ok(Vec::new());
        };
        if !self.batches() {
            // A replacement without the export takes a batch taken before the reload.
            return Ok(one_by_one(self, batch));
        }
        let id = self.code.id.clone();
        let items: Vec<BatchItem<'_>> = (batch.iter())
            .map(|n| BatchItem {
                payload: &n.payload,
                pid: n.pid,
            })
            .collect();
        let failures = self.call(batch.len(), |live| {
            let (Instance::V5 {
                batch: Some(func), ..
            }
            | Instance::V4 {
                batch: Some(func), ..
            }) = &live.plugin
            else {
                wasmtime::bail!("the plugin has no on-notify-batch export");
            };
            // Checked at instantiation too; again here, once per batch, rather than
            // an unchecked (unsafe) typed function kept across calls.
            let typed =
                func.typed::<(&str, &str, &[BatchItem<'_>]), (Vec<BatchFailure>,)>(&live.store)?;
            let (failures,) = typed.call(&mut live.store, (&id, &first.channel, &items))?;
            Ok(failures)
        })?;
        Ok(by_index(&self.code.id, failures, batch.len()))
    }
}

/// A batch's failures in increasing index order, each once; an index
/// outside the batch is logged and dropped.
fn by_index(id: &str, failures: Vec<BatchFailure>, len: usize) -> Vec<(usize, CallFailure)> {
    let mut failed: Vec<(usize, CallFailure)> = Vec::with_capacity(failures.len());
    let (mut ignored, mut first_ignored) = (0usize, None);
    for BatchFailure { index, message } in failures {
        match usize::try_from(index) {
            Ok(at) if at < len => failed.push((at, CallFailure::Returned(message))),
            _ => {
                ignored += 1;
                first_ignored.get_or_insert(index);
            }
        }
    }
    if let Some(first) = first_ignored {
        // One line per batch, however many a plugin names.
        tracing::warn!(subscriber = %id, ignored, "on-notify-batch named {ignored} notification(s) outside its batch of {len}, the first {first}; ignored");
    }
    failed.sort_by_key(|(index, _)| *index);
    failed.dedup_by_key(|(index, _)| *index);
    failed
}

impl PluginCode {
    fn instantiate(&self, cancel: &Arc<CallCancel>) -> Result<(Live, Registration), LoadError> {
        let state = HostState::new(
            self.id.clone(),
            self.limits.memory_bytes,
            self.capabilities.clone(),
            self.limits.timeout,
            cancel.clone(),
        );
        let cpu_deadline = state.cpu.is_some();
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limits);
        if cpu_deadline {
            // Capability calls may wait for seconds, bounded by their own
            // limits; at the deadline, only the CPU time used counts. Looked
            // at every tick, with the cancel flag: a call cut short ends at
            // the next tick once its capability call returns.
            store.epoch_deadline_callback(|store| {
                let state = store.data();
                let left = state.cpu.as_ref().map_or(Duration::ZERO, |c| c.left());
                Ok(match left.is_zero() || state.cancel.is_cancelled() {
                    true => UpdateDeadline::Interrupt,
                    false => UpdateDeadline::Continue(1),
                })
            });
        } else {
            store.epoch_deadline_trap();
        }
        store.set_epoch_deadline(first_deadline(&store, self.limits.timeout));
        let instantiated = match &self.pre {
            CompiledPlugin::V5 { pre, batch } => (|| -> wasmtime::Result<Instance> {
                let instance = pre.instance_pre().instantiate(&mut store)?;
                let plugin = Plugin::new(&mut store, &instance)?;
                let batch = batch_export(&mut store, &instance, batch.as_ref())?;
                Ok(Instance::V5 { plugin, batch })
            })(),
            CompiledPlugin::V4 { pre, batch } => (|| -> wasmtime::Result<Instance> {
                let instance = pre.instance_pre().instantiate(&mut store)?;
                let plugin = v0_4::Plugin::new(&mut store, &instance)?;
                let batch = batch_export(&mut store, &instance, batch.as_ref())?;
                Ok(Instance::V4 { plugin, batch })
            })(),
            CompiledPlugin::V3(pre) => pre.instantiate(&mut store).map(Instance::V3),
            CompiledPlugin::V2(pre) => pre.instantiate(&mut store).map(Instance::V2),
            CompiledPlugin::V1(pre) => pre.instantiate(&mut store).map(Instance::V1),
        };
        let plugin = instantiated.map_err(|e| {
            LoadError::new(
                &self.path,
                format!("instantiation failed: {}", classify(&e, &self.limits)),
            )
        })?;
        store.set_epoch_deadline(first_deadline(&store, self.limits.timeout));
        store.data_mut().start_call(self.limits.timeout);
        let registration = subscriber!(&plugin, |s| s.call_register(
            &mut store,
            &self.id,
            &self.config
        ))
        .map_err(|e| {
            LoadError::new(
                &self.path,
                format!("register {}", classify(&e, &self.limits)),
            )
        })?
        .map_err(|e| LoadError::new(&self.path, format!("register returned an error: {e}")))?;
        Ok((Live { store, plugin }, registration))
    }
}

/// An instance's `on-notify-batch`, if it exports one, checked against the
/// types the host calls it with.
fn batch_export(
    store: &mut Store<HostState>,
    instance: &wasmtime::component::Instance,
    batch: Option<&ComponentExportIndex>,
) -> wasmtime::Result<Option<Func>> {
    let Some(index) = batch else {
        return Ok(None);
    };
    let func = (instance.get_func(&mut *store, index))
        .ok_or_else(|| wasmtime::format_err!("on-notify-batch is not a function"))?;
    func.typed::<(&str, &str, &[BatchItem<'_>]), (Vec<BatchFailure>,)>(&*store)
        .map_err(|e| e.context("on-notify-batch does not match pgnotifier:plugin/batch"))?;
    Ok(Some(func))
}

/// Epoch ticks for a deadline, rounded up, plus one for the tick in progress.
fn deadline_ticks(timeout: Duration) -> u64 {
    let tick = EPOCH_TICK.as_nanos().max(1);
    (timeout.as_nanos().div_ceil(tick) as u64).saturating_add(1)
}

fn classify(e: &wasmtime::Error, limits: &PluginLimits) -> CallFailure {
    if matches!(e.downcast_ref::<Trap>(), Some(Trap::Interrupt)) {
        return CallFailure::TimedOut(limits.timeout);
    }
    let message = with_causes(e.as_ref());
    if message.contains("forcing trap when growing memory") {
        return CallFailure::Trapped(format!(
            "memory limit of {} MiB reached: {message}",
            limits.memory_bytes >> 20
        ));
    }
    CallFailure::Trapped(message)
}
