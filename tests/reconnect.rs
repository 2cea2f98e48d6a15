//! Connection reliability: reconnect after a lost connection, gap events,
//! a heartbeat that notices a silently dead connection, start-up while the
//! server is down, and a graceful shutdown with a full queue.
//!
//! Tests that stop the server use a throwaway cluster of their own.

use crate::support::proxy::{database_target, url_via};
use crate::support::wat::{Notify, WatPlugin};
use crate::support::{channel, eventually, logs, Sender, SOON};
use pgnotifier::{ConnectionSettings, DatabaseSettings, Notifier, Overflow, Payload, Subscriber};
use pgnotifier_app::local_pg::Cluster;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

/// A native subscriber that records notifications as `n:PAYLOAD` and gap
/// events as `gap:CHANNEL,…`, in the order it gets them.
fn journal() -> (Subscriber, Arc<Mutex<Vec<String>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (notes, gaps) = (seen.clone(), seen.clone());
    let subscriber = Subscriber::native(move |_, _, payload, _| {
        let text = match payload {
            Payload::Text(t) => t.clone(),
            other => format!("{other:?}"),
        };
        notes.lock().unwrap().push(format!("n:{text}"));
    })
    .on_gap(move |_, channels| {
        gaps.lock()
            .unwrap()
            .push(format!("gap:{}", channels.join(",")))
    });
    (subscriber, seen)
}

fn entries(seen: &Arc<Mutex<Vec<String>>>) -> Vec<String> {
    seen.lock().unwrap().clone()
}

/// Wait until the notifier is connected with a backend other than `old`, and LISTENing.
async fn relistened(notifier: &Notifier, old: Option<i32>, within: Duration) -> bool {
    eventually(within, || {
        notifier.backend_pid().is_some_and(|pid| Some(pid) != old)
            && !notifier.listening().is_empty()
    })
    .await
}

/// Terminate the listener's backend, as a lost connection; its pid.
async fn terminate_listener(notifier: &Notifier, sender: &Sender) -> i32 {
    let pid = notifier.backend_pid().expect("the listener is connected");
    sender
        .client
        .execute("select pg_terminate_backend($1)", &[&pid])
        .await
        .expect("terminate the listener's backend");
    pid
}

async fn throwaway_cluster() -> Cluster {
    tokio::task::spawn_blocking(Cluster::start)
        .await
        .unwrap()
        .expect(
            "these tests need PostgreSQL server binaries (initdb, pg_ctl) for a throwaway cluster",
        )
}

#[tokio::test]
async fn a_terminated_backend_is_reconnected_and_every_subscriber_gets_a_gap_event() {
    logs::install();
    let ch = channel("term");
    let notifier = Notifier::new(crate::support::database());
    let (subscriber, seen) = journal();
    notifier
        .subscribe("journal", ch.as_str(), subscriber)
        .unwrap();
    let dir = crate::support::temp_dir("reconnect");
    let wasm = WatPlugin::new(&[ch.as_str()], Notify::Echo).write(&dir, "wasm_gap");
    notifier.load_plugin(&wasm).await.unwrap();
    crate::support::listen(&notifier).await;
    let sender = Sender::connect().await;
    for p in ["a", "b"] {
        sender.notify(&ch, p).await;
    }
    assert!(eventually(SOON, || entries(&seen).len() == 2).await);

    let old = Some(terminate_listener(&notifier, &sender).await);
    assert!(
        relistened(&notifier, old, SOON).await,
        "reconnected and LISTENing again"
    );
    for p in ["c", "d", "e"] {
        sender.notify(&ch, p).await;
    }
    assert!(
        eventually(SOON, || entries(&seen).len() == 6).await,
        "{:?}",
        entries(&seen)
    );
    // The gap event comes before anything sent after the re-LISTEN.
    assert_eq!(
        entries(&seen),
        ["n:a", "n:b", &format!("gap:{ch}"), "n:c", "n:d", "n:e"]
    );
    // The wasm plugin got its gap event too (its on-gap logs the channel).
    assert!(
        eventually(SOON, || logs::plugin_messages("wasm_gap").contains(&ch)).await,
        "{:?}",
        logs::plugin_messages("wasm_gap")
    );
    assert_eq!(crate::support::stats_of(&notifier, "wasm_gap").gaps, 1);
    assert!(logs::of("journal")
        .iter()
        .any(|l| l.message == "notifications may have been missed"));
    notifier.shutdown(Duration::from_secs(5)).await;
}

/// A subscriber that resynchronises in on-gap misses nothing: on-gap runs
/// only once the channel is LISTENed again, so a change committed while it
/// runs (here, a NOTIFY sent from inside it) is delivered after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_gap_runs_only_once_the_channel_is_listened_again() {
    let ch = channel("resync");
    let notifier = Notifier::new(crate::support::database());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (notes, gaps) = (seen.clone(), seen.clone());
    // Connected beforehand, so the NOTIFY is one round trip, as quick as LISTEN.
    let from_gap = Arc::new(Sender::connect().await);
    let (runtime, on_gap_ch) = (tokio::runtime::Handle::current(), ch.clone());
    let subscriber = Subscriber::native(move |_, _, payload, _| {
        notes.lock().unwrap().push(format!("n:{payload:?}"));
    })
    .on_gap(move |_, _| {
        gaps.lock().unwrap().push("gap".to_owned());
        // Committed before on-gap returns, as a change after a resync read would be.
        runtime.block_on(from_gap.notify(&on_gap_ch, "from on-gap"));
    });
    notifier
        .subscribe("resync", ch.as_str(), subscriber)
        .unwrap();
    crate::support::listen(&notifier).await;
    let sender = Sender::connect().await;
    let rounds = 10;
    for round in 1..=rounds {
        terminate_listener(&notifier, &sender).await;
        assert!(
            eventually(SOON, || entries(&seen).len() == 2 * round).await,
            "round {round}: the NOTIFY sent from on-gap was lost: {:?}",
            entries(&seen)
        );
    }
    let text = format!("n:{:?}", Payload::Text("from on-gap".into()));
    let each = ["gap", text.as_str()];
    assert_eq!(entries(&seen), each.repeat(rounds));
    notifier.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_server_restart_is_survived_and_the_time_to_listen_again_is_reported() {
    let cluster = Arc::new(throwaway_cluster().await);
    let notifier = Notifier::new(DatabaseSettings::from_url(cluster.url()).unwrap());
    let (subscriber, seen) = journal();
    notifier
        .subscribe("journal", "restart", subscriber)
        .unwrap();
    crate::support::listen(&notifier).await;
    let old = notifier.backend_pid();

    let c = cluster.clone();
    tokio::task::spawn_blocking(move || c.stop_server().and_then(|()| c.start_server()))
        .await
        .unwrap()
        .expect("restart the throwaway server");
    let back = Instant::now();
    assert!(
        relistened(&notifier, old, SOON).await,
        "LISTENing after the restart"
    );
    println!(
        "server back → LISTENing again: {:.0} ms",
        back.elapsed().as_secs_f64() * 1e3
    );

    let (client, connection) = tokio_postgres::connect(cluster.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
        .execute("select pg_notify('restart', 'after')", &[])
        .await
        .unwrap();
    assert!(
        eventually(SOON, || entries(&seen) == ["gap:restart", "n:after"]).await,
        "{:?}",
        entries(&seen)
    );
    notifier.shutdown(Duration::from_secs(5)).await;
    drop(client);
    tokio::task::spawn_blocking(move || drop(cluster))
        .await
        .unwrap();
}

#[tokio::test]
async fn start_up_with_the_server_down_waits_and_connects_when_it_comes_up() {
    logs::install();
    let cluster = Arc::new(throwaway_cluster().await);
    let c = cluster.clone();
    tokio::task::spawn_blocking(move || c.stop_server())
        .await
        .unwrap()
        .unwrap();
    // Default settings: the backoff grows while the server is down, but its
    // return is noticed by a TCP probe, not at the next scheduled attempt.
    let notifier = Notifier::new(DatabaseSettings::from_url(cluster.url()).unwrap());
    let (subscriber, seen) = journal();
    notifier.subscribe("journal", "later", subscriber).unwrap();
    notifier.start().await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(notifier.is_running(), "still trying");
    assert_eq!(notifier.backend_pid(), None);

    let c = cluster.clone();
    tokio::task::spawn_blocking(move || c.start_server())
        .await
        .unwrap()
        .unwrap();
    crate::support::listen(&notifier).await;
    let (client, connection) = tokio_postgres::connect(cluster.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
        .execute("select pg_notify('later', 'hello')", &[])
        .await
        .unwrap();
    // Never LISTENed before, so nothing was missed: no gap event.
    assert!(
        eventually(SOON, || entries(&seen) == ["n:hello"]).await,
        "{:?}",
        entries(&seen)
    );
    notifier.shutdown(Duration::from_secs(5)).await;
    drop(client);
    tokio::task::spawn_blocking(move || drop(cluster))
        .await
        .unwrap();
}

/// A notifier through a proxy on `url`, with a 300 ms heartbeat.
fn beating(url: &str) -> pgnotifier::NotifierBuilder {
    Notifier::builder(DatabaseSettings::from_url(url).unwrap()).connection(ConnectionSettings {
        heartbeat: Some(Duration::from_millis(300)),
        ..ConnectionSettings::default()
    })
}

/// A TCP proxy to the test database that can be frozen: it keeps the
/// connection open but forwards nothing, as a dead network path does.
struct FreezableProxy {
    port: u16,
    frozen: Arc<std::sync::atomic::AtomicBool>,
}

impl FreezableProxy {
    async fn start(target: (String, u16)) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let frozen = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = frozen.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let target = target.clone();
                let flag = flag.clone();
                tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::join!(pump(cr, sw, flag.clone()), pump(sr, cw, flag));
                });
            }
        });
        Self { port, frozen }
    }

    /// Freeze every connection open now; later ones forward normally.
    fn freeze(&self) {
        self.frozen.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    fn thaw(&self) {
        self.frozen
            .store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Copy bytes until the flag is set, then hold the connection open silently.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    frozen: Arc<std::sync::atomic::AtomicBool>,
) {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if frozen.load(std::sync::atomic::Ordering::SeqCst) {
            // Swallow everything from now on, and never close.
            std::future::pending::<()>().await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[tokio::test]
async fn the_heartbeat_notices_a_silently_dead_connection() {
    logs::install();
    let proxy = FreezableProxy::start(database_target()).await;
    let notifier = beating(&url_via(proxy.port, "")).build();
    let ch = channel("beat");
    let (subscriber, seen) = journal();
    notifier
        .subscribe("journal", ch.as_str(), subscriber)
        .unwrap();
    crate::support::listen(&notifier).await;
    let old = notifier.backend_pid();

    proxy.freeze();
    let frozen_at = Instant::now();
    // The dead connection is noticed by the heartbeat: about 2 × 300 ms.
    assert!(
        eventually(SOON, || notifier.backend_pid() != old).await,
        "the frozen connection was never given up"
    );
    let noticed = frozen_at.elapsed();
    proxy.thaw();
    assert!(relistened(&notifier, old, SOON).await);
    println!("frozen connection given up after {noticed:?}");
    assert!(
        noticed < Duration::from_secs(5),
        "noticed after {noticed:?}, not within a few heartbeats"
    );
    let sender = Sender::connect().await;
    sender.notify(&ch, "alive").await;
    assert!(
        eventually(SOON, || entries(&seen)
            == [format!("gap:{ch}"), "n:alive".into()])
        .await,
        "{:?}",
        entries(&seen)
    );
    notifier.shutdown(Duration::from_secs(5)).await;
}

/// A cluster's leader whose connection stalls (nothing forwarded, nothing
/// closed) notices through the heartbeat and stands down: it stops
/// dispatching before the server could give its lock to a standby.
#[tokio::test]
async fn a_leader_whose_connection_stalls_stands_down_within_two_heartbeats() {
    let proxy = FreezableProxy::start(database_target()).await;
    let notifier = beating(&url_via(proxy.port, ""))
        .cluster(pgnotifier::cluster::ClusterSettings::new(channel("stall")))
        .build();
    let (subscriber, _) = journal();
    notifier
        .subscribe("journal", channel("stall_work").as_str(), subscriber)
        .unwrap();
    crate::support::listen(&notifier).await;
    assert_eq!(notifier.cluster().role, pgnotifier::cluster::Role::Leader);

    proxy.freeze();
    let frozen_at = Instant::now();
    assert!(
        eventually(SOON, || notifier.cluster().role
            == pgnotifier::cluster::Role::Standby)
        .await,
        "the stalled leader never stood down"
    );
    let stood_down = frozen_at.elapsed();
    assert!(
        stood_down < Duration::from_millis(2 * 300 + 300),
        "stood down after {stood_down:?}, not within two heartbeats"
    );
    assert!(notifier.listening().is_empty(), "and LISTENs nothing");
    proxy.thaw();
    notifier.shutdown(Duration::from_secs(5)).await;
}

/// The heartbeat compares `pg_listening_channels()` with what the host
/// believes it LISTENs: a server that stopped LISTENing is found, counted,
/// repaired, and its subscribers told of the gap.
#[tokio::test]
async fn the_heartbeat_finds_and_repairs_a_server_that_stopped_listening() {
    let proxy = crate::support::proxy::InjectingProxy::start(database_target()).await;
    // In the clear, so the proxy can read the protocol.
    let notifier = beating(&url_via(proxy.port, "?sslmode=disable")).build();
    let ch = channel("repaired");
    let (subscriber, seen) = journal();
    notifier
        .subscribe("journal", ch.as_str(), subscriber)
        .unwrap();
    crate::support::listen(&notifier).await;
    let pid = notifier.backend_pid().expect("connected");
    let sender = Sender::connect().await;

    proxy.inject("UNLISTEN *");
    let repairs = || {
        crate::support::host::parse_metrics(&notifier.metrics())
            ["pgnotifier_listener_repairs_total"]
    };
    assert!(
        eventually(SOON, || repairs() >= 1.0).await,
        "the heartbeat never noticed the server had stopped LISTENing"
    );
    notifier.wait_until_listening(SOON).await.unwrap();
    assert_eq!(
        notifier.backend_pid(),
        Some(pid),
        "repaired on the same connection"
    );
    sender.notify(&ch, "after the repair").await;
    assert!(
        eventually(SOON, || entries(&seen).last().map(String::as_str)
            == Some("n:after the repair"))
        .await,
        "{:?}",
        entries(&seen)
    );
    assert!(
        entries(&seen).contains(&format!("gap:{ch}")),
        "its subscriber was told of the gap: {:?}",
        entries(&seen)
    );
    notifier.shutdown(Duration::from_secs(5)).await;
}

/// 10k notifications queued for a slow subscriber, then shut down.
async fn queued_10k(per_call: Duration) -> (Notifier, Arc<std::sync::atomic::AtomicU64>) {
    let ch = channel("drain10k");
    let notifier = Notifier::new(crate::support::database());
    let calls = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = calls.clone();
    let slow = Subscriber::native(move |_, _, _, _| {
        let until = Instant::now() + per_call;
        while Instant::now() < until {
            std::hint::spin_loop();
        }
        counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    })
    .queue(20_000, Overflow::Block, Duration::ZERO);
    notifier.subscribe("slow", ch.as_str(), slow).unwrap();
    crate::support::listen(&notifier).await;
    let sender = Sender::connect().await;
    sender
        .client
        .execute(
            &format!("select count(pg_notify('{ch}', i::text)) from generate_series(1, 10000) i"),
            &[],
        )
        .await
        .unwrap();
    // Everything received and queued (or already delivered) before shutting down.
    assert!(
        eventually(SOON, || {
            let s = crate::support::stats_of(&notifier, "slow");
            // One may be in the subscriber's hands, neither queued nor delivered yet.
            s.delivered + s.queued as u64 >= 9_999
        })
        .await
    );
    (notifier, calls)
}

#[tokio::test]
async fn shutdown_delivers_a_queue_of_10k_before_returning() {
    let (notifier, calls) = queued_10k(Duration::from_micros(50)).await;
    let report = notifier.shutdown(Duration::from_secs(30)).await;
    assert!(report.abandoned.is_empty(), "{report:?}");
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 10_000);
}

#[tokio::test]
async fn shutdown_past_the_drain_timeout_reports_it_and_calls_nothing_after() {
    let (notifier, calls) = queued_10k(Duration::from_millis(1)).await;
    let report = notifier.shutdown(Duration::from_millis(100)).await;
    assert_eq!(report.abandoned, ["slow"]);
    let at_return = calls.load(std::sync::atomic::Ordering::SeqCst);
    assert!(at_return < 10_000, "{at_return}");
    // The worker has stopped once every notification is either delivered
    // or discarded: only then is "no call after the deadline" settled.
    let settled = || {
        let stats = crate::support::stats_of(&notifier, "slow");
        stats.delivered + stats.dropped == 10_000
    };
    assert!(
        eventually(SOON, settled).await,
        "{:?}",
        crate::support::stats_of(&notifier, "slow")
    );
    // The call in progress at the deadline may finish; no other starts.
    assert!(
        calls.load(std::sync::atomic::Ordering::SeqCst) <= at_return + 1,
        "a subscriber was called after the deadline"
    );
}
