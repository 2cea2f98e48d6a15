//! `pgnotifier run` as a process of its own (the tests' [`Process`]), and
//! what it prints.

use super::*;

pub(crate) const CLUSTER_TAKEOVER_MS: u64 = 1000;
pub(crate) const CLUSTER_N: usize = 100_000;

/// `pgnotifier run` with one plugin, in a cluster or alone; SIGKILLed when
/// dropped.
pub(crate) struct RunHost {
    pub(crate) process: Process,
    data: PathBuf,
}

impl RunHost {
    /// With the noop plugin on `channel`.
    pub(crate) fn start(
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
    pub(crate) fn start_with(
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
        let process = Process::spawn(
            std::process::Command::new(pgnotifier_bin())
                .args(["run", "--config"])
                .arg(&file)
                .env("PGNOTIFIER_LOG", "info"),
        )?;
        Ok(Self { process, data })
    }

    pub(crate) async fn wait_for(&self, text: &str) -> anyhow::Result<()> {
        wait_for(&self.process, text, 1).await
    }

    /// Events/s from the commit of one transaction of [`CLUSTER_N`]
    /// notifications to the last delivery, read from the host's metrics.
    pub(crate) async fn drain(&self, bench: &Bench, channel: &str) -> anyhow::Result<f64> {
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

    /// Open `n` live streams (`GET /v1/stream`) of the admin API, each read
    /// to its end by a thread of its own, as a browser tab does; they close
    /// when the returned sockets are dropped.
    pub(crate) fn open_streams(&self, n: usize) -> anyhow::Result<Vec<std::net::TcpStream>> {
        use std::io::{Read, Write};
        let addr = std::fs::read_to_string(self.data.join("admin.addr"))?;
        let mut streams = Vec::with_capacity(n);
        for _ in 0..n {
            let mut stream = std::net::TcpStream::connect(addr.trim())?;
            write!(
                stream,
                "GET /v1/stream HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n\r\n",
                addr.trim()
            )?;
            let mut reader = stream.try_clone()?;
            std::thread::spawn(move || {
                let mut buf = [0u8; 8192];
                while matches!(reader.read(&mut buf), Ok(n) if n > 0) {}
            });
            streams.push(stream);
        }
        Ok(streams)
    }

    /// The noop plugin's delivered count, from `/metrics`.
    pub(crate) async fn delivered(&self) -> anyhow::Result<f64> {
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

/// Wait (up to two minutes) until `count` lines of `process` hold `text`.
pub(crate) async fn wait_for(process: &Process, text: &str, count: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    while process.lines_with(&[text]).len() < count {
        anyhow::ensure!(
            Instant::now() < deadline,
            "no {count} lines with {text:?}; the last lines: {:?}",
            process.last_lines(5)
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    Ok(())
}
