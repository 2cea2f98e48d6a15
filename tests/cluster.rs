//! More than one host: real `pgnotifier run` processes with the same
//! `[cluster]` name on the test database. One leads and dispatches; the
//! others stand by and take over when it goes.

use crate::support::host::{ctl_ok, Host, Setup};
use crate::support::SOON;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

/// The takeover the tests configure, and so the bound they assert.
const TAKEOVER_MS: u64 = 1000;

/// A host of `cluster` (in `group`, if any) with the durable sink plugin
/// under each `(id, sidecar)`.
fn member(cluster: &str, group: Option<&str>, sinks: &[(&str, String)]) -> (Setup, Host) {
    let group = group
        .map(|g| format!("group = {g:?}\n"))
        .unwrap_or_default();
    let setup = Setup::new(
        "cluster",
        &format!("[cluster]\nname = {cluster:?}\n{group}takeover_ms = {TAKEOVER_MS}\n"),
    );
    for (id, sidecar) in sinks {
        install_sink(&setup.plugins, id, sidecar);
    }
    let host = Host::with_config(&setup.config);
    (setup, host)
}

fn install_sink(plugins: &Path, id: &str, sidecar: &str) {
    std::fs::copy(
        crate::support::test_plugin("durable-sink"),
        plugins.join(format!("{id}.wasm")),
    )
    .unwrap();
    std::fs::write(plugins.join(format!("{id}.toml")), sidecar).unwrap();
}

/// A sink's sidecar on `channel`, with a queue that takes a burst whole.
fn sidecar(channel: &str, durable: bool) -> String {
    let delivery = if durable {
        "delivery = \"at-least-once\"\nretry_backoff_ms = 1\n"
    } else {
        ""
    };
    format!(
        "{delivery}overflow = \"block\"\nqueue_size = 20000\n\n[config]\nchannels = \"{channel}\"\n"
    )
}

/// Payloads `subscriber` logged in `output`, in order.
fn sunk(output: &str, subscriber: &str) -> Vec<String> {
    let tag = format!("subscriber={subscriber}");
    output
        .lines()
        .filter(|l| l.contains(&tag))
        .filter_map(|l| l.split_once(" sink ").map(|(_, rest)| rest))
        .filter_map(|rest| rest.split(" #").next())
        .map(str::to_owned)
        .collect()
}

async fn client() -> tokio_postgres::Client {
    crate::support::Sender::connect().await.client
}

/// Wait until one of `hosts` says it leads; its index.
fn leader_of(hosts: &[&Host]) -> usize {
    crate::support::until(
        SOON,
        || "no host leads".to_owned(),
        || hosts.iter().position(|h| h.count(&["leading"]) > 0),
    )
}

/// Each host of a cluster of two and of three: 10k notifications are
/// dispatched exactly once, all by the leader.
#[tokio::test(flavor = "multi_thread")]
async fn two_and_three_hosts_dispatch_each_notification_exactly_once() {
    for size in [2usize, 3] {
        let cluster = crate::support::channel("steady");
        let channel = crate::support::channel("steady_work");
        let id = crate::support::channel("steady_sink");
        let members: Vec<(Setup, Host)> = (0..size)
            .map(|_| member(&cluster, None, &[(&id, sidecar(&channel, false))]))
            .collect();
        let hosts: Vec<&Host> = members.iter().map(|(_, h)| h).collect();
        let leader = leader_of(&hosts);
        for (i, host) in hosts.iter().enumerate() {
            if i != leader {
                host.wait_for(&["standing by", &cluster]);
            }
        }
        // The leader LISTENs before it says it is ready.
        let (setup, _) = &members[leader];
        crate::support::until(
            SOON,
            || "the leader never got ready".to_owned(),
            || {
                ctl_ok(&setup.config, &["status"])
                    .contains(&channel)
                    .then_some(())
            },
        );
        let sender = client().await;
        sender
            .batch_execute(&format!(
                "select count(pg_notify('{channel}', 'n' || i)) from generate_series(1, 10000) as i"
            ))
            .await
            .unwrap();
        // Counted by the hosts' metrics: a plugin's log lines are rate limited.
        let series = format!("pgnotifier_subscriber_delivered_total{{subscriber=\"{id}\"}}");
        let counts = || {
            members
                .iter()
                .map(|(setup, _)| setup.metric(&series) as u64)
                .collect::<Vec<_>>()
        };
        crate::support::until(
            SOON,
            || format!("delivered {:?}", counts()),
            || (counts().iter().sum::<u64>() >= 10_000).then_some(()),
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        let counts = counts();
        assert_eq!(
            counts.iter().sum::<u64>(),
            10_000,
            "{size} hosts: exactly once, {counts:?}"
        );
        assert_eq!(counts[leader], 10_000, "all by the leader: {counts:?}");
        // In order, as far as the log shows them: it is rate limited.
        let logged: Vec<u32> = sunk(&hosts[leader].output(), &id)
            .iter()
            .filter_map(|p| p.strip_prefix('n')?.parse().ok())
            .collect();
        assert!(
            logged.len() >= 100 && logged.windows(2).all(|w| w[0] < w[1]),
            "in order: {logged:?}"
        );
        for (_, host) in members {
            host.stop();
        }
    }
}

/// SIGKILL the leader mid-stream: the standby takes over within the
/// takeover, an at-most-once subscriber gets a gap event, and an
/// at-least-once one gets every event sent across the failover.
#[tokio::test(flavor = "multi_thread")]
async fn a_standby_takes_over_from_a_sigkilled_leader_and_loses_no_durable_event() {
    let cluster = crate::support::channel("failover");
    let (live, events) = (
        crate::support::channel("fo_live"),
        crate::support::channel("fo_events"),
    );
    let (live_id, durable_id) = (
        crate::support::channel("fo_live_sink"),
        crate::support::channel("fo_sink"),
    );
    let sinks = [
        (live_id.as_str(), sidecar(&live, false)),
        (durable_id.as_str(), sidecar(&events, true)),
    ];
    let (_a_setup, a) = member(&cluster, None, &sinks);
    a.wait_for(&["leading", &cluster]);
    let (b_setup, b) = member(&cluster, None, &sinks);
    b.wait_for(&["standing by", &cluster]);
    let sender = client().await;
    // The leader's feeder has its position: what is sent from here is owed.
    wait_for_position(&sender, &durable_id).await;

    let sends = Sends::start(
        crate::support::database_url(),
        &events,
        Duration::from_millis(2),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.signal("KILL");
    let killed = Instant::now();
    crate::support::until(
        SOON,
        || format!("the standby never took over:\n{}", b.output()),
        || (b.count(&["leading", &cluster]) > 0).then_some(()),
    );
    let takeover = killed.elapsed();
    assert!(
        takeover < Duration::from_millis(TAKEOVER_MS),
        "took over in {takeover:?}, not within {TAKEOVER_MS} ms"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sent = sends.finish().await;
    let (_, before) = a.wait();

    b.wait_for(&[
        "gap",
        &live,
        "connection-lost",
        &format!("subscriber={live_id}"),
    ]);
    wait_until_delivered(&sent, &durable_id, || vec![before.clone(), b.output()]);
    let metrics = crate::support::host::parse_metrics(&ctl_ok(&b_setup.config, &["metrics"]));
    assert_eq!(metrics["pgnotifier_cluster_role{role=\"leader\"}"], 1.0);
    assert_eq!(metrics["pgnotifier_cluster_takeovers_total"], 1.0);
    assert!(
        metrics.keys().any(|k| k.starts_with(&format!(
            "pgnotifier_cluster_info{{cluster=\"{cluster}\",group=\"\",leader=\"pgnotifier (backend "
        ))),
        "{metrics:?}"
    );
    let status = ctl_ok(&b_setup.config, &["status"]);
    assert!(
        status.contains(&format!("role: leader of cluster {cluster}"))
            && status.contains("takeovers: 1"),
        "{status}"
    );
    eprintln!("takeover after SIGKILL: {takeover:?}");
    b.stop();
}

/// The same with the WAL transport: only the leader relays the slot, and
/// the standby that takes over relays from where the dead one stopped,
/// losing and doubling nothing.
#[tokio::test(flavor = "multi_thread")]
async fn with_the_wal_transport_a_standby_takes_over_the_slot_and_loses_no_durable_event() {
    let (url, client) =
        crate::support::durable::fresh_database_on(crate::support::logical_url(), "cluster_wal")
            .await;
    let cluster = crate::support::channel("failover_wal");
    let events = crate::support::channel("fo_wal_events");
    let durable_id = crate::support::channel("fo_wal_sink");
    let member = || {
        let setup = Setup::new(
            "cluster-wal",
            &format!(
                "database_url = {url:?}\ndurable_transport = \"wal\"\nwal_slot = \"pgn_failover\"\n\
                 [cluster]\nname = {cluster:?}\ntakeover_ms = {TAKEOVER_MS}\n"
            ),
        );
        install_sink(&setup.plugins, &durable_id, &sidecar(&events, true));
        let host = Host::with_config(&setup.config);
        (setup, host)
    };
    let (_a_setup, a) = member();
    a.wait_for(&["leading", &cluster]);
    let (_b_setup, b) = member();
    b.wait_for(&["standing by", &cluster]);
    wait_for_position(&client, &durable_id).await;
    a.wait_for(&["relaying the slot into the outbox"]);

    let sends = Sends::start(&url, &events, Duration::from_millis(2));
    sends.wait_for_more(100).await;
    a.signal("KILL");
    crate::support::until(
        SOON,
        || format!("the standby never took over:\n{}", b.output()),
        || (b.count(&["leading", &cluster]) > 0).then_some(()),
    );
    b.wait_for(&["relaying the slot into the outbox"]);
    sends.wait_for_more(100).await;
    let sent = sends.finish().await;
    let (_, before) = a.wait();
    assert_eq!(
        b.count(&["relaying the slot into the outbox"]),
        1,
        "the standby relayed only once it led"
    );
    wait_until_delivered(&sent, &durable_id, || vec![before.clone(), b.output()]);
    let twice: i64 = client
        .query_one(
            "select count(*) from (select payload from pgnotifier.outbox where channel = $1
                                    group by payload having count(*) > 1) d",
            &[&events],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(twice, 0, "relayed twice across the takeover");
    b.stop();
}

/// The leader's backend terminated from SQL: a standby takes over, and the
/// old leader comes back as a standby.
#[tokio::test(flavor = "multi_thread")]
async fn a_terminated_leader_backend_fails_over_and_the_old_leader_stands_by() {
    let cluster = crate::support::channel("terminated");
    let channel = crate::support::channel("term_work");
    let id = crate::support::channel("term_sink");
    let sinks = [(id.as_str(), sidecar(&channel, false))];
    let (a_setup, a) = member(&cluster, None, &sinks);
    a.wait_for(&["leading", &cluster]);
    let (b_setup, b) = member(&cluster, None, &sinks);
    b.wait_for(&["standing by", &cluster]);
    let sender = client().await;
    let killed: i64 = sender
        .query_one(
            "select count(pg_terminate_backend(l.pid)) from pg_locks l
              where l.locktype = 'advisory' and l.granted and l.objsubid = 1
                and ((l.classid::bigint << 32) | l.objid::bigint)
                    = hashtextextended('pgnotifier cluster ' || $1 || '/', 0)",
            &[&cluster],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(killed, 1, "the leader's LISTEN backend holds the lock");
    b.wait_for(&["leading", &cluster]);
    crate::support::until(
        SOON,
        || "the old leader never stood by".to_owned(),
        || {
            ctl_ok(&a_setup.config, &["status"])
                .contains(&format!("role: standby of cluster {cluster}"))
                .then_some(())
        },
    );
    crate::support::until(
        SOON,
        || "the new leader never got ready".to_owned(),
        || {
            ctl_ok(&b_setup.config, &["status"])
                .contains(&channel)
                .then_some(())
        },
    );
    // A healthy standby is ready, and says what it is.
    let ready = crate::support::host::http(&a_setup.admin_addr(), "GET /readyz HTTP/1.1", &[], b"");
    assert!(
        ready.starts_with("HTTP/1.1 200") && ready.contains(r#""role":"standby""#),
        "{ready}"
    );
    sender
        .batch_execute(&format!("select pg_notify('{channel}', 'after')"))
        .await
        .unwrap();
    b.wait_for(&["sink after", &format!("subscriber={id}")]);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !sunk(&a.output(), &id).contains(&"after".to_owned()),
        "the standby dispatched nothing"
    );
    a.stop();
    b.stop();
}

/// Two groups of one cluster, with disjoint plugins: each has its own
/// leader, and each group's notifications are dispatched once.
#[tokio::test(flavor = "multi_thread")]
async fn each_group_elects_its_own_leader() {
    let cluster = crate::support::channel("groups");
    let (c1, c2) = (
        crate::support::channel("group_one"),
        crate::support::channel("group_two"),
    );
    let (s1, s2) = (
        crate::support::channel("g1_sink"),
        crate::support::channel("g2_sink"),
    );
    let one = [(s1.as_str(), sidecar(&c1, false))];
    let two = [(s2.as_str(), sidecar(&c2, false))];
    let members = [
        member(&cluster, Some("one"), &one),
        member(&cluster, Some("one"), &one),
        member(&cluster, Some("two"), &two),
        member(&cluster, Some("two"), &two),
    ];
    let hosts: Vec<&Host> = members.iter().map(|(_, h)| h).collect();
    let first = leader_of(&hosts[..2]);
    let second = 2 + leader_of(&hosts[2..]);
    for (i, (setup, _)) in members.iter().enumerate() {
        let channel = if i < 2 { &c1 } else { &c2 };
        if i == first || i == second {
            crate::support::until(
                SOON,
                || "a group's leader never got ready".to_owned(),
                || {
                    ctl_ok(&setup.config, &["status"])
                        .contains(channel.as_str())
                        .then_some(())
                },
            );
        }
    }
    let sender = client().await;
    sender
        .batch_execute(&format!(
            "select pg_notify('{c1}', 'to one'); select pg_notify('{c2}', 'to two')"
        ))
        .await
        .unwrap();
    hosts[first].wait_for(&["sink to one"]);
    hosts[second].wait_for(&["sink to two"]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut counts = BTreeMap::new();
    for host in &hosts {
        for (id, _) in [(&s1, ()), (&s2, ())] {
            *counts.entry(id.clone()).or_insert(0) += sunk(&host.output(), id).len();
        }
    }
    assert_eq!(counts[&s1], 1, "{counts:?}");
    assert_eq!(counts[&s2], 1, "{counts:?}");
    for (_, host) in members {
        host.stop();
    }
}

/// Restart each of three hosts in turn (SIGTERM, then start it again)
/// while events are sent: an at-least-once subscriber loses none.
#[tokio::test(flavor = "multi_thread")]
async fn a_rolling_restart_loses_no_durable_event() {
    let cluster = crate::support::channel("rolling");
    let events = crate::support::channel("roll_events");
    let id = crate::support::channel("roll_sink");
    let sinks = [(id.as_str(), sidecar(&events, true))];
    let start = || member(&cluster, None, &sinks);
    let mut members: Vec<(Setup, Host)> = vec![start(), start(), start()];
    let hosts: Vec<&Host> = members.iter().map(|(_, h)| h).collect();
    leader_of(&hosts);
    let sender = client().await;
    wait_for_position(&sender, &id).await;

    let sends = Sends::start(
        crate::support::database_url(),
        &events,
        Duration::from_millis(10),
    );
    let mut outputs = Vec::new();
    for i in 0..members.len() {
        // However fast the host sends, each restart falls mid-stream.
        sends.wait_for_more(10).await;
        let (setup, host) = members.remove(i);
        outputs.push(host.stop());
        let again = Host::with_config(&setup.config);
        again.wait_for(&["plugin loaded"]);
        members.insert(i, (setup, again));
    }
    sends.wait_for_more(10).await;
    let sent = sends.finish().await;
    assert!(sent.len() >= 40, "the stream ran through the restarts");
    wait_until_delivered(&sent, &id, || {
        let now = members.iter().map(|(_, host)| host.output());
        outputs.iter().cloned().chain(now).collect()
    });
    for (_, host) in members {
        host.stop();
    }
}

/// `pgnotifier.send` to `events` from one connection, one event a
/// transaction `every` (keep it under the sink's log budget, which is how
/// the tests count), until finished.
struct Sends {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    count: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    seen: std::cell::Cell<usize>,
    task: tokio::task::JoinHandle<Vec<String>>,
}

impl Sends {
    fn start(url: &str, events: &str, every: Duration) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = count.clone();
        let (events, url) = (events.to_owned(), url.to_owned());
        let task = tokio::spawn(async move {
            let (sender, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .expect("connect to send");
            tokio::spawn(connection);
            let mut sent = Vec::new();
            while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                let payload = format!("e{}", sent.len());
                sender
                    .execute("select pgnotifier.send($1, $2)", &[&events, &payload])
                    .await
                    .unwrap();
                sent.push(payload);
                counted.store(sent.len(), std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(every).await;
            }
            sent
        });
        Self {
            stop,
            count,
            seen: std::cell::Cell::new(0),
            task,
        }
    }

    /// Until `n` more have been sent than at the last call.
    async fn wait_for_more(&self, n: usize) {
        let want = self.seen.get() + n;
        let sent = || self.count.load(std::sync::atomic::Ordering::Relaxed);
        assert!(
            crate::support::eventually(SOON, || sent() >= want).await,
            "sent {} of {want}",
            sent()
        );
        self.seen.set(sent());
    }

    /// Stop; every payload sent.
    async fn finish(self) -> Vec<String> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.task.await.unwrap()
    }
}

/// Until every one of `sent` shows as delivered to `subscriber` in one of
/// the hosts' `outputs`.
fn wait_until_delivered(sent: &[String], subscriber: &str, outputs: impl Fn() -> Vec<String>) {
    let missing = || {
        let got: std::collections::BTreeSet<String> =
            outputs().iter().flat_map(|o| sunk(o, subscriber)).collect();
        sent.iter()
            .filter(|p| !got.contains(*p))
            .cloned()
            .collect::<Vec<_>>()
    };
    crate::support::until(
        SOON,
        || {
            let missing = missing();
            format!(
                "{} of {} never delivered: {missing:?}",
                missing.len(),
                sent.len()
            )
        },
        || missing().is_empty().then_some(()),
    );
}

/// Until `subscriber`'s feeder has stored its position.
async fn wait_for_position(client: &tokio_postgres::Client, subscriber: &str) {
    let deadline = Instant::now() + SOON;
    loop {
        let row = client
            .query_opt(
                "select 1 from pgnotifier.positions where subscriber = $1",
                &[&subscriber],
            )
            .await;
        if matches!(row, Ok(Some(_))) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{subscriber} never stored a position"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Debian's pgbouncer in front of the test database, in `mode`; killed
/// when dropped.
struct Bouncer {
    child: std::process::Child,
    url: String,
    _dir: std::path::PathBuf,
}

impl Bouncer {
    fn start(mode: &str) -> Self {
        use std::os::unix::fs::PermissionsExt;
        let bin = ["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"]
            .into_iter()
            .find(|p| Path::new(p).is_file())
            .expect("pgbouncer is missing: tests/run installs it (apt-get install pgbouncer)");
        let target: tokio_postgres::Config = crate::support::database_url().parse().unwrap();
        let host = match &target.get_hosts()[0] {
            tokio_postgres::config::Host::Tcp(host) => host.clone(),
            tokio_postgres::config::Host::Unix(dir) => dir.display().to_string(),
        };
        let port = target.get_ports().first().copied().unwrap_or(5432);
        let user = target.get_user().unwrap_or("postgres").to_owned();
        let db = target.get_dbname().unwrap_or(&user).to_owned();
        let listen = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let bouncer_port = listen.local_addr().unwrap().port();
        drop(listen);
        let dir = crate::support::temp_dir("pgbouncer");
        // pgbouncer will not run as root: as root it runs as postgres, who reads this.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(dir.join("users.txt"), format!("\"{user}\" \"\"\n")).unwrap();
        std::fs::write(
            dir.join("pgbouncer.ini"),
            format!(
                "[databases]\n{db} = host={host} port={port} dbname={db}\n\n[pgbouncer]\n\
                 listen_addr = 127.0.0.1\nlisten_port = {bouncer_port}\nunix_socket_dir =\n\
                 auth_type = trust\nauth_file = {}\npool_mode = {mode}\n",
                dir.join("users.txt").display()
            ),
        )
        .unwrap();
        let mut command = std::process::Command::new(bin);
        if running_as_root() {
            command.args(["-u", "postgres"]);
        }
        let child = command
            .arg(dir.join("pgbouncer.ini"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start pgbouncer");
        let url = format!("postgres://{user}@127.0.0.1:{bouncer_port}/{db}");
        crate::support::until(
            SOON,
            || format!("pgbouncer never accepted on {bouncer_port}"),
            || std::net::TcpStream::connect(("127.0.0.1", bouncer_port)).ok(),
        );
        Self {
            child,
            url,
            _dir: dir,
        }
    }
}

impl Drop for Bouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .map(|ids| ids.split_whitespace().next() == Some("0"))
        })
        .unwrap_or(false)
}

/// Behind pgbouncer in transaction mode LISTEN is accepted and nothing
/// arrives: start-up is refused, saying why and what to do. In session
/// mode it works.
#[tokio::test(flavor = "multi_thread")]
async fn a_transaction_mode_pooler_is_refused_and_a_session_mode_one_works() {
    let plugins = crate::support::temp_dir("pooled");
    let channel = crate::support::channel("pooled");
    let id = crate::support::channel("pooled_sink");
    install_sink(&plugins, &id, &sidecar(&channel, false));

    let transaction = Bouncer::start("transaction");
    let refused = Host::run(&plugins, &transaction.url);
    let (status, output) = refused.wait();
    assert!(!status.success(), "refused: {status}\n{output}");
    for words in [
        "LISTEN does not work through",
        "transaction mode",
        "connect to PostgreSQL directly, or through a pool in session mode",
    ] {
        assert!(output.contains(words), "{words:?} in:\n{output}");
    }

    let session = Bouncer::start("session");
    let host = Host::run(&plugins, &session.url);
    host.wait_for(&["LISTEN set updated"]);
    client()
        .await
        .batch_execute(&format!(
            "select pg_notify('{channel}', 'through the pool')"
        ))
        .await
        .unwrap();
    host.wait_for(&["sink through the pool", &format!("subscriber={id}")]);
    host.stop();
}
