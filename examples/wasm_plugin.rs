//! Embed pgnotifier in an async Rust program, with a WebAssembly plugin and a
//! native closure on the same channel.
//!
//! ```text
//! plugins/build
//! cargo run --example wasm_plugin -- plugins/dist/logger.wasm
//! psql -h 127.0.0.1 -U postgres -c "select pg_notify('ch1', '[1, 2, 3]')"
//! ```
//! The database comes from `DATABASE_URL` or the `PG*` variables.

use pgnotifier::{DatabaseSettings, Notifier, Payload, Subscriber};
use std::path::PathBuf;
use std::time::Duration;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // Plugins log through the host, so show the log.
    tracing_subscriber::fmt().with_env_filter("info").init();
    let plugin = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "plugins/dist/logger.wasm".into()),
    );

    let notifier = Notifier::new(DatabaseSettings::resolve(None)?);
    let id = notifier.load_plugin(&plugin).await?;
    let channels: Vec<String> = notifier
        .subscribers()
        .into_iter()
        .find(|s| s.id == id)
        .map(|s| s.channels.into_iter().map(|c| c.channel).collect())
        .unwrap_or_default();
    println!("plugin {id} subscribed to {channels:?}");

    let sums = Subscriber::native(|_, channel, payload, _| {
        if let Payload::Json(json) = payload {
            if let Ok(numbers) = serde_json::from_str::<Vec<f64>>(json) {
                println!(
                    "sum of {json} on {channel}: {}",
                    numbers.iter().sum::<f64>()
                );
            }
        }
    });
    notifier.subscribe("sums", channels, sums)?;

    notifier.start().await?;
    notifier
        .wait_until_listening(Duration::from_secs(10))
        .await?;
    println!("listening; Ctrl-C to stop");
    tokio::signal::ctrl_c().await?;
    let report = notifier.shutdown(Duration::from_secs(5)).await;
    println!("stopped; abandoned: {:?}", report.abandoned);
    Ok(())
}
