//! Hot loading: drop, replace and remove plugins while the host runs.

use crate::support::wat::{other_world_component, Notify, Register, WatPlugin};
use crate::support::{channel, eventually, logs, Sender, SOON};
use pgnotifier::sandbox::SandboxSettings;
use pgnotifier::{Notifier, PluginWatcher, Selection};
use std::path::{Path, PathBuf};
use std::time::Duration;

struct Folder {
    dir: PathBuf,
    notifier: Notifier,
    _watcher: PluginWatcher,
    sender: Sender,
}

/// A running host watching an empty folder.
async fn watched(name: &str) -> Folder {
    watched_with(name, Notifier::new(crate::support::database())).await
}

async fn watched_with(name: &str, notifier: Notifier) -> Folder {
    logs::install();
    let dir = crate::support::temp_dir(name);
    let watcher = notifier.watch_plugins(&dir).await.unwrap();
    notifier.start().await.unwrap();
    assert!(
        eventually(SOON, || notifier.backend_pid().is_some()).await,
        "connected"
    );
    Folder {
        dir,
        notifier,
        _watcher: watcher,
        sender: Sender::connect().await,
    }
}

impl Folder {
    fn has(&self, id: &str) -> bool {
        self.notifier.subscribers().iter().any(|s| s.id == id)
    }

    fn channels_of(&self, id: &str) -> Vec<(String, bool)> {
        self.notifier
            .subscribers()
            .into_iter()
            .find(|s| s.id == id)
            .map(|s| {
                s.channels
                    .into_iter()
                    .map(|c| (c.channel, c.muted))
                    .collect()
            })
            .unwrap_or_default()
    }

    async fn listening_settles(&self) {
        self.notifier.wait_until_listening(SOON).await.unwrap();
    }

    /// Write bytes as a deploy tool would: to a hidden temp file, then rename.
    /// Wait until the watcher has handled every change made so far: a
    /// marker plugin deployed now is loaded with them or after them.
    async fn settle(&self, marker: &str) {
        self.deploy(marker, &WatPlugin::new(&[], Notify::Echo).component());
        assert!(
            eventually(SOON, || self.has(marker)).await,
            "the marker {marker} loaded"
        );
    }

    fn deploy(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let tmp = self.dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, bytes).unwrap();
        let path = self.dir.join(format!("{name}.wasm"));
        std::fs::rename(&tmp, &path).unwrap();
        path
    }
}

fn registered_labels(id: &str) -> Vec<String> {
    logs::plugin_messages(id)
        .into_iter()
        .filter(|m| m.starts_with('v'))
        .collect()
}

#[tokio::test]
async fn a_new_file_is_loaded_and_listened_without_reconnecting() {
    let f = watched("add").await;
    let pid = f.notifier.backend_pid();
    let ch = channel("add");
    let id = format!("new_{ch}");
    f.deploy(
        &id,
        &WatPlugin::new(&[ch.as_str()], Notify::Echo).component(),
    );
    assert!(
        eventually(SOON, || f.has(&id)).await,
        "the plugin was picked up"
    );
    f.listening_settles().await;
    assert!(f.notifier.listening().contains(&ch));
    f.sender.notify(&ch, "hello").await;
    assert!(
        eventually(SOON, || logs::plugin_messages(&id)
            .contains(&"hello".to_string()))
        .await
    );
    assert_eq!(f.notifier.backend_pid(), pid, "no reconnect");
}

#[tokio::test]
async fn a_replacement_keeps_mutes_and_listens_only_the_difference() {
    let f = watched("replace").await;
    let (a, b, c) = (channel("ra"), channel("rb"), channel("rc"));
    let id = format!("swap_{a}");
    f.deploy(
        &id,
        &WatPlugin::new(&[a.as_str(), b.as_str()], Notify::Echo)
            .label("v1")
            .component(),
    );
    assert!(eventually(SOON, || f.has(&id)).await);
    f.notifier.mute_subscriber(&id, b.as_str()).unwrap();
    f.notifier
        .subscribe("other", a.as_str(), crate::support::recorder().0)
        .unwrap();
    f.notifier.mute_channels(a.as_str()).unwrap();
    f.sender.notify(&c, "count").await; // not subscribed yet
    f.listening_settles().await;

    f.deploy(
        &id,
        &WatPlugin::new(&[a.as_str(), c.as_str()], Notify::Echo)
            .label("v2")
            .component(),
    );
    assert!(
        eventually(SOON, || registered_labels(&id) == ["v1", "v2"]).await,
        "{:?}",
        registered_labels(&id)
    );
    assert!(
        eventually(SOON, || f.channels_of(&id)
            == [(a.clone(), false), (c.clone(), false)])
        .await
    );
    let channel_a = f
        .notifier
        .channels()
        .into_iter()
        .find(|v| v.channel == a)
        .unwrap();
    assert!(channel_a.muted, "the channel's own mute survives the swap");
    f.listening_settles().await;
    let listening = f.notifier.listening();
    assert!(listening.contains(&c) && !listening.contains(&b) && !listening.contains(&a));

    f.sender.notify(&c, "count").await;
    f.sender.notify(&c, "count").await;
    assert!(
        eventually(SOON, || logs::plugin_messages(&id)
            .ends_with(&["first".into(), "again".into()]))
        .await
    );

    // Mute flags survive too: muted on every channel stays muted on new ones.
    f.notifier.mute_subscriber(&id, Selection::All).unwrap();
    f.deploy(
        &id,
        &WatPlugin::new(&[a.as_str(), b.as_str()], Notify::Echo)
            .label("v3")
            .component(),
    );
    assert!(
        eventually(SOON, || f.channels_of(&id)
            == [(a.clone(), true), (b.clone(), true)])
        .await
    );
}

/// A steady stream on the channel while the plugin is replaced twice: every
/// notification is delivered once, in order.
#[tokio::test]
async fn no_notification_is_lost_across_replacements() {
    let f = watched("stream").await;
    let ch = channel("stream");
    let id = format!("live_{ch}");
    f.deploy(
        &id,
        &WatPlugin::new(&[ch.as_str()], Notify::Echo)
            .label("v1")
            .component(),
    );
    assert!(eventually(SOON, || f.has(&id)).await);
    f.listening_settles().await;

    const SENT: usize = 600;
    let stream_channel = ch.clone();
    let stream = tokio::spawn(async move {
        let sender = Sender::connect().await;
        for i in 0..SENT {
            sender.notify(&stream_channel, &format!("n{i}")).await;
            if i % 50 == 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });
    for version in ["v2", "v3"] {
        tokio::time::sleep(Duration::from_millis(150)).await;
        f.deploy(
            &id,
            &WatPlugin::new(&[ch.as_str()], Notify::Echo)
                .label(version)
                .component(),
        );
        assert!(
            eventually(SOON, || registered_labels(&id).last().map(String::as_str)
                == Some(version))
            .await
        );
    }
    stream.await.unwrap();
    let received = || {
        logs::plugin_messages(&id)
            .into_iter()
            .filter(|m| m.starts_with('n'))
            .collect::<Vec<_>>()
    };
    assert!(
        eventually(SOON, || received().len() >= SENT).await,
        "got {}",
        received().len()
    );
    let want: Vec<String> = (0..SENT).map(|i| format!("n{i}")).collect();
    assert_eq!(received(), want, "each once, in order");
    assert_eq!(registered_labels(&id), ["v1", "v2", "v3"]);
}

#[tokio::test]
async fn a_bad_replacement_keeps_the_old_version_running() {
    let f = watched("bad").await;
    let ch = channel("bad");
    let id = format!("sturdy_{ch}");
    let path = f.deploy(
        &id,
        &WatPlugin::new(&[ch.as_str()], Notify::Echo)
            .label("v1")
            .component(),
    );
    assert!(eventually(SOON, || f.has(&id)).await);
    f.listening_settles().await;
    let good_v2 = WatPlugin::new(&[ch.as_str()], Notify::Echo)
        .label("v2")
        .component();
    let pid = f.notifier.backend_pid();

    let bad: Vec<(&str, Vec<u8>)> = vec![
        ("corrupt", b"\0asm\x0d\0\x01\0garbage".to_vec()),
        ("not wasm", b"#!/bin/sh\necho hi\n".to_vec()),
        ("core module", wat::parse_str("(module)").unwrap()),
        ("other world", other_world_component()),
        (
            "register error",
            WatPlugin::new(&[ch.as_str()], Notify::Echo)
                .register(Register::Fail)
                .component(),
        ),
        (
            "register trap",
            WatPlugin::new(&[ch.as_str()], Notify::Echo)
                .register(Register::Trap)
                .component(),
        ),
        ("truncated", good_v2[..good_v2.len() / 3].to_vec()),
    ];
    for (round, (what, bytes)) in bad.iter().enumerate() {
        // Other tests in this binary log errors too: look for one naming this file.
        let errors_before = logs::errors().len();
        let file = path.display().to_string();
        let names_the_file = || {
            logs::errors()[errors_before..]
                .iter()
                .any(|e| e.contains(&file))
        };
        f.deploy(&id, bytes);
        assert!(
            eventually(SOON, names_the_file).await,
            "{what}: an error naming the file is logged: {:?}",
            &logs::errors()[errors_before..]
        );
        let probe = format!("still v1 after {what} {round}");
        f.sender.notify(&ch, &probe).await;
        assert!(
            eventually(SOON, || logs::plugin_messages(&id).contains(&probe)).await,
            "{what}: the old version keeps running"
        );
    }

    // A file still being copied: half now, the rest after the debounce.
    let mut file = std::fs::File::create(&path).unwrap();
    use std::io::Write;
    file.write_all(&good_v2[..good_v2.len() / 2]).unwrap();
    file.flush().unwrap();
    f.settle(&format!("marker_{id}")).await;
    f.sender.notify(&ch, "during the copy").await;
    assert!(
        eventually(SOON, || logs::plugin_messages(&id)
            .contains(&"during the copy".to_string()))
        .await
    );
    file.write_all(&good_v2[good_v2.len() / 2..]).unwrap();
    drop(file);
    assert!(
        eventually(SOON, || registered_labels(&id) == ["v1", "v2"]).await,
        "{:?}",
        registered_labels(&id)
    );
    assert_eq!(
        f.notifier.backend_pid(),
        pid,
        "no reconnect through all of it"
    );
}

#[tokio::test]
async fn deleting_a_file_unsubscribes_it_and_unlistens_its_channel() {
    let f = watched("remove").await;
    let ch = channel("remove");
    let id = format!("gone_{ch}");
    let path = f.deploy(
        &id,
        &WatPlugin::new(&[ch.as_str()], Notify::Echo).component(),
    );
    assert!(eventually(SOON, || f.has(&id)).await);
    f.listening_settles().await;
    assert!(f.notifier.listening().contains(&ch));
    std::fs::remove_file(&path).unwrap();
    assert!(eventually(SOON, || !f.has(&id)).await, "unsubscribed");
    f.listening_settles().await;
    assert!(!f.notifier.listening().contains(&ch), "no longer LISTENed");
}

#[tokio::test]
async fn atomic_deploys_work_and_a_rename_is_a_remove_plus_an_add() {
    let f = watched("rename").await;
    let ch = channel("rename");
    let (a, b) = (format!("a_{ch}"), format!("b_{ch}"));
    // The hidden temp file alone is ignored.
    let tmp = f.dir.join(format!(".{a}.wasm.tmp"));
    std::fs::write(
        &tmp,
        WatPlugin::new(&[ch.as_str()], Notify::Echo).component(),
    )
    .unwrap();
    f.settle(&format!("marker_{ch}")).await;
    assert!(!f.has(&a), "a hidden file is not loaded");
    std::fs::rename(&tmp, f.dir.join(format!("{a}.wasm"))).unwrap();
    assert!(eventually(SOON, || f.has(&a)).await);

    std::fs::rename(
        f.dir.join(format!("{a}.wasm")),
        f.dir.join(format!("{b}.wasm")),
    )
    .unwrap();
    assert!(eventually(SOON, || f.has(&b) && !f.has(&a)).await);
    f.listening_settles().await;
    f.sender.notify(&ch, "to b").await;
    assert!(
        eventually(SOON, || logs::plugin_messages(&b)
            .contains(&"to b".to_string()))
        .await
    );
}

#[tokio::test]
async fn a_sidecar_change_reapplies_channels_config_and_limits() {
    let f = watched("sidecar").await;
    let (first, second) = (channel("sc1"), channel("sc2"));
    let id = format!("cfg_{first}");
    f.deploy(
        &id,
        &WatPlugin::new(&[first.as_str()], Notify::Spin).component(),
    );
    assert!(eventually(SOON, || f.channels_of(&id) == [(first.clone(), false)]).await);

    let sidecar = f.dir.join(format!("{id}.toml"));
    std::fs::write(
        &sidecar,
        format!("channels = [\"{second}\"]\ntimeout_ms = 30\n\n[config]\nmode = \"fast\"\n"),
    )
    .unwrap();
    assert!(eventually(SOON, || f.channels_of(&id) == [(second.clone(), false)]).await);
    assert!(logs::plugin_messages(&id).ends_with(&["mode".into(), "fast".into()]));
    f.listening_settles().await;
    f.sender.notify(&second, "spin").await;
    assert!(
        eventually(SOON, || logs::of(&id)
            .iter()
            .any(|l| l.message.contains("deadline of 30ms")))
        .await
    );

    // A bad sidecar is refused, and the running settings stay.
    let errors_before = logs::errors().len();
    let sidecar_name = sidecar.display().to_string();
    std::fs::write(&sidecar, "timeout_ms = -1\n").unwrap();
    assert!(
        eventually(SOON, || logs::errors()[errors_before..]
            .iter()
            .any(|e| e.contains(&sidecar_name) && e.contains("timeout_ms")))
        .await
    );
    assert_eq!(f.channels_of(&id), [(second.clone(), false)]);
    // Removing the sidecar goes back to what register returns.
    std::fs::remove_file(&sidecar).unwrap();
    assert!(eventually(SOON, || f.channels_of(&id) == [(first.clone(), false)]).await);
}

fn cache_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
            } else if !p.file_name().unwrap().to_string_lossy().starts_with('.') {
                files.push(p);
            }
        }
    }
    files
}

#[tokio::test]
async fn the_compile_cache_survives_a_restart_and_rebuilds_a_corrupt_entry() {
    let cache = crate::support::temp_dir("cache");
    let plugins = crate::support::temp_dir("cached-plugins");
    let ch = channel("cache");
    let path = WatPlugin::new(&[ch.as_str()], Notify::Echo)
        .label(&ch)
        .write(&plugins, "cached");
    let notifier = |cache: &Path| {
        Notifier::builder(crate::support::database())
            .sandbox(SandboxSettings {
                cache_dir: Some(cache.to_owned()),
                ..SandboxSettings::default()
            })
            .build()
    };

    let first = notifier(&cache);
    first.load_plugin(&path).await.unwrap();
    let stats = first.compile_cache_stats().unwrap();
    assert_eq!((stats.hits, stats.misses), (0, 1), "compiled once");
    assert!(!cache_files(&cache).is_empty(), "written to the cache dir");

    let restarted = notifier(&cache);
    restarted.load_plugin(&path).await.unwrap();
    let stats = restarted.compile_cache_stats().unwrap();
    assert_eq!(
        (stats.hits, stats.misses),
        (1, 0),
        "a restart does not recompile"
    );

    for file in cache_files(&cache) {
        std::fs::write(file, b"corrupt").unwrap();
    }
    let after_corruption = notifier(&cache);
    after_corruption.load_plugin(&path).await.unwrap();
    let stats = after_corruption.compile_cache_stats().unwrap();
    assert_eq!(
        (stats.hits, stats.misses),
        (0, 1),
        "the corrupt entry was rebuilt"
    );
    let again = notifier(&cache);
    again.load_plugin(&path).await.unwrap();
    assert_eq!(
        again.compile_cache_stats().unwrap().hits,
        1,
        "and is good again"
    );
}
