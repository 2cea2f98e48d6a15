//! The listener: LISTEN by difference on one connection, quoted identifiers.

use crate::support::{channel, count, eventually, recorder, Sender, SOON};
use pgnotifier::channel::ChannelNameError;
use pgnotifier::registry::RegistryError;
use pgnotifier::{Error, Notifier, Payload};
use std::time::Duration;

/// Notifications on A keep arriving, all of them, in order, on the same
/// connection, while B is subscribed and unsubscribed over and over.
#[tokio::test]
async fn changing_channels_never_reconnects_and_loses_nothing() {
    let (n, a, seen_a) = crate::support::recording("a", "steady").await;
    let b = channel("churn");
    let pid = n.backend_pid().expect("connected");

    const SENT: usize = 400;
    let a_clone = a.clone();
    let stream = tokio::spawn(async move {
        let sender = Sender::connect().await;
        for i in 0..SENT {
            sender.notify(&a_clone, &i.to_string()).await;
        }
    });
    let sender = Sender::connect().await;
    let (sb, seen_b) = recorder();
    n.subscribe("b", b.as_str(), sb).unwrap();
    for round in 0..15 {
        n.wait_until_listening(SOON).await.unwrap();
        assert!(n.listening().contains(&b));
        sender.notify(&b, &format!("round {round}")).await;
        assert!(
            eventually(SOON, || count(&seen_b) == round + 1).await,
            "B round {round} delivered"
        );
        n.unsubscribe("b", b.as_str()).unwrap();
        n.wait_until_listening(SOON).await.unwrap();
        assert!(!n.listening().contains(&b));
        n.subscribe_to("b", b.as_str()).unwrap();
    }
    stream.await.unwrap();
    assert!(
        eventually(SOON, || count(&seen_a) == SENT).await,
        "all of A delivered"
    );
    let got: Vec<_> = seen_a
        .lock()
        .unwrap()
        .iter()
        .map(|r| r.payload.clone())
        .collect();
    let want: Vec<_> = (0..SENT as i64).map(Payload::Integer).collect();
    assert_eq!(got, want, "A arrived complete and in order");
    assert_eq!(
        n.backend_pid(),
        Some(pid),
        "the connection was never replaced"
    );
    n.shutdown(Duration::from_secs(5)).await;
}

/// Names that need quoting reach exactly their own subscribers.
#[tokio::test]
async fn channel_names_are_quoted_and_escaped() {
    let n = Notifier::new(crate::support::database());
    let suffix = channel("");
    let names: Vec<String> = [
        "we\"ird",
        "with space",
        "MixedCase",
        "mixedcase",
        "ünïcødé €",
        "\"; select pg_sleep(5); --",
        "a\"\"b",
    ]
    .iter()
    .map(|n| format!("{n}{suffix}"))
    .collect();
    let mut seen = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let (s, rec) = recorder();
        n.subscribe(&format!("s{i}"), name.as_str(), s).unwrap();
        seen.push(rec);
    }
    crate::support::listen(&n).await;
    let sender = Sender::connect().await;
    for name in &names {
        sender.notify(name, name).await;
    }
    assert!(eventually(SOON, || seen.iter().all(|s| count(s) == 1)).await);
    for (name, rec) in names.iter().zip(&seen) {
        let got = rec.lock().unwrap()[0].clone();
        assert_eq!(&got.channel, name);
        assert_eq!(got.payload, Payload::Text(name.clone()));
    }
    n.shutdown(Duration::from_secs(5)).await;
}

#[test]
fn names_over_63_bytes_are_refused_clearly() {
    let n = Notifier::new(crate::support::database());
    let long = "é".repeat(32); // 64 bytes
    match n.subscribe("s", long.as_str(), recorder().0) {
        Err(Error::Registry(RegistryError::InvalidChannel(ChannelNameError::TooLong {
            len,
            ..
        }))) => {
            assert_eq!(len, 64)
        }
        other => panic!("expected a too-long error, got {other:?}"),
    }
    let message = n.add_channels(long.as_str()).unwrap_err().to_string();
    assert!(
        message.contains("64 bytes") && message.contains("63"),
        "{message}"
    );
    assert!(n.channels().is_empty());
    assert!(n.add_channels("").is_err());
}

/// The pid is the sender's backend pid, as PostgreSQL reports it.
#[tokio::test]
async fn the_pid_is_the_sending_backend() {
    let (n, ch, seen) = crate::support::recording("s", "pid").await;
    let sender = Sender::connect().await;
    let sender_pid = sender.pid().await;
    sender.notify(&ch, "x").await;
    assert!(eventually(SOON, || count(&seen) == 1).await);
    assert_eq!(seen.lock().unwrap()[0].pid, sender_pid);
    n.shutdown(Duration::from_secs(5)).await;
}

/// The test server's certificate file, which doubles as its own CA here.
async fn server_certificate(sender: &Sender) -> String {
    let ssl: String = sender
        .client
        .query_one("show ssl", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        ssl, "on",
        "the TLS tests need a server with ssl = on (.ci/run turns it on)"
    );
    sender
        .client
        .query_one("show ssl_cert_file", &[])
        .await
        .unwrap()
        .get(0)
}

fn with_params(url: &str, params: &str) -> String {
    let joiner = if url.contains('?') { '&' } else { '?' };
    format!("{url}{joiner}{params}")
}

/// Listen over TLS with `params` and check the LISTEN backend is on TLS.
async fn listens_over_tls(params: &str) {
    let sender = Sender::connect().await;
    let cert = server_certificate(&sender).await;
    let url = with_params(
        crate::support::database_url(),
        &params.replace("{cert}", &cert),
    );
    let notifier = Notifier::new(pgnotifier::DatabaseSettings::from_url(&url).unwrap());
    let ch = channel("tls");
    let (s, seen) = recorder();
    notifier.subscribe("s", ch.as_str(), s).unwrap();
    crate::support::listen(&notifier).await;
    let encrypted: bool = sender
        .client
        .query_one(
            "select ssl from pg_stat_ssl where pid = $1",
            &[&notifier.backend_pid().unwrap()],
        )
        .await
        .unwrap()
        .get(0);
    assert!(encrypted, "the LISTEN connection uses TLS with {params}");
    sender.notify(&ch, "secret").await;
    assert!(eventually(SOON, || count(&seen) == 1).await);
    notifier.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn sslmode_require_listens_over_tls() {
    listens_over_tls("sslmode=require").await;
}

#[tokio::test]
async fn sslmode_verify_ca_checks_the_chain_against_sslrootcert() {
    listens_over_tls("sslmode=verify-ca&sslrootcert={cert}").await;
}

/// The heartbeat reads `pg_notification_queue_usage()`: the gauge moves
/// while a LISTENing session idle in a transaction holds a backlog, and
/// falls once it reads.
#[tokio::test]
async fn the_notification_queue_gauge_moves_while_a_listener_holds_a_backlog() {
    let notifier = Notifier::builder(
        pgnotifier::DatabaseSettings::from_url(crate::support::database_url()).unwrap(),
    )
    .connection(pgnotifier::ConnectionSettings {
        heartbeat: Some(Duration::from_millis(100)),
        ..Default::default()
    })
    .build();
    let (subscriber, _) = recorder();
    notifier
        .subscribe("gauge", channel("gauge").as_str(), subscriber)
        .unwrap();
    crate::support::listen(&notifier).await;
    let usage = || {
        let metrics = notifier.metrics();
        metrics
            .lines()
            .find_map(|l| l.strip_prefix("pgnotifier_notification_queue_usage "))
            .and_then(|v| v.parse::<f64>().ok())
            .expect("the queue gauge is exported")
    };
    let holder = Sender::connect().await.client;
    let backlog = channel("backlog");
    holder
        .batch_execute(&format!("LISTEN {backlog}"))
        .await
        .unwrap();
    holder.batch_execute("BEGIN; SELECT 1").await.unwrap();
    Sender::connect()
        .await
        .client
        .batch_execute(&format!(
            "select count(pg_notify('{backlog}', repeat('x', 7900) || i)) from generate_series(1, 2000) as i"
        ))
        .await
        .unwrap();
    assert!(
        eventually(SOON, || usage() > 0.0).await,
        "the gauge never moved: {}",
        usage()
    );
    let held = usage();
    holder.batch_execute("COMMIT; UNLISTEN *").await.unwrap();
    assert!(
        eventually(SOON, || usage() < held).await,
        "the gauge stayed at {held}"
    );
    notifier.shutdown(Duration::from_secs(5)).await;
}
