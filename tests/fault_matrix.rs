//! The fault matrix: producers, a three-host cluster of `pgnotifier run`
//! and a durable sink plugin, with faults injected at random while it runs:
//! the leader SIGKILLed, its backends terminated, PostgreSQL restarted, a
//! hot reload, a channel added to the subscriber, a pooler's `DISCARD ALL`
//! on the leader's connections, `ctl skip` sent to a standby, and a sender
//! in `session_replication_role = replica`. At the end:
//!
//! - every committed event was delivered at least once, and no rolled-back
//!   one;
//! - no two hosts were ever in a call of the subscriber at the same time
//!   (the sink logs each call's start and end);
//! - duplicates stay within the stated redelivery window per fault.
//!
//! It runs `PGNOTIFIER_FAULT_SECONDS` (45 unless set) and prints its seed;
//! `PGNOTIFIER_FAULT_SEED=N` runs the same faults again.

mod support;

use pgnotifier_app::local_pg::Cluster;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::host::{ctl, parse_metrics, Host};
use support::proxy::InjectingProxy;
use tokio_postgres::NoTls;

const HOSTS: usize = 3;
const SINK: &str = "sink";

/// xorshift: the faults and the producers' choices, from one seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// One host of the cluster: its folders, its proxy to PostgreSQL, and the
/// process now running, with what earlier processes logged.
struct Member {
    name: String,
    plugins: PathBuf,
    config: PathBuf,
    proxy: InjectingProxy,
    host: Option<Host>,
    /// Output of earlier processes, each with when it was killed.
    earlier: Vec<(String, Option<String>)>,
}

impl Member {
    async fn new(index: usize, cluster: &str, target: (String, u16), db: &str) -> Self {
        let name = format!("host{index}");
        let dir = support::temp_dir(&format!("matrix-{name}"));
        let plugins = dir.join("plugins");
        std::fs::create_dir_all(&plugins).unwrap();
        let proxy = InjectingProxy::start(target).await;
        // In the clear through the proxy; the name tells its backends apart.
        let url = format!(
            "postgres://postgres@127.0.0.1:{}/{db}?sslmode=disable&application_name={name}",
            proxy.port
        );
        let config = dir.join("pgnotifier.toml");
        std::fs::write(
            &config,
            format!(
                "database_url = {url:?}\nplugins = {plugins:?}\ndata_dir = {data:?}\n\
                 admin_addr = \"127.0.0.1:0\"\nwatch_debounce_ms = 25\nreconnect_max_ms = 1000\n\
                 [cluster]\nname = {cluster:?}\ntakeover_ms = 1000\n",
                plugins = plugins.display().to_string(),
                data = dir.join("data").display().to_string(),
            ),
        )
        .unwrap();
        std::fs::copy(
            support::test_plugin("durable-sink"),
            plugins.join(format!("{SINK}.wasm")),
        )
        .unwrap();
        let member = Self {
            name,
            plugins,
            config,
            proxy,
            host: None,
            earlier: Vec::new(),
        };
        member.write_sidecar(&["work"], "");
        member
    }

    fn write_sidecar(&self, channels: &[&str], note: &str) {
        let channels: Vec<String> = channels.iter().map(|c| format!("{c:?}")).collect();
        std::fs::write(
            self.plugins.join(format!("{SINK}.toml")),
            format!(
                "channels = [{}]\ndelivery = \"at-least-once\"\nretry_backoff_ms = 1\n\
                 failure_threshold = 0\n[config]\nspin = \"200\"\nlog_start = \"true\"\n{note}",
                channels.join(", ")
            ),
        )
        .unwrap();
    }

    fn start(&mut self) {
        self.host = Some(Host::with_config(&self.config));
    }

    fn output(&self) -> String {
        self.host.as_ref().map(Host::output).unwrap_or_default()
    }

    /// Every line any process of this host logged, with, for each, when its
    /// process was killed (its calls in progress ended then).
    fn all_output(&self) -> Vec<(String, Option<String>)> {
        let mut all = self.earlier.clone();
        all.push((self.output(), None));
        all
    }

    fn kill(&mut self) {
        if let Some(host) = self.host.take() {
            host.signal("KILL");
            let at = now_stamp();
            let (_, output) = host.wait();
            self.earlier.push((output, Some(at)));
        }
    }

    fn role(&self) -> Option<&'static str> {
        self.host.as_ref()?;
        let out = ctl(&self.config, &["metrics"]);
        if !out.status.success() {
            return None;
        }
        let metrics = parse_metrics(&String::from_utf8_lossy(&out.stdout));
        ["leader", "standby"].into_iter().find(|role| {
            metrics.get(&format!("pgnotifier_cluster_role{{role=\"{role}\"}}")) == Some(&1.0)
        })
    }
}

/// Write every host's log to `matrix-HOST.log` in the temp folder, for a
/// failure to be read.
fn keep_logs(members: &[Member]) {
    for member in members {
        let text: Vec<String> = member.all_output().into_iter().map(|(o, _)| o).collect();
        let path = std::env::temp_dir().join(format!("matrix-{}.log", member.name));
        let _ = std::fs::write(&path, text.join("\n--- restarted ---\n"));
        eprintln!("fault matrix: {} logged to {}", member.name, path.display());
    }
}

/// Now, as the host's log writes it: RFC 3339, UTC, microseconds.
fn now_stamp() -> String {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let (secs, micros) = (since.as_secs(), since.subsec_micros());
    let days = secs / 86_400;
    let (h, m, s) = (secs % 86_400 / 3600, secs % 3600 / 60, secs % 60);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{micros:06}Z")
}

/// A call of the sink: its host, payload, and start and end stamps.
#[derive(Debug, Clone)]
struct Call {
    host: String,
    payload: String,
    started: String,
    ended: String,
}

/// The sink's calls in one process's log, paired start to end; a call
/// still running when the process was killed ended then.
fn calls_in(host: &str, output: &str, killed_at: Option<&str>) -> Vec<Call> {
    let tag = format!("subscriber={SINK}");
    let mut open: Option<(String, String)> = None;
    let mut calls = Vec::new();
    for line in output.lines().filter(|l| l.contains(&tag)) {
        let Some(stamp) = line.split_whitespace().next() else {
            continue;
        };
        if let Some((_, rest)) = line.split_once(" sink-start ") {
            let payload = rest.split_whitespace().next().unwrap_or("").to_owned();
            open = Some((payload, stamp.to_owned()));
        } else if let Some((_, rest)) = line.split_once(" sink ") {
            let payload = rest.split_whitespace().next().unwrap_or("").to_owned();
            if let Some((started_payload, started)) = open.take() {
                if started_payload == payload {
                    calls.push(Call {
                        host: host.to_owned(),
                        payload,
                        started,
                        ended: stamp.to_owned(),
                    });
                }
            }
        } else if line.contains("call failed") {
            // A failed call ended too.
            if let Some((payload, started)) = open.take() {
                calls.push(Call {
                    host: host.to_owned(),
                    payload,
                    started,
                    ended: stamp.to_owned(),
                });
            }
        }
    }
    if let (Some((payload, started)), Some(killed)) = (open, killed_at) {
        calls.push(Call {
            host: host.to_owned(),
            payload,
            started,
            ended: killed.to_owned(),
        });
    }
    calls
}

/// What the producers did.
#[derive(Default)]
struct Produced {
    committed: Vec<String>,
    aborted: Vec<String>,
}

/// Four producers at a few transactions a second each (the sink logs two
/// lines a call, under the host's 200 lines a second), until `stop`.
fn produce(url: String, seed: u64, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<Produced> {
    tokio::spawn(async move {
        let producers: Vec<_> = (0..4u64)
            .map(|p| {
                let (url, stop) = (url.clone(), stop.clone());
                tokio::spawn(async move {
                    let mut rng = Rng((seed ^ (p + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1);
                    let mut produced = Produced::default();
                    let mut client = None;
                    let mut t = 0;
                    while !stop.load(Ordering::Relaxed) {
                        t += 1;
                        tokio::time::sleep(Duration::from_millis(150 + rng.below(100))).await;
                        if client.is_none() {
                            client = tokio_postgres::connect(&url, NoTls).await.ok().map(
                                |(client, connection)| {
                                    tokio::spawn(connection);
                                    client
                                },
                            );
                        }
                        let Some(c) = client.as_mut() else { continue };
                        let payloads: Vec<String> = (0..=rng.below(2))
                            .map(|e| format!("p{p}-t{t}-e{e}"))
                            .collect();
                        let rollback = rng.below(5) == 0;
                        let sent = async {
                            let tx = c.transaction().await?;
                            for payload in &payloads {
                                tx.execute("select pgnotifier.send('work', $1)", &[payload])
                                    .await?;
                            }
                            match rollback {
                                true => tx.rollback().await,
                                false => tx.commit().await,
                            }
                        };
                        match sent.await {
                            Ok(()) if rollback => produced.aborted.extend(payloads),
                            Ok(()) => produced.committed.extend(payloads),
                            Err(_) => client = None,
                        }
                    }
                    produced
                })
            })
            .collect();
        let mut all = Produced::default();
        for producer in producers {
            let done = producer.await.unwrap();
            all.committed.extend(done.committed);
            all.aborted.extend(done.aborted);
        }
        all
    })
}

#[derive(Clone, Copy, Debug)]
enum Fault {
    KillLeader,
    TerminateBackends,
    RestartPostgres,
    HotReload,
    AddChannel,
    DiscardAll,
    SkipOnStandby,
    ReplicaSender,
}

const FAULTS: [Fault; 8] = [
    Fault::KillLeader,
    Fault::TerminateBackends,
    Fault::RestartPostgres,
    Fault::HotReload,
    Fault::AddChannel,
    Fault::DiscardAll,
    Fault::SkipOnStandby,
    Fault::ReplicaSender,
];

/// The index of the one leader, once exactly one host leads and the others
/// stand by, each for half a second.
fn settled_leader(members: &[Member]) -> Option<usize> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut since: Option<(usize, Instant)> = None;
    while Instant::now() < deadline {
        let roles: Vec<_> = members.iter().map(Member::role).collect();
        let leaders: Vec<usize> = (0..roles.len())
            .filter(|i| roles[*i] == Some("leader"))
            .collect();
        let standbys = roles.iter().filter(|r| **r == Some("standby")).count();
        match (leaders.as_slice(), standbys) {
            ([one], s) if s == members.len() - 1 => match since {
                Some((was, at)) if was == *one && at.elapsed() > Duration::from_millis(500) => {
                    return Some(*one)
                }
                Some((was, _)) if was == *one => {}
                _ => since = Some((*one, Instant::now())),
            },
            _ => since = None,
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

#[tokio::test(flavor = "multi_thread")]
async fn faults_at_random_lose_nothing_and_never_run_one_event_twice_at_once() {
    let seconds: u64 = std::env::var("PGNOTIFIER_FAULT_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(45);
    let seed: u64 = std::env::var("PGNOTIFIER_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("fault matrix: seed {seed} (PGNOTIFIER_FAULT_SEED={seed} replays it), {seconds} s");
    let mut rng = Rng(seed);

    let cluster = tokio::task::spawn_blocking(Cluster::start)
        .await
        .unwrap()
        .expect("a throwaway PostgreSQL (the matrix restarts it)");
    let url = cluster.url().to_owned();
    let config: tokio_postgres::Config = url.parse().unwrap();
    let db = config.get_dbname().unwrap_or("postgres").to_owned();
    let target = ("127.0.0.1".to_owned(), cluster.port());
    {
        let (mut client, connection) = tokio_postgres::connect(&url, NoTls).await.unwrap();
        tokio::spawn(connection);
        pgnotifier::durable::schema::install(&mut client)
            .await
            .unwrap();
    }
    let name = support::channel("matrix");
    let mut members = Vec::new();
    for i in 0..HOSTS {
        members.push(Member::new(i, &name, target.clone(), &db).await);
    }
    for member in &mut members {
        member.start();
    }
    let first = tokio::task::block_in_place(|| settled_leader(&members));
    let first = first.unwrap_or_else(|| {
        let outputs: Vec<String> = members.iter().map(Member::output).collect();
        panic!(
            "no host leads while the others stand by:\n{}",
            outputs.join("\n---\n")
        )
    });
    members[first]
        .host
        .as_ref()
        .unwrap()
        .wait_for(&["plugin loaded", "subscriber=sink"]);

    let stop = Arc::new(AtomicBool::new(false));
    let producers = produce(url.clone(), seed, stop.clone());
    let extra: Arc<Mutex<Vec<String>>> = Default::default();
    let mut faults: Vec<Fault> = Vec::new();
    let mut channels = vec!["work".to_owned()];
    let ends = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < ends {
        tokio::time::sleep(Duration::from_millis(2000 + rng.below(2000))).await;
        let fault = FAULTS[rng.below(FAULTS.len() as u64) as usize];
        let leader = tokio::task::block_in_place(|| settled_leader(&members));
        eprintln!(
            "fault matrix: {fault:?} (leader: {:?})",
            leader.map(|i| &members[i].name)
        );
        faults.push(fault);
        match fault {
            Fault::KillLeader => {
                if let Some(i) = leader {
                    tokio::task::block_in_place(|| members[i].kill());
                    members[i].start();
                }
            }
            Fault::TerminateBackends => {
                if let Some(i) = leader {
                    let (client, connection) = tokio_postgres::connect(&url, NoTls).await.unwrap();
                    tokio::spawn(connection);
                    client
                        .execute(
                            "select pg_terminate_backend(pid) from pg_stat_activity where application_name = $1",
                            &[&members[i].name],
                        )
                        .await
                        .unwrap();
                }
            }
            Fault::RestartPostgres => {
                tokio::task::block_in_place(|| {
                    cluster.stop_server().unwrap();
                    std::thread::sleep(Duration::from_millis(300));
                    cluster.start_server().unwrap();
                });
            }
            Fault::HotReload => {
                let i = rng.below(HOSTS as u64) as usize;
                let names: Vec<&str> = channels.iter().map(String::as_str).collect();
                members[i].write_sidecar(&names, &format!("# reload {}\n", faults.len()));
            }
            Fault::AddChannel => {
                let added = format!("extra{}", faults.len());
                channels.push(added.clone());
                let names: Vec<&str> = channels.iter().map(String::as_str).collect();
                for member in &members {
                    member.write_sidecar(&names, "");
                }
                // Sent once every host has the channel: what is sent on it
                // from then on is owed.
                for member in &members {
                    let has_it = || {
                        let out = ctl(&member.config, &["--json", "subscribers"]);
                        String::from_utf8_lossy(&out.stdout).contains(&format!("\"{added}\""))
                    };
                    let state = || format!("{} never subscribed to {added}", member.name);
                    tokio::task::block_in_place(|| {
                        support::until(Duration::from_secs(30), state, || has_it().then_some(()))
                    });
                }
                let (client, connection) = tokio_postgres::connect(&url, NoTls).await.unwrap();
                tokio::spawn(connection);
                let payload = format!("{added}-event");
                client
                    .execute("select pgnotifier.send($1, $2)", &[&added, &payload])
                    .await
                    .unwrap();
                extra.lock().unwrap().push(payload);
            }
            Fault::DiscardAll => {
                if let Some(i) = leader {
                    members[i].proxy.inject("DISCARD ALL");
                }
            }
            Fault::SkipOnStandby => {
                if let Some(leader) = leader {
                    let standby = (leader + 1) % HOSTS;
                    let out = tokio::task::block_in_place(|| {
                        ctl(&members[standby].config, &["skip", SINK])
                    });
                    let said = String::from_utf8_lossy(&out.stderr).to_string();
                    assert!(
                        !out.status.success() && said.contains("standby"),
                        "ctl skip on the standby {} was not refused: {said}",
                        members[standby].name
                    );
                }
            }
            Fault::ReplicaSender => {
                let (client, connection) = tokio_postgres::connect(&url, NoTls).await.unwrap();
                tokio::spawn(connection);
                let mut sent = Vec::new();
                for e in 0..3 {
                    let payload = format!("replica{}-{e}", faults.len());
                    client
                        .batch_execute(&format!(
                            "SET session_replication_role = replica; SELECT pgnotifier.send('work', '{payload}')"
                        ))
                        .await
                        .unwrap();
                    sent.push(payload);
                }
                extra.lock().unwrap().extend(sent);
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    let produced = producers.await.unwrap();

    // Everything committed, from the outbox itself: producers' cut-off
    // transactions may have committed too.
    let (client, connection) = tokio_postgres::connect(&url, NoTls).await.unwrap();
    tokio::spawn(connection);
    let truth: BTreeSet<String> = client
        .query("select payload from pgnotifier.outbox", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    for payload in produced
        .committed
        .iter()
        .chain(extra.lock().unwrap().iter())
    {
        assert!(
            truth.contains(payload),
            "{payload} committed, not in the outbox"
        );
    }
    for payload in &produced.aborted {
        assert!(
            !truth.contains(payload),
            "{payload} rolled back, in the outbox"
        );
    }
    let all_calls = |members: &[Member]| -> Vec<Call> {
        members
            .iter()
            .flat_map(|m| {
                m.all_output()
                    .into_iter()
                    .flat_map(|(output, killed)| calls_in(&m.name, &output, killed.as_deref()))
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(90);
    let delivered = loop {
        let calls = all_calls(&members);
        let got: BTreeSet<&str> = calls.iter().map(|c| &*c.payload).collect();
        let missing: Vec<&String> = truth.iter().filter(|p| !got.contains(&***p)).collect();
        if missing.is_empty() {
            break calls;
        }
        if Instant::now() >= deadline {
            keep_logs(&members);
        }
        assert!(
            Instant::now() < deadline,
            "seed {seed}: {} of {} committed events never delivered, e.g. {:?}; faults {faults:?}",
            missing.len(),
            truth.len(),
            &missing[..missing.len().min(5)]
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for member in &mut members {
        if let Some(host) = member.host.take() {
            let output = tokio::task::block_in_place(|| host.stop());
            member.earlier.push((output, None));
        }
    }
    for member in &members {
        for (output, _) in member.all_output() {
            assert!(
                !output.contains("log lines suppressed"),
                "seed {seed}: {} suppressed sink lines, so the checks below would miss calls",
                member.name
            );
        }
    }

    // No two hosts in a call at once.
    let mut by_host: BTreeMap<&str, Vec<&Call>> = BTreeMap::new();
    for call in &delivered {
        by_host.entry(&call.host).or_default().push(call);
    }
    let hosts: Vec<&str> = by_host.keys().copied().collect();
    for (i, a) in hosts.iter().enumerate() {
        for b in &hosts[i + 1..] {
            for x in &by_host[a] {
                for y in &by_host[b] {
                    assert!(
                        !(x.started < y.ended && y.started < x.ended),
                        "seed {seed}: two hosts in a call at once: {x:?} and {y:?}; faults {faults:?}"
                    );
                }
            }
        }
    }
    // Duplicates within the window, per fault.
    let window =
        pgnotifier::durable::feeder::SAVE_EVERY as usize + pgnotifier::durable::feeder::WINDOW;
    let mut times: BTreeMap<&str, usize> = BTreeMap::new();
    for call in &delivered {
        *times.entry(&call.payload).or_default() += 1;
    }
    let duplicates: usize = times.values().map(|n| n - 1).sum();
    assert!(
        duplicates <= faults.len().max(1) * window,
        "seed {seed}: {duplicates} duplicates after {} faults, beyond {window} each",
        faults.len()
    );
    eprintln!(
        "fault matrix: seed {seed}: {} events, {} calls, {duplicates} duplicates, faults {faults:?}",
        truth.len(),
        delivered.len()
    );
    drop(members);
    tokio::task::spawn_blocking(move || drop(cluster))
        .await
        .unwrap();
}
