//! Hot reload latency: from a plugin file landing in the watched folder to its
//! first delivery, with and without the compile cache.
//!
//! `cargo bench --bench reload` (needs PostgreSQL, found as the tests find it,
//! and `plugins/build` run first). Prints a table and writes
//! `target/bench-reload.json`.

use pgnotifier::local_pg;
use pgnotifier::sandbox::SandboxConfig;
use pgnotifier::{DatabaseConfig, Notifier};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const REPEATS: usize = 7;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let db = local_pg::discover()?;
    let plugin = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins/dist/logger.wasm");
    anyhow::ensure!(
        plugin.is_file(),
        "{} is missing: run plugins/build first",
        plugin.display()
    );
    let bytes = std::fs::read(&plugin)?;

    let work = std::env::temp_dir().join(format!("pgnotifier-bench-reload-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    let (plugins, cache) = (work.join("plugins"), work.join("cache"));
    std::fs::create_dir_all(&plugins)?;
    let notifier = Notifier::builder(DatabaseConfig::from_url(db.url())?)
        .sandbox(SandboxConfig {
            cache_dir: Some(cache),
            ..SandboxConfig::default()
        })
        .build();
    let _watcher = notifier.watch_plugins(&plugins).await?;
    notifier.start().await?;
    let (client, connection) = tokio_postgres::connect(db.url(), tokio_postgres::NoTls).await?;
    tokio::spawn(connection);

    let mut uncached = Vec::new();
    let mut cached = Vec::new();
    for round in 0..REPEATS {
        // New bytes (a custom section) defeat the cache; the same bytes again hit it.
        let fresh = with_custom_section(&bytes, &format!("bench round {round}"));
        uncached.push(
            deploy_and_time(&notifier, &client, &plugins, &format!("u{round}"), &fresh).await?,
        );
        cached.push(
            deploy_and_time(&notifier, &client, &plugins, &format!("c{round}"), &fresh).await?,
        );
    }
    let stats = notifier.compile_cache_stats().unwrap_or_default();
    anyhow::ensure!(
        stats.hits >= REPEATS,
        "the cached rounds did not hit the cache: {stats:?}"
    );

    let (u, c) = (median(&mut uncached), median(&mut cached));
    println!("hot reload, file landing -> first delivery (Rust example plugin, {} bytes), median of {REPEATS}", bytes.len());
    println!("| case     | median ms | min ms | max ms |");
    println!("|----------|-----------|--------|--------|");
    for (name, v, m) in [("uncached", &uncached, u), ("cached", &cached, c)] {
        println!(
            "| {name:<8} | {m:>9.1} | {:>6.1} | {:>6.1} |",
            v[0],
            v[v.len() - 1]
        );
    }
    let json = format!(
        "{{\"bench\":\"reload\",\"repeats\":{REPEATS},\"uncached_ms\":{uncached:?},\"cached_ms\":{cached:?},\"uncached_median_ms\":{u:.2},\"cached_median_ms\":{c:.2}}}\n"
    );
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-reload.json");
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&out, json)?;
    println!("wrote {}", out.display());
    notifier.shutdown(Duration::from_secs(5)).await;
    let _ = std::fs::remove_dir_all(&work);
    Ok(())
}

/// Write `NAME.toml` then `NAME.wasm` (atomically), then notify as soon as the
/// channel is LISTENed; milliseconds until the first delivery.
async fn deploy_and_time(
    notifier: &Notifier,
    client: &tokio_postgres::Client,
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
    let tmp: PathBuf = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, bytes)?;
    let landed = Instant::now();
    std::fs::rename(&tmp, dir.join(format!("{name}.wasm")))?;
    let deadline = landed + Duration::from_secs(30);
    let mut sent = false;
    loop {
        anyhow::ensure!(
            Instant::now() < deadline,
            "{name} was not delivered within 30 s"
        );
        if !sent && notifier.listening().contains(&channel) {
            client
                .execute("select pg_notify($1, 'x')", &[&channel])
                .await?;
            sent = true;
        }
        let delivered = notifier
            .subscribers()
            .iter()
            .any(|s| s.id == name && s.stats.delivered > 0);
        if delivered {
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
    out.push(u8::try_from(payload.len()).expect("short section")); // LEB128, < 128
    out.extend_from_slice(&payload);
    out
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}
