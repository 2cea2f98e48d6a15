//! A throwaway PostgreSQL cluster, as tests and the demo start when no server is running.

use crate::support::{count, eventually, recorder, SOON};
use pgnotifier::{DatabaseSettings, Notifier};
use pgnotifier_app::local_pg::Cluster;
use std::time::Duration;

#[tokio::test]
async fn a_throwaway_cluster_starts_serves_notifications_and_is_removed() {
    let cluster = tokio::task::spawn_blocking(Cluster::start)
        .await
        .unwrap()
        .expect("start a throwaway cluster");
    let url = cluster.url().to_owned();
    let port = cluster.port();
    assert_ne!(port, 5432);

    let n = Notifier::new(DatabaseSettings::from_url(&url).unwrap());
    let (s, seen) = recorder();
    n.subscribe("s", "throwaway", s).unwrap();
    crate::support::listen(&n).await;
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
        .execute("select pg_notify('throwaway', 'hi')", &[])
        .await
        .unwrap();
    assert!(eventually(SOON, || count(&seen) == 1).await);
    n.shutdown(Duration::from_secs(5)).await;
    drop(client);

    tokio::task::spawn_blocking(move || drop(cluster))
        .await
        .unwrap();
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the server is stopped"
    );
    assert!(pgnotifier_app::local_pg::probe(&url).is_err());
}
