//! The blocking facade, used from plain synchronous code.

use crate::support::{channel, count, recorder, SOON};
use pgnotifier::blocking::Notifier;
use pgnotifier::Payload;
use std::time::Duration;

#[test]
fn the_blocking_facade_works_without_async() {
    let n = Notifier::new(crate::support::database()).unwrap();
    let ch = channel("sync");
    let (s, seen) = recorder();
    n.subscribe("sync", ch.as_str(), s).unwrap();
    n.start().unwrap();
    assert!(n.is_running());
    n.wait_until_listening(SOON).unwrap();

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        crate::support::Sender::connect()
            .await
            .notify(&ch, "[1]")
            .await
    });
    let state = || "the subscriber was never called".to_owned();
    crate::support::until(SOON, state, || (count(&seen) >= 1).then_some(()));
    assert_eq!(seen.lock().unwrap()[0].payload, Payload::Json("[1]".into()));
    n.mute_channels(ch.as_str()).unwrap();
    assert!(!n.channels()[0].active);
    n.stop();
    assert!(!n.is_running());
    assert!(n.shutdown(Duration::from_secs(5)).abandoned.is_empty());
}
