//! The registry keeps the origin's semantics, without its bugs.

use crate::support::{channel, count, eventually, recorder, Sender, SOON};
use pgnotifier::registry::RegistryError;
use pgnotifier::{Error, Notifier, Selection};
use std::time::Duration;

fn notifier() -> Notifier {
    Notifier::new(crate::support::database())
}

fn registry_error(result: pgnotifier::Result<()>) -> RegistryError {
    match result {
        Err(Error::Registry(e)) => e,
        other => panic!("expected a registry error, got {other:?}"),
    }
}

fn active(n: &Notifier, ch: &str) -> bool {
    n.channels()
        .iter()
        .find(|c| c.channel == ch)
        .expect("channel listed")
        .active
}

#[test]
fn subscribe_creates_missing_channels_and_one_subscriber_can_take_many() {
    let n = notifier();
    let (a, b) = (channel("reg"), channel("reg"));
    n.subscribe("s", [a.as_str(), b.as_str()], recorder().0)
        .unwrap();
    let names: Vec<_> = n.channels().into_iter().map(|c| c.channel).collect();
    assert_eq!(names.len(), 2);
    assert!(names.contains(&a) && names.contains(&b));
    let subs = n.subscribers();
    assert_eq!(subs.len(), 1);
    assert_eq!(subs[0].channels.len(), 2);
}

#[test]
fn add_channels_accepts_one_or_many_and_is_idempotent() {
    let n = notifier();
    n.add_channels("one").unwrap();
    n.add_channels(vec!["two".to_string(), "three".to_string()])
        .unwrap();
    n.add_channels("one").unwrap();
    assert_eq!(n.channels().len(), 3);
    assert!(
        n.channels().iter().all(|c| !c.active),
        "a channel without subscribers is not active"
    );
}

#[test]
fn active_means_unmuted_with_an_unmuted_subscriber() {
    let n = notifier();
    let ch = channel("act");
    n.add_channels(ch.as_str()).unwrap();
    assert!(!active(&n, &ch));
    n.subscribe("s", ch.as_str(), recorder().0).unwrap();
    assert!(active(&n, &ch));
    n.mute_subscriber("s", Selection::All).unwrap();
    assert!(!active(&n, &ch));
    n.unmute_subscriber("s", ch.as_str()).unwrap();
    assert!(active(&n, &ch));
    n.mute_channels(ch.as_str()).unwrap();
    assert!(!active(&n, &ch));
    n.unmute_channels(Selection::All).unwrap();
    assert!(active(&n, &ch));
}

#[test]
fn muting_a_channel_keeps_subscriber_mutes() {
    let n = notifier();
    let ch = channel("mute");
    n.subscribe("a", ch.as_str(), recorder().0).unwrap();
    n.subscribe("b", ch.as_str(), recorder().0).unwrap();
    n.mute_subscriber("a", ch.as_str()).unwrap();
    n.mute_channels(Selection::All).unwrap();
    n.unmute_channels(Selection::All).unwrap();
    let view = n.channels().into_iter().find(|c| c.channel == ch).unwrap();
    let muted: Vec<_> = view
        .subscribers
        .iter()
        .map(|s| (s.id.as_str(), s.muted))
        .collect();
    assert_eq!(muted, [("a", true), ("b", false)]);
    assert!(view.active, "b keeps the channel active");
}

#[test]
fn mute_subscriber_without_channels_mutes_every_channel_it_has() {
    let n = notifier();
    let (x, y) = (channel("ms"), channel("ms"));
    n.subscribe("s", [x.as_str(), y.as_str()], recorder().0)
        .unwrap();
    n.mute_subscriber("s", Selection::All).unwrap();
    let view = &n.subscribers()[0];
    assert!(view.channels.iter().all(|c| c.muted));
    n.unmute_subscriber("s", x.as_str()).unwrap();
    let view = &n.subscribers()[0];
    let flags: Vec<_> = view
        .channels
        .iter()
        .map(|c| (c.channel == x, c.muted))
        .collect();
    assert!(flags.contains(&(true, false)) && flags.contains(&(false, true)));
}

#[test]
fn unknown_ids_and_channels_are_clear_errors_and_change_nothing() {
    let n = notifier();
    let ch = channel("unk");
    n.subscribe("s", ch.as_str(), recorder().0).unwrap();
    let before = (n.channels(), n.subscribers());

    assert_eq!(
        registry_error(n.unsubscribe("ghost", ch.as_str())),
        RegistryError::UnknownSubscriber("ghost".into())
    );
    assert_eq!(
        registry_error(n.unsubscribe("s", "nowhere")),
        RegistryError::NotSubscribed {
            id: "s".into(),
            channel: "nowhere".into()
        }
    );
    assert_eq!(
        registry_error(n.mute_channels(["nowhere"])),
        RegistryError::UnknownChannel("nowhere".into())
    );
    // All-or-nothing: one unknown channel in a list changes none of them.
    assert!(n.mute_channels([ch.as_str(), "nowhere"]).is_err());
    assert!(n.remove_channels("nowhere").is_err());
    assert!(n.mute_subscriber("ghost", Selection::All).is_err());
    assert!(n.subscribe_to("ghost", ch.as_str()).is_err());
    assert_eq!(
        registry_error(n.subscribe("s", ch.as_str(), recorder().0)),
        RegistryError::SubscriberExists("s".into())
    );
    assert_eq!((n.channels(), n.subscribers()), before);
    assert!(n
        .unsubscribe("s", "nowhere")
        .unwrap_err()
        .to_string()
        .contains("\"nowhere\""));
}

#[test]
fn remove_channels_drops_their_subscriptions() {
    let n = notifier();
    let (x, y) = (channel("rm"), channel("rm"));
    n.subscribe("s", [x.as_str(), y.as_str()], recorder().0)
        .unwrap();
    n.remove_channels(x.as_str()).unwrap();
    assert_eq!(n.channels().len(), 1);
    let subs = n.subscribers();
    assert_eq!(subs[0].channels.len(), 1);
    assert_eq!(subs[0].channels[0].channel, y);
}

#[test]
fn views_serialise_to_json_with_flags() {
    let n = notifier();
    let ch = channel("json");
    n.subscribe("s", ch.as_str(), recorder().0).unwrap();
    n.mute_subscriber("s", ch.as_str()).unwrap();
    let channels = serde_json::to_value(n.channels()).unwrap();
    assert_eq!(channels[0]["muted"], false);
    assert_eq!(channels[0]["active"], false);
    assert_eq!(channels[0]["subscribers"][0]["id"], "s");
    assert_eq!(channels[0]["subscribers"][0]["muted"], true);
    let subscribers = serde_json::to_value(n.subscribers()).unwrap();
    assert_eq!(subscribers[0]["source"]["kind"], "native");
    assert_eq!(subscribers[0]["channels"][0]["muted"], true);
    assert_eq!(subscribers[0]["stats"]["delivered"], 0);
}

/// The origin's `unsubscribe` corrupted its index, and the next notification
/// raised `KeyError`. Here, after unsubscribing the middle one of three, the
/// other two keep receiving and the view is consistent.
#[tokio::test]
async fn unsubscribing_keeps_the_index_intact_and_delivery_going() {
    let n = notifier();
    let ch = channel("unsub");
    let (sa, a) = recorder();
    let (sb, b) = recorder();
    let (sc, c) = recorder();
    n.subscribe("a", ch.as_str(), sa).unwrap();
    n.subscribe("b", ch.as_str(), sb).unwrap();
    n.subscribe("c", ch.as_str(), sc).unwrap();
    n.unsubscribe("b", ch.as_str()).unwrap();
    let ids: Vec<_> = n.channels()[0]
        .subscribers
        .iter()
        .map(|s| s.id.clone())
        .collect();
    assert_eq!(ids, ["a", "c"]);

    crate::support::listen(&n).await;
    let sender = Sender::connect().await;
    sender.notify(&ch, "1").await;
    assert!(eventually(SOON, || count(&a) == 1 && count(&c) == 1).await);
    n.unsubscribe("a", ch.as_str()).unwrap();
    n.subscribe_to("b", ch.as_str()).unwrap();
    n.wait_until_listening(SOON).await.unwrap();
    sender.notify(&ch, "2").await;
    assert!(eventually(SOON, || count(&c) == 2 && count(&b) == 1).await);
    assert_eq!(count(&a), 1);
    n.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn start_stop_restart_and_is_running() {
    let n = notifier();
    let ch = channel("life");
    let (s, seen) = recorder();
    n.subscribe("s", ch.as_str(), s).unwrap();
    assert!(!n.is_running());
    n.start().await.unwrap();
    assert!(n.is_running());
    n.wait_until_listening(SOON).await.unwrap();
    let sender = Sender::connect().await;
    sender.notify(&ch, "while running").await;
    assert!(eventually(SOON, || count(&seen) == 1).await);

    n.stop().await;
    assert!(!n.is_running());
    assert!(n.listening().is_empty());
    sender.notify(&ch, "while stopped").await;

    n.restart().await.unwrap();
    assert!(n.is_running());
    n.wait_until_listening(SOON).await.unwrap();
    sender.notify(&ch, "after restart").await;
    assert!(eventually(SOON, || count(&seen) == 2).await);
    let texts: Vec<_> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|r| r.payload.clone())
        .collect();
    assert_eq!(
        texts,
        [
            pgnotifier::Payload::Text("while running".into()),
            pgnotifier::Payload::Text("after restart".into())
        ]
    );
    n.shutdown(Duration::from_secs(5)).await;
    assert!(!n.is_running());
}
