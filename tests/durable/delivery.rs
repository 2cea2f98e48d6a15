//! At-least-once subscribers: delivery across restarts and kills,
//! retries, dead letters (also through `ctl`) and pruning.

use crate::support::durable::*;
use crate::support::SOON;

#[tokio::test]
async fn an_at_least_once_subscriber_gets_every_event_across_a_killed_connection_and_a_restart() {
    use pgnotifier::durable::feeder::{SAVE_EVERY, WINDOW};
    use pgnotifier::durable::RetryPolicy;
    let (url, client) = fresh_database("native").await;
    let n = notifier_on(&url);
    let (subscriber, seen) = recording_at_least_once(RetryPolicy::default());
    n.subscribe("sink", "work", subscriber).unwrap();
    feeding(&client, "sink").await;

    send_range(&client, 0..100).await;
    let count = |n: usize| {
        let seen = seen.clone();
        move || {
            seen.lock()
                .unwrap()
                .iter()
                .collect::<std::collections::BTreeSet<_>>()
                .len()
                >= n
        }
    };
    assert!(
        crate::support::eventually(SOON, count(100)).await,
        "{:?}",
        seen.lock().unwrap().len()
    );
    // Every backend of the host: the feeder reconnects and resumes.
    client
        .batch_execute(
            "select pg_terminate_backend(pid) from pg_stat_activity
              where datname = current_database() and pid <> pg_backend_pid()",
        )
        .await
        .unwrap();
    send_range(&client, 100..200).await;
    assert!(crate::support::eventually(SOON, count(200)).await);
    n.shutdown(std::time::Duration::from_secs(5)).await;
    let across_the_kill = assert_all_in_order(&seen.lock().unwrap(), 200);
    assert!(
        across_the_kill < SAVE_EVERY as usize + WINDOW,
        "{across_the_kill} repeats, more than the unsaved window"
    );

    // Sent while no host runs: the next one with the same id gets them, and
    // after a clean shutdown, nothing twice.
    send_range(&client, 200..250).await;
    let again = notifier_on(&url);
    let (subscriber, after) = recording_at_least_once(RetryPolicy::default());
    again.subscribe("sink", "work", subscriber).unwrap();
    let done = {
        let after = after.clone();
        move || after.lock().unwrap().len() >= 50
    };
    assert!(crate::support::eventually(SOON, done).await);
    again.shutdown(std::time::Duration::from_secs(5)).await;
    assert_eq!(*after.lock().unwrap(), (200..250).collect::<Vec<_>>());
}

#[tokio::test]
async fn failures_are_retried_then_dead_lettered_and_delivery_moves_on() {
    use pgnotifier::durable::RetryPolicy;
    let (url, client) = fresh_database("retry").await;
    let n = notifier_on(&url);
    let quick = |max_attempts| RetryPolicy {
        max_attempts,
        backoff: std::time::Duration::from_millis(1),
    };
    // Fails its first two calls of every event. Each call is told which
    // event it has and which attempt this is.
    let calls: std::sync::Arc<std::sync::Mutex<std::collections::BTreeMap<String, u32>>> =
        Default::default();
    let told: std::sync::Arc<std::sync::Mutex<Vec<(String, i64, u32)>>> = Default::default();
    let (counted, noted) = (calls.clone(), told.clone());
    let flaky = pgnotifier::Subscriber::native(move |_, _, payload, _| {
        let count = {
            let mut calls = counted.lock().unwrap();
            let count = calls.entry(format!("{payload:?}")).or_default();
            *count += 1;
            *count
        };
        if let Some(event) = pgnotifier::current_event() {
            noted
                .lock()
                .unwrap()
                .push((format!("{payload:?}"), event.id, event.attempt));
        }
        // Panics outside the lock, which stays usable.
        assert!(count > 2, "attempt {count} fails");
    })
    .failure_threshold(0)
    .at_least_once(quick(5));
    let broken = pgnotifier::Subscriber::native(|_, _, _, _| panic!("always broken"))
        .failure_threshold(0)
        .at_least_once(quick(3));
    n.subscribe("flaky", "work", flaky).unwrap();
    n.subscribe("broken", "work", broken).unwrap();
    feeding(&client, "flaky").await;
    feeding(&client, "broken").await;
    send_range(&client, 0..10).await;

    let dead_letters = || async {
        (client.query(
            "select subscriber, attempts, error from pgnotifier.dead_letters order by id",
            &[],
        ))
        .await
        .unwrap()
    };
    let deadline = std::time::Instant::now() + SOON;
    while dead_letters().await.len() < 10 {
        assert!(
            std::time::Instant::now() < deadline,
            "dead letters: {}",
            dead_letters().await.len()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // The counts show in the subscribers' views and the metrics.
    let durable_of = |id: &str| {
        (n.subscribers().into_iter())
            .find(|s| s.id == id)
            .and_then(|s| s.durable)
            .unwrap_or_else(|| panic!("{id} is at-least-once"))
    };
    let broken = durable_of("broken");
    assert_eq!(
        (broken.retries, broken.dead_letters),
        (20, 10),
        "{broken:?}"
    );
    let metrics = n.metrics();
    assert!(
        metrics.contains("pgnotifier_subscriber_dead_letters_total{subscriber=\"broken\"} 10"),
        "{metrics}"
    );
    for row in dead_letters().await {
        assert_eq!(row.get::<_, String>(0), "broken");
        assert_eq!(row.get::<_, i32>(1), 3);
        assert!(row.get::<_, String>(2).contains("always broken"));
    }
    let deadline = std::time::Instant::now() + SOON;
    while calls.lock().unwrap().values().filter(|c| **c == 3).count() < 10 {
        assert!(
            std::time::Instant::now() < deadline,
            "{:?}",
            calls.lock().unwrap()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let flaky = durable_of("flaky");
    assert_eq!((flaky.retries, flaky.dead_letters), (20, 0), "{flaky:?}");
    n.shutdown(std::time::Duration::from_secs(5)).await;
    assert!(
        calls.lock().unwrap().values().all(|c| *c == 3),
        "each event succeeded at its third call, once: {:?}",
        calls.lock().unwrap()
    );
    // The subscriber saw each event's outbox id, the same on every attempt,
    // with the attempts counted 1, 2, 3.
    let outbox: std::collections::BTreeMap<String, i64> = (client
        .query("select payload, id from pgnotifier.outbox", &[]))
    .await
    .unwrap()
    .iter()
    .map(|row| {
        (
            format!(
                "{:?}",
                pgnotifier::Payload::Integer(row.get::<_, String>(0).parse().unwrap())
            ),
            row.get(1),
        )
    })
    .collect();
    let told = told.lock().unwrap();
    assert_eq!(told.len(), 30, "{told:?}");
    for (payload, id) in &outbox {
        let attempts: Vec<u32> = (told.iter())
            .filter(|(p, _, _)| p == payload)
            .map(|(_, seen, attempt)| {
                assert_eq!(seen, id, "{payload}");
                *attempt
            })
            .collect();
        assert_eq!(attempts, [1, 2, 3], "{payload}");
    }
}

#[tokio::test]
async fn a_plugin_whose_sidecar_says_at_least_once_gets_events_sent_while_it_was_away() {
    use crate::support::wat::{Notify, WatPlugin};
    crate::support::logs::install();
    let (url, client) = fresh_database("plugin").await;
    let dir = crate::support::temp_dir("durable-plugin");
    let id = crate::support::channel("durable_echo");
    WatPlugin::new(&["work"], Notify::Echo).write(&dir, &id);
    std::fs::write(
        dir.join(format!("{id}.toml")),
        "delivery = \"at-least-once\"\nretry_backoff_ms = 5\n",
    )
    .unwrap();
    let n = notifier_on(&url);
    n.load_plugins(&dir)
        .await
        .unwrap()
        .into_iter()
        .for_each(|(_, r)| {
            r.unwrap();
        });
    feeding(&client, &id).await;
    n.shutdown(std::time::Duration::from_secs(5)).await;
    // Sent while no host runs.
    client
        .batch_execute("select pgnotifier.send('work', 'while away')")
        .await
        .unwrap();
    let again = notifier_on(&url);
    again.load_plugins(&dir).await.unwrap();
    let got = || crate::support::logs::plugin_messages(&id).contains(&"while away".to_owned());
    assert!(
        crate::support::eventually(SOON, got).await,
        "{:?}",
        crate::support::logs::plugin_messages(&id)
    );
    again.shutdown(std::time::Duration::from_secs(5)).await;
}

/// `pgnotifier run` killed with SIGKILL mid-stream and started again: every
/// event reaches the plugin, repeats bounded by the unsaved window.
#[tokio::test]
async fn a_host_killed_with_sigkill_redelivers_from_its_position_and_loses_nothing() {
    use crate::support::host::Host;
    use crate::support::wat::{Notify, WatPlugin};
    use pgnotifier::durable::feeder::{SAVE_EVERY, WINDOW};
    let (url, client) = fresh_database("sigkill").await;
    let plugins = crate::support::temp_dir("durable-sigkill");
    let id = "durable_sink";
    // Slow enough per call that the kill lands mid-stream.
    WatPlugin::new(&["work"], Notify::Burn(3_000_000)).write(&plugins, id);
    let sidecar = plugins.join(format!("{id}.toml"));
    std::fs::write(sidecar, "delivery = 'at-least-once'\n").unwrap();
    let token = |i: usize| format!("<{i}>");
    let count = |output: &str, i: usize| {
        let token = token(i);
        (output.lines())
            .filter(|l| l.contains(&token) && l.contains("subscriber=durable_sink"))
            .count()
    };

    let first = Host::run(&plugins, &url);
    first.wait_for(&["plugin loaded", "subscriber=durable_sink"]);
    feeding(&client, id).await;
    for start in (0..300).step_by(10) {
        let values: Vec<String> = (start..start + 10)
            .map(|i| format!("pgnotifier.send('work', '{}')", token(i)))
            .collect();
        let sql = format!("begin; select {}; commit", values.join(", "));
        client.batch_execute(&sql).await.unwrap();
    }
    first.wait_for(&[&token(100), "subscriber=durable_sink"]);
    first.signal("KILL");
    let (status, before) = first.wait();
    assert!(!status.success(), "killed: {status}");
    assert_eq!(count(&before, 299), 0, "the kill came mid-stream");

    let second = Host::run(&plugins, &url);
    second.wait_for(&["plugin loaded", "subscriber=durable_sink"]);
    second.wait_for_within(SOON, &[&token(299), "subscriber=durable_sink"]);
    let after = second.stop();
    let mut repeats = 0;
    for i in 0..300 {
        let total = count(&before, i) + count(&after, i);
        assert!(total >= 1, "event {i} never arrived:\n{after}");
        repeats += total - 1;
    }
    assert!(
        repeats < SAVE_EVERY as usize + WINDOW,
        "{repeats} repeats, more than the unsaved window"
    );
}

/// Dead letters through `ctl`: listed, delivered again once the plugin is
/// fixed (and then gone), and a subscriber skipped past what it missed.
#[tokio::test]
async fn dead_letters_are_listed_redelivered_and_a_subscriber_skipped_through_ctl() {
    use crate::support::host::{ctl_json, ctl_ok, Host};
    use crate::support::wat::{Notify, WatPlugin};
    let (url, client) = fresh_database("ctl").await;
    let dir = crate::support::temp_dir("durable-ctl");
    let plugins = dir.join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    let config = dir.join("pgnotifier.toml");
    std::fs::write(
        &config,
        format!(
            "database_url = {url:?}\nplugins = {:?}\ndata_dir = {:?}\nadmin_addr = \"127.0.0.1:0\"\nwatch_debounce_ms = 25\n",
            plugins.display().to_string(),
            dir.join("data").display().to_string(),
        ),
    )
    .unwrap();
    let id = "letters";
    std::fs::write(
        plugins.join(format!("{id}.toml")),
        "delivery = 'at-least-once'\nretry_max_attempts = 2\nretry_backoff_ms = 1\nfailure_threshold = 0\n",
    )
    .unwrap();
    WatPlugin::new(&["work"], Notify::Fail).write(&plugins, id);
    let host = Host::with_config(&config);
    host.wait_for(&["plugin loaded", "subscriber=letters"]);
    feeding(&client, id).await;
    client
        .batch_execute("select pgnotifier.send('work', 'first'), pgnotifier.send('work', 'second')")
        .await
        .unwrap();
    let letters = crate::support::until(
        SOON,
        || host.output(),
        || {
            let letters = ctl_json(&config, &["dead-letters"]);
            (letters.as_array().map_or(0, Vec::len) == 2).then_some(letters)
        },
    );
    for (letter, payload) in letters.as_array().unwrap().iter().zip(["first", "second"]) {
        assert_eq!(letter["subscriber"], id);
        assert_eq!(letter["payload"], payload);
        assert_eq!(letter["attempts"], 2);
        assert!(
            letter["error"].as_str().unwrap().contains("nope"),
            "{letter}"
        );
    }
    let table = ctl_ok(&config, &["dead-letters"]);
    assert!(
        table.contains("ATTEMPTS") && table.contains("letters"),
        "{table}"
    );

    // Fixed, and the first letter delivered again: it arrives, and is gone.
    WatPlugin::new(&["work"], Notify::Echo).write(&plugins, id);
    host.wait_for(&["plugin reloaded", "subscriber=letters"]);
    let first = letters[0]["id"].to_string();
    ctl_ok(&config, &["redeliver", &first]);
    host.wait_for(&["first", "subscriber=letters"]);
    crate::support::until(
        SOON,
        || host.output(),
        || {
            let left = ctl_json(&config, &["dead-letters"]);
            let left: Vec<&str> = left
                .as_array()
                .unwrap()
                .iter()
                .map(|l| l["payload"].as_str().unwrap())
                .collect();
            (left == ["second"]).then_some(())
        },
    );
    let missing = crate::support::host::ctl(&config, &["redeliver", "999999"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no dead letter 999999"));

    // The second discarded: it is gone, and not delivered.
    let second = letters[1]["id"].to_string();
    let discarded = ctl_json(&config, &["discard", &second]);
    assert_eq!(discarded[0]["payload"], "second", "{discarded}");
    let left = ctl_json(&config, &["dead-letters"]);
    assert_eq!(left.as_array().map(Vec::len), Some(0), "{left}");
    let missing = crate::support::host::ctl(&config, &["discard", &second]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains(&format!("no dead letter {second}")));

    // Muted, it keeps its position; skipped, what was sent meanwhile is passed over.
    ctl_ok(&config, &["mute-subscriber", id]);
    client
        .batch_execute("select pgnotifier.send('work', 'while muted')")
        .await
        .unwrap();
    ctl_ok(&config, &["skip", id]);
    ctl_ok(&config, &["unmute-subscriber", id]);
    client
        .batch_execute("select pgnotifier.send('work', 'after the skip')")
        .await
        .unwrap();
    host.wait_for(&["after the skip", "subscriber=letters"]);
    let output = host.stop();
    assert!(!output.contains("while muted"), "{output}");
}

/// A subscriber failing the first two calls of some events, while events
/// are queued a window at a time: every event succeeds once, and in order,
/// so none after a failing one is called before it succeeds.
#[tokio::test]
async fn retries_keep_the_order_while_events_are_queued_a_window_at_a_time() {
    use pgnotifier::durable::RetryPolicy;
    let (url, client) = fresh_database("order").await;
    let n = notifier_on(&url);
    let calls: std::sync::Arc<std::sync::Mutex<std::collections::BTreeMap<usize, u32>>> =
        Default::default();
    let (counted, delivered) = (calls.clone(), Seen::default());
    let sink = delivered.clone();
    let subscriber = pgnotifier::Subscriber::native(move |_, _, payload, _| {
        let pgnotifier::Payload::Text(text) = payload else {
            return;
        };
        let i: usize = text.parse().expect("a number");
        let count = {
            let mut calls = counted.lock().unwrap();
            let count = calls.entry(i).or_default();
            *count += 1;
            *count
        };
        // Some events fail twice; those after them must wait.
        assert!(i % 7 != 3 || count > 2, "attempt {count} fails");
        sink.lock().unwrap().push(i);
    })
    .payload_mode(pgnotifier::PayloadMode::Raw)
    .failure_threshold(0)
    .at_least_once(RetryPolicy {
        max_attempts: 5,
        backoff: std::time::Duration::from_millis(1),
    });
    n.subscribe("ordered", "work", subscriber).unwrap();
    feeding(&client, "ordered").await;
    send_range(&client, 0..300).await;
    let done = {
        let delivered = delivered.clone();
        move || delivered.lock().unwrap().len() >= 300
    };
    assert!(
        crate::support::eventually(SOON, done).await,
        "{} delivered",
        delivered.lock().unwrap().len()
    );
    n.shutdown(std::time::Duration::from_secs(5)).await;
    assert_eq!(*delivered.lock().unwrap(), (0..300).collect::<Vec<_>>());
    let calls = calls.lock().unwrap();
    let expected = |i: usize| if i % 7 == 3 { 3 } else { 1 };
    assert!(
        calls.iter().all(|(i, c)| *c == expected(*i)),
        "each failing event at its third call, the others at their first: {calls:?}"
    );
}

#[tokio::test]
async fn pruning_leaves_every_event_a_subscriber_still_needs_and_tells_of_what_age_removed() {
    use pgnotifier::durable::RetryPolicy;
    use std::sync::{Arc, Mutex};
    let (url, client) = fresh_database("prune").await;
    let n = notifier_on(&url);
    let recorder = |seen: &Arc<Mutex<Vec<String>>>| {
        let seen = seen.clone();
        move |_: &str, _: &str, payload: &pgnotifier::Payload, _: i32| {
            seen.lock().unwrap().push(format!("{payload:?}"));
        }
    };
    let fast: Arc<Mutex<Vec<String>>> = Default::default();
    let slow: Arc<Mutex<Vec<String>>> = Default::default();
    let gaps: Arc<Mutex<Vec<pgnotifier::Gap>>> = Default::default();
    let told = gaps.clone();
    n.subscribe(
        "fast",
        "work",
        pgnotifier::Subscriber::native(recorder(&fast)).at_least_once(RetryPolicy::default()),
    )
    .unwrap();
    n.subscribe(
        "slow",
        "work",
        pgnotifier::Subscriber::native(recorder(&slow))
            .on_gap(move |_, _| {
                told.lock()
                    .unwrap()
                    .push(pgnotifier::current_gap().unwrap())
            })
            .at_least_once(RetryPolicy::default()),
    )
    .unwrap();
    // Both positions name their channels before the slow one stops.
    let deadline = std::time::Instant::now() + SOON;
    loop {
        let named: i64 = (client.query_one(
            "select count(*) from pgnotifier.positions where channels = '{work}'",
            &[],
        ))
        .await
        .map_or(0, |row| row.get(0));
        if named == 2 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "positions: {named} of 2 named"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    n.mute_subscriber("slow", pgnotifier::Selection::All)
        .unwrap();
    send_range(&client, 0..20).await;
    client
        .batch_execute("select pgnotifier.send('nobody', 'x') from generate_series(1, 5)")
        .await
        .unwrap();
    let got_all = |seen: &Arc<Mutex<Vec<String>>>, count: usize| {
        let seen = seen.clone();
        move || seen.lock().unwrap().len() >= count
    };
    assert!(crate::support::eventually(SOON, got_all(&fast, 20)).await);

    // Its lag shows, counted while it is muted.
    let lag = || {
        (n.subscribers().into_iter())
            .find(|s| s.id == "slow")
            .and_then(|s| s.durable)
            .unwrap()
    };
    assert!(
        crate::support::eventually(SOON, || lag().lag_events == 20).await,
        "{:?}",
        lag()
    );
    assert!(lag().lag_ms > 0, "{:?}", lag());
    // The slow subscriber still needs every `work` event: only `nobody`'s go.
    let pruned = prune_until(&n, 5).await;
    assert_eq!((pruned.passed, pruned.expired), (5, 0));
    assert_eq!(outbox_count(&client, "nobody").await, 0);
    assert_eq!(outbox_count(&client, "work").await, 20);

    // Back, it catches up on all of them; then they are passed by both.
    n.unmute_subscriber("slow", pgnotifier::Selection::All)
        .unwrap();
    assert!(crate::support::eventually(SOON, got_all(&slow, 20)).await);
    let pruned = prune_until(&n, 20).await;
    assert_eq!(pruned.expired, 0);
    assert_eq!(outbox_count(&client, "work").await, 0);
    let stamps: i64 = (client.query_one("select count(*) from pgnotifier.commits", &[]))
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        stamps, 0,
        "the stamps of transactions whose events are all gone go too"
    );

    // Removed by age before the slow one had them: a gap event says so.
    n.mute_subscriber("slow", pgnotifier::Selection::All)
        .unwrap();
    send_range(&client, 100..103).await;
    assert!(crate::support::eventually(SOON, got_all(&fast, 23)).await);
    let ageing =
        pgnotifier::Notifier::builder(pgnotifier::DatabaseSettings::from_url(&url).unwrap())
            .outbox_retention(std::time::Duration::ZERO)
            .build();
    let pruned = ageing.prune_outbox().await.unwrap().unwrap();
    assert_eq!(pruned.passed + pruned.expired, 3, "{pruned:?}");
    n.unmute_subscriber("slow", pgnotifier::Selection::All)
        .unwrap();
    assert!(crate::support::eventually(SOON, || !gaps.lock().unwrap().is_empty()).await);
    n.shutdown(std::time::Duration::from_secs(5)).await;
    let gaps = gaps.lock().unwrap();
    assert_eq!(gaps.len(), 1, "{gaps:?}");
    assert_eq!(&*gaps[0].channels, ["work".to_owned()]);
    assert_eq!(gaps[0].cause, pgnotifier::GapCause::Pruned(3));
    assert!(gaps[0].lost_at.is_some_and(|at| at <= gaps[0].resumed_at));
    assert_eq!(
        slow.lock().unwrap().len(),
        20,
        "the pruned events never came"
    );
}

// Faults during a stream: eight producers send at random (transactions of
// one to four events, some held open, some rolled back) to the durable sink
// plugin, while something goes wrong. Each test ends with every committed
// event delivered, none rolled back, in order, and duplicates within the
// stated redelivery window.
