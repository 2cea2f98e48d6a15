//! The benchmark suite: throughput, fan-out, latency, hot reload, memory, the
//! sandbox's per-call cost, reconnect time, the example plugin of each
//! language, the capabilities, durable delivery on each transport, row
//! changes with a trigger and without, and a cluster of hosts, each beside a bare loop or a baseline where a ratio
//! matters. `run-drain` and
//! `run-rates` measure the real `pgnotifier run` from the outside, beside a
//! bare loop in a process of its own (see `out_of_process`).
//!
//! `cargo bench --bench suite` runs everything (a few minutes) against the
//! PostgreSQL the tests use, after `plugins/build`. Pass section names to run
//! some: `cargo bench --bench suite -- drain latency`. Prints a table and
//! writes `target/bench.json`. Each figure is the median of `REPEATS` runs.
//!
//! Each section is a module under `suite/`; `processes` runs `pgnotifier run`
//! as a process of its own, through the tests' `support/process.rs`. This file holds `main`, the
//! bench's state and what the sections share.

use out_of_process::STAMP_SQL;
use pgnotifier::sandbox::SandboxSettings;
use pgnotifier::{DatabaseSettings, Notifier, Payload, PayloadMode, Subscriber};
use pgnotifier_app::local_pg;
use process::Process;
use processes::{RunHost, CLUSTER_N, CLUSTER_TAKEOVER_MS};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio_postgres::{AsyncMessage, Client, NoTls};

#[path = "suite/cluster.rs"]
mod cluster;
#[path = "suite/drain.rs"]
mod drain;
#[path = "suite/durable.rs"]
mod durable;
#[path = "suite/fanout.rs"]
mod fanout;
#[path = "suite/latency.rs"]
mod latency;
#[path = "suite/memory.rs"]
mod memory;
#[path = "suite/out_of_process.rs"]
mod out_of_process;
#[path = "suite/plugins.rs"]
mod plugins;
#[allow(dead_code)] // the tests read more of it than the bench
#[path = "../../../tests/support/process.rs"]
mod process;
#[path = "suite/processes.rs"]
mod processes;
#[path = "suite/reconnect.rs"]
mod reconnect;
#[path = "suite/reload.rs"]
mod reload;
#[path = "suite/row_changes.rs"]
mod row_changes;
#[path = "suite/sandbox.rs"]
mod sandbox;
#[path = "suite/transports.rs"]
mod transports;
#[allow(dead_code)] // the tests read more of it than the bench
#[path = "../../../tests/support/webhook.rs"]
mod webhook;

const REPEATS: usize = 3;

/// The `pgnotifier` binary the out-of-process sections run: this build's,
/// or `PGNOTIFIER_BENCH_BIN`, to measure another build beside it.
fn pgnotifier_bin() -> PathBuf {
    std::env::var_os("PGNOTIFIER_BENCH_BIN")
        .map_or_else(|| env!("CARGO_BIN_EXE_pgnotifier").into(), PathBuf::from)
}

/// The bare loops connect without TLS, so the host must too: otherwise it
/// alone decrypts every notification (`sslmode=prefer` takes TLS wherever
/// the server offers it). A URL that names an sslmode is kept as it is.
fn plain_transport(url: &str) -> String {
    if url.contains("sslmode=") {
        url.to_owned()
    } else if url.contains('?') {
        format!("{url}&sslmode=disable")
    } else {
        format!("{url}?sslmode=disable")
    }
}

/// The connections that send at a fixed rate.
const SENDERS: u32 = 4;

/// How many notifications `send_at_rate` sends: a whole number per sender.
fn sent_at_rate(rate: u32, seconds: f64) -> usize {
    (rate as f64 * seconds / SENDERS as f64) as usize * SENDERS as usize
}

/// Run `task` on a thread of its own with a current-thread runtime, as the
/// bare loops run: one thread, one connection, the least a listener can
/// spend (a task on the bench's multi-thread runtime would spend more, on
/// wake-ups across threads). Its result comes back through the receiver.
fn on_own_thread<T, F>(
    task: impl FnOnce() -> F + Send + 'static,
) -> tokio::sync::oneshot::Receiver<anyhow::Result<T>>
where
    T: Send + 'static,
    F: std::future::Future<Output = anyhow::Result<T>>,
{
    let (result_tx, result_rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let result = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|runtime| runtime.block_on(task()));
        let _ = result_tx.send(result);
    });
    result_rx
}

/// On a current-thread runtime: connect to `url`, LISTEN `channel` (saying
/// so on `listening`), and hand each notification, as it arrives, to
/// `receive` until it returns a result.
async fn bare_listen<T>(
    url: &str,
    channel: &str,
    listening: tokio::sync::oneshot::Sender<anyhow::Result<()>>,
    mut receive: impl FnMut(&tokio_postgres::Notification) -> Option<T>,
) -> anyhow::Result<T> {
    let (client, mut connection) = tokio_postgres::connect(url, NoTls).await?;
    let listen = format!("LISTEN {channel}");
    // Keeps the client, and so the connection, alive.
    let listen = tokio::spawn(async move {
        let listened = client.batch_execute(&listen).await;
        let _ = listening.send(listened.map_err(Into::into));
        std::future::pending::<()>().await;
        drop(client);
    });
    let result = loop {
        match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            Some(Ok(AsyncMessage::Notification(n))) => {
                if let Some(result) = receive(&n) {
                    break Ok(result);
                }
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => break Err(e.into()),
            None => break Err(anyhow::anyhow!("the bare loop's connection closed")),
        }
    };
    listen.abort();
    result
}

/// What most users send, about 200 bytes: a key and a few fields, with the
/// spaces `json_build_object` writes.
const ROW_KEY_SQL: &str = "json_build_object('table', 'orders', 'op', 'UPDATE', 'id', i, 'status', 'paid', 'total', 42.5 + i % 10, 'customer_id', 4000 + i % 977, 'at', '2026-12-02T10:00:00.123456+00:00', 'by', 'checkout-service', 'region', 'eu-west-1')::text";

/// A row-change event as a hand-written trigger emits it, about 1 KB: nested
/// objects (customer, address), an array of 6 items, 47 keys, numbers,
/// booleans, a null, and `json_build_object`'s spaces.
const ROW_CHANGE_SQL: &str = "json_build_object('op', 'UPDATE', 'source', 'orders_audit_trigger', 'schema', 'public', 'table', 'orders', 'txid', 7340000 + i, 'at', '2026-12-02T10:00:00.123456+00:00', 'new', json_build_object('id', i, 'status', 'paid', 'currency', 'EUR', 'total', 123.45 + i % 100, 'paid', true, 'notes', null, 'created_at', '2026-12-01T09:59:58.000001+00:00', 'updated_at', '2026-12-02T10:00:00.123456+00:00', 'customer', json_build_object('id', 4000 + i % 977, 'name', 'Customer ' || i, 'email', 'customer' || i || '@example.test', 'tier', 'gold'), 'items', json_build_array(json_build_object('sku', 'SKU-' || i % 1000, 'qty', 1 + i % 3, 'price', 19.99), json_build_object('sku', 'SKU-' || (i + 1) % 1000, 'qty', 2, 'price', 5.5), json_build_object('sku', 'SKU-' || (i + 2) % 1000, 'qty', 1, 'price', 120), json_build_object('sku', 'SKU-' || (i + 3) % 1000, 'qty', 4, 'price', 0.99), json_build_object('sku', 'SKU-' || (i + 4) % 1000, 'qty', 1, 'price', 42), json_build_object('sku', 'SKU-' || (i + 5) % 1000, 'qty', 3, 'price', 7.25)), 'address', json_build_object('line1', i % 200 || ' Main Street', 'city', 'Springfield', 'zip', '12345', 'country', 'DE'), 'tags', json_build_array('web', 'promo')), 'old', json_build_object('status', 'pending', 'updated_at', '2026-12-01T09:59:58.000001+00:00'))::text";

struct Bench {
    url: String,
    noop: Vec<u8>,
    logger: Vec<u8>,
    /// Times what it receives from the inside (tests/plugins/stopwatch).
    stopwatch: Vec<u8>,
    work: PathBuf,
    rows: Vec<(String, String)>,
    json: Vec<String>,
    /// Where the durable sections' `pgnotifier.send` writes.
    transport: pgnotifier::durable::Transport,
}

fn main() -> anyhow::Result<()> {
    // Started again as the bare loop: one thread, one connection, the least
    // a listener can spend.
    if let Some(bare) = out_of_process::bare_loop_if_asked() {
        return tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(bare);
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(suite())
}

/// The sections asked for on the command line, or every one.
async fn suite() -> anyhow::Result<()> {
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let wants = |name: &str| only.is_empty() || only.iter().any(|o| o == name);
    let db = local_pg::discover()?;
    let dist = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../plugins/dist");
    let read = |name: &str| {
        let path = dist.join(format!("{name}.wasm"));
        std::fs::read(&path)
            .map_err(|e| anyhow::anyhow!("{}: {e}; run plugins/build first", path.display()))
    };
    let work = std::env::temp_dir().join(format!("pgnotifier-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let mut bench = Bench {
        url: plain_transport(db.url()),
        noop: read("noop")?,
        logger: read("logger")?,
        stopwatch: read("tests/stopwatch")?,
        work: work.clone(),
        rows: Vec::new(),
        json: Vec::new(),
        transport: pgnotifier::durable::Transport::Outbox,
    };
    let started = Instant::now();
    if wants("drain") {
        bench.drain().await?;
    }
    if wants("run-drain") {
        bench.run_drain().await?;
    }
    if wants("run-streams") {
        bench.run_streams().await?;
    }
    if wants("fanout") {
        bench.fanout().await?;
    }
    if wants("latency") {
        bench.latency().await?;
    }
    if wants("run-rates") {
        bench.run_rates().await?;
    }
    if wants("reload") {
        bench.reload().await?;
    }
    if wants("memory") {
        bench.memory().await?;
    }
    if wants("sandbox") {
        bench.sandbox()?;
    }
    if wants("reconnect") {
        bench.reconnect().await?;
    }
    if wants("languages") {
        bench.languages(&dist).await?;
    }
    if wants("capabilities") {
        bench.capabilities(&dist).await?;
    }
    if wants("durable") {
        bench.durable().await?;
    }
    if wants("transports") {
        bench.transports().await?;
    }
    if wants("row_changes") {
        bench.row_changes().await?;
    }
    if wants("cluster") {
        bench.cluster().await?;
    }

    println!(
        "\npgnotifier benchmarks: median of {REPEATS} runs, {:.0} s in all",
        started.elapsed().as_secs_f64()
    );
    println!("| measurement | result |");
    println!("|---|---|");
    for (name, value) in &bench.rows {
        println!("| {name} | {value} |");
    }
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/bench.json");
    std::fs::create_dir_all(out.parent().unwrap_or(Path::new(".")))?;
    std::fs::write(&out, format!("{{\n{}\n}}\n", bench.json.join(",\n")))?;
    println!("\nwrote {}", out.display());
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

impl Bench {
    fn record(&mut self, key: &str, name: String, value: String, figures: &[(&str, f64)]) {
        println!("{name}: {value}");
        self.rows.push((name, value));
        let fields: Vec<String> = figures
            .iter()
            .map(|(k, v)| format!("\"{k}\": {v:.3}"))
            .collect();
        self.json
            .push(format!("  \"{key}\": {{{}}}", fields.join(", ")));
    }

    async fn client(&self) -> anyhow::Result<Client> {
        let (client, connection) = tokio_postgres::connect(&self.url, NoTls).await?;
        tokio::spawn(connection);
        Ok(client)
    }

    /// A notifier with the given plugins (name, bytes, sidecar) in a fresh folder.
    async fn host(&self, plugins: &[(String, &[u8], String)]) -> anyhow::Result<Notifier> {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = self
            .work
            .join(format!("plugins-{}", NEXT.fetch_add(1, Ordering::Relaxed)));
        std::fs::create_dir_all(&dir)?;
        for (name, bytes, sidecar) in plugins {
            std::fs::write(dir.join(format!("{name}.toml")), sidecar)?;
            std::fs::write(dir.join(format!("{name}.wasm")), bytes)?;
        }
        let notifier = Notifier::builder(DatabaseSettings::from_url(&self.url)?)
            .sandbox(SandboxSettings {
                cache_dir: Some(self.work.join("cache")),
                ..SandboxSettings::default()
            })
            .durable_transport(self.transport.clone())
            .build();
        for (file, outcome) in notifier.load_plugins(&dir).await? {
            outcome.map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
        }
        notifier.start().await?;
        notifier
            .wait_until_listening(Duration::from_secs(30))
            .await?;
        Ok(notifier)
    }
}

fn delivered(notifier: &Notifier) -> u64 {
    notifier
        .subscribers()
        .iter()
        .map(|s| s.stats.delivered)
        .sum()
}

/// A subscriber that records, for each payload holding the microseconds
/// it was sent at, how many milliseconds ago that was.
fn latency_recorder() -> (Subscriber, Arc<Mutex<Vec<f64>>>) {
    let samples = Arc::new(Mutex::new(Vec::with_capacity(30_000)));
    let sink = samples.clone();
    let subscriber = Subscriber::native(move |_, _, payload, _| {
        if let Payload::Integer(sent) = payload {
            let now = now_micros();
            if let Ok(mut s) = sink.lock() {
                s.push((now - sent) as f64 / 1000.0);
            }
        }
    });
    (subscriber, samples)
}

fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// User + system CPU seconds of this process, from getrusage (µs resolution).
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage only writes the struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

fn percentiles(samples: &mut [f64]) -> (f64, f64) {
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
    (at(0.50), at(0.99))
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}
