//! Streams from eight producers to the durable sink plugin, each under a
//! fault: every committed event arrives, in order, repeats bounded. Each
//! runs on both transports (`name::outbox`, `name::wal`).

use crate::support::durable::*;
use crate::support::SOON;
use pgnotifier::durable::schema;
use tokio_postgres::NoTls;

crate::on_both_transports!(
    a_stream_from_eight_producers_reaches_a_durable_plugin_complete_in_order_and_once,
    a_stream_survives_its_backends_terminated_twice,
    a_stream_survives_postgresql_stopped_and_started,
    a_stream_survives_two_hot_reloads_of_the_plugin,
    a_stream_reaches_a_plugin_that_fails_the_first_two_attempts_at_every_event,
    a_stream_survives_pgnotifier_run_killed_with_sigkill_and_started_again,
);

async fn a_stream_from_eight_producers_reaches_a_durable_plugin_complete_in_order_and_once(
    via: Via,
) {
    let (url, client, n, _, id) = sink_stream(via, "stream", "").await;
    let produced = produce(&url, 25).finish().await;
    via.arrived(&client, &produced).await;
    let got = check_stream(&client, || sunk(&id), &produced, 0).await;
    assert!(
        got.iter().all(|(_, _, attempt)| *attempt == 1),
        "no retries"
    );
    n.shutdown(std::time::Duration::from_secs(5)).await;
}

async fn a_stream_survives_its_backends_terminated_twice(via: Via) {
    let (url, client, n, _, id) = sink_stream(via, "terminated", "").await;
    crate::support::listen(&n).await;
    let stream = produce(&url, 30);
    for _ in 0..2 {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let killed: i64 = client
            .query_one(
                "select count(pg_terminate_backend(pid)) from pg_stat_activity
                  where datname = current_database() and pid <> pg_backend_pid()
                    and application_name = 'pgnotifier'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert!(
            killed >= 1,
            "the listener's and the feeder's backends: {killed}"
        );
    }
    let produced = stream.finish().await;
    via.arrived(&client, &produced).await;
    check_stream(&client, || sunk(&id), &produced, 2 * WINDOW).await;
    n.shutdown(std::time::Duration::from_secs(5)).await;
}

async fn a_stream_survives_postgresql_stopped_and_started(via: Via) {
    crate::support::logs::install();
    // A server of its own, to restart.
    let settings: &[(&str, &str)] = match via {
        Via::Outbox => &[],
        Via::Wal => &[("wal_level", "logical")],
    };
    let cluster = tokio::task::spawn_blocking(move || {
        pgnotifier_app::local_pg::Cluster::start_with(settings)
    })
    .await
    .unwrap()
    .expect("a throwaway PostgreSQL");
    let url = cluster.url().to_owned();
    let (mut client, connection) = tokio_postgres::connect(&url, NoTls).await.unwrap();
    tokio::spawn(connection);
    schema::install(&mut client).await.unwrap();
    let name = via.name("restarted");
    let n = via.notifier(&url, &name);
    let dir = crate::support::temp_dir(&format!("durable-{name}"));
    let id = crate::support::channel(&format!("sink_{name}"));
    durable_sink(&n, &dir, &id, "").await;
    n.start().await.unwrap();
    feeding(&client, &id).await;
    via.ready(&client).await;
    let stream = produce(&url, 40);
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    cluster.stop_server().unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    cluster.start_server().unwrap();
    let produced = stream.finish().await;
    let (client, connection) = tokio_postgres::connect(&url, NoTls).await.unwrap();
    tokio::spawn(connection);
    via.arrived(&client, &produced).await;
    check_stream(&client, || sunk(&id), &produced, WINDOW).await;
    n.shutdown(std::time::Duration::from_secs(5)).await;
}

async fn a_stream_survives_two_hot_reloads_of_the_plugin(via: Via) {
    let (url, client, n, dir, id) = sink_stream(via, "reloaded", "").await;
    let _watcher = n.watch_plugins(&dir).await.unwrap();
    let loads =
        || crate::support::host::parse_metrics(&n.metrics())["pgnotifier_plugin_loads_total"];
    let stream = produce(&url, 30);
    for reload in 1..=2 {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let before = loads();
        let sidecar = dir.join(format!("{id}.toml"));
        let text = std::fs::read_to_string(&sidecar).unwrap();
        std::fs::write(&sidecar, format!("{text}# reload {reload}\n")).unwrap();
        assert!(
            crate::support::eventually(SOON, || loads() > before).await,
            "reload {reload}"
        );
    }
    let produced = stream.finish().await;
    via.arrived(&client, &produced).await;
    check_stream(&client, || sunk(&id), &produced, 2 * WINDOW).await;
    n.shutdown(std::time::Duration::from_secs(5)).await;
}

async fn a_stream_reaches_a_plugin_that_fails_the_first_two_attempts_at_every_event(via: Via) {
    let (url, client, n, _, id) =
        sink_stream(via, "failing", "[config]\nfail_attempts = \"2\"\n").await;
    let produced = produce(&url, 15).finish().await;
    via.arrived(&client, &produced).await;
    let got = check_stream(&client, || sunk(&id), &produced, 0).await;
    assert!(
        got.iter().all(|(_, _, attempt)| *attempt == 3),
        "each event succeeded at its third attempt, and the plugin was told so"
    );
    n.shutdown(std::time::Duration::from_secs(5)).await;
}

async fn a_stream_survives_pgnotifier_run_killed_with_sigkill_and_started_again(via: Via) {
    use crate::support::host::{write_config, Host};
    crate::support::logs::install();
    let name = via.name("killed");
    let (url, client) = fresh_database_on(via.server(), &name).await;
    let plugins = crate::support::temp_dir(&format!("durable-{name}"));
    let id = "sink_killed";
    std::fs::copy(
        crate::support::test_plugin("durable-sink"),
        plugins.join(format!("{id}.wasm")),
    )
    .unwrap();
    std::fs::write(
        plugins.join(format!("{id}.toml")),
        "delivery = \"at-least-once\"\nretry_backoff_ms = 1\n",
    )
    .unwrap();
    let config = write_config(
        &crate::support::temp_dir(&format!("durable-{name}-config")),
        &plugins,
        &crate::support::temp_dir("data"),
        &format!("database_url = {url:?}\n{}", via.config(&name)),
    );
    let first = Host::with_config(&config);
    first.wait_for(&["plugin loaded", "subscriber=sink_killed"]);
    feeding(&client, id).await;
    via.ready(&client).await;
    let stream = produce(&url, 40);
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    first.signal("KILL");
    let (status, before) = first.wait();
    assert!(!status.success(), "killed: {status}");
    let second = Host::with_config(&config);
    second.wait_for(&["plugin loaded", "subscriber=sink_killed"]);
    let produced = stream.finish().await;
    via.arrived(&client, &produced).await;
    let both = || {
        let mut all = sunk_in(&before, id);
        all.extend(sunk_in(&second.output(), id));
        all
    };
    check_stream(&client, both, &produced, WINDOW).await;
    assert!(
        !sunk_in(&before, id).is_empty(),
        "the first host delivered some"
    );
    second.stop();
}
