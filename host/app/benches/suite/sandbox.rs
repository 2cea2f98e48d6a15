//! 6. The sandbox's own cost per call.

use super::*;

impl Bench {
    /// 6. The sandbox's own cost per call: the noop plugin's `on-notify`
    ///    called in a loop, with the engine's epoch checks (our deadlines) on
    ///    and off, on a store like the host's.
    pub(crate) fn sandbox(&mut self) -> anyhow::Result<()> {
        const CALLS: u32 = 200_000;
        // Taken in turn, so that neither side gets the warmer machine.
        let (mut on, mut off) = (Vec::new(), Vec::new());
        for _ in 0..REPEATS {
            on.push(noop_call_ns(&self.noop, true, CALLS)?);
            off.push(noop_call_ns(&self.noop, false, CALLS)?);
        }
        let (on, off) = (median(&mut on), median(&mut off));
        self.record(
            "sandbox_call",
            "one on-notify call into the noop plugin: epoch deadlines on / off".into(),
            format!(
                "{on:.0} ns / {off:.0} ns ({:+.0} ns for deadlines)",
                on - off
            ),
            &[("epochs_on_ns", on), ("epochs_off_ns", off)],
        );
        Ok(())
    }
}

/// Nanoseconds per `on-notify` call of `component`, typed 16-byte payload.
pub(crate) fn noop_call_ns(component: &[u8], epochs: bool, calls: u32) -> anyhow::Result<f64> {
    use pgnotifier::bindings::{Level, Plugin};
    use wasmtime::component::{Component, Linker, WasmStr};
    let mut config = wasmtime::Config::new();
    config.epoch_interruption(epochs);
    let engine = wasmtime::Engine::new(&config)?;
    let component = Component::new(&engine, component)?;
    let mut linker: Linker<()> = Linker::new(&engine);
    linker.instance("pgnotifier:plugin/types@0.2.0")?;
    linker
        .instance("pgnotifier:plugin/host@0.2.0")?
        .func_wrap("log", |_, (_, _): (Level, WasmStr)| Ok(()))?;
    let mut store = wasmtime::Store::new(&engine, ());
    if epochs {
        store.set_epoch_deadline(u64::MAX / 2);
    }
    let plugin = Plugin::instantiate(&mut store, &component, &linker)?;
    let subscriber = plugin.pgnotifier_plugin_subscriber();
    let payload = Payload::Integer(1_000_000_000_000_001);
    let started = Instant::now();
    for _ in 0..calls {
        if epochs {
            // The host sets the deadline before every call; so does this loop.
            store.set_epoch_deadline(1_000);
        }
        subscriber
            .call_on_notify(&mut store, "noop", "bench", &payload, 4242)?
            .map_err(anyhow::Error::msg)?;
    }
    Ok(started.elapsed().as_nanos() as f64 / f64::from(calls))
}
