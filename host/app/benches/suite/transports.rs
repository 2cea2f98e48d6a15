//! The two durable transports side by side, on a throwaway server with
//! `wal_level = logical` and durable commits (`fsync` on): what a writer's
//! transaction costs with each, beside a plain insert, and what reaches
//! the noop Rust plugin end to end.

use super::*;
use pgnotifier::durable::Transport;

/// Writers, each committing one transaction after another.
pub(crate) const WRITERS: usize = 8;
/// How long each writer runs per round.
const WRITE_FOR: Duration = Duration::from_secs(4);
/// About 200 bytes, as most events are.
const EVENT: &str = r#"{"table": "orders", "op": "UPDATE", "id": 7, "status": "paid", "total": 42.5, "customer_id": 4123, "at": "2026-12-02T10:00:00.123456+00:00", "by": "checkout-service", "region": "eu-west-1"}"#;

impl Bench {
    /// Writer throughput (one event per transaction, eight writers) for a
    /// plain insert, an insert with `pg_notify`, and `pgnotifier.send` on
    /// each transport, interleaved; then events/s end to end at 100 per
    /// transaction, latency at 1000/s, and this process's CPU per event
    /// (the host, and the four producers' client side), on each transport.
    pub(crate) async fn transports(&mut self) -> anyhow::Result<()> {
        let (cluster, mut bench) = self.on_a_logical_server().await?;
        let wal = Transport::Wal {
            slot: "pgnotifier".to_owned(),
        };
        let mut setup = bench.client().await?;
        pgnotifier::durable::schema::install(&mut setup).await?;
        setup
            .batch_execute("CREATE TABLE bench_rows (id bigserial PRIMARY KEY, body text NOT NULL)")
            .await?;
        let insert = format!("INSERT INTO bench_rows (body) VALUES ('{EVENT}')");
        let notify = format!("{insert}; SELECT pg_notify('bench_plain', '{EVENT}')");
        let send = format!("SELECT pgnotifier.send('bench_writes', '{EVENT}')");
        let emit = format!("SELECT pg_logical_emit_message(true, 'bench', '{EVENT}')");
        let mut rates: [Vec<f64>; 6] = Default::default();
        for _ in 0..REPEATS {
            rates[0].push(bench.writers(&insert).await?);
            rates[1].push(bench.writers(&notify).await?);
            for (i, transport) in [(2, Transport::Outbox), (3, wal.clone())] {
                // A host relays (with the WAL transport) and feeds one
                // at-least-once subscriber, as in use.
                bench.transport = transport;
                let host = bench.writes_host("bench_writes").await?;
                rates[i].push(bench.writers(&send).await?);
                host.shutdown(Duration::from_secs(5)).await;
            }
            // What bounds it: the writers alone, with no host reading (the
            // slot keeps the messages), and the bare message.
            rates[4].push(bench.writers(&send).await?);
            rates[5].push(bench.writers(&emit).await?);
            // Relay that backlog now, not during the next round's writers.
            bench.transport = wal.clone();
            let host = bench.writes_host("bench_writes").await?;
            bench.relayed_to_now(&setup).await?;
            host.shutdown(Duration::from_secs(5)).await;
        }
        let [insert, notify, outbox, wal_rate, wal_alone, emit] = rates.map(|mut r| median(&mut r));
        self.record(
            "transports_writers",
            format!("writers, {WRITERS} connections, one ~200 B event per transaction: INSERT / INSERT + pg_notify / send (outbox) / send (wal)"),
            format!(
                "{:.0} / {:.0} ({:.0}%) / {:.0} ({:.0}%) / {:.0} ({:.0}%) transactions/s",
                insert,
                notify,
                100.0 * notify / insert,
                outbox,
                100.0 * outbox / insert,
                wal_rate,
                100.0 * wal_rate / insert
            ),
            &[
                ("insert_per_s", insert),
                ("insert_notify_per_s", notify),
                ("outbox_per_s", outbox),
                ("wal_per_s", wal_rate),
            ],
        );
        self.record(
            "transports_writers_alone",
            "the same, no host reading: send (wal) / pg_logical_emit_message alone".to_owned(),
            format!(
                "{:.0} ({:.0}%) / {:.0} ({:.0}%) transactions/s",
                wal_alone,
                100.0 * wal_alone / insert,
                emit,
                100.0 * emit / insert
            ),
            &[("wal_alone_per_s", wal_alone), ("emit_per_s", emit)],
        );
        for (name, transport) in [("outbox", Transport::Outbox), ("wal", wal)] {
            bench.transport = transport;
            let (mut rate, mut cpu, mut p50s, mut p99s) =
                (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for round in 0..REPEATS {
                let tag = format!("bench_transport_{name}_{round}");
                let events = 20_000;
                let before = process_cpu();
                rate.push(
                    bench
                        .durable_rate(&tag, 100, events, true, "i::text")
                        .await?,
                );
                cpu.push((process_cpu() - before).as_secs_f64() * 1e6 / events as f64);
                let (p50, p99) = bench.durable_latency(&tag, 1000).await?;
                p50s.push(p50);
                p99s.push(p99);
            }
            let (rate, cpu, p50, p99) = (
                median(&mut rate),
                median(&mut cpu),
                median(&mut p50s),
                median(&mut p99s),
            );
            self.record(
                &format!("transports_{name}"),
                format!("{name} transport, noop Rust plugin: events/s at 100 per transaction / p50, p99 at 1000/s / CPU per event (this process: host and producers)"),
                format!("{:.0}k/s / {p50:.2}, {p99:.2} ms / {cpu:.1} µs", rate / 1e3),
                &[("per_s", rate), ("p50_ms", p50), ("p99_ms", p99), ("cpu_us", cpu)],
            );
        }
        drop(setup);
        drop(cluster);
        Ok(())
    }

    /// A throwaway server with `wal_level = logical` and durable commits
    /// (`fsync` on), and a bench of this one's plugins on it, on the outbox
    /// transport; the server stops when dropped.
    pub(crate) async fn on_a_logical_server(&self) -> anyhow::Result<(local_pg::Cluster, Bench)> {
        let cluster = tokio::task::spawn_blocking(|| {
            local_pg::Cluster::start_with(&[("wal_level", "logical"), ("fsync", "on")])
        })
        .await??;
        let bench = Bench {
            url: plain_transport(cluster.url()),
            noop: self.noop.clone(),
            logger: Vec::new(),
            stopwatch: Vec::new(),
            work: self.work.clone(),
            rows: Vec::new(),
            json: Vec::new(),
            transport: Transport::Outbox,
        };
        Ok((cluster, bench))
    }

    /// Until the slot `pgnotifier` is confirmed past the WAL written so
    /// far: a running relay has relayed it all.
    pub(crate) async fn relayed_to_now(&self, client: &Client) -> anyhow::Result<()> {
        let end: String = client
            .query_one("SELECT pg_current_wal_lsn()::text", &[])
            .await?
            .get(0);
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let relayed: bool = client
                .query_one(
                    "SELECT coalesce((SELECT confirmed_flush_lsn >= $1::text::pg_lsn
                                        FROM pg_replication_slots WHERE slot_name = 'pgnotifier'), true)",
                    &[&end],
                )
                .await?
                .get(0);
            anyhow::ensure!(Instant::now() < deadline, "the backlog was never relayed");
            if relayed {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A host with the noop plugin, at least once on `channel`, on the
    /// bench's transport, reading.
    async fn writes_host(&self, channel: &str) -> anyhow::Result<Notifier> {
        let id = format!("{channel}_sink");
        let sidecar = format!(
            "delivery = \"at-least-once\"\noverflow = \"block\"\nqueue_size = 100000\n\n[config]\nchannels = \"{channel}\"\n"
        );
        let host = self.host(&[(id.clone(), &self.noop, sidecar)]).await?;
        self.wait_for_position(&id).await?;
        self.wait_for_relay().await?;
        Ok(host)
    }

    /// Transactions/s of `sql` (in its own BEGIN/COMMIT) from [`WRITERS`]
    /// connections for [`WRITE_FOR`].
    pub(crate) async fn writers(&self, sql: &str) -> anyhow::Result<f64> {
        let script = format!("BEGIN; {sql}; COMMIT");
        let mut writers = Vec::new();
        let until = Instant::now() + WRITE_FOR;
        for _ in 0..WRITERS {
            let client = self.client().await?;
            let script = script.clone();
            writers.push(tokio::spawn(async move {
                let mut done = 0u64;
                while Instant::now() < until {
                    client.batch_execute(&script).await?;
                    done += 1;
                }
                anyhow::Ok(done)
            }));
        }
        let mut done = 0;
        for writer in writers {
            done += writer.await??;
        }
        Ok(done as f64 / WRITE_FOR.as_secs_f64())
    }
}

/// CPU time this process has used, user and system.
fn process_cpu() -> Duration {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes the struct it is given, and nothing else.
    let usage = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr());
        usage.assume_init()
    };
    let time = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    time(usage.ru_utime) + time(usage.ru_stime)
}
