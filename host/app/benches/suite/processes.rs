//! `pgnotifier run` and the bare loop as processes of their own, and
//! what they print.

use super::*;

pub(crate) const CLUSTER_TAKEOVER_MS: u64 = 1000;
pub(crate) const CLUSTER_N: usize = 100_000;

/// `pgnotifier run` with one plugin, in a cluster or alone; SIGKILLed when
/// dropped.
pub(crate) struct RunHost {
    pub(crate) process: Watched,
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
        let process = Watched::spawn(
            tokio::process::Command::new(pgnotifier_bin())
                .args(["run", "--config"])
                .arg(&file)
                .env("PGNOTIFIER_LOG", "info"),
        )?;
        Ok(Self { process, data })
    }

    pub(crate) async fn wait_for(&self, text: &str) -> anyhow::Result<()> {
        self.process.wait_for(text, 1).await
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

/// A child process whose standard error is kept line by line; SIGKILLed
/// when dropped.
pub(crate) struct Watched {
    child: tokio::process::Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Watched {
    pub(crate) fn spawn(command: &mut tokio::process::Command) -> anyhow::Result<Self> {
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

    pub(crate) fn pid(&self) -> anyhow::Result<u32> {
        self.child
            .id()
            .ok_or_else(|| anyhow::anyhow!("the process has exited"))
    }

    /// The lines so far that hold `text`.
    pub(crate) fn lines_with(&self, text: &str) -> Vec<String> {
        self.lines
            .lock()
            .map(|lines| lines.iter().filter(|l| l.contains(text)).cloned().collect())
            .unwrap_or_default()
    }

    /// Wait (up to two minutes) until `count` lines hold `text`.
    pub(crate) async fn wait_for(&self, text: &str, count: usize) -> anyhow::Result<()> {
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
