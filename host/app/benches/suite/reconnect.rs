//! 7. Reconnecting after an outage.

use super::*;

impl Bench {
    /// 7. From the server accepting connections again to LISTENing again, at
    ///    default settings, after outages of several lengths (a throwaway
    ///    cluster, stopped and started).
    pub(crate) async fn reconnect(&mut self) -> anyhow::Result<()> {
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
