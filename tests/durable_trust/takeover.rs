//! A host that takes over waits for the call of the host it follows:
//! however that host lost its lock, and whatever happened to the hosts
//! that waited before it.

use super::*;

/// A plugin with grants waits in the database for seconds, using little
/// CPU. When the connection of the host that feeds it goes, that host cuts
/// the call short, so the host that takes over never calls while it runs.
#[tokio::test(flavor = "multi_thread")]
async fn a_call_of_a_host_that_lost_its_lock_ends_before_another_host_calls() {
    logs::install();
    crate::support::plugin_role("pgnotifier_test_reader", &[]).await;
    let (url, client) = fresh_database("cut_short").await;
    let role = "pgnotifier_test_host_cut_short";
    let a_url = url_as(&client, &url, role).await;
    let id = crate::support::channel("cut");
    let sidecar = |tag: &str| {
        format!(
            "timeout_ms = 1000\nquery_timeout_ms = 1000\nhttp_timeout_ms = 1000\n\
             [grants]\nquery = true\nquery_role = \"pgnotifier_test_reader\"\n\
             [config]\nlog_start = \"true\"\nwait_queries = \"25\"\ntag = \"{tag}\"\n"
        )
    };
    let a = notifier_on(&a_url);
    let a_dir = crate::support::temp_dir("durable-cut-a");
    durable_sink(&a, &a_dir, &id, &sidecar("a")).await;
    feeding(&client, &id).await;
    send_each(&client, "work", "e", 1).await;
    let lines = || sunk_lines(&id);
    assert!(
        eventually(SOON, || lines()
            .iter()
            .any(|l| l.starts_with("sink-wait e-0 a 2")))
        .await,
        "{:?}",
        lines()
    );
    // A's feeder connection goes (a terminated backend, a network cut):
    // the server frees its feed lock at once.
    cut_off(&client, role, &id).await;
    let b = notifier_on(&url);
    let b_dir = crate::support::temp_dir("durable-cut-b");
    durable_sink(&b, &b_dir, &id, &sidecar("b")).await;
    assert!(
        eventually(Duration::from_secs(30), || lines()
            .iter()
            .any(|l| l.starts_with("sink e-0 ")))
        .await,
        "B delivers the event: {:?}",
        lines()
    );
    a.shutdown(SOON).await;
    b.shutdown(SOON).await;
    let lines = lines();
    let b_started = (lines.iter())
        .position(|l| l.starts_with("sink-start e-0 ") && l.ends_with(" b"))
        .expect("B started a call");
    let late: Vec<&String> = lines[b_started..]
        .iter()
        .filter(|l| l.starts_with("sink-wait e-0 a "))
        .collect();
    assert_eq!(
        late,
        Vec::<&String>::new(),
        "A's call still ran once B's began"
    );
}

/// A role of its own for a host (`role`, one per host and test: tests run
/// at once), so it can be kept from connecting again and taking the lock
/// back: the URL that logs in as it.
async fn url_as(client: &Client, url: &str, role: &str) -> String {
    client
        .batch_execute(&format!(
            "DO $$ BEGIN CREATE ROLE {role}; EXCEPTION WHEN duplicate_object THEN NULL; END $$;
             ALTER ROLE {role} LOGIN SUPERUSER"
        ))
        .await
        .unwrap();
    let (scheme, rest) = url.split_once("://").unwrap();
    format!(
        "{scheme}://{role}@{}",
        rest.split_once('@').map_or(rest, |(_, r)| r)
    )
}

/// The host logged in as `role` cannot log in again.
async fn keep_out(client: &Client, role: &str) {
    client
        .batch_execute(&format!("ALTER ROLE {role} NOLOGIN"))
        .await
        .unwrap();
}

/// The feeder connection of `subscriber` goes, as after a terminated
/// backend or a network cut; its host may connect again.
async fn cut_feeder(client: &Client, subscriber: &str) {
    let killed: i64 = client
        .query_one(
            "select count(pg_terminate_backend(l.pid)) from pg_locks l
              where l.locktype = 'advisory' and l.granted and l.objsubid = 1
                and ((l.classid::bigint << 32) | l.objid::bigint)
                    = hashtextextended('pgnotifier feed ' || $1, 0)",
            &[&subscriber],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(killed, 1, "a feeder holds the feed lock");
}

/// The feeder connection of `subscriber` goes and its host (logged in as
/// `role`) cannot log in again: as good as killed.
async fn cut_off(client: &Client, role: &str, subscriber: &str) {
    keep_out(client, role).await;
    cut_feeder(client, subscriber).await;
}

/// Two hosts in one process (or two containers, both pid 1 under one host
/// name) are two feeders: the one that takes over waits for a call of the
/// other, which a lost lock cannot cut short (a plugin without grants
/// spinning on the CPU), to end.
#[tokio::test(flavor = "multi_thread")]
async fn a_host_that_looks_like_another_still_waits_for_its_call() {
    takeover_waits_for_the_call_in_progress("look_alike", 2_000_000, 8000).await;
}

/// A host that takes over waits as long as the host it follows said a call
/// of it may run, not by its own shorter deadline.
#[tokio::test(flavor = "multi_thread")]
async fn a_host_that_takes_over_waits_by_the_deadline_of_the_host_it_follows() {
    takeover_waits_for_the_call_in_progress("shorter_deadline", 5_000_000, 1000).await;
}

/// The end of a call a host may still run is kept until it passes: a host
/// that takes over waits for it, and when that host stops while it waits,
/// the next one waits for what is left of it, not from zero.
#[tokio::test(flavor = "multi_thread")]
async fn a_host_that_stops_while_it_waits_for_a_call_leaves_the_wait_to_the_next() {
    the_wait_outlives_the_host_that_waits("stops_while_waiting", WhileWaiting::Stops).await;
}

/// A host killed while it waits (its connection gone, and never back)
/// leaves the wait to the next host all the same.
#[tokio::test(flavor = "multi_thread")]
async fn a_host_killed_while_it_waits_for_a_call_leaves_the_wait_to_the_next() {
    the_wait_outlives_the_host_that_waits("killed_while_waiting", WhileWaiting::IsKilled).await;
}

/// A host whose connection goes while it waits connects again and waits
/// for what is left, not for nothing (it is the host recorded as feeding).
#[tokio::test(flavor = "multi_thread")]
async fn a_host_that_reconnects_while_it_waits_for_a_call_waits_for_the_rest() {
    the_wait_outlives_the_host_that_waits("reconnects_while_waiting", WhileWaiting::Reconnects)
        .await;
}

/// What happens to host B while it waits for host A's call.
#[derive(Clone, Copy, PartialEq)]
enum WhileWaiting {
    /// B shuts down cleanly; C takes over.
    Stops,
    /// B's connection goes and B cannot log in again; C takes over.
    IsKilled,
    /// B's connection goes and B connects again.
    Reconnects,
}

/// Host A calls a sink that spins about 5 s under an 8 s deadline; its
/// connection goes; host B, with a 1 s deadline (by its own settings a
/// 4 s wait), takes over and waits; then `what` happens to B. Whoever
/// calls next calls only once A's call has ended.
async fn the_wait_outlives_the_host_that_waits(name: &str, what: WhileWaiting) {
    logs::install();
    let (url, client) = fresh_database(name).await;
    let a_role = format!("pgnotifier_test_host_{name}");
    let b_role = format!("pgnotifier_test_host_{name}_b");
    let a_url = url_as(&client, &url, &a_role).await;
    let b_url = url_as(&client, &url, &b_role).await;
    let id = crate::support::channel(name);
    let a = notifier_on(&a_url);
    let a_dir = crate::support::temp_dir(&format!("durable-{name}-a"));
    durable_sink(&a, &a_dir, &id, &spinning("a", 8000, 5_000_000)).await;
    feeding(&client, &id).await;
    send_each(&client, "work", "e", 1).await;
    assert!(eventually(SOON, || started(&id, "a")).await);
    cut_off(&client, &a_role, &id).await;
    let b = notifier_on(&b_url);
    let b_dir = crate::support::temp_dir(&format!("durable-{name}-b"));
    durable_sink(&b, &b_dir, &id, &spinning("b", 1000, 0)).await;
    let waits = || {
        logs::of(&id)
            .iter()
            .filter(|l| l.message.contains(": waiting "))
            .count()
    };
    assert!(
        eventually(SOON, || waits() >= 1).await,
        "B waits for A's call"
    );
    let (next, c) = match what {
        WhileWaiting::Stops => {
            b.shutdown(SOON).await;
            ("c", Some(notifier_on(&url)))
        }
        WhileWaiting::IsKilled => {
            cut_off(&client, &b_role, &id).await;
            ("c", Some(notifier_on(&url)))
        }
        WhileWaiting::Reconnects => {
            cut_feeder(&client, &id).await;
            assert!(
                eventually(SOON, || waits() >= 2).await,
                "B connects again and waits for the rest"
            );
            ("b", None)
        }
    };
    if let Some(c) = &c {
        let c_dir = crate::support::temp_dir(&format!("durable-{name}-c"));
        durable_sink(c, &c_dir, &id, &spinning("c", 1000, 0)).await;
    }
    assert!(
        eventually(Duration::from_secs(60), || started(&id, next)).await,
        "{next} takes over: {:?}",
        sunk_lines(&id)
    );
    a.shutdown(SOON).await;
    b.shutdown(SOON).await;
    if let Some(c) = c {
        c.shutdown(SOON).await;
    }
    assert_a_ended_before(&id, next);
}

/// A reload that lengthens the deadline of a host's calls lengthens the
/// wait of a host that takes over from it: A starts with a 1 s deadline,
/// a reload gives it 9 s, and its call spins about 6 s.
#[tokio::test(flavor = "multi_thread")]
async fn a_reload_that_lengthens_calls_lengthens_the_takeover_wait() {
    logs::install();
    let name = "reload_lengthens";
    let (url, client) = fresh_database(name).await;
    let role = format!("pgnotifier_test_host_{name}");
    let a_url = url_as(&client, &url, &role).await;
    let id = crate::support::channel(name);
    let a = notifier_on(&a_url);
    let a_dir = crate::support::temp_dir(&format!("durable-{name}-a"));
    durable_sink(&a, &a_dir, &id, &spinning("a", 1000, 0)).await;
    feeding(&client, &id).await;
    std::fs::write(
        a_dir.join(format!("{id}.toml")),
        format!(
            "delivery = \"at-least-once\"\nretry_backoff_ms = 1\nfailure_threshold = 0\n{}",
            spinning("a", 9000, 6_000_000)
        ),
    )
    .unwrap();
    a.reload_plugin(&id).await.unwrap();
    send_each(&client, "work", "e", 1).await;
    assert!(eventually(SOON, || started(&id, "a")).await);
    cut_off(&client, &role, &id).await;
    let b = notifier_on(&url);
    let b_dir = crate::support::temp_dir(&format!("durable-{name}-b"));
    durable_sink(&b, &b_dir, &id, &spinning("b", 1000, 0)).await;
    assert!(
        eventually(Duration::from_secs(60), || started(&id, "b")).await,
        "B takes over: {:?}",
        sunk_lines(&id)
    );
    a.shutdown(SOON).await;
    b.shutdown(SOON).await;
    assert_a_ended_before(&id, "b");
}

/// Host A calls a sink that spins `spin` thousand rounds (about a second
/// per million) under an 8 s deadline; its feeder connection goes; host B,
/// whose deadline is `b_timeout_ms`, takes over. B must start its call
/// only once A's has ended.
async fn takeover_waits_for_the_call_in_progress(name: &str, spin: u64, b_timeout_ms: u64) {
    logs::install();
    let (url, client) = fresh_database(name).await;
    let role = format!("pgnotifier_test_host_{name}");
    let a_url = url_as(&client, &url, &role).await;
    let id = crate::support::channel(name);
    let a = notifier_on(&a_url);
    let a_dir = crate::support::temp_dir(&format!("durable-{name}-a"));
    durable_sink(&a, &a_dir, &id, &spinning("a", 8000, spin)).await;
    feeding(&client, &id).await;
    send_each(&client, "work", "e", 1).await;
    assert!(eventually(SOON, || started(&id, "a")).await);
    cut_off(&client, &role, &id).await;
    let b = notifier_on(&url);
    let b_dir = crate::support::temp_dir(&format!("durable-{name}-b"));
    durable_sink(&b, &b_dir, &id, &spinning("b", b_timeout_ms, spin)).await;
    assert!(
        eventually(Duration::from_secs(60), || started(&id, "b")).await,
        "B takes over: {:?}",
        sunk_lines(&id)
    );
    a.shutdown(SOON).await;
    b.shutdown(SOON).await;
    assert_a_ended_before(&id, "b");
}

/// The sidecar of a sink tagged `tag` that spins `spin` thousand rounds
/// (about a second per million) under a deadline of `timeout_ms`.
fn spinning(tag: &str, timeout_ms: u64, spin: u64) -> String {
    format!(
        "timeout_ms = {timeout_ms}\n[config]\nlog_start = \"true\"\nspin = \"{spin}\"\ntag = \"{tag}\"\n"
    )
}

/// The sink tagged `tag` started its call of the first event.
fn started(id: &str, tag: &str) -> bool {
    sunk_lines(id)
        .iter()
        .any(|l| l.starts_with("sink-start e-0 ") && l.ends_with(&format!(" {tag}")))
}

/// In the sink's lines and the hosts', in order: host A's call of the first
/// event ended (returned, or cut at its deadline) before the host tagged
/// `next` began its own.
fn assert_a_ended_before(id: &str, next: &str) {
    let messages: Vec<String> = logs::of(id).into_iter().map(|l| l.message).collect();
    let next_started = (messages.iter())
        .position(|l| l.starts_with("sink-start e-0 ") && l.ends_with(&format!(" {next}")))
        .unwrap_or_else(|| panic!("{next} never started a call: {messages:?}"));
    let a_ended = messages[..next_started]
        .iter()
        .any(|l| l.starts_with("sink e-0 ") || l.contains("ran past its deadline"));
    assert!(
        a_ended,
        "{next} called while A's call still ran: {messages:?}"
    );
}

/// A host whose lock goes while it waits to retry a failed call finds out
/// within a heartbeat, and never calls again: the retry would run beside
/// the calls of the host that took over.
#[tokio::test(flavor = "multi_thread")]
async fn a_lock_lost_during_a_retry_backoff_ends_the_retry() {
    use crate::support::proxy::{url_of_via, InjectingProxy};
    logs::install();
    let (url, client) = fresh_database("lost_in_backoff").await;
    let role = "pgnotifier_test_host_in_backoff";
    url_as(&client, &url, role).await;
    let proxy = InjectingProxy::start(crate::support::proxy::database_target()).await;
    let proxied = url_of_via(&url, Some(role), proxy.port, "?sslmode=disable");
    let id = crate::support::channel("backoff");
    let backoff = Duration::from_secs(8);
    let a = notifier_on(&proxied);
    let a_dir = crate::support::temp_dir("durable-backoff-a");
    let sidecar = format!(
        "retry_backoff_ms = {}\n[config]\nlog_start = \"true\"\nfail_attempts = \"1\"\ntag = \"a\"\n",
        backoff.as_millis()
    );
    durable_sink(&a, &a_dir, &id, &sidecar).await;
    feeding(&client, &id).await;
    send_each(&client, "work", "e", 1).await;
    let lines = || sunk_lines(&id);
    assert!(
        eventually(SOON, || lines()
            .iter()
            .any(|l| l.starts_with("sink-start e-0 ")))
        .await,
        "{:?}",
        lines()
    );
    let failed_at = Instant::now();
    // A pooler's reset frees A's feed lock while A waits to retry; A
    // cannot log in again to take it back.
    keep_out(&client, role).await;
    proxy.inject("DISCARD ALL");
    let b = notifier_on(&url);
    let b_dir = crate::support::temp_dir("durable-backoff-b");
    durable_sink(
        &b,
        &b_dir,
        &id,
        "[config]\ntag = \"b\"\nlog_start = \"true\"\n",
    )
    .await;
    assert!(
        eventually(Duration::from_secs(30), || lines()
            .iter()
            .any(|l| l.starts_with("sink-start e-0 ") && l.ends_with(" b")))
        .await,
        "B takes over: {:?}",
        lines()
    );
    // Past the end of A's backoff: its retry would have come by now.
    tokio::time::sleep(
        (failed_at + backoff + Duration::from_secs(1)).saturating_duration_since(Instant::now()),
    )
    .await;
    a.shutdown(SOON).await;
    b.shutdown(SOON).await;
    let retried: Vec<String> = (lines().into_iter())
        .filter(|l| l.starts_with("sink-start e-0 ") && l.ends_with(" a"))
        .skip(1)
        .collect();
    assert_eq!(retried, Vec::<String>::new(), "A retried without its lock");
}

/// The sink's own log lines, in order.
fn sunk_lines(id: &str) -> Vec<String> {
    logs::plugin_messages(id)
}

/// A feeder whose calls are short still looks at its lock every heartbeat:
/// a pooler's reset that frees it ends the session (the feeder then takes
/// the lock again).
#[tokio::test(flavor = "multi_thread")]
async fn a_feed_lock_freed_between_short_calls_is_noticed() {
    use crate::support::proxy::{url_of_via, InjectingProxy};
    logs::install();
    let (url, client) = fresh_database("freed_between").await;
    let proxy = InjectingProxy::start(crate::support::proxy::database_target()).await;
    let proxied = url_of_via(&url, None, proxy.port, "?sslmode=disable");
    let calls: Calls = Default::default();
    let n = notifier_on(&proxied);
    n.subscribe(
        "brief",
        "work",
        recording("a", &calls, Duration::from_millis(5)),
    )
    .unwrap();
    feeding(&client, "brief").await;
    // Events keep coming, so calls keep the feeder busy.
    let sending = {
        let url = url.clone();
        tokio::spawn(async move {
            let sender = connect(&url).await;
            for i in 0..400 {
                send_each(&sender, "work", &format!("s{i}"), 1).await;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    assert!(eventually(SOON, || payloads(&calls).len() >= 20).await);
    // The session ends: mostly at the lock check, now and then earlier,
    // when the reset lands inside a query and drops its prepared statement.
    let ended = || {
        (logs::of("brief").iter())
            .filter(|l| l.message.contains("resuming from the saved position"))
            .count()
    };
    let before = ended();
    proxy.inject("DISCARD ALL");
    let noticed = || ended() > before;
    assert!(
        eventually(SOON, noticed).await,
        "the feeder went on without its lock"
    );
    sending.abort();
    n.shutdown(SOON).await;
}
