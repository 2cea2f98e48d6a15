//! Two dispatchers at once: a leader that stood down, `ctl skip` on a
//! standby, one subscriber id on two hosts, a reload that changes the
//! retry policy, and a feed lock a pooler's reset freed.

use super::*;

/// No call of one host runs while a call of the other does, for the same
/// subscriber: the pairs that overlap.
fn overlaps(calls: &[Call]) -> Vec<(Call, Call)> {
    let mut found = Vec::new();
    for a in calls {
        for b in calls {
            if a.host < b.host && a.started < b.ended && b.started < a.ended {
                found.push((a.clone(), b.clone()));
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread")]
async fn a_leader_that_stands_down_stops_at_the_next_event_and_no_event_is_in_two_calls() {
    logs::install();
    let (url, client) = fresh_database("stand_down").await;
    let name = crate::support::channel("cluster");
    let calls: Calls = Default::default();
    let a = in_cluster(&url, &name);
    a.subscribe(
        "sink",
        "work",
        recording("a", &calls, Duration::from_millis(10)),
    )
    .unwrap();
    crate::support::listen(&a).await;
    assert!(
        eventually(SOON, || a.cluster().role
            == pgnotifier::cluster::Role::Leader)
        .await
    );
    let b = in_cluster(&url, &name);
    b.subscribe(
        "sink",
        "work",
        recording("b", &calls, Duration::from_millis(10)),
    )
    .unwrap();
    b.start().await.unwrap();
    feeding(&client, "sink").await;
    send_range(&client, 0..300).await;
    assert!(eventually(SOON, || payloads(&calls).len() >= 20).await);
    // The leader's LISTEN connection, and with it its leadership, goes.
    let pid = a.backend_pid().expect("the leader is connected");
    client
        .execute("select pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap();
    let all_in = || {
        let got: std::collections::BTreeSet<String> = payloads(&calls).into_iter().collect();
        (0..300).all(|i| got.contains(&i.to_string()))
    };
    assert!(eventually(SOON, all_in).await, "every event delivered");
    a.shutdown(SOON).await;
    b.shutdown(SOON).await;
    let calls = calls.lock().unwrap().clone();
    assert_eq!(overlaps(&calls).len(), 0, "{:?}", overlaps(&calls).first());
    let first_of_b = calls
        .iter()
        .filter(|c| c.host == "b")
        .map(|c| c.started)
        .min();
    let first_of_b = first_of_b.expect("b took over");
    let late = calls
        .iter()
        .filter(|c| c.host == "a" && c.ended > first_of_b)
        .count();
    assert_eq!(
        late, 0,
        "the old leader called nothing once the new one began"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn skip_stops_at_the_next_event_and_a_standby_refuses_it_naming_the_leader() {
    let (url, client) = fresh_database("skip").await;
    let name = crate::support::channel("cluster");
    let calls: Calls = Default::default();
    let a = in_cluster(&url, &name);
    a.subscribe(
        "sink",
        "work",
        recording("a", &calls, Duration::from_millis(50)),
    )
    .unwrap();
    crate::support::listen(&a).await;
    assert!(
        eventually(SOON, || a.cluster().role
            == pgnotifier::cluster::Role::Leader)
        .await
    );
    let b = in_cluster(&url, &name);
    b.subscribe("sink", "work", recording("b", &calls, Duration::ZERO))
        .unwrap();
    b.start().await.unwrap();
    assert!(eventually(SOON, || b.cluster().leader.is_some()).await);
    let refused = b.skip_ahead("sink").await.unwrap_err().to_string();
    let leader = b.cluster().leader.unwrap();
    assert!(
        refused.contains("standby") && refused.contains(&leader),
        "{refused}"
    );

    feeding(&client, "sink").await;
    send_range(&client, 0..300).await;
    assert!(eventually(SOON, || payloads(&calls).len() >= 5).await);
    let before = payloads(&calls).len();
    a.skip_ahead("sink").await.unwrap();
    let after = payloads(&calls).len();
    assert!(
        after - before <= 2,
        "{} calls while skipping: only the one in progress may finish",
        after - before
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(payloads(&calls).len(), after, "the rest is skipped");
    a.shutdown(SOON).await;
    b.shutdown(SOON).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn one_subscriber_id_on_two_hosts_outside_a_cluster_is_fed_by_one() {
    logs::install();
    let (url, client) = fresh_database("twins").await;
    let calls: Calls = Default::default();
    let a = notifier_on(&url);
    let b = notifier_on(&url);
    a.subscribe("twin", "work", recording("a", &calls, Duration::ZERO))
        .unwrap();
    b.subscribe("twin", "work", recording("b", &calls, Duration::ZERO))
        .unwrap();
    feeding(&client, "twin").await;
    send_range(&client, 0..100).await;
    assert!(eventually(SOON, || payloads(&calls).len() >= 100).await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut got = payloads(&calls);
    got.sort_by_key(|p| p.parse::<u32>().unwrap());
    let expected: Vec<String> = (0..100).map(|i| i.to_string()).collect();
    assert_eq!(got, expected, "each event once, by one of them");
    let elsewhere = |n: &Notifier| {
        (n.subscribers().into_iter())
            .find(|s| s.id == "twin")
            .and_then(|s| s.durable)
            .is_some_and(|d| d.fed_elsewhere)
    };
    assert!(
        eventually(SOON, || elsewhere(&a) != elsewhere(&b)).await,
        "exactly one says another host feeds it"
    );
    assert!(
        logs::errors()
            .iter()
            .any(|l| l.contains("already feeds this subscriber")),
        "{:?}",
        logs::errors()
    );
    // The one that feeds goes away: the other takes over, from its position.
    let (feeding, other) = if elsewhere(&a) { (b, a) } else { (a, b) };
    feeding.shutdown(SOON).await;
    send_range(&client, 100..110).await;
    assert!(
        eventually(SOON, || payloads(&calls).len() >= 110).await,
        "{} delivered",
        payloads(&calls).len()
    );
    assert!(eventually(SOON, || !elsewhere(&other)).await);
    other.shutdown(SOON).await;
    let mut got = payloads(&calls);
    got.sort_by_key(|p| p.parse::<u32>().unwrap());
    let expected: Vec<String> = (0..110).map(|i| i.to_string()).collect();
    assert_eq!(got, expected, "each event once");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reload_that_changes_the_retry_policy_starts_no_second_feeder() {
    crate::support::logs::install();
    let (url, client) = fresh_database("reload_retry").await;
    let n = notifier_on(&url);
    let dir = crate::support::temp_dir("durable-reload-retry");
    let id = crate::support::channel("sink_retry");
    durable_sink(
        &n,
        &dir,
        &id,
        "retry_max_attempts = 5\n[config]\nspin = \"2000\"\n",
    )
    .await;
    feeding(&client, &id).await;
    send_each(&client, "work", "e", 200).await;
    assert!(eventually(SOON, || sunk(&id).len() >= 5).await);
    std::fs::write(
        dir.join(format!("{id}.toml")),
        "delivery = \"at-least-once\"\nretry_backoff_ms = 1\nfailure_threshold = 0\nretry_max_attempts = 6\n[config]\nspin = \"2000\"\n",
    )
    .unwrap();
    n.reload_plugin(&id).await.unwrap();
    assert!(eventually(SOON, || sunk(&id).len() >= 200).await);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = sunk(&id);
    let distinct: std::collections::BTreeSet<&str> = got.iter().map(|(p, _, _)| &**p).collect();
    assert_eq!(distinct.len(), 200);
    assert_eq!(
        got.len(),
        200,
        "no event twice: one feeder, before and after"
    );
    n.shutdown(SOON).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_leader_whose_lock_a_pooler_reset_freed_stands_down() {
    use crate::support::proxy::{database_target, url_via, InjectingProxy};
    use pgnotifier::cluster::Role;
    logs::install();
    let proxy = InjectingProxy::start(database_target()).await;
    let name = crate::support::channel("cluster");
    // In the clear, so the proxy can read the protocol.
    let a = in_cluster(&url_via(proxy.port, "?sslmode=disable"), &name);
    a.start().await.unwrap();
    assert!(eventually(SOON, || a.cluster().role == Role::Leader).await);
    let b = in_cluster(crate::support::database_url(), &name);
    b.start().await.unwrap();
    assert!(eventually(SOON, || b.cluster().leader.is_some()).await);
    assert_eq!(b.cluster().role, Role::Standby);
    // A pooler's reset on the leader's connection: the lock goes, the
    // connection stays.
    proxy.inject("DISCARD ALL");
    assert!(
        eventually(SOON, || a.cluster().role == Role::Standby).await,
        "the old leader still leads"
    );
    assert!(eventually(SOON, || b.cluster().role == Role::Leader).await);
    a.shutdown(SOON).await;
    b.shutdown(SOON).await;
}
