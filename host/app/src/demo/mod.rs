//! `pgnotifier demo`: see it work within a minute, with nothing installed
//! but Rust and PostgreSQL.
//!
//! It uses `DATABASE_URL` when set and reachable, else a throwaway cluster
//! (the same code the tests use). Subscribers: the origin's two example
//! callbacks as native closures, a plugin written in WAT (`echo.wat`, made a
//! component here, so no guest toolchain is needed), and the example plugins
//! from `plugins/dist` when `plugins/build` has built them. It sends a short
//! script of notifications, prints what each subscriber received, then stays
//! up for the user's own `psql` until Ctrl-C, and cleans everything up.

use crate::local_pg::{self, Cluster, LocalPgError};
use anyhow::Context;
use pgnotifier::payload::describe;
use pgnotifier::{DatabaseSettings, Notifier, Subscriber};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The notifications sent: the origin's README examples, then one of each
/// payload type, then an order for the example plugins.
const SCRIPT: &[(&str, &str)] = &[
    ("ch1", r#""WARNING: Something really bad happened""#),
    (
        "ch1",
        r#"{"topic": "abc", "data": "some data", "something": "else"}"#,
    ),
    (
        "ch2",
        r#"{"topic": "xyz", "notice": "update", "data": [2, "stuff"]}"#,
    ),
    ("ch2", "[1,2,3,4,5]"),
    ("ch3", "[1,2,3,4,5]"),
    ("ch1", "42"),
    ("ch1", "2.5"),
    ("ch1", "true"),
    ("ch1", "plain words, not JSON"),
    ("orders", r#"{"id": 7, "status": "shipped"}"#),
];

/// The example plugins shown when built, with their sidecars.
const EXAMPLES: &[&str] = &[
    "logger",
    "counter",
    "field-filter",
    "formatter",
    "json-filter",
];

#[derive(Debug, Clone, Default)]
pub struct DemoOptions {
    /// Exit after the script instead of waiting for Ctrl-C.
    pub once: bool,
    /// Where the built example plugins are (default: where `plugins/build` puts them).
    pub plugins: Option<PathBuf>,
}

pub async fn run(options: DemoOptions) -> anyhow::Result<()> {
    let database = Database::find()?;
    let work = std::env::temp_dir().join(format!("pgnotifier-demo-{}", std::process::id()));
    let result = demo(&options, &database, &work).await;
    let _ = std::fs::remove_dir_all(&work);
    if let Database::Throwaway(cluster) = database {
        let dir = cluster.dir().to_owned();
        drop(cluster);
        println!(
            "stopped the throwaway PostgreSQL and removed {}",
            dir.display()
        );
    }
    result
}

async fn demo(options: &DemoOptions, database: &Database, work: &Path) -> anyhow::Result<()> {
    let plugins = work.join("plugins");
    std::fs::create_dir_all(&plugins)
        .with_context(|| format!("cannot create {}", plugins.display()))?;
    write_echo_plugin(&plugins)?;
    let examples = copy_examples(options.plugins.as_deref(), &plugins)?;

    let notifier = Notifier::new(DatabaseSettings::from_url(database.url())?);
    // The origin's README, callback for callback.
    notifier.add_channels(["ch1", "ch3"])?;
    let print = Subscriber::native(|id, channel, payload, pid| {
        println!(
            "  {id} got ({id}, {channel:?}, {}, {pid})",
            describe(payload)
        );
    });
    notifier.subscribe("42", "ch1", print)?;
    let ignore = Subscriber::native(|id, _, _, _| {
        println!("  {id}: I'm just going to ignore that.");
    });
    notifier.subscribe("an_id", "ch2", ignore)?;
    let _watcher = notifier.watch_plugins(&plugins).await?;
    notifier.start().await?;
    notifier
        .wait_until_listening(Duration::from_secs(15))
        .await?;

    println!("subscribers:");
    for view in notifier.subscribers() {
        let channels: Vec<&str> = view.channels.iter().map(|c| c.channel.as_str()).collect();
        let kind = match view.source {
            pgnotifier::registry::SubscriberSource::Native => "native closure",
            pgnotifier::registry::SubscriberSource::Plugin { .. } => "wasm plugin",
        };
        println!("  {:<14} {kind:<15} on {}", view.id, channels.join(", "));
    }
    if examples == 0 {
        println!("  (run plugins/build to see the example plugins in Rust, C, Python and JavaScript here too)");
    }
    println!(
        "channel ch3 has no subscriber, so it is not LISTENed: its notification goes nowhere."
    );
    println!();

    let (client, connection) = DatabaseSettings::from_url(database.url())?
        .connect()
        .await
        .context("cannot connect to send the demo notifications")?;
    tokio::spawn(connection);
    // `orders` is for the example plugins; without them no one listens.
    let script = SCRIPT
        .iter()
        .filter(|(channel, _)| examples > 0 || *channel != "orders");
    for (channel, payload) in script {
        println!("select pg_notify('{channel}', '{payload}');");
        client
            .execute("select pg_notify($1, $2)", &[channel, payload])
            .await?;
        // Let each one's deliveries print before the next is sent.
        tokio::time::sleep(Duration::from_millis(150)).await;
    }

    if !options.once {
        println!();
        let listened = notifier.listening().join(", ");
        println!("Send your own (LISTENed: {listened}):");
        // A given URL may hold a password: point at the variable, never print it.
        let target = match database {
            Database::Given(_) => "\"$DATABASE_URL\"".to_owned(),
            Database::Throwaway(cluster) => format!("'{}'", cluster.url()),
        };
        println!(
            "  psql {target} -c \"select pg_notify('ch1', '{{\\\"hello\\\": \\\"world\\\"}}')\""
        );
        println!("Ctrl-C stops the demo and removes everything it created.");
        tokio::signal::ctrl_c().await?;
        println!();
    }
    notifier.shutdown(Duration::from_secs(5)).await;
    Ok(())
}

/// Where the demo's notifications go.
enum Database {
    Given(String),
    Throwaway(Cluster),
}

impl Database {
    /// `DATABASE_URL` if set and reachable, else a throwaway cluster.
    fn find() -> anyhow::Result<Self> {
        if let Ok(url) = std::env::var("DATABASE_URL") {
            let shown = DatabaseSettings::from_url(&url)
                .map(|c| c.redacted())
                .unwrap_or_else(|_| "DATABASE_URL".to_owned());
            match local_pg::probe(&url) {
                Ok(()) => {
                    println!("using DATABASE_URL: {shown}");
                    return Ok(Database::Given(url));
                }
                Err(e) => println!(
                    "DATABASE_URL ({shown}) is unreachable ({e}); starting a throwaway PostgreSQL instead"
                ),
            }
        }
        match Cluster::start() {
            Ok(cluster) => {
                println!(
                    "started a throwaway PostgreSQL on 127.0.0.1:{} in {}",
                    cluster.port(),
                    cluster.dir().display()
                );
                Ok(Database::Throwaway(cluster))
            }
            Err(LocalPgError::NoBinaries) => anyhow::bail!(
                "the demo needs PostgreSQL: set DATABASE_URL to a server it can use, or install \
                 the PostgreSQL server (initdb and pg_ctl; Debian/Ubuntu: apt-get install \
                 postgresql, macOS: brew install postgresql) so it can start a throwaway one"
            ),
            Err(e) => Err(e.into()),
        }
    }

    fn url(&self) -> &str {
        match self {
            Database::Given(url) => url,
            Database::Throwaway(cluster) => cluster.url(),
        }
    }
}

/// `echo.wasm`, from the WAT source, with a sidecar asking for raw payloads.
fn write_echo_plugin(dir: &Path) -> anyhow::Result<()> {
    let mut module = wat::parse_str(include_str!("echo.wat")).context("echo.wat")?;
    let mut resolve = wit_parser::Resolve::default();
    let package = resolve.push_str("plugin.wit", pgnotifier::bindings::WIT)?;
    let world = resolve.select_world(&[package], Some("plugin"))?;
    wit_component::embed_component_metadata(
        &mut module,
        &resolve,
        world,
        wit_component::StringEncoding::UTF8,
    )?;
    let component = wit_component::ComponentEncoder::default()
        .module(&module)?
        .validate(true)
        .encode()?;
    std::fs::write(dir.join("echo.wasm"), component)?;
    std::fs::write(
        dir.join("echo.toml"),
        "channels = [\"ch1\", \"ch2\"]\npayload = \"raw\"\n",
    )?;
    Ok(())
}

/// Copy the built example plugins, if found; how many.
fn copy_examples(given: Option<&Path>, to: &Path) -> anyhow::Result<usize> {
    let repo_dist = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../plugins/dist");
    // Where plugins/build puts them: PGNOTIFIER_PLUGINS_OUT, else plugins/dist.
    let built = std::env::var_os("PGNOTIFIER_PLUGINS_OUT").map(PathBuf::from);
    let dist = match (given, built) {
        (Some(dir), _) => dir.to_owned(),
        (None, Some(dir)) => dir,
        (None, None) if Path::new("plugins/dist").is_dir() => PathBuf::from("plugins/dist"),
        (None, None) => repo_dist,
    };
    let mut copied = 0;
    for name in EXAMPLES {
        let wasm = dist.join(format!("{name}.wasm"));
        if !wasm.is_file() {
            continue;
        }
        let sidecar = wasm.with_extension("toml");
        if sidecar.is_file() {
            std::fs::copy(&sidecar, to.join(format!("{name}.toml")))?;
        }
        std::fs::copy(&wasm, to.join(format!("{name}.wasm")))?;
        copied += 1;
    }
    Ok(copied)
}
