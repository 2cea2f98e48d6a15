//! The figures as a user meets them: the real `pgnotifier run` with the
//! stopwatch plugin, timed from inside the plugin through the WASI wall
//! clock, beside a bare tokio-postgres loop in a process of its own, timed
//! the same way. CPU is each whole process's, read from
//! `/proc/PID/task/*/schedstat` (nanoseconds, every thread: the epoch
//! ticker and the runtime's threads included).

use super::processes::wait_for;
use super::{median, sent_at_rate, Bench, Process, RunHost, REPEATS, ROW_CHANGE_SQL, ROW_KEY_SQL};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio_postgres::{AsyncMessage, NoTls};

/// Set in the environment of the bench binary started again as the bare loop.
const BARE_URL: &str = "PGNOTIFIER_BENCH_BARE_URL";
const BARE_CHANNEL: &str = "PGNOTIFIER_BENCH_BARE_CHANNEL";
const BARE_N: &str = "PGNOTIFIER_BENCH_BARE_N";
const BARE_LATENCY: &str = "PGNOTIFIER_BENCH_BARE_LATENCY";

/// The line both processes print once they LISTEN.
const LISTENING: &str = "LISTEN set updated";
/// How both processes start their report line.
const REPORT: &str = "stopwatch n=";

/// When a notification was sent, in microseconds since the Unix epoch.
pub(super) const STAMP_SQL: &str = "(extract(epoch from clock_timestamp()) * 1e6)::bigint";

/// How long each rate runs.
const RATE_SECONDS: f64 = 3.0;

/// Which listener a figure is of.
#[derive(Clone, Copy)]
enum Side {
    Host,
    Bare,
}

/// Per round: CPU µs per notification, p50 and p99 latency in ms.
#[derive(Default)]
struct Samples {
    cpu_us: Vec<f64>,
    p50_ms: Vec<f64>,
    p99_ms: Vec<f64>,
}

impl Samples {
    fn medians(mut self) -> (f64, f64, f64) {
        (
            median(&mut self.cpu_us),
            median(&mut self.p50_ms),
            median(&mut self.p99_ms),
        )
    }
}

/// One report line: `stopwatch n=N first_to_last_us=T [p50_us=A p99_us=B]`.
struct Report {
    first_to_last_us: f64,
    p50_us: f64,
    p99_us: f64,
}

impl Report {
    fn parse(line: &str) -> anyhow::Result<Self> {
        let field = |key: &str| -> f64 {
            line.split_whitespace()
                .find_map(|word| word.strip_prefix(key)?.strip_prefix('='))
                .and_then(|v| v.parse().ok())
                .unwrap_or(f64::NAN)
        };
        let report = Self {
            first_to_last_us: field("first_to_last_us"),
            p50_us: field("p50_us"),
            p99_us: field("p99_us"),
        };
        anyhow::ensure!(
            report.first_to_last_us.is_finite(),
            "not a report: {line:?}"
        );
        Ok(report)
    }
}

/// A listening process: `pgnotifier run` or the bare loop.
enum Listening {
    Host(RunHost),
    Bare(Process),
}

impl Listening {
    /// Start `side` on `channel`, reporting every `n` notifications, and
    /// wait until it LISTENs.
    async fn start(
        bench: &Bench,
        side: Side,
        name: &str,
        channel: &str,
        n: usize,
        latency: bool,
    ) -> anyhow::Result<Self> {
        let listening = match side {
            Side::Host => {
                let config =
                    format!("channels = \"{channel}\"\nn = \"{n}\"\nlatency = \"{latency}\"\n");
                let plugin = ("stopwatch", bench.stopwatch.as_slice());
                Self::Host(RunHost::start_with(bench, name, None, plugin, &config)?)
            }
            Side::Bare => Self::Bare(Process::spawn(
                std::process::Command::new(std::env::current_exe()?)
                    .env(BARE_URL, &bench.url)
                    .env(BARE_CHANNEL, channel)
                    .env(BARE_N, n.to_string())
                    .env(BARE_LATENCY, latency.to_string()),
            )?),
        };
        wait_for(listening.process(), LISTENING, 1).await?;
        Ok(listening)
    }

    fn process(&self) -> &Process {
        match self {
            Self::Host(host) => &host.process,
            Self::Bare(process) => process,
        }
    }

    /// Wait for the `count`-th report.
    async fn report(&self, count: usize) -> anyhow::Result<Report> {
        wait_for(self.process(), REPORT, count).await?;
        let lines = self.process().lines_with(&[REPORT]);
        Report::parse(&lines[count - 1])
    }

    /// CPU time the whole process has used, in seconds.
    fn cpu_seconds(&self) -> anyhow::Result<f64> {
        let pid = self.process().pid();
        let mut ns = 0u64;
        for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
            // A thread may end between the listing and the read.
            let Ok(stat) = std::fs::read_to_string(task?.path().join("schedstat")) else {
                continue;
            };
            ns += stat
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
        Ok(ns as f64 / 1e9)
    }
}

impl Bench {
    /// 1b. The drain of section 1 out of process: one transaction of N
    ///     notifications into `pgnotifier run` (stopwatch plugin, lossless
    ///     queue) and into the bare loop, each timed from its first
    ///     notification to its last from the inside.
    pub(super) async fn run_drain(&mut self) -> anyhow::Result<()> {
        let cases = [
            ("16 B", 200_000, "(1e15 + i)::bigint::text"),
            ("200 B row key", 100_000, ROW_KEY_SQL),
            ("1 KB row change", 100_000, ROW_CHANGE_SQL),
        ];
        for (label, n, payload_sql) in cases {
            let (mut host, mut bare) = (Vec::new(), Vec::new());
            for round in 0..REPEATS {
                for (side, rates) in [(Side::Host, &mut host), (Side::Bare, &mut bare)] {
                    let channel = format!("bench_run_drain_{round}_{}", std::process::id());
                    let name = format!("drain-{}-{round}", label.replace(' ', "-"));
                    let listening = Listening::start(self, side, &name, &channel, n, false).await?;
                    let producer = self.client().await?;
                    producer
                        .execute(&format!("select count(pg_notify('{channel}', {payload_sql})) from generate_series(1, {n}) as i"), &[])
                        .await?;
                    let report = listening.report(1).await?;
                    rates.push(n as f64 / (report.first_to_last_us.max(1.0) / 1e6));
                }
            }
            let (h, b) = (median(&mut host), median(&mut bare));
            self.record(
                &format!("run_drain_{}", label.replace(' ', "_").to_lowercase()),
                format!("pgnotifier run: drain {label}, N={n}: host / bare loop (out of process)"),
                format!(
                    "{:.0}k/s / {:.0}k/s = {:.0}%",
                    h / 1e3,
                    b / 1e3,
                    100.0 * h / b
                ),
                &[("host_per_s", h), ("bare_per_s", b), ("ratio", h / b)],
            );
        }
        Ok(())
    }

    /// 1c. The drain of 1b (200 B row keys) into `pgnotifier run` with 50
    ///     live streams of the console open, against none, interleaved:
    ///     what watching the host costs its dispatch.
    pub(super) async fn run_streams(&mut self) -> anyhow::Result<()> {
        const STREAMS: usize = 50;
        let n = 100_000;
        let (mut watched, mut alone) = (Vec::new(), Vec::new());
        for round in 0..REPEATS {
            for (streams, rates) in [(STREAMS, &mut watched), (0, &mut alone)] {
                let channel = format!("bench_run_streams_{round}_{}", std::process::id());
                let name = format!("streams-{streams}-{round}");
                let listening =
                    Listening::start(self, Side::Host, &name, &channel, n, false).await?;
                let Listening::Host(host) = &listening else {
                    anyhow::bail!("the host side started no host");
                };
                let open = host.open_streams(streams)?;
                // Every stream has its first state before the drain begins.
                tokio::time::sleep(std::time::Duration::from_millis(600)).await;
                let producer = self.client().await?;
                producer
                    .execute(&format!("select count(pg_notify('{channel}', {ROW_KEY_SQL})) from generate_series(1, {n}) as i"), &[])
                    .await?;
                let report = listening.report(1).await?;
                rates.push(n as f64 / (report.first_to_last_us.max(1.0) / 1e6));
                drop(open);
            }
        }
        let (w, a) = (median(&mut watched), median(&mut alone));
        self.record(
            "run_streams",
            format!(
                "pgnotifier run: drain 200 B row key, N={n}: {STREAMS} live streams open / none"
            ),
            format!(
                "{:.0}k/s / {:.0}k/s = {:.0}%",
                w / 1e3,
                a / 1e3,
                100.0 * w / a
            ),
            &[("watched_per_s", w), ("alone_per_s", a), ("ratio", w / a)],
        );
        Ok(())
    }

    /// 3b. At 1k/s and 10k/s, one NOTIFY per transaction from 4 connections
    ///     for [`RATE_SECONDS`]: CPU per notification of the whole process
    ///     and p50/p99 latency (send stamp to the plugin's wall clock), of
    ///     `pgnotifier run` and of the bare loop.
    pub(super) async fn run_rates(&mut self) -> anyhow::Result<()> {
        let row_change = format!(
            "json_build_object('sent_us', {STAMP_SQL}, 'row', {})::text",
            ROW_CHANGE_SQL.trim_end_matches("::text")
        );
        let stamp = format!("{STAMP_SQL}::text");
        let cases = [
            ("16 B", stamp.as_str()),
            ("1 KB row change", row_change.as_str()),
        ];
        for rate in [1_000u32, 10_000] {
            for (label, payload_sql) in cases {
                let (mut host, mut bare) = (Samples::default(), Samples::default());
                for round in 0..REPEATS {
                    for (side, samples) in [(Side::Host, &mut host), (Side::Bare, &mut bare)] {
                        let channel = format!("bench_run_rate_{round}_{}", std::process::id());
                        let name = format!("rate-{rate}-{}-{round}", label.replace(' ', "-"));
                        let n = sent_at_rate(rate, RATE_SECONDS);
                        let listening =
                            Listening::start(self, side, &name, &channel, n, true).await?;
                        let cpu_before = listening.cpu_seconds()?;
                        let sent = self
                            .send_at_rate(&channel, rate, payload_sql, RATE_SECONDS)
                            .await?;
                        anyhow::ensure!(sent == n, "sent {sent}, expected {n}");
                        let report = listening.report(1).await?;
                        let cpu_s = listening.cpu_seconds()? - cpu_before;
                        samples.cpu_us.push(cpu_s * 1e6 / n as f64);
                        samples.p50_ms.push(report.p50_us / 1e3);
                        samples.p99_ms.push(report.p99_us / 1e3);
                    }
                }
                let (hc, hp50, hp99) = host.medians();
                let (bc, bp50, bp99) = bare.medians();
                self.record(
                    &format!("run_rate_{rate}_{}", label.replace(' ', "_").to_lowercase()),
                    format!("pgnotifier run at {rate}/s, {label}: CPU per notification, p50 / p99 latency, host vs bare loop (out of process)"),
                    format!(
                        "{hc:.1} µs vs {bc:.1} µs ({:.2}x); {hp50:.3} / {hp99:.3} ms vs {bp50:.3} / {bp99:.3} ms (p99 {:.2}x)",
                        hc / bc,
                        hp99 / bp99
                    ),
                    &[
                        ("host_cpu_us", hc),
                        ("bare_cpu_us", bc),
                        ("host_p50_ms", hp50),
                        ("host_p99_ms", hp99),
                        ("bare_p50_ms", bp50),
                        ("bare_p99_ms", bp99),
                    ],
                );
            }
        }
        Ok(())
    }
}

/// The bench binary started again as the bare loop, if the environment
/// says so: LISTEN on one connection and time what arrives, with nothing
/// else in the process (the caller runs it on a current-thread runtime).
pub(super) fn bare_loop_if_asked() -> Option<impl std::future::Future<Output = anyhow::Result<()>>>
{
    let url = std::env::var(BARE_URL).ok()?;
    Some(async move { bare_loop(&url).await })
}

async fn bare_loop(url: &str) -> anyhow::Result<()> {
    let var = |name: &str| std::env::var(name).map_err(|_| anyhow::anyhow!("{name} is not set"));
    let channel = var(BARE_CHANNEL)?;
    let every: usize = var(BARE_N)?.parse()?;
    let latency = var(BARE_LATENCY)? == "true";
    let (client, mut connection) = tokio_postgres::connect(url, NoTls).await?;
    let listen = tokio::spawn(async move {
        client.batch_execute(&format!("LISTEN {channel}")).await?;
        eprintln!("{LISTENING}");
        // Keep the client, and so the connection, alive.
        std::future::pending::<()>().await;
        anyhow::Ok(client)
    });
    let (mut seen, mut first_us, mut latencies) = (0usize, 0u64, Vec::with_capacity(every));
    loop {
        let message = std::future::poll_fn(|cx| connection.poll_message(cx)).await;
        let n = match message {
            Some(Ok(AsyncMessage::Notification(n))) => n,
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.into()),
            None => break,
        };
        seen += 1;
        // The clock only where a figure needs it, as in the stopwatch plugin.
        let now = match latency || seen == 1 || seen == every {
            true => wall_clock_us(),
            false => 0,
        };
        if seen == 1 {
            first_us = now;
        }
        if latency {
            let sent = stamp_of(n.payload())
                .ok_or_else(|| anyhow::anyhow!("no send stamp in {:?}", n.payload()))?;
            latencies.push(now.saturating_sub(sent));
        }
        if seen == every {
            let mut line = format!(
                "{REPORT}{seen} first_to_last_us={}",
                now.saturating_sub(first_us)
            );
            if latency {
                latencies.sort_unstable();
                let at = |per_cent: usize| latencies[((latencies.len() - 1) * per_cent + 50) / 100];
                line.push_str(&format!(" p50_us={} p99_us={}", at(50), at(99)));
            }
            eprintln!("{line}");
            (seen, latencies) = (0, Vec::with_capacity(every));
        }
    }
    listen.abort();
    Ok(())
}

fn wall_clock_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// The send stamp of a payload as PostgreSQL wrote it: the whole payload,
/// or the number after `"sent_us"` (`json_build_object` puts ` : ` there).
fn stamp_of(payload: &str) -> Option<u64> {
    let rest = match payload.find("\"sent_us\"") {
        Some(at) => payload[at + "\"sent_us\"".len()..].trim_start_matches([' ', ':']),
        None => payload,
    };
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}
