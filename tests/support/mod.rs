//! Shared set-up for the integration tests: a real PostgreSQL (found as
//! docs/contributing.md says), capture of the host log, and builders for
//! test plugins.
//!
//! Every test that needs something missing fails with a message saying what.

#![allow(dead_code)] // each test binary uses a different part of this module

pub mod durable;
pub mod host;
pub mod process;
pub mod proxy;
pub mod wat;
pub mod webdriver;
pub mod webhook;

use pgnotifier::{DatabaseSettings, Payload, Subscriber};
use pgnotifier_app::local_pg;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The repository's top folder.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The database every test in this binary uses, found or started once.
/// A throwaway server started for it is stopped as the tests end.
pub fn database_url() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| match local_pg::discover() {
        Ok(db) => {
            let url = db.url().to_owned();
            cleanup::keep_until_exit(db);
            url
        }
        Err(e) => panic!("these tests need PostgreSQL: {e}"),
    })
}

/// A throwaway server with `wal_level = logical`, for the WAL transport,
/// started once for this binary and stopped as the tests end. The shared
/// server's `wal_level` is not the tests' to change.
pub fn logical_url() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        let cluster = local_pg::Cluster::start_with(&[
            ("wal_level", "logical"),
            // A slot per test database.
            ("max_replication_slots", "64"),
            ("max_wal_senders", "64"),
        ])
        .unwrap_or_else(|e| {
            panic!("the WAL transport's tests need a throwaway PostgreSQL with wal_level = logical: {e}")
        });
        let url = cluster.url().to_owned();
        cleanup::stop_at_exit(local_pg::LocalPostgres::Throwaway(cluster));
        url
    })
}

/// What the tests leave behind, removed as their process exits (passed or
/// failed): the databases they created, their temp folders, and a
/// throwaway server, stopped last.
pub mod cleanup {
    use pgnotifier_app::local_pg::LocalPostgres;
    use std::path::PathBuf;
    use std::sync::{Mutex, Once};

    #[derive(Default)]
    struct Leftovers {
        databases: Vec<String>,
        dirs: Vec<PathBuf>,
        server: Option<LocalPostgres>,
        /// Servers started for some tests alone; their databases go with them.
        others: Vec<LocalPostgres>,
    }

    static LEFTOVERS: Mutex<Leftovers> = Mutex::new(Leftovers {
        databases: Vec::new(),
        dirs: Vec::new(),
        server: None,
        others: Vec::new(),
    });

    fn with(f: impl FnOnce(&mut Leftovers)) {
        static REGISTERED: Once = Once::new();
        REGISTERED.call_once(|| {
            // SAFETY: registers a plain function, which runs once at exit.
            unsafe { libc::atexit(at_exit) };
        });
        f(&mut LEFTOVERS.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// Drop `name` (a database on the test server) at exit.
    pub fn drop_database(name: &str) {
        with(|l| l.databases.push(name.to_owned()));
    }

    /// Remove `dir` at exit.
    pub fn remove_dir(dir: PathBuf) {
        with(|l| l.dirs.push(dir));
    }

    pub(super) fn keep_until_exit(server: LocalPostgres) {
        with(|l| l.server = Some(server));
    }

    /// Stop `server`, started for some tests alone, at exit.
    pub(super) fn stop_at_exit(server: LocalPostgres) {
        with(|l| l.others.push(server));
    }

    extern "C" fn at_exit() {
        let leftovers = std::mem::take(&mut *LEFTOVERS.lock().unwrap_or_else(|e| e.into_inner()));
        if !leftovers.databases.is_empty() {
            if let Some(url) = leftovers.server.as_ref().map(|s| s.url().to_owned()) {
                drop_databases(&url, &leftovers.databases);
            }
        }
        for dir in &leftovers.dirs {
            let _ = std::fs::remove_dir_all(dir);
        }
        // Dropping a throwaway server stops it and removes its folder.
        drop(leftovers.others);
        drop(leftovers.server);
    }

    fn drop_databases(url: &str, names: &[String]) {
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        runtime.block_on(async {
            let Ok((client, connection)) =
                tokio_postgres::connect(url, tokio_postgres::NoTls).await
            else {
                return;
            };
            tokio::spawn(connection);
            for name in names {
                let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                let _ = client.batch_execute(&sql).await;
            }
        });
    }
}

pub fn database() -> DatabaseSettings {
    DatabaseSettings::from_url(database_url()).expect("test database URL parses")
}

/// A channel name no other test uses.
pub fn channel(prefix: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{prefix}_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A client for sending notifications.
pub struct Sender {
    pub client: tokio_postgres::Client,
}

impl Sender {
    pub async fn connect() -> Self {
        let (client, connection) = tokio_postgres::connect(database_url(), tokio_postgres::NoTls)
            .await
            .expect("connect to the test database");
        tokio::spawn(connection);
        Self { client }
    }

    pub async fn notify(&self, channel: &str, payload: &str) {
        self.client
            .execute("select pg_notify($1, $2)", &[&channel, &payload])
            .await
            .expect("pg_notify");
    }

    /// The sending backend's process id: the `pid` subscribers receive.
    pub async fn pid(&self) -> i32 {
        self.client
            .query_one("select pg_backend_pid()", &[])
            .await
            .expect("pg_backend_pid")
            .get(0)
    }

    /// `NOTIFY channel` with no payload, through a quoted identifier.
    pub async fn notify_empty(&self, channel: &str) {
        let sql = format!("NOTIFY {}", pgnotifier::channel::quote_ident(channel));
        self.client.batch_execute(&sql).await.expect("NOTIFY");
    }
}

/// A role for plugins' queries (`[grants] query_role`), created if missing,
/// then given `grants` (statements such as `GRANT SELECT ON t TO role`).
pub async fn plugin_role(role: &str, grants: &[String]) {
    let sender = Sender::connect().await;
    let create = format!(
        "DO $$ BEGIN CREATE ROLE {} NOLOGIN; \
         EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$",
        pgnotifier::channel::quote_ident(role)
    );
    sender
        .client
        .batch_execute(&create)
        .await
        .expect("create the plugin role");
    for grant in grants {
        sender
            .client
            .batch_execute(grant)
            .await
            .expect("grant to the plugin role");
    }
}

/// Where the test server's Unix socket is: its directory and port, as the
/// server itself reports them.
pub async fn socket_dir() -> (PathBuf, u16) {
    let sender = Sender::connect().await;
    let show = |setting: &'static str| {
        let client = &sender.client;
        async move {
            let row = client.query_one(&format!("show {setting}"), &[]).await;
            row.unwrap_or_else(|e| panic!("show {setting}: {e}"))
                .get::<_, String>(0)
        }
    };
    let dirs = show("unix_socket_directories").await;
    let port: u16 = show("port").await.parse().expect("the server's port");
    let dir = dirs
        .split(',')
        .map(str::trim)
        .find(|d| d.starts_with('/'))
        .unwrap_or_else(|| {
            panic!("these tests need the server to listen on a Unix socket; unix_socket_directories is {dirs:?}")
        });
    (PathBuf::from(dir), port)
}

/// Percent-encode a socket directory for the host part of a URL.
pub fn url_encoded(dir: &Path) -> String {
    dir.display()
        .to_string()
        .replace('%', "%25")
        .replace('/', "%2F")
}

/// Start the listener and wait until every active channel is LISTENed.
pub async fn listen(notifier: &pgnotifier::Notifier) {
    notifier.start().await.expect("start the listener");
    notifier
        .wait_until_listening(SOON)
        .await
        .expect("every active channel LISTENed");
}

/// Poll `check` (from a thread that may block) until it gives a value; past
/// `timeout`, fail with `state()`, which says what was awaited and what was
/// seen. The one deadline loop for waiting on another thread or process;
/// async tests use [`eventually`], which yields to the runtime instead.
pub fn until<T>(
    timeout: Duration,
    state: impl Fn() -> String,
    mut check: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out: {}", state());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Wait until `done` holds, polling; false if `timeout` passes first.
pub async fn eventually(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Generous bound for things that should take milliseconds.
pub const SOON: Duration = Duration::from_secs(20);

/// What a native recording subscriber received.
#[derive(Clone, Debug, PartialEq)]
pub struct Received {
    pub id: String,
    pub channel: String,
    pub payload: Payload,
    pub pid: i32,
}

/// A native subscriber that records every call, and the list it records into.
pub fn recorder() -> (Subscriber, Arc<Mutex<Vec<Received>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    let subscriber = Subscriber::native(move |id, channel, payload, pid| {
        sink.lock().unwrap().push(Received {
            id: id.to_owned(),
            channel: channel.to_owned(),
            payload: payload.clone(),
            pid,
        });
    });
    (subscriber, seen)
}

/// A started notifier with one recording subscriber `id` on a fresh channel
/// named after `prefix`, every active channel LISTENed: the set-up most
/// tests of delivery begin with.
pub async fn recording(
    id: &str,
    prefix: &str,
) -> (pgnotifier::Notifier, String, Arc<Mutex<Vec<Received>>>) {
    let notifier = pgnotifier::Notifier::new(database());
    let ch = channel(prefix);
    let (subscriber, seen) = recorder();
    (notifier.subscribe(id, ch.as_str(), subscriber)).expect("subscribe the recorder");
    listen(&notifier).await;
    (notifier, ch, seen)
}

/// The counters of one subscriber.
pub fn stats_of(notifier: &pgnotifier::Notifier, id: &str) -> pgnotifier::SubscriberStats {
    notifier
        .subscribers()
        .into_iter()
        .find(|s| s.id == id)
        .unwrap_or_else(|| panic!("no subscriber {id}"))
        .stats
}

pub fn count(seen: &Arc<Mutex<Vec<Received>>>) -> usize {
    seen.lock().unwrap().len()
}

/// A fresh empty folder under the system temp dir.
pub fn temp_dir(name: &str) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    static EARLIER: std::sync::Once = std::sync::Once::new();
    EARLIER.call_once(remove_earlier_temp_dirs);
    let dir = std::env::temp_dir().join(format!(
        "pgnotifier-test-{name}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create temp dir");
    cleanup::remove_dir(dir.clone());
    dir
}

/// Temp folders of earlier runs whose process is gone (one that was
/// killed had no exit to remove them at).
fn remove_earlier_temp_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("pgnotifier-test-") else {
            continue;
        };
        // pgnotifier-test-NAME-PID-N
        let pid = rest.rsplit('-').nth(1).and_then(|p| p.parse::<u32>().ok());
        if pid.is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists()) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// An example plugin built by `plugins/build`.
pub fn example_plugin(name: &str) -> PathBuf {
    built_plugin(&plugins_dist().join(format!("{name}.wasm")))
}

/// A test fixture from `tests/plugins`, built by `plugins/build` into `dist/tests`.
pub fn test_plugin(name: &str) -> PathBuf {
    built_plugin(&plugins_dist().join("tests").join(format!("{name}.wasm")))
}

/// A plugin from the `examples/` folder, built by `plugins/build` into `dist/examples`.
pub fn examples_plugin(name: &str) -> PathBuf {
    built_plugin(&plugins_dist().join("examples").join(format!("{name}.wasm")))
}

pub fn plugins_dist() -> PathBuf {
    std::env::var_os("PGNOTIFIER_PLUGINS_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("plugins/dist"))
}

fn built_plugin(path: &Path) -> PathBuf {
    assert!(
        path.is_file(),
        "plugin {} is missing: run `plugins/build` first",
        path.display()
    );
    path.to_owned()
}

/// Capture of the host's log events that carry a `subscriber` field.
pub mod logs {
    use std::fmt::Write as _;
    use std::sync::{Mutex, Once};
    use tracing::field::{Field, Visit};
    use tracing_subscriber::layer::{Context, SubscriberExt};
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;

    /// One captured event.
    #[derive(Clone, Debug, Default)]
    pub struct Line {
        pub subscriber: String,
        pub level: String,
        pub target: String,
        pub message: String,
        pub stream: Option<String>,
    }

    static LINES: Mutex<Vec<Line>> = Mutex::new(Vec::new());

    struct Capture;

    #[derive(Default)]
    struct Fields(Line);

    impl Visit for Fields {
        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            let mut text = String::new();
            let _ = write!(text, "{value:?}");
            self.set(field, text);
        }
        fn record_str(&mut self, field: &Field, value: &str) {
            self.set(field, value.to_owned());
        }
    }

    impl Fields {
        fn set(&mut self, field: &Field, text: String) {
            match field.name() {
                "message" => self.0.message = text,
                "subscriber" => self.0.subscriber = text,
                "stream" => self.0.stream = Some(text),
                _ => {}
            }
        }
    }

    impl<S: tracing::Subscriber> Layer<S> for Capture {
        fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
            let mut fields = Fields::default();
            event.record(&mut fields);
            let is_error = *event.metadata().level() == tracing::Level::ERROR;
            if fields.0.subscriber.is_empty() && !is_error {
                return;
            }
            fields.0.level = event.metadata().level().to_string();
            fields.0.target = event.metadata().target().to_owned();
            LINES.lock().unwrap().push(fields.0);
        }
    }

    /// Install the capture (and a test-friendly log printer) once per binary.
    pub fn install() {
        static ONCE: Once = Once::new();
        ONCE.call_once(|| {
            // Filtered, so that no one formats the compiler's own trace
            // logs: compiling a large component would take minutes.
            let _ = tracing_subscriber::registry()
                .with(
                    Capture
                        .with_filter(tracing_subscriber::EnvFilter::new("warn,pgnotifier=trace")),
                )
                .with(
                    tracing_subscriber::fmt::layer()
                        .with_test_writer()
                        .with_filter(tracing_subscriber::EnvFilter::new("info")),
                )
                .try_init();
        });
    }

    /// Every captured event of one subscriber, in order.
    pub fn of(subscriber: &str) -> Vec<Line> {
        LINES
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.subscriber == subscriber)
            .cloned()
            .collect()
    }

    /// Every error logged, by anyone.
    pub fn errors() -> Vec<String> {
        LINES
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.level == "ERROR")
            .map(|l| l.message.clone())
            .collect()
    }

    /// The messages a plugin logged itself (through `log` or stdio).
    pub fn plugin_messages(subscriber: &str) -> Vec<String> {
        of(subscriber)
            .into_iter()
            .filter(|l| l.target == "pgnotifier::plugin")
            .map(|l| l.message)
            .collect()
    }
}

/// Every case of the contract, with what it must arrive as. `None` sends
/// `NOTIFY ch` with no payload.
pub fn payload_cases() -> Vec<(Option<String>, Payload)> {
    let big_text = "x".repeat(7999);
    let deep = "[".repeat(200) + &"]".repeat(200);
    let json = |s: &str| Payload::Json(s.to_owned());
    vec![
        // The seed README's five examples.
        (
            Some(r#""WARNING: Something really bad happened""#.into()),
            Payload::Text("WARNING: Something really bad happened".into()),
        ),
        (
            Some(r#"{"id": 1, "msg": "hello"}"#.into()),
            json(r#"{"id":1,"msg":"hello"}"#),
        ),
        (
            Some(r#"{"id": 2, "tags": ["a", "b"]}"#.into()),
            json(r#"{"id":2,"tags":["a","b"]}"#),
        ),
        (Some("[1,2,3,4,5]".into()), json("[1,2,3,4,5]")),
        (Some("[1, 2, 3, 4, 5]".into()), json("[1,2,3,4,5]")),
        (Some("true".into()), Payload::Boolean(true)),
        (Some("false".into()), Payload::Boolean(false)),
        (Some("null".into()), Payload::Null),
        (Some("-42".into()), Payload::Integer(-42)),
        (
            Some("9223372036854775807".into()),
            Payload::Integer(i64::MAX),
        ),
        (Some("3.5".into()), Payload::Float(3.5)),
        (Some("-1.25e-3".into()), Payload::Float(-0.00125)),
        (
            Some("18446744073709551616".into()),
            json("18446744073709551616"),
        ),
        (
            Some("0.30000000000000000001".into()),
            json("0.30000000000000000001"),
        ),
        (
            Some("just some text".into()),
            Payload::Text("just some text".into()),
        ),
        (Some("ünïcødé ✓".into()), Payload::Text("ünïcødé ✓".into())),
        (None, Payload::Text(String::new())),
        (Some(big_text.clone()), Payload::Text(big_text)),
        (Some(deep.clone()), Payload::Text(deep)),
    ]
}

/// Send every case on `ch`, one transaction each, in order.
pub async fn send_all(sender: &Sender, ch: &str, cases: &[(Option<String>, Payload)]) {
    for (raw, _) in cases {
        match raw {
            Some(p) => sender.notify(ch, p).await,
            None => sender.notify_empty(ch).await,
        }
    }
}
