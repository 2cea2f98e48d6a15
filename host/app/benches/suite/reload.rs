//! 4. Hot reload: a file landing in the folder to its first delivery.

use super::*;

impl Bench {
    /// 4. Hot reload: from a file landing in the watched folder to its first
    ///    delivery, with and without the compile cache.
    pub(crate) async fn reload(&mut self) -> anyhow::Result<()> {
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
}

/// Write `NAME.toml` then `NAME.wasm` (atomically), notify as soon as the
/// channel is LISTENed; milliseconds from the rename to the first delivery.
pub(crate) async fn deploy_and_time(
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
pub(crate) fn with_custom_section(component: &[u8], text: &str) -> Vec<u8> {
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
