//! The benchmark suite: throughput, fan-out, latency, hot reload, memory, the
//! sandbox's per-call cost, reconnect time, the example plugin of each
//! language, the capabilities, durable delivery and a cluster of hosts, each
//! beside a bare loop or a baseline where a ratio matters. `run-drain` and
//! `run-rates` measure the real `pgnotifier run` from the outside, beside a
//! bare loop in a process of its own (see `out_of_process`).
//!
//! `cargo bench --bench suite` runs everything (a few minutes) against the
//! PostgreSQL the tests use, after `plugins/build`. Pass section names to run
//! some: `cargo bench --bench suite -- drain latency`. Prints a table and
//! writes `target/bench.json`. Each figure is the median of `REPEATS` runs.

use out_of_process::STAMP_SQL;
use pgnotifier::sandbox::SandboxSettings;
use pgnotifier::{DatabaseSettings, Notifier, Payload, PayloadMode, Subscriber};
use pgnotifier_app::local_pg;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio_postgres::{AsyncMessage, Client, NoTls};

#[path = "suite/out_of_process.rs"]
mod out_of_process;
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

/// What most users send, about 200 bytes: a key and a few fields, with the
/// spaces `json_build_object` writes.
const ROW_KEY_SQL: &str = "json_build_object('table', 'orders', 'op', 'UPDATE', 'id', i, 'status', 'paid', 'total', 42.5 + i % 10, 'customer_id', 4000 + i % 977, 'at', '2026-12-02T10:00:00.123456+00:00', 'by', 'checkout-service', 'region', 'eu-west-1')::text";

/// A row-change event as a hand-written trigger emits it, about 1 KB: nested
/// objects (customer, address), an array of 6 items, 47 keys, numbers,
/// booleans, a null, and `json_build_object`'s spaces.
const ROW_CHANGE_SQL: &str = "json_build_object('op', 'UPDATE', 'source', 'orders_audit_trigger', 'schema', 'public', 'table', 'orders', 'txid', 7340000 + i, 'at', '2026-12-02T10:00:00.123456+00:00', 'new', json_build_object('id', i, 'status', 'paid', 'currency', 'EUR', 'total', 123.45 + i % 100, 'paid', true, 'notes', null, 'created_at', '2026-12-01T09:59:58.000001+00:00', 'updated_at', '2026-12-02T10:00:00.123456+00:00', 'customer', json_build_object('id', 4000 + i % 977, 'name', 'Customer ' || i, 'email', 'customer' || i || '@example.test', 'tier', 'gold'), 'items', json_build_array(json_build_object('sku', 'SKU-' || i % 1000, 'qty', 1 + i % 3, 'price', 19.99), json_build_object('sku', 'SKU-' || (i + 1) % 1000, 'qty', 2, 'price', 5.5), json_build_object('sku', 'SKU-' || (i + 2) % 1000, 'qty', 1, 'price', 120), json_build_object('sku', 'SKU-' || (i + 3) % 1000, 'qty', 4, 'price', 0.99), json_build_object('sku', 'SKU-' || (i + 4) % 1000, 'qty', 1, 'price', 42), json_build_object('sku', 'SKU-' || (i + 5) % 1000, 'qty', 3, 'price', 7.25)), 'address', json_build_object('line1', i % 200 || ' Main Street', 'city', 'Springfield', 'zip', '12345', 'country', 'DE'), 'tags', json_build_array('web', 'promo')), 'old', json_build_object('status', 'pending', 'updated_at', '2026-12-01T09:59:58.000001+00:00'))::text";

/// Parses per second of the same payloads: see `Bench::parse_rates`.
#[derive(Clone, Copy)]
struct ParseRates {
    value: f64,
    decode: f64,
}

struct Bench {
    url: String,
    noop: Vec<u8>,
    logger: Vec<u8>,
    /// Times what it receives from the inside (tests/plugins/stopwatch).
    stopwatch: Vec<u8>,
    work: PathBuf,
    rows: Vec<(String, String)>,
    json: Vec<String>,
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
    };
    let started = Instant::now();
    if wants("drain") {
        bench.drain().await?;
    }
    if wants("run-drain") {
        bench.run_drain().await?;
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

    /// 1. One transaction of N distinct notifications, drained by the host
    ///    (one trivial Rust plugin, typed payloads) and by a bare loop. For
    ///    JSON, also how fast this process parses the same payloads into a
    ///    `serde_json::Value`, the cost a plugin that parses them pays.
    async fn drain(&mut self) -> anyhow::Result<()> {
        let cases = [
            ("16 B", 200_000, "(1e15 + i)::bigint::text"),
            (
                "1 KB JSON",
                100_000,
                "json_build_object('i', i, 'pad', repeat('x', 1000))::text",
            ),
            ("200 B row key", 100_000, ROW_KEY_SQL),
            ("1 KB row change", 100_000, ROW_CHANGE_SQL),
        ];
        for (label, n, payload_sql) in cases {
            let parse = if payload_sql.starts_with("json") {
                Some(self.parse_rates(payload_sql, n).await?)
            } else {
                None
            };
            let mut bare = Vec::new();
            let mut host = Vec::new();
            let mut native = Vec::new();
            for round in 0..REPEATS {
                let channel = format!("bench_drain_{round}_{}", std::process::id());
                let produce = format!("select count(pg_notify('{channel}', {payload_sql})) from generate_series(1, {n}) as i");
                bare.push(n as f64 / self.bare_drain(&channel, &produce, n).await?);
                host.push(n as f64 / self.host_drain(&channel, &produce, n, true).await?);
                native.push(n as f64 / self.host_drain(&channel, &produce, n, false).await?);
            }
            let (b, h, c) = (median(&mut bare), median(&mut host), median(&mut native));
            println!(
                "drain {label}: with a native closure instead of the plugin: {:.0}k/s ({:.0}% of bare)",
                c / 1e3,
                100.0 * c / b
            );
            if let Some(ParseRates { value, decode }) = parse {
                // The bare loop's own multiple bounds what any host reading
                // through tokio-postgres can reach where the bench runs.
                println!(
                    "drain {label}: serde_json::Value parse of the same payloads: {:.0}k/s (host = {:.1}x, the bare loop itself = {:.1}x); the host's decode alone: {:.0}k/s ({:.1}x)",
                    value / 1e3,
                    h / value,
                    b / value,
                    decode / 1e3,
                    decode / value
                );
            }
            self.record(
                &format!("drain_{}", label.replace(' ', "_").to_lowercase()),
                format!("drain {label}, N={n}: host / bare loop"),
                format!(
                    "{:.0}k/s / {:.0}k/s = {:.0}%",
                    h / 1e3,
                    b / 1e3,
                    100.0 * h / b
                ),
                &[
                    ("host_per_s", h),
                    ("bare_per_s", b),
                    ("ratio", h / b),
                    ("native_closure_per_s", c),
                    ("value_parse_per_s", parse.map_or(0.0, |p| p.value)),
                    ("decode_per_s", parse.map_or(0.0, |p| p.decode)),
                ],
            );
        }
        Ok(())
    }

    /// Parses per second of the payloads `payload_sql` makes for `i` in
    /// 1..=n, on one thread (medians of `REPEATS`, the two taken in turn):
    /// into a `serde_json::Value`, and the host's own decode (validated and
    /// compacted, into a reused buffer, as the listener does it).
    async fn parse_rates(&self, payload_sql: &str, n: usize) -> anyhow::Result<ParseRates> {
        let client = self.client().await?;
        let rows = client
            .query(
                &format!("select {payload_sql} from generate_series(1, {n}) as i"),
                &[],
            )
            .await?;
        let payloads: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        let per_s = |started: Instant| n as f64 / started.elapsed().as_secs_f64();
        let (mut value, mut decode) = (Vec::new(), Vec::new());
        let mut buffer = String::new();
        for _ in 0..REPEATS {
            let started = Instant::now();
            for payload in &payloads {
                std::hint::black_box(serde_json::from_str::<serde_json::Value>(payload)?);
            }
            value.push(per_s(started));
            let started = Instant::now();
            for payload in &payloads {
                match pgnotifier::payload::decode_into(payload, PayloadMode::Typed, &mut buffer) {
                    Payload::Json(text) => buffer = std::hint::black_box(text),
                    other => anyhow::bail!("{payload} decoded as {other:?}, not json"),
                }
            }
            decode.push(per_s(started));
        }
        Ok(ParseRates {
            value: median(&mut value),
            decode: median(&mut decode),
        })
    }

    /// Seconds from the bare loop's first notification to its last.
    async fn bare_drain(&self, channel: &str, produce: &str, n: usize) -> anyhow::Result<f64> {
        let (listener, mut connection) = tokio_postgres::connect(&self.url, NoTls).await?;
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<Duration>();
        tokio::spawn(async move {
            let mut done = Some(done_tx);
            let mut received = 0;
            let mut first = None;
            while let Some(message) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                if let Ok(AsyncMessage::Notification(_)) = message {
                    let first = *first.get_or_insert_with(Instant::now);
                    received += 1;
                    if received == n {
                        if let Some(tx) = done.take() {
                            let _ = tx.send(first.elapsed());
                        }
                    }
                }
            }
        });
        listener.batch_execute(&format!("LISTEN {channel}")).await?;
        let producer = self.client().await?;
        producer.execute(produce, &[]).await?;
        let took = tokio::time::timeout(Duration::from_secs(120), done_rx).await??;
        Ok(took.as_secs_f64().max(1e-6))
    }

    /// Seconds from the host's first delivery to its last, through the noop
    /// plugin, or (to tell host cost from sandbox cost) a native closure.
    async fn host_drain(
        &self,
        channel: &str,
        produce: &str,
        n: usize,
        wasm: bool,
    ) -> anyhow::Result<f64> {
        let notifier = if wasm {
            let sidecar = format!("overflow = \"block\"\n\n[config]\nchannels = \"{channel}\"\n");
            self.host(&[("noop".into(), &self.noop, sidecar)]).await?
        } else {
            let notifier = Notifier::new(DatabaseSettings::from_url(&self.url)?);
            let closure = Subscriber::native(|_, _, _, _| {}).queue(
                1024,
                pgnotifier::Overflow::Block,
                Duration::ZERO,
            );
            notifier.subscribe("closure", channel, closure)?;
            notifier.start().await?;
            notifier
                .wait_until_listening(Duration::from_secs(30))
                .await?;
            notifier
        };
        self.drain_through(notifier, produce, n).await
    }

    /// Seconds from the first delivery to the n-th, for one transaction of n
    /// notifications (`produce`) into `notifier`'s one subscriber; then shuts it down.
    async fn drain_through(
        &self,
        notifier: Notifier,
        produce: &str,
        n: usize,
    ) -> anyhow::Result<f64> {
        let poll = Duration::from_micros(200);
        let took = self
            .time_deliveries(&notifier, produce, n as u64, poll)
            .await?;
        notifier.shutdown(Duration::from_secs(5)).await;
        Ok(took)
    }

    /// Seconds from the first delivery to the `total`-th, over all of
    /// `notifier`'s subscribers, for one transaction (`produce`), counted
    /// every `poll`. Timing from the first delivery, not from the commit,
    /// keeps the producer's own statement out, and a drain that ends before
    /// the statement returns in.
    async fn time_deliveries(
        &self,
        notifier: &Notifier,
        produce: &str,
        total: u64,
        poll: Duration,
    ) -> anyhow::Result<f64> {
        let producer = self.client().await?;
        let produce = produce.to_owned();
        let produced = tokio::spawn(async move { producer.execute(&produce, &[]).await });
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut first = None;
        loop {
            let count = delivered(notifier);
            if count > 0 && first.is_none() {
                first = Some(Instant::now());
            }
            if count >= total {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "host delivered {count} of {total}"
            );
            tokio::time::sleep(poll).await;
        }
        let took = first.map_or(1e-6, |f| f.elapsed().as_secs_f64());
        produced.await??;
        for subscriber in notifier.subscribers() {
            let stats = &subscriber.stats;
            anyhow::ensure!(
                stats.dropped == 0 && stats.failed == 0,
                "drops or failures at {}: {stats:?}",
                subscriber.id
            );
        }
        Ok(took)
    }

    /// 2. One channel, 1, 10 and 100 subscribers: dispatches/s and CPU per notification.
    async fn fanout(&mut self) -> anyhow::Result<()> {
        const N: usize = 20_000;
        for subscribers in [1usize, 10, 100] {
            let mut rates = Vec::new();
            let mut cpu = Vec::new();
            for round in 0..REPEATS {
                let channel = format!("bench_fan_{subscribers}_{round}_{}", std::process::id());
                let sidecar = format!("overflow = \"block\"\nqueue_size = 100000\n\n[config]\nchannels = \"{channel}\"\n");
                let plugins: Vec<(String, &[u8], String)> = (0..subscribers)
                    .map(|i| (format!("noop{i}"), self.noop.as_slice(), sidecar.clone()))
                    .collect();
                let notifier = self.host(&plugins).await?;
                let total = (N * subscribers) as u64;
                let produce = format!("select count(pg_notify('{channel}', (1e15 + i)::bigint::text)) from generate_series(1, {N}) as i");
                let cpu_before = cpu_seconds();
                // Counting 100 subscribers' deliveries costs CPU too: poll less often than the drain.
                let poll = Duration::from_micros(500);
                let took = self
                    .time_deliveries(&notifier, &produce, total, poll)
                    .await?;
                let cpu_used = cpu_seconds() - cpu_before;
                rates.push(total as f64 / took);
                cpu.push(cpu_used * 1e6 / N as f64);
                notifier.shutdown(Duration::from_secs(5)).await;
            }
            let (rate, us) = (median(&mut rates), median(&mut cpu));
            self.record(
                &format!("fanout_{subscribers}"),
                format!("fan-out to {subscribers} subscriber(s), N={N}"),
                format!(
                    "{:.0}k dispatches/s, {us:.1} CPU µs per notification",
                    rate / 1e3
                ),
                &[("dispatches_per_s", rate), ("cpu_us_per_notification", us)],
            );
        }
        Ok(())
    }

    /// 3. Latency at a fixed rate, one NOTIFY per transaction from several
    ///    connections, stamped with clock_timestamp(): host and bare loop.
    async fn latency(&mut self) -> anyhow::Result<()> {
        for rate in [1_000u32, 10_000] {
            let mut host_p50 = Vec::new();
            let mut host_p99 = Vec::new();
            let mut bare_p50 = Vec::new();
            let mut bare_p99 = Vec::new();
            for round in 0..REPEATS {
                let channel = format!("bench_lat_{rate}_{round}_{}", std::process::id());
                let (p50, p99) = self.host_latency(&channel, rate).await?;
                host_p50.push(p50);
                host_p99.push(p99);
                let (p50, p99) = self.bare_latency(&format!("{channel}_bare"), rate).await?;
                bare_p50.push(p50);
                bare_p99.push(p99);
            }
            let (hp50, hp99, bp50, bp99) = (
                median(&mut host_p50),
                median(&mut host_p99),
                median(&mut bare_p50),
                median(&mut bare_p99),
            );
            self.record(
                &format!("latency_{rate}"),
                format!("latency at {rate}/s, p50 / p99: host vs bare loop"),
                format!(
                    "{hp50:.3} / {hp99:.3} ms vs {bp50:.3} / {bp99:.3} ms (p99 ratio {:.2})",
                    hp99 / bp99
                ),
                &[
                    ("host_p50_ms", hp50),
                    ("host_p99_ms", hp99),
                    ("bare_p50_ms", bp50),
                    ("bare_p99_ms", bp99),
                ],
            );
        }
        Ok(())
    }

    async fn host_latency(&self, channel: &str, rate: u32) -> anyhow::Result<(f64, f64)> {
        let notifier = Notifier::new(DatabaseSettings::from_url(&self.url)?);
        let (subscriber, samples) = latency_recorder();
        notifier.subscribe("latency", channel, subscriber)?;
        notifier.start().await?;
        notifier
            .wait_until_listening(Duration::from_secs(30))
            .await?;
        let sent = self
            .send_at_rate(channel, rate, &format!("{STAMP_SQL}::text"), 2.0)
            .await?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while samples.lock().map(|s| s.len()).unwrap_or(0) < sent && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        notifier.shutdown(Duration::from_secs(5)).await;
        let mut all = samples.lock().map(|s| s.clone()).unwrap_or_default();
        anyhow::ensure!(all.len() == sent, "host received {} of {sent}", all.len());
        Ok(percentiles(&mut all))
    }

    async fn bare_latency(&self, channel: &str, rate: u32) -> anyhow::Result<(f64, f64)> {
        let (listener, mut connection) = tokio_postgres::connect(&self.url, NoTls).await?;
        let samples = Arc::new(Mutex::new(Vec::with_capacity(rate as usize * 3)));
        let sink = samples.clone();
        tokio::spawn(async move {
            while let Some(message) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                if let Ok(AsyncMessage::Notification(n)) = message {
                    let now = now_micros();
                    if let (Ok(sent), Ok(mut s)) = (n.payload().parse::<i64>(), sink.lock()) {
                        s.push((now - sent) as f64 / 1000.0);
                    }
                }
            }
        });
        listener.batch_execute(&format!("LISTEN {channel}")).await?;
        let sent = self
            .send_at_rate(channel, rate, &format!("{STAMP_SQL}::text"), 2.0)
            .await?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while samples.lock().map(|s| s.len()).unwrap_or(0) < sent && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mut all = samples.lock().map(|s| s.clone()).unwrap_or_default();
        anyhow::ensure!(
            all.len() == sent,
            "bare loop received {} of {sent}",
            all.len()
        );
        Ok(percentiles(&mut all))
    }

    /// Send for `seconds` at `rate`/s from [`SENDERS`] connections, one
    /// NOTIFY per transaction, `payload_sql` (an expression of `i`, the
    /// connection's count) as the payload. Returns how many were sent.
    async fn send_at_rate(
        &self,
        channel: &str,
        rate: u32,
        payload_sql: &str,
        seconds: f64,
    ) -> anyhow::Result<usize> {
        let per_connection = sent_at_rate(rate, seconds) / SENDERS as usize;
        let interval = Duration::from_secs_f64(SENDERS as f64 / rate as f64);
        let mut senders = Vec::new();
        for c in 0..SENDERS {
            let client = self.client().await?;
            let channel = channel.to_owned();
            let sql =
                format!("select pg_notify($1, {payload_sql}) from (select $2::int as i) as s");
            senders.push(tokio::spawn(async move {
                let statement = client.prepare(&sql).await?;
                let start = Instant::now() + interval.mul_f64(c as f64 / SENDERS as f64);
                for i in 0..per_connection {
                    tokio::time::sleep_until((start + interval * i as u32).into()).await;
                    client.execute(&statement, &[&channel, &(i as i32)]).await?;
                }
                anyhow::Ok(per_connection)
            }));
        }
        let mut sent = 0;
        for s in senders {
            sent += s.await??;
        }
        Ok(sent)
    }

    /// Durable delivery: events through `pgnotifier.send` to an at-least-once
    /// subscriber, beside what PostgreSQL accepts through `send` alone and
    /// plain `pg_notify` to an at-most-once one, in transactions of 100
    /// events and of one; then latency at 1000 events/s.
    async fn durable(&mut self) -> anyhow::Result<()> {
        let mut client = self.client().await?;
        pgnotifier::durable::schema::install(&mut client).await?;
        for (per_tx, events) in [(100usize, 20_000usize), (1, 2_000)] {
            let (mut accepted, mut durable, mut plain) = (Vec::new(), Vec::new(), Vec::new());
            for round in 0..REPEATS {
                let tag = format!("bench_durable_{per_tx}_{round}_{}", std::process::id());
                let started = Instant::now();
                self.produce("pgnotifier.send", &format!("{tag}_alone"), per_tx, events)
                    .await?;
                accepted.push(events as f64 / started.elapsed().as_secs_f64());
                durable.push(self.durable_rate(&tag, per_tx, events, true).await?);
                plain.push(self.durable_rate(&tag, per_tx, events, false).await?);
            }
            let (accepted, durable, plain) = (
                median(&mut accepted),
                median(&mut durable),
                median(&mut plain),
            );
            self.record(
                &format!("durable_{per_tx}_per_tx"),
                format!("durable, noop Rust plugin, {per_tx} per transaction, N={events}: end to end / send accepted / pg_notify end to end"),
                format!(
                    "{:.0}k/s / {:.0}k/s / {:.0}k/s (end to end = {:.0}% of accepted)",
                    durable / 1e3,
                    accepted / 1e3,
                    plain / 1e3,
                    100.0 * durable / accepted
                ),
                &[("durable_per_s", durable), ("accepted_per_s", accepted), ("plain_per_s", plain)],
            );
        }
        let (mut p50s, mut p99s) = (Vec::new(), Vec::new());
        for round in 0..REPEATS {
            let tag = format!("bench_durable_latency_{round}_{}", std::process::id());
            let (p50, p99) = self.durable_latency(&tag, 1000).await?;
            p50s.push(p50);
            p99s.push(p99);
        }
        let (p50, p99) = (median(&mut p50s), median(&mut p99s));
        self.record(
            "durable_latency_1000",
            "durable latency at 1000/s, p50 / p99 (send to on-notify)".to_owned(),
            format!("{p50:.3} / {p99:.3} ms"),
            &[("p50_ms", p50), ("p99_ms", p99)],
        );
        client
            .batch_execute(
                "DELETE FROM pgnotifier.outbox WHERE channel LIKE 'bench\\_durable\\_%';
                 DELETE FROM pgnotifier.positions WHERE subscriber LIKE 'bench\\_durable\\_%'",
            )
            .await?;
        Ok(())
    }

    /// `events` sent with `function` (`pgnotifier.send` or `pg_notify`) on
    /// `channel`, `per_tx` to a transaction, from four connections.
    async fn produce(
        &self,
        function: &str,
        channel: &str,
        per_tx: usize,
        events: usize,
    ) -> anyhow::Result<()> {
        const CONNECTIONS: usize = 4;
        let mut producers = Vec::new();
        for _ in 0..CONNECTIONS {
            let client = self.client().await?;
            let sql = format!("select {function}($1, i::text) from generate_series(1, $2) as i");
            let channel = channel.to_owned();
            producers.push(tokio::spawn(async move {
                let statement = client.prepare(&sql).await?;
                let per_tx = per_tx as i32;
                for _ in 0..events / CONNECTIONS / per_tx as usize {
                    client.execute(&statement, &[&channel, &per_tx]).await?;
                }
                anyhow::Ok(())
            }));
        }
        for producer in producers {
            producer.await??;
        }
        Ok(())
    }

    /// Events/s from the first send to the last call into the noop Rust
    /// plugin, at least once through `pgnotifier.send`, or (`durable`
    /// false) at most once through `pg_notify`.
    async fn durable_rate(
        &self,
        tag: &str,
        per_tx: usize,
        events: usize,
        durable: bool,
    ) -> anyhow::Result<f64> {
        let (id, channel, delivery) = match durable {
            true => (
                format!("{tag}_sink"),
                format!("{tag}_durable"),
                "at-least-once",
            ),
            false => (
                format!("{tag}_plain_sink"),
                format!("{tag}_plain"),
                "at-most-once",
            ),
        };
        let sidecar = format!(
            "delivery = \"{delivery}\"\noverflow = \"block\"\nqueue_size = 100000\n\n[config]\nchannels = \"{channel}\"\n"
        );
        let notifier = self.host(&[(id.clone(), &self.noop, sidecar)]).await?;
        if durable {
            self.wait_for_position(&id).await?;
        }
        let started = Instant::now();
        let function = if durable {
            "pgnotifier.send"
        } else {
            "pg_notify"
        };
        self.produce(function, &channel, per_tx, events).await?;
        let deadline = Instant::now() + Duration::from_secs(120);
        while delivered(&notifier) < events as u64 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let elapsed = started.elapsed();
        let got = delivered(&notifier);
        notifier.shutdown(Duration::from_secs(5)).await;
        anyhow::ensure!(got >= events as u64, "{id} received {got} of {events}");
        Ok(events as f64 / elapsed.as_secs_f64())
    }

    /// Until the feeder of `subscriber` has its position: it reads from now on.
    async fn wait_for_position(&self, subscriber: &str) -> anyhow::Result<()> {
        let client = self.client().await?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while pgnotifier::durable::reader::position(&client, subscriber)
            .await?
            .is_none()
        {
            anyhow::ensure!(Instant::now() < deadline, "{subscriber} never started");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(())
    }

    /// From `pgnotifier.send` to the call, at `rate` events/s (one per transaction).
    async fn durable_latency(&self, tag: &str, rate: u32) -> anyhow::Result<(f64, f64)> {
        let notifier = Notifier::new(DatabaseSettings::from_url(&self.url)?);
        let (subscriber, samples) = latency_recorder();
        let subscriber = subscriber.at_least_once(pgnotifier::durable::RetryPolicy::default());
        let (id, channel) = (format!("{tag}_sink"), format!("{tag}_events"));
        notifier.subscribe(&id, channel.as_str(), subscriber)?;
        self.wait_for_position(&id).await?;
        let client = self.client().await?;
        let statement = client
            .prepare("select pgnotifier.send($1, (extract(epoch from clock_timestamp()) * 1e6)::bigint::text)")
            .await?;
        let count = rate as usize * 2;
        let interval = Duration::from_secs_f64(1.0 / rate as f64);
        let start = Instant::now();
        for i in 0..count {
            tokio::time::sleep_until((start + interval * i as u32).into()).await;
            client.execute(&statement, &[&channel]).await?;
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while samples.lock().map(|s| s.len()).unwrap_or(0) < count && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        notifier.shutdown(Duration::from_secs(5)).await;
        let mut all = samples.lock().map(|s| s.clone()).unwrap_or_default();
        anyhow::ensure!(all.len() >= count, "{id} received {} of {count}", all.len());
        Ok(percentiles(&mut all))
    }

    /// 4. Hot reload: from a file landing in the watched folder to its first
    ///    delivery, with and without the compile cache.
    async fn reload(&mut self) -> anyhow::Result<()> {
        let plugins = self.work.join("reload");
        std::fs::create_dir_all(&plugins)?;
        let notifier = Notifier::builder(DatabaseSettings::from_url(&self.url)?)
            .sandbox(SandboxSettings {
                cache_dir: Some(self.work.join("reload-cache")),
                ..SandboxSettings::default()
            })
            .build();
        let _watcher = notifier.watch_plugins(&plugins).await?;
        notifier.start().await?;
        let client = self.client().await?;
        let mut uncached = Vec::new();
        let mut cached = Vec::new();
        for round in 0..REPEATS.max(5) {
            // New bytes (a custom section) defeat the cache; the same bytes again hit it.
            let fresh = with_custom_section(&self.logger, &format!("bench round {round}"));
            uncached.push(
                deploy_and_time(&notifier, &client, &plugins, &format!("u{round}"), &fresh).await?,
            );
            cached.push(
                deploy_and_time(&notifier, &client, &plugins, &format!("c{round}"), &fresh).await?,
            );
        }
        let stats = notifier.compile_cache_stats().unwrap_or_default();
        anyhow::ensure!(
            stats.hits >= cached.len(),
            "the cached rounds missed the cache: {stats:?}"
        );
        notifier.shutdown(Duration::from_secs(5)).await;
        let (u, c) = (median(&mut uncached), median(&mut cached));
        self.record(
            "reload",
            format!(
                "hot reload to first delivery ({} KB Rust plugin): uncached / cached",
                self.logger.len() / 1024
            ),
            format!("{u:.1} ms / {c:.1} ms"),
            &[("uncached_ms", u), ("cached_ms", c)],
        );
        Ok(())
    }

    /// 5. RSS of `pgnotifier run` with 0, 1, 10 and 100 idle subscribers.
    async fn memory(&mut self) -> anyhow::Result<()> {
        let mut figures = Vec::new();
        for subscribers in [0usize, 1, 10, 100] {
            let mut rss = Vec::new();
            for _ in 0..REPEATS {
                let dir = self.work.join(format!("memory-{subscribers}"));
                let _ = std::fs::remove_dir_all(&dir);
                std::fs::create_dir_all(&dir)?;
                for i in 0..subscribers {
                    std::fs::write(dir.join(format!("idle{i}.wasm")), &self.noop)?;
                    std::fs::write(
                        dir.join(format!("idle{i}.toml")),
                        "[config]\nchannels = \"bench_idle\"\n",
                    )?;
                }
                rss.push(
                    run_and_measure_rss(&dir, &self.url, &self.work.join("cache"), subscribers)
                        .await?,
                );
            }
            figures.push((subscribers, median(&mut rss)));
        }
        let base = figures[0].1;
        let per = (figures[3].1 - base) / 100.0;
        let text: Vec<String> = figures
            .iter()
            .map(|(n, mb)| format!("{n}: {mb:.1} MB"))
            .collect();
        self.record(
            "memory",
            "RSS with idle subscribers".into(),
            format!("{} ({per:.2} MB per subscriber)", text.join(", ")),
            &[
                ("rss_0_mb", figures[0].1),
                ("rss_1_mb", figures[1].1),
                ("rss_10_mb", figures[2].1),
                ("rss_100_mb", figures[3].1),
                ("per_subscriber_mb", per),
            ],
        );
        Ok(())
    }
}

impl Bench {
    /// 6. The sandbox's own cost per call: the noop plugin's `on-notify`
    ///    called in a loop, with the engine's epoch checks (our deadlines) on
    ///    and off, on a store like the host's.
    fn sandbox(&mut self) -> anyhow::Result<()> {
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

impl Bench {
    /// 7. From the server accepting connections again to LISTENing again, at
    ///    default settings, after outages of several lengths (a throwaway
    ///    cluster, stopped and started).
    async fn reconnect(&mut self) -> anyhow::Result<()> {
        let cluster = Arc::new(
            tokio::task::spawn_blocking(local_pg::Cluster::start)
                .await?
                .map_err(|e| anyhow::anyhow!("throwaway cluster: {e}"))?,
        );
        let notifier = Notifier::new(DatabaseSettings::from_url(cluster.url())?);
        notifier.subscribe("s", "bench_reconnect", Subscriber::native(|_, _, _, _| {}))?;
        notifier.start().await?;
        notifier
            .wait_until_listening(Duration::from_secs(30))
            .await?;
        let mut figures = Vec::new();
        for outage in [0u64, 1, 5] {
            let mut runs = Vec::new();
            for _ in 0..REPEATS {
                let old = notifier.backend_pid();
                let c = cluster.clone();
                tokio::task::spawn_blocking(move || c.stop_server())
                    .await?
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                tokio::time::sleep(Duration::from_secs(outage)).await;
                let c = cluster.clone();
                tokio::task::spawn_blocking(move || c.start_server())
                    .await?
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                let back = Instant::now();
                while notifier.backend_pid().is_none_or(|pid| Some(pid) == old)
                    || notifier.listening().is_empty()
                {
                    anyhow::ensure!(back.elapsed() < Duration::from_secs(60), "no reconnect");
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                runs.push(back.elapsed().as_secs_f64() * 1e3);
            }
            figures.push((outage, median(&mut runs)));
        }
        notifier.shutdown(Duration::from_secs(5)).await;
        tokio::task::spawn_blocking(move || drop(cluster)).await?;
        let text: Vec<String> = figures
            .iter()
            .map(|(outage, ms)| format!("{outage} s down: {ms:.0} ms"))
            .collect();
        self.record(
            "reconnect",
            "server back → LISTENing again, default settings".into(),
            text.join(", "),
            &[
                ("restart_ms", figures[0].1),
                ("after_1s_ms", figures[1].1),
                ("after_5s_ms", figures[2].1),
            ],
        );
        Ok(())
    }
}

impl Bench {
    /// 8. The example plugins, one per language: component size, load time
    ///    (compiled, then from the compile cache), and time per notification
    ///    through the host while the plugin does its job.
    async fn languages(&mut self, dist: &Path) -> anyhow::Result<()> {
        const N: usize = 20_000;
        let examples = [
            ("json-filter", "Rust", "keys = \"id\""),
            ("counter", "C", "every = \"1000\""),
            ("formatter", "Python", ""),
            ("field-filter", "JavaScript", "field = \"id\""),
            ("minimal", "WAT", ""),
        ];
        for (name, language, config) in examples {
            let path = dist.join(format!("{name}.wasm"));
            let bytes = std::fs::read(&path)
                .map_err(|e| anyhow::anyhow!("{}: {e}; run plugins/build first", path.display()))?;
            let (mut compiled, mut cached, mut per_call) = (Vec::new(), Vec::new(), Vec::new());
            for round in 0..REPEATS {
                let cache = self.work.join(format!("cache-{name}-{round}"));
                compiled.push(self.load_seconds(&path, &cache).await?);
                cached.push(self.load_seconds(&path, &cache).await?);
                let channel = format!("bench_lang_{round}_{}", std::process::id());
                let sidecar = format!(
                    "overflow = \"block\"\nchannels = [\"{channel}\"]\n\n[config]\n{config}\n"
                );
                let notifier = self.host(&[(name.to_owned(), &bytes, sidecar)]).await?;
                let produce = format!(
                    "select count(pg_notify('{channel}', (1e15 + i)::bigint::text)) from generate_series(1, {N}) as i"
                );
                per_call.push(self.drain_through(notifier, &produce, N).await? * 1e6 / N as f64);
            }
            let (c, h, p) = (
                median(&mut compiled),
                median(&mut cached),
                median(&mut per_call),
            );
            let mb = bytes.len() as f64 / 1e6;
            self.record(
                &format!("language_{}", language.to_lowercase()),
                format!("{language} example ({name}, {mb:.2} MB): load compiled / cached, per notification"),
                format!("{:.0} ms / {:.0} ms, {p:.1} µs", c * 1e3, h * 1e3),
                &[
                    ("size_bytes", bytes.len() as f64),
                    ("load_compiled_ms", c * 1e3),
                    ("load_cached_ms", h * 1e3),
                    ("per_notification_us", p),
                ],
            );
        }
        Ok(())
    }

    /// 9. Capabilities: notifications drained through a plugin that makes one
    ///    capability call each (the `capable` test fixture, strict, so any
    ///    failed call fails the run): publish, a query by key, an HTTP POST to
    ///    a local server (a new connection each).
    async fn capabilities(&mut self, dist: &Path) -> anyhow::Result<()> {
        let path = dist.join("tests/capable.wasm");
        let bytes = std::fs::read(&path)
            .map_err(|e| anyhow::anyhow!("{}: {e}; run plugins/build first", path.display()))?;
        let server = webhook::WebhookServer::start();
        let table = format!("bench_orders_{}", std::process::id());
        self.client()
            .await?
            .batch_execute(&format!(
                "create table {table} as select i as id, 'shipped' as status from generate_series(1, 10000) i;
                 alter table {table} add primary key (id);
                 do $$ begin create role pgnotifier_bench_reader nologin;
                   exception when duplicate_object or unique_violation then null; end $$;
                 grant select on {table} to pgnotifier_bench_reader"
            ))
            .await?;
        let origin = server.origin();
        // (op, notifications, its arguments as SQL, the grant)
        let cases = [
            (
                "publish",
                5_000,
                "'bench_unheard', i::text".to_owned(),
                "publish = [\"bench_unheard\"]".to_owned(),
            ),
            (
                "query",
                5_000,
                format!("'select id, status from {table} where id = $1', i::text"),
                "query = true\nquery_role = \"pgnotifier_bench_reader\"".to_owned(),
            ),
            (
                "http",
                1_000,
                format!("'{origin}/hook', json_build_object('id', i)::text"),
                format!("http = [\"{origin}\"]"),
            ),
        ];
        let mut text = Vec::new();
        let mut figures = Vec::new();
        for (op, n, args, grant) in cases {
            let mut per_call = Vec::new();
            for round in 0..REPEATS {
                let channel = format!("bench_cap_{op}_{round}_{}", std::process::id());
                let sidecar = format!(
                    "overflow = \"block\"\nchannels = [\"{channel}\"]\n[grants]\n{grant}\n"
                );
                let notifier = self
                    .host(&[("capable".to_owned(), &bytes, sidecar)])
                    .await?;
                let produce = format!(
                    "select count(pg_notify('{channel}', json_build_object('{op}!', json_build_array({args}))::text)) from generate_series(1, {n}) as i"
                );
                per_call.push(self.drain_through(notifier, &produce, n).await? * 1e6 / n as f64);
            }
            let us = median(&mut per_call);
            text.push(format!("{op} {us:.0} µs"));
            figures.push((op, us));
        }
        anyhow::ensure!(
            server.requests().len() == 1_000 * REPEATS,
            "the webhook got {} requests",
            server.requests().len()
        );
        self.client()
            .await?
            .batch_execute(&format!("drop table {table}"))
            .await?;
        self.record(
            "capabilities",
            "per notification, one capability call each (host included)".into(),
            text.join(", "),
            &figures
                .iter()
                .map(|(op, us)| (*op, *us))
                .collect::<Vec<_>>(),
        );
        Ok(())
    }

    /// Seconds to load one plugin (compile or cache, instantiate, register)
    /// into a fresh notifier using the compile cache in `cache`.
    async fn load_seconds(&self, plugin: &Path, cache: &Path) -> anyhow::Result<f64> {
        let notifier = Notifier::builder(DatabaseSettings::from_url(&self.url)?)
            .sandbox(SandboxSettings {
                cache_dir: Some(cache.to_owned()),
                ..SandboxSettings::default()
            })
            .build();
        let started = Instant::now();
        notifier.load_plugin(plugin).await?;
        let took = started.elapsed().as_secs_f64();
        notifier.shutdown(Duration::from_secs(5)).await;
        Ok(took)
    }
}

/// Nanoseconds per `on-notify` call of `component`, typed 16-byte payload.
fn noop_call_ns(component: &[u8], epochs: bool, calls: u32) -> anyhow::Result<f64> {
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

/// Start the release `pgnotifier run`, wait until it has loaded everything
/// and settled, and read its resident set size in MB.
impl Bench {
    /// 10. More than one host, as `pgnotifier run` processes: the takeover
    ///     after the leader is SIGKILLed (median of 5), and the dispatch rate
    ///     of a two-host cluster's leader beside a host alone, in the same run.
    async fn cluster(&mut self) -> anyhow::Result<()> {
        let mut takeovers = Vec::new();
        for round in 0..5 {
            let name = format!("bench_cluster_{}_{round}", std::process::id());
            let a = RunHost::start(
                self,
                &format!("takeover-a{round}"),
                Some(&name),
                "bench_takeover",
            )?;
            a.wait_for("leading").await?;
            let b = RunHost::start(
                self,
                &format!("takeover-b{round}"),
                Some(&name),
                "bench_takeover",
            )?;
            b.wait_for("standing by").await?;
            drop(a); // SIGKILL, on drop
            let killed = Instant::now();
            b.wait_for("leading").await?;
            takeovers.push(killed.elapsed().as_secs_f64() * 1e3);
        }
        let takeover = median(&mut takeovers);
        let (mut alone, mut clustered) = (Vec::new(), Vec::new());
        for round in 0..REPEATS {
            let channel = format!("bench_cl_alone_{round}_{}", std::process::id());
            let host = RunHost::start(self, &format!("alone{round}"), None, &channel)?;
            alone.push(host.drain(self, &channel).await?);
            let name = format!("bench_cl_rate_{}_{round}", std::process::id());
            let channel = format!("bench_cl_two_{round}_{}", std::process::id());
            let leader = RunHost::start(self, &format!("leader{round}"), Some(&name), &channel)?;
            leader.wait_for("leading").await?;
            let standby = RunHost::start(self, &format!("standby{round}"), Some(&name), &channel)?;
            standby.wait_for("standing by").await?;
            clustered.push(leader.drain(self, &channel).await?);
        }
        let (alone, clustered) = (median(&mut alone), median(&mut clustered));
        self.record(
            "cluster",
            format!("cluster: takeover after SIGKILL of the leader (median of 5, takeover_ms {CLUSTER_TAKEOVER_MS}); drain of {CLUSTER_N} 16 B notifications, leader with a standby / host alone"),
            format!(
                "{takeover:.0} ms; {:.0}k/s / {:.0}k/s ({:.0}%)",
                clustered / 1e3,
                alone / 1e3,
                100.0 * clustered / alone
            ),
            &[("takeover_ms", takeover), ("leader_per_s", clustered), ("alone_per_s", alone)],
        );
        Ok(())
    }
}

const CLUSTER_TAKEOVER_MS: u64 = 1000;
const CLUSTER_N: usize = 100_000;

/// `pgnotifier run` with one plugin, in a cluster or alone; SIGKILLed when
/// dropped.
struct RunHost {
    process: Watched,
    data: PathBuf,
}

impl RunHost {
    /// With the noop plugin on `channel`.
    fn start(
        bench: &Bench,
        name: &str,
        cluster: Option<&str>,
        channel: &str,
    ) -> anyhow::Result<Self> {
        let config = format!("channels = \"{channel}\"\n");
        Self::start_with(bench, name, cluster, ("noop", &bench.noop), &config)
    }

    /// With `plugin` (its name and component) on a lossless queue, its
    /// sidecar's `[config]` holding `config`.
    fn start_with(
        bench: &Bench,
        name: &str,
        cluster: Option<&str>,
        (plugin, component): (&str, &[u8]),
        config: &str,
    ) -> anyhow::Result<Self> {
        let dir = bench.work.join(format!("run-{name}"));
        let plugins = dir.join("plugins");
        std::fs::create_dir_all(&plugins)?;
        std::fs::write(plugins.join(format!("{plugin}.wasm")), component)?;
        std::fs::write(
            plugins.join(format!("{plugin}.toml")),
            format!("overflow = \"block\"\nqueue_size = 200000\n\n[config]\n{config}"),
        )?;
        let data = dir.join("data");
        let mut settings = format!(
            "database_url = {:?}\nplugins = {:?}\ndata_dir = {:?}\ncache_dir = {:?}\nadmin_addr = \"127.0.0.1:0\"\n",
            bench.url,
            plugins.display().to_string(),
            data.display().to_string(),
            bench.work.join("cache").display().to_string(),
        );
        if let Some(cluster) = cluster {
            settings.push_str(&format!(
                "\n[cluster]\nname = {cluster:?}\ntakeover_ms = {CLUSTER_TAKEOVER_MS}\n"
            ));
        }
        let file = dir.join("pgnotifier.toml");
        std::fs::write(&file, settings)?;
        let process = Watched::spawn(
            tokio::process::Command::new(pgnotifier_bin())
                .args(["run", "--config"])
                .arg(&file)
                .env("PGNOTIFIER_LOG", "info"),
        )?;
        Ok(Self { process, data })
    }

    async fn wait_for(&self, text: &str) -> anyhow::Result<()> {
        self.process.wait_for(text, 1).await
    }

    /// Events/s from the commit of one transaction of [`CLUSTER_N`]
    /// notifications to the last delivery, read from the host's metrics.
    async fn drain(&self, bench: &Bench, channel: &str) -> anyhow::Result<f64> {
        self.wait_for("LISTEN set updated").await?;
        let producer = bench.client().await?;
        producer
            .batch_execute(&format!(
                "select count(pg_notify('{channel}', (1e15 + i)::bigint::text)) from generate_series(1, {CLUSTER_N}) as i"
            ))
            .await?;
        let committed = Instant::now();
        let deadline = committed + Duration::from_secs(120);
        while self.delivered().await? < CLUSTER_N as f64 {
            anyhow::ensure!(Instant::now() < deadline, "the host never drained");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(CLUSTER_N as f64 / committed.elapsed().as_secs_f64())
    }

    /// The noop plugin's delivered count, from `/metrics`.
    async fn delivered(&self) -> anyhow::Result<f64> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = std::fs::read_to_string(self.data.join("admin.addr"))?;
        let mut stream = tokio::net::TcpStream::connect(addr.trim()).await?;
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await?;
        let mut body = String::new();
        stream.read_to_string(&mut body).await?;
        Ok(body
            .lines()
            .find_map(|l| {
                l.strip_prefix("pgnotifier_subscriber_delivered_total{subscriber=\"noop\"} ")
            })
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0))
    }
}

/// A child process whose standard error is kept line by line; SIGKILLed
/// when dropped.
struct Watched {
    child: tokio::process::Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Watched {
    fn spawn(command: &mut tokio::process::Command) -> anyhow::Result<Self> {
        let mut child = command
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = child
            .stderr
            .take()
            .ok_or_else(|| anyhow::anyhow!("no stderr"))?;
        let sink = lines.clone();
        tokio::spawn(async move {
            use tokio::io::AsyncBufReadExt;
            let mut reader = tokio::io::BufReader::new(stderr).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                if let Ok(mut lines) = sink.lock() {
                    lines.push(line);
                }
            }
        });
        Ok(Self { child, lines })
    }

    fn pid(&self) -> anyhow::Result<u32> {
        self.child
            .id()
            .ok_or_else(|| anyhow::anyhow!("the process has exited"))
    }

    /// The lines so far that hold `text`.
    fn lines_with(&self, text: &str) -> Vec<String> {
        self.lines
            .lock()
            .map(|lines| lines.iter().filter(|l| l.contains(text)).cloned().collect())
            .unwrap_or_default()
    }

    /// Wait (up to two minutes) until `count` lines hold `text`.
    async fn wait_for(&self, text: &str, count: usize) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(120);
        while self.lines_with(text).len() < count {
            anyhow::ensure!(
                Instant::now() < deadline,
                "no {count} lines with {text:?}; the last lines: {:?}",
                self.lines
                    .lock()
                    .map(|l| l.iter().rev().take(5).cloned().collect::<Vec<_>>())
                    .unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Ok(())
    }
}

async fn run_and_measure_rss(
    plugins: &Path,
    url: &str,
    cache: &Path,
    expected: usize,
) -> anyhow::Result<f64> {
    let config = plugins.with_extension("toml");
    std::fs::write(&config, format!("cache_dir = \"{}\"\n", cache.display()))?;
    let mut child = tokio::process::Command::new(pgnotifier_bin())
        .args(["run", "--plugins"])
        .arg(plugins)
        .arg("--config")
        .arg(&config)
        .args(["--database-url", url])
        .env("PGNOTIFIER_LOG", "warn")
        .env("PGNOTIFIER_ADMIN_ADDR", "127.0.0.1:0")
        .env("PGNOTIFIER_DATA_DIR", plugins.with_extension("data"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let pid = child.id().ok_or_else(|| anyhow::anyhow!("no pid"))?;
    // Loaded when every plugin's worker thread exists; then let it settle.
    let deadline = Instant::now() + Duration::from_secs(60);
    while count_threads(pid, "pgn:idle") < expected {
        anyhow::ensure!(
            Instant::now() < deadline,
            "pgnotifier did not load {expected} plugins"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmRSS"))?;
    child.kill().await?;
    Ok(kb / 1024.0)
}

fn count_threads(pid: u32, prefix: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.starts_with(prefix))
        })
        .count()
}

/// Write `NAME.toml` then `NAME.wasm` (atomically), notify as soon as the
/// channel is LISTENed; milliseconds from the rename to the first delivery.
async fn deploy_and_time(
    notifier: &Notifier,
    client: &Client,
    dir: &Path,
    name: &str,
    bytes: &[u8],
) -> anyhow::Result<f64> {
    let channel = format!("bench_reload_{name}_{}", std::process::id());
    std::fs::write(
        dir.join(format!("{name}.toml")),
        format!("[config]\nchannels = \"{channel}\"\n"),
    )?;
    tokio::time::sleep(Duration::from_millis(200)).await; // let the sidecar event pass
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, bytes)?;
    let landed = Instant::now();
    std::fs::rename(&tmp, dir.join(format!("{name}.wasm")))?;
    let mut sent = false;
    loop {
        anyhow::ensure!(
            landed.elapsed() < Duration::from_secs(30),
            "{name} was not delivered"
        );
        if !sent && notifier.listening().contains(&channel) {
            client
                .execute("select pg_notify($1, 'x')", &[&channel])
                .await?;
            sent = true;
        }
        if notifier
            .subscribers()
            .iter()
            .any(|s| s.id == name && s.stats.delivered > 0)
        {
            return Ok(landed.elapsed().as_secs_f64() * 1000.0);
        }
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
}

/// Append a custom section: same behaviour, different bytes.
fn with_custom_section(component: &[u8], text: &str) -> Vec<u8> {
    let name = b"pgnotifier-bench";
    let mut payload = vec![name.len() as u8];
    payload.extend_from_slice(name);
    payload.extend_from_slice(text.as_bytes());
    let mut out = component.to_vec();
    out.push(0); // custom section id
    out.push(u8::try_from(payload.len()).unwrap_or(127)); // LEB128, < 128
    out.extend_from_slice(&payload);
    out
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
