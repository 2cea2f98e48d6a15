//! 5. Memory: the resident set of `pgnotifier run` with idle subscribers.

use super::*;

impl Bench {
    /// 5. RSS of `pgnotifier run` with 0, 1, 10 and 100 idle subscribers.
    pub(crate) async fn memory(&mut self) -> anyhow::Result<()> {
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

pub(crate) async fn run_and_measure_rss(
    plugins: &Path,
    url: &str,
    cache: &Path,
    expected: usize,
) -> anyhow::Result<f64> {
    let config = plugins.with_extension("toml");
    std::fs::write(&config, format!("cache_dir = \"{}\"\n", cache.display()))?;
    let host = Process::spawn(
        std::process::Command::new(pgnotifier_bin())
            .args(["run", "--plugins"])
            .arg(plugins)
            .arg("--config")
            .arg(&config)
            .args(["--database-url", url])
            .env("PGNOTIFIER_LOG", "warn")
            .env("PGNOTIFIER_ADMIN_ADDR", "127.0.0.1:0")
            .env("PGNOTIFIER_DATA_DIR", plugins.with_extension("data")),
    )?;
    // Loaded when every plugin's worker thread exists; then let it settle.
    let deadline = Instant::now() + Duration::from_secs(60);
    while count_threads(host.pid(), "pgn:idle") < expected {
        anyhow::ensure!(
            Instant::now() < deadline,
            "pgnotifier did not load {expected} plugins: {:?}",
            host.last_lines(5)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    Ok(host.memory("VmRSS")? as f64 / (1024.0 * 1024.0))
}

pub(crate) fn count_threads(pid: u32, prefix: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.starts_with(prefix))
        })
        .count()
}
