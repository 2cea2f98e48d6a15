//! At-least-once delivery under the faults a hostile review found: events
//! lost to pruning or never stamped, gap events lost, ids reused, two
//! dispatchers of one subscriber, and a database whose senders all stall.
//! Each test gets a database of its own.

use crate::support::durable::*;
use crate::support::{eventually, logs, SOON};
use pgnotifier::cluster::ClusterSettings;
use pgnotifier::durable::reader::{self, Channels};
use pgnotifier::durable::{schema, RetryPolicy};
use pgnotifier::{DatabaseSettings, Notifier, Payload, PayloadMode, Subscriber};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_postgres::{Client, NoTls};

mod crashes;
mod dispatchers;
mod loss;
mod stalls;
mod takeover;

/// One call of a recording subscriber: on which host, with what, when.
#[derive(Clone, Debug)]
struct Call {
    host: &'static str,
    payload: String,
    started: Instant,
    ended: Instant,
}

type Calls = Arc<Mutex<Vec<Call>>>;

/// An at-least-once native subscriber that records every call, each
/// taking `each`.
fn recording(host: &'static str, calls: &Calls, each: Duration) -> Subscriber {
    let calls = calls.clone();
    Subscriber::native(move |_, _, payload, _| {
        let started = Instant::now();
        std::thread::sleep(each);
        let Payload::Text(payload) = payload else {
            panic!("raw payloads are text")
        };
        calls.lock().unwrap().push(Call {
            host,
            payload: payload.clone(),
            started,
            ended: Instant::now(),
        });
    })
    .payload_mode(PayloadMode::Raw)
    .at_least_once(RetryPolicy {
        max_attempts: 5,
        backoff: Duration::from_millis(10),
    })
}

fn payloads(calls: &Calls) -> Vec<String> {
    calls
        .lock()
        .unwrap()
        .iter()
        .map(|c| c.payload.clone())
        .collect()
}

/// A host of cluster `name` on `url`, taking over within a second.
fn in_cluster(url: &str, name: &str) -> Notifier {
    let mut cluster = ClusterSettings::new(name);
    cluster.takeover = Duration::from_secs(1);
    Notifier::builder(DatabaseSettings::from_url(url).unwrap())
        .cluster(cluster)
        .build()
}

async fn connect(url: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await.unwrap();
    tokio::spawn(connection);
    client
}

/// Send `count` events on `channel`, one transaction each, payloads `PREFIX-i`.
async fn send_each(client: &Client, channel: &str, prefix: &str, count: usize) {
    for i in 0..count {
        client
            .execute(
                "select pgnotifier.send($1, $2)",
                &[&channel, &format!("{prefix}-{i}")],
            )
            .await
            .unwrap();
    }
}

async fn count_of(client: &Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).await.unwrap().get(0)
}
