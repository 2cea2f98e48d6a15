//! Shared set-up for the durable-delivery tests: a database of their own
//! per test (the schema is one per database), producers that send at
//! random, the durable sink plugin, and the checks of what it received.

use super::SOON;
use pgnotifier::durable::schema::WAKE_CHANNEL;
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, Client, NoTls};

/// A fresh database named after `name`, its URL, and a client on it.
pub async fn fresh_database(name: &str) -> (String, Client) {
    fresh_database_on(super::database_url(), name).await
}

/// The same on the server at `base` (a URL naming any database).
pub async fn fresh_database_on(base: &str, name: &str) -> (String, Client) {
    let db = format!("pgn_durable_{name}_{}", std::process::id());
    let (admin, connection) = tokio_postgres::connect(base, NoTls)
        .await
        .expect("connect to the test server");
    tokio::spawn(connection);
    // Databases earlier runs left behind (each run names its own by pid).
    let stale = admin
        .query(
            "select datname::text from pg_database where datname like 'pgn\\_durable\\_%' and datname not like $1",
            &[&format!("%\\_{}", std::process::id())],
        )
        .await
        .expect("list earlier test databases");
    for row in stale {
        let name: String = row.get(0);
        let _ =
            (admin.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))).await;
    }
    super::cleanup::drop_database(&db);
    // One statement each: neither runs inside a transaction block.
    for sql in [
        format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"),
        format!("CREATE DATABASE {db}"),
    ] {
        admin
            .batch_execute(&sql)
            .await
            .expect("create a database for the test");
    }
    let (before_query, query) = base.split_once('?').unwrap_or((base, ""));
    let (server, _) = before_query
        .rsplit_once('/')
        .expect("the test database URL names a database");
    let url = match query {
        "" => format!("{server}/{db}"),
        query => format!("{server}/{db}?{query}"),
    };
    let (client, connection) = tokio_postgres::connect(&url, NoTls)
        .await
        .expect("connect to the test's database");
    tokio::spawn(connection);
    (url, client)
}

/// A connection LISTENing on the wake channel, and the payloads it receives.
pub async fn wakes(url: &str) -> (Client, mpsc::UnboundedReceiver<String>) {
    let (client, mut connection) = tokio_postgres::connect(url, NoTls)
        .await
        .expect("connect to listen");
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    let _ = tx.send(n.payload().to_owned());
                }
                Some(Ok(_)) => {}
                _ => return,
            }
        }
    });
    client
        .batch_execute(&format!(
            "LISTEN {}",
            pgnotifier::channel::quote_ident(WAKE_CHANNEL)
        ))
        .await
        .expect("listen on the wake channel");
    (client, rx)
}

pub async fn next_wake(rx: &mut mpsc::UnboundedReceiver<String>) -> String {
    tokio::time::timeout(SOON, rx.recv())
        .await
        .expect("a wake-up within the deadline")
        .expect("the listening connection is up")
}

/// The functions in schema `pgnotifier`, by name.
pub async fn functions(client: &Client) -> Vec<String> {
    let rows = client
        .query(
            "select p.proname::text from pg_proc p join pg_namespace n on n.oid = p.pronamespace where n.nspname = 'pgnotifier' order by 1",
            &[],
        )
        .await
        .unwrap();
    rows.iter().map(|r| r.get(0)).collect()
}

/// The events a reader gets after `after` on `channels`, at most `limit`.
pub async fn next_events(
    client: &Client,
    after: pgnotifier::durable::reader::Position,
    channels: &[String],
    limit: usize,
) -> Result<Vec<pgnotifier::durable::reader::Event>, pgnotifier::durable::reader::ReadError> {
    let batch = pgnotifier::durable::reader::read(client, "a reader", after, channels, limit);
    Ok(batch.await?.events)
}

pub async fn error_of(client: &Client, sql: &str) -> String {
    let e = client.batch_execute(sql).await.expect_err(sql);
    e.as_db_error()
        .map(|db| db.message().to_owned())
        .unwrap_or_else(|| e.to_string())
}

/// A notifier on the test's own database.
pub fn notifier_on(url: &str) -> pgnotifier::Notifier {
    pgnotifier::Notifier::new(pgnotifier::DatabaseSettings::from_url(url).unwrap())
}

/// Wait until `subscriber` has a position: its feeder is reading.
pub async fn feeding(client: &Client, subscriber: &str) {
    use pgnotifier::durable::reader::position;
    let deadline = std::time::Instant::now() + SOON;
    // Before the feeder installs the schema, the table is not there yet.
    while !matches!(position(client, subscriber).await, Ok(Some(_))) {
        assert!(
            std::time::Instant::now() < deadline,
            "{subscriber} never started reading"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

pub async fn send_range(client: &Client, range: std::ops::Range<usize>) {
    let tx_size = 10;
    let all: Vec<usize> = range.collect();
    for chunk in all.chunks(tx_size) {
        let values: Vec<String> = chunk
            .iter()
            .map(|i| format!("pgnotifier.send('work', '{i}')"))
            .collect();
        client
            .batch_execute(&format!("begin; select {}; commit", values.join(", ")))
            .await
            .unwrap();
    }
}

pub type Seen = std::sync::Arc<std::sync::Mutex<Vec<usize>>>;

/// A raw-payload native subscriber recording each payload as a number.
pub fn recording_at_least_once(
    retry: pgnotifier::durable::RetryPolicy,
) -> (pgnotifier::Subscriber, Seen) {
    let seen: Seen = Default::default();
    let sink = seen.clone();
    let subscriber = pgnotifier::Subscriber::native(move |_, _, payload, _| {
        if let pgnotifier::Payload::Text(text) = payload {
            sink.lock().unwrap().push(text.parse().expect("a number"));
        }
    })
    .payload_mode(pgnotifier::PayloadMode::Raw)
    .at_least_once(retry);
    (subscriber, seen)
}

/// Every number below `n`, each at least once, first seen in order; the
/// number of repeats.
pub fn assert_all_in_order(seen: &[usize], n: usize) -> usize {
    let mut first = Vec::new();
    let mut known = std::collections::BTreeSet::new();
    for i in seen {
        if known.insert(*i) {
            first.push(*i);
        }
    }
    assert_eq!(first, (0..n).collect::<Vec<_>>(), "every event, in order");
    seen.len() - n
}

/// Poll `prune` until it has pruned `want` passed events: the server-wide
/// horizon (other tests' transactions) may hold the newest back a moment.
pub async fn prune_until(n: &pgnotifier::Notifier, want: u64) -> pgnotifier::durable::Pruned {
    let mut total = pgnotifier::durable::Pruned::default();
    let deadline = std::time::Instant::now() + SOON;
    while total.passed < want {
        assert!(
            std::time::Instant::now() < deadline,
            "pruned {total:?}, want {want} passed"
        );
        if let Some(p) = n.prune_outbox().await.unwrap() {
            total.passed += p.passed;
            total.expired += p.expired;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    total
}

pub async fn outbox_count(client: &Client, channel: &str) -> i64 {
    (client.query_one(
        "select count(*) from pgnotifier.outbox where channel = $1",
        &[&channel],
    ))
    .await
    .unwrap()
    .get(0)
}

/// What the producers of a stream did.
pub struct Produced {
    /// Payloads of transactions known to have committed.
    pub committed: Vec<String>,
    /// Payloads of transactions rolled back.
    pub aborted: Vec<String>,
}

/// Eight producers at work, until [`Stream::finish`].
pub struct Stream {
    producers: tokio::task::JoinHandle<Produced>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Stream {
    /// Stop the producers (each after its first `transactions`) and say what they did.
    pub async fn finish(self) -> Produced {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.producers.await.unwrap()
    }
}

/// Start eight producers on `url`, each sending `transactions` and then
/// more until the stream is finished, so a fault always lands mid-stream.
/// A producer whose connection fails reconnects and goes on; a transaction
/// cut off that way is neither known committed nor rolled back (the outbox
/// says which).
pub fn produce(url: &str, transactions: u64) -> Stream {
    let url = format!(
        "{url}{}application_name=producer",
        if url.contains('?') { "&" } else { "?" }
    );
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopped = stop.clone();
    let producers = tokio::spawn(async move {
        let producers: Vec<_> = (0..8u64)
            .map(|p| {
                let url = url.clone();
                let stopped = stopped.clone();
                tokio::spawn(async move {
                    let mut state = (p + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
                    let mut next = move |n: u64| {
                        state ^= state << 13;
                        state ^= state >> 7;
                        state ^= state << 17;
                        state % n
                    };
                    let (mut committed, mut aborted) = (Vec::new(), Vec::new());
                    let mut client = None;
                    let mut t = 0;
                    while t < transactions || !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                        t += 1;
                        let payloads: Vec<String> =
                            (0..=next(4)).map(|e| format!("p{p}-t{t}-e{e}")).collect();
                        let rollback = next(5) == 0;
                        let pauses: Vec<u64> = payloads.iter().map(|_| next(10)).collect();
                        if client.is_none() {
                            client = tokio_postgres::connect(&url, NoTls).await.ok().map(
                                |(client, connection)| {
                                    tokio::spawn(connection);
                                    client
                                },
                            );
                        }
                        let Some(c) = client.as_mut() else {
                            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                            continue;
                        };
                        let sent = async {
                            let tx = c.transaction().await?;
                            for (payload, pause) in payloads.iter().zip(&pauses) {
                                tx.execute("select pgnotifier.send('work', $1)", &[payload])
                                    .await?;
                                tokio::time::sleep(std::time::Duration::from_millis(*pause)).await;
                            }
                            match rollback {
                                true => tx.rollback().await,
                                false => tx.commit().await,
                            }
                        };
                        match sent.await {
                            Ok(()) if rollback => aborted.extend(payloads),
                            Ok(()) => committed.extend(payloads),
                            Err(_) => client = None,
                        }
                    }
                    Produced { committed, aborted }
                })
            })
            .collect();
        let mut all = Produced {
            committed: Vec::new(),
            aborted: Vec::new(),
        };
        for producer in producers {
            let done = producer.await.unwrap();
            all.committed.extend(done.committed);
            all.aborted.extend(done.aborted);
        }
        all
    });
    Stream { producers, stop }
}

/// Load the durable sink as `id`, with `sidecar` after its delivery settings.
pub async fn durable_sink(
    n: &pgnotifier::Notifier,
    dir: &std::path::Path,
    id: &str,
    sidecar: &str,
) {
    std::fs::copy(
        super::test_plugin("durable-sink"),
        dir.join(format!("{id}.wasm")),
    )
    .unwrap();
    // Retries at once, unless the test sets its own backoff.
    let backoff = match sidecar.contains("retry_backoff_ms") {
        true => "",
        false => "retry_backoff_ms = 1\n",
    };
    std::fs::write(
        dir.join(format!("{id}.toml")),
        format!("delivery = \"at-least-once\"\n{backoff}failure_threshold = 0\n{sidecar}"),
    )
    .unwrap();
    for (path, loaded) in n.load_plugins(dir).await.unwrap() {
        loaded.unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
}

/// A delivery the sink logged: (payload, event id, attempt).
pub type Sunk = (String, i64, u32);

/// What the sink `id` in this process logged, in order.
pub fn sunk(id: &str) -> Vec<Sunk> {
    super::logs::plugin_messages(id)
        .iter()
        .filter_map(|m| sunk_line(m))
        .collect()
}

/// What the sink `id` logged in a host's output, in order.
pub fn sunk_in(output: &str, id: &str) -> Vec<Sunk> {
    let tag = format!("subscriber={id}");
    (output.lines())
        .filter(|line| line.contains(&tag))
        .filter_map(|line| sunk_line(&line[line.find("sink ")?..]))
        .collect()
}

/// `sink PAYLOAD #ID @ATTEMPT`, with anything after.
pub fn sunk_line(line: &str) -> Option<Sunk> {
    let mut words = line.strip_prefix("sink ")?.split_whitespace();
    let payload = words.next()?.to_owned();
    let event = words.next()?.strip_prefix('#')?.parse().ok()?;
    let attempt = words.next()?.strip_prefix('@')?.parse().ok()?;
    Some((payload, event, attempt))
}

/// Wait until the sink `id` has every committed event of the stream, then
/// check what it got: each committed event (the outbox holds exactly those),
/// no rolled-back one, in the outbox's (transaction, id) order, and at most
/// `duplicates` delivered twice. Returns the deliveries.
pub async fn check_stream(
    client: &Client,
    sunk: impl Fn() -> Vec<Sunk>,
    produced: &Produced,
    duplicates: usize,
) -> Vec<Sunk> {
    let truth: Vec<(String, i64)> = (client.query(
        "select o.payload, o.id from pgnotifier.outbox o join pgnotifier.commits c using (txid)
          where o.channel = 'work' order by c.stamp, o.id",
        &[],
    ))
    .await
    .unwrap()
    .iter()
    .map(|row| (row.get(0), row.get(1)))
    .collect();
    let in_outbox: std::collections::BTreeSet<&str> = truth.iter().map(|(p, _)| &**p).collect();
    for payload in &produced.committed {
        assert!(
            in_outbox.contains(&**payload),
            "{payload} committed, not in the outbox"
        );
    }
    for payload in &produced.aborted {
        assert!(
            !in_outbox.contains(&**payload),
            "{payload} rolled back, in the outbox"
        );
    }
    let deadline = std::time::Instant::now() + SOON;
    loop {
        let got: std::collections::BTreeSet<String> =
            sunk().into_iter().map(|(p, _, _)| p).collect();
        if in_outbox.iter().all(|p| got.contains(*p)) {
            break;
        }
        let missing = in_outbox.iter().filter(|p| !got.contains(**p)).count();
        assert!(
            std::time::Instant::now() < deadline,
            "{missing} of {} not delivered",
            truth.len()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let deliveries = sunk();
    let mut first = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for (payload, event, _) in &deliveries {
        assert!(
            in_outbox.contains(&**payload),
            "{payload} delivered, never committed"
        );
        if seen.insert(payload.clone()) {
            first.push((payload.clone(), *event));
        }
    }
    assert_eq!(first, truth, "each event once, in commit order");
    let repeated = deliveries.len() - first.len();
    assert!(
        repeated <= duplicates,
        "{repeated} duplicates, more than the window of {duplicates}"
    );
    deliveries
}

/// The two durable transports. Every stream test runs on each, with the
/// same assertions: what a subscriber receives must not depend on how
/// senders wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// `pgnotifier.send` writes the outbox, on the shared server.
    Outbox,
    /// `pgnotifier.send` writes the WAL and the host relays it, on the
    /// throwaway server with `wal_level = logical`.
    Wal,
}

impl Via {
    /// A URL of the server this transport's tests use.
    pub fn server(self) -> &'static str {
        match self {
            Via::Outbox => super::database_url(),
            Via::Wal => super::logical_url(),
        }
    }

    /// `name`, told apart by transport (databases, slots, folders).
    pub fn name(self, name: &str) -> String {
        match self {
            Via::Outbox => name.to_owned(),
            Via::Wal => format!("{name}_wal"),
        }
    }

    /// The transport for the test `name` (a slot of its own: slot names
    /// are server-wide).
    pub fn transport(self, name: &str) -> pgnotifier::durable::Transport {
        match self {
            Via::Outbox => pgnotifier::durable::Transport::Outbox,
            Via::Wal => pgnotifier::durable::Transport::Wal {
                slot: format!("pgn_{name}"),
            },
        }
    }

    /// The same as lines of a config file.
    pub fn config(self, name: &str) -> String {
        match self.transport(name) {
            pgnotifier::durable::Transport::Outbox => String::new(),
            pgnotifier::durable::Transport::Wal { slot } => {
                format!("durable_transport = \"wal\"\nwal_slot = {slot:?}\n")
            }
        }
    }

    /// A notifier on `url` sending through this transport.
    pub fn notifier(self, url: &str, name: &str) -> pgnotifier::Notifier {
        pgnotifier::Notifier::builder(pgnotifier::DatabaseSettings::from_url(url).unwrap())
            .durable_transport(self.transport(name))
            .build()
    }

    /// Wait until a started host takes sends this way.
    pub async fn ready(self, client: &Client) {
        if let Via::Wal = self {
            relaying(client).await;
        }
    }

    /// Wait until what `produced` committed is where the checks read the
    /// truth (the outbox); then no payload was relayed twice.
    pub async fn arrived(self, client: &Client, produced: &Produced) {
        if let Via::Wal = self {
            relayed_all(client, produced).await;
            assert_eq!(relayed_twice(client, "work").await, vec![]);
        }
    }
}

/// Run a stream test `async fn name(via: Via)` once per transport, as the
/// tests `name::outbox` and `name::wal`.
#[macro_export]
macro_rules! on_both_transports {
    ($($test:ident),* $(,)?) => {$(
        mod $test {
            use $crate::support::durable::Via;
            #[tokio::test(flavor = "multi_thread")]
            async fn outbox() {
                super::$test(Via::Outbox).await
            }
            #[tokio::test(flavor = "multi_thread")]
            async fn wal() {
                super::$test(Via::Wal).await
            }
        }
    )*};
}

/// A database of its own on `via`'s server, a started notifier on it
/// sending through `via`, and the durable sink (with `sidecar`) loaded from
/// a folder of its own and reading: where each stream test starts.
pub async fn sink_stream(
    via: Via,
    name: &str,
    sidecar: &str,
) -> (
    String,
    Client,
    pgnotifier::Notifier,
    std::path::PathBuf,
    String,
) {
    super::logs::install();
    let name = via.name(name);
    let (url, client) = fresh_database_on(via.server(), &name).await;
    let n = via.notifier(&url, &name);
    let dir = super::temp_dir(&format!("durable-{name}"));
    let id = super::channel(&format!("sink_{name}"));
    durable_sink(&n, &dir, &id, sidecar).await;
    n.start().await.unwrap();
    feeding(&client, &id).await;
    via.ready(&client).await;
    (url, client, n, dir, id)
}

/// Wait until senders write to the WAL: the relay has made its slot and
/// set the transport.
pub async fn relaying(client: &Client) {
    let deadline = std::time::Instant::now() + SOON;
    loop {
        let wal = client
            .query_one(
                "select exists (select from pgnotifier.limits where transport = 'wal')
                    and exists (select from pgnotifier.relayed)",
                &[],
            )
            .await
            .is_ok_and(|row| row.get(0));
        if wal {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the relay never set the WAL transport"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Wait until every committed payload of `produced` is relayed into the
/// outbox, where the stream's checks read the truth.
pub async fn relayed_all(client: &Client, produced: &Produced) {
    let deadline = std::time::Instant::now() + SOON;
    loop {
        let rows = client
            .query(
                "select distinct payload from pgnotifier.outbox where channel = 'work'",
                &[],
            )
            .await
            .unwrap();
        let relayed: std::collections::BTreeSet<String> = rows.iter().map(|r| r.get(0)).collect();
        let missing = (produced.committed.iter())
            .filter(|p| !relayed.contains(*p))
            .count();
        if missing == 0 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{missing} of {} committed events never relayed",
            produced.committed.len()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Payloads relayed into the outbox on `channel`, with how many times each.
pub async fn relayed_twice(client: &Client, channel: &str) -> Vec<(String, i64)> {
    client
        .query(
            "select payload, count(*) from pgnotifier.outbox where channel = $1 and lsn is not null
              group by payload having count(*) > 1",
            &[&channel],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect()
}

/// The redelivery window one fault may leave (see the feeder's header).
pub const WINDOW: usize =
    pgnotifier::durable::feeder::SAVE_EVERY as usize + pgnotifier::durable::feeder::WINDOW;

/// Put the durable sink in `dir` as `id`, at least once, with its payloads
/// raw and `sidecar`'s lines, and load the folder; the load's outcome.
pub async fn load_sink(
    n: &pgnotifier::Notifier,
    dir: &std::path::Path,
    id: &str,
    sidecar: &str,
) -> Result<String, String> {
    std::fs::copy(
        crate::support::test_plugin("durable-sink"),
        dir.join(format!("{id}.wasm")),
    )
    .unwrap();
    std::fs::write(
        dir.join(format!("{id}.toml")),
        // Raw: the sink logs text payloads.
        format!("delivery = \"at-least-once\"\npayload = \"raw\"\nretry_backoff_ms = 1\n{sidecar}"),
    )
    .unwrap();
    let mut outcomes = n.load_plugins(dir).await.unwrap();
    assert_eq!(outcomes.len(), 1);
    outcomes.remove(0).1.map_err(|e| format!("{e:#}"))
}
