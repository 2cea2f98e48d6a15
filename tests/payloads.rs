//! Typed payloads, decoded once, end to end through PostgreSQL.

use crate::support::wat::{Notify, WatPlugin};
use crate::support::{
    channel, count, eventually, logs, payload_cases, recorder, send_all, Sender, SOON,
};
use pgnotifier::{Notifier, Payload, PayloadMode, Subscriber};
use std::time::Duration;

#[tokio::test]
async fn every_payload_case_arrives_typed() {
    let (n, ch, seen) = crate::support::recording("typed", "typed").await;
    let cases = payload_cases();
    send_all(&Sender::connect().await, &ch, &cases).await;
    assert!(eventually(SOON, || count(&seen) == cases.len()).await);
    let got: Vec<_> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|r| r.payload.clone())
        .collect();
    let want: Vec<_> = cases.into_iter().map(|(_, p)| p).collect();
    assert_eq!(got, want);
    n.shutdown(Duration::from_secs(5)).await;
}

/// The Rust example plugin, built by `plugins/build`, receives every case
/// with the right type through the canonical ABI.
#[tokio::test]
async fn the_rust_example_plugin_receives_every_case_typed() {
    logs::install();
    let dir = crate::support::temp_dir("logger");
    let ch = channel("rust");
    let id = format!("logger_{}", ch);
    std::fs::copy(
        crate::support::example_plugin("logger"),
        dir.join(format!("{id}.wasm")),
    )
    .unwrap();
    std::fs::write(
        dir.join(format!("{id}.toml")),
        format!("[config]\nchannels = \"{ch}\"\n"),
    )
    .unwrap();

    let n = Notifier::new(crate::support::database());
    assert_eq!(
        n.load_plugin(&dir.join(format!("{id}.wasm")))
            .await
            .unwrap(),
        id
    );
    crate::support::listen(&n).await;
    let sender = Sender::connect().await;
    let pid = sender.pid().await;
    let cases = payload_cases();
    send_all(&sender, &ch, &cases).await;

    let notified = || {
        logs::plugin_messages(&id)
            .into_iter()
            .filter(|m| m.starts_with('('))
            .collect::<Vec<_>>()
    };
    assert!(
        eventually(SOON, || notified().len() == cases.len()).await,
        "got {:?}",
        notified()
    );
    let want: Vec<String> = cases
        .iter()
        .map(|(_, p)| {
            format!(
                "({id}, {ch:?}, {}, {pid})",
                pgnotifier::payload::describe(p)
            )
        })
        .collect();
    assert_eq!(notified(), want);
    n.shutdown(Duration::from_secs(5)).await;
}

/// `payload = "raw"` delivers the text exactly as sent, for plugins and closures.
#[tokio::test]
async fn raw_mode_delivers_every_payload_unparsed() {
    logs::install();
    let dir = crate::support::temp_dir("raw");
    let ch = channel("raw");
    let raw_id = format!("raw_{ch}");
    let typed_id = format!("typed_{ch}");
    let plugin = WatPlugin::new(&[ch.as_str()], Notify::Echo);
    let raw_path = plugin.write(&dir, &raw_id);
    std::fs::write(dir.join(format!("{raw_id}.toml")), "payload = \"raw\"\n").unwrap();
    let typed_path = plugin.write(&dir, &typed_id);

    let n = Notifier::new(crate::support::database());
    n.load_plugin(&raw_path).await.unwrap();
    n.load_plugin(&typed_path).await.unwrap();
    let (s, seen) = recorder();
    n.subscribe("native_raw", ch.as_str(), s.payload_mode(PayloadMode::Raw))
        .unwrap();
    crate::support::listen(&n).await;
    let sender = Sender::connect().await;
    for p in [r#"{ "a" :  1 }"#, "42", "true", "\"quoted\""] {
        sender.notify(&ch, p).await;
    }
    assert!(eventually(SOON, || logs::plugin_messages(&raw_id).len() == 5).await);
    assert!(eventually(SOON, || count(&seen) == 4).await);
    // The raw plugin logs "registered" first, then each payload verbatim.
    assert_eq!(
        logs::plugin_messages(&raw_id)[1..],
        [r#"{ "a" :  1 }"#, "42", "true", "\"quoted\""]
    );
    // The typed twin only sees text/json cases, decoded: compact JSON and the string's value.
    assert!(eventually(SOON, || logs::plugin_messages(&typed_id).len() == 3).await);
    assert_eq!(
        logs::plugin_messages(&typed_id)[1..],
        [r#"{"a":1}"#, "quoted"]
    );
    let native: Vec<_> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|r| r.payload.clone())
        .collect();
    assert_eq!(native[1], Payload::Text("42".into()));
    n.shutdown(Duration::from_secs(5)).await;
}

/// A payload is decoded once per notification, not once per subscriber:
/// all typed subscribers share one decoded value.
#[tokio::test]
async fn one_decode_is_shared_by_every_subscriber() {
    let n = Notifier::new(crate::support::database());
    let ch = channel("shared");
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<usize>::new()));
    for i in 0..3 {
        let sink = seen.clone();
        let s = Subscriber::native(move |_, _, payload, _| {
            // The address of the decoded string identifies the decode.
            if let Payload::Json(j) = payload {
                sink.lock().unwrap().push(j.as_ptr() as usize);
            }
        });
        n.subscribe(&format!("s{i}"), ch.as_str(), s).unwrap();
    }
    crate::support::listen(&n).await;
    Sender::connect()
        .await
        .notify(&ch, r#"{"k": [1, 2]}"#)
        .await;
    assert!(eventually(SOON, || seen.lock().unwrap().len() == 3).await);
    let addresses = seen.lock().unwrap().clone();
    assert!(
        addresses.iter().all(|a| *a == addresses[0]),
        "{addresses:?}"
    );
    n.shutdown(Duration::from_secs(5)).await;
}
