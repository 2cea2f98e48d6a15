//! Plugins at start-up: a folder of files, sidecars, and clear errors.

use crate::support::wat::{other_world_component, Notify, Register, WatPlugin};
use crate::support::{channel, eventually, logs, Sender, SOON};
use pgnotifier::Notifier;
use std::path::Path;
use std::time::Duration;

fn error_for(outcomes: &[(std::path::PathBuf, pgnotifier::Result<String>)], file: &str) -> String {
    let (path, outcome) = outcomes
        .iter()
        .find(|(p, _)| p.file_name().unwrap() == file)
        .unwrap_or_else(|| panic!("{file} was not tried"));
    match outcome {
        Ok(id) => panic!("{file} loaded as {id}, but should have failed"),
        Err(e) => {
            let text = e.to_string();
            assert!(
                text.contains(&path.display().to_string()),
                "error names the file: {text}"
            );
            text
        }
    }
}

#[tokio::test]
async fn a_folder_loads_the_good_plugins_and_names_each_bad_file() {
    logs::install();
    let dir = crate::support::temp_dir("folder");
    let ch = channel("folder");
    let good_id = format!("good_{ch}");
    WatPlugin::new(&[ch.as_str()], Notify::Echo).write(&dir, &good_id);
    std::fs::write(dir.join("notwasm.wasm"), "this is text").unwrap();
    std::fs::write(dir.join("core.wasm"), wat::parse_str("(module)").unwrap()).unwrap();
    std::fs::write(dir.join("other.wasm"), other_world_component()).unwrap();
    let full = WatPlugin::new(&[ch.as_str()], Notify::Echo).component();
    std::fs::write(dir.join("truncated.wasm"), &full[..full.len() / 2]).unwrap();
    WatPlugin::new(&[ch.as_str()], Notify::Echo).write(&dir, "badsidecar");
    std::fs::write(dir.join("badsidecar.toml"), "chanels = [\"typo\"]\n").unwrap();
    WatPlugin::new(&[ch.as_str()], Notify::Echo).write(&dir, "badlimit");
    std::fs::write(dir.join("badlimit.toml"), "timeout_ms = 0\n").unwrap();
    WatPlugin::new(&[ch.as_str()], Notify::Echo)
        .register(Register::Fail)
        .write(&dir, "refuses");
    WatPlugin::new(&[ch.as_str()], Notify::Echo)
        .register(Register::Spin)
        .write(&dir, "hangs");
    std::fs::write(dir.join("hangs.toml"), "timeout_ms = 200\n").unwrap();
    WatPlugin::new(&["a".repeat(64).as_str()], Notify::Echo).write(&dir, "longchannel");
    std::fs::write(dir.join(".hidden.wasm"), "ignored").unwrap();
    std::fs::write(dir.join("readme.txt"), "ignored").unwrap();

    let n = Notifier::new(crate::support::database());
    let outcomes = n.load_plugins(&dir).await.unwrap();
    assert_eq!(
        outcomes.len(),
        10,
        "hidden and non-.wasm files are not tried"
    );
    let good: Vec<_> = outcomes
        .iter()
        .filter_map(|(_, r)| r.as_ref().ok())
        .collect();
    assert_eq!(good, [&good_id]);

    assert!(error_for(&outcomes, "notwasm.wasm").contains("not a WebAssembly file"));
    assert!(error_for(&outcomes, "core.wasm").contains("core WebAssembly module, not a component"));
    let other = error_for(&outcomes, "other.wasm");
    assert!(
        other.contains("not a `pgnotifier:plugin/plugin` component"),
        "{other}"
    );
    assert!(error_for(&outcomes, "truncated.wasm").contains("invalid component"));
    assert!(error_for(&outcomes, "badsidecar.wasm").contains("unknown key `chanels`"));
    assert!(error_for(&outcomes, "badlimit.wasm").contains("timeout_ms: 0 is outside"));
    assert!(error_for(&outcomes, "refuses.wasm").contains("register returned an error: not today"));
    assert!(error_for(&outcomes, "hangs.wasm").contains("register ran past its deadline"));
    assert!(error_for(&outcomes, "longchannel.wasm").contains("63"));

    crate::support::listen(&n).await;
    Sender::connect().await.notify(&ch, "still works").await;
    assert!(
        eventually(SOON, || logs::plugin_messages(&good_id)
            .contains(&"still works".to_string()))
        .await
    );
    n.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn sidecar_channels_override_register_and_config_reaches_register() {
    logs::install();
    let dir = crate::support::temp_dir("sidecar");
    let ch = channel("sidecar");
    let id = format!("cfg_{ch}");
    let path = WatPlugin::new(&["ignored_channel"], Notify::Echo).write(&dir, &id);
    std::fs::write(
        dir.join(format!("{id}.toml")),
        format!("channels = [\"{ch}\"]\n\n[config]\nmode = \"fast\"\nretries = 3\n"),
    )
    .unwrap();
    let n = Notifier::new(crate::support::database());
    n.load_plugin(&path).await.unwrap();
    let view = &n.subscribers()[0];
    assert_eq!(view.channels.len(), 1);
    assert_eq!(view.channels[0].channel, ch);
    use sha2::Digest;
    let sha256: String = sha2::Sha256::digest(std::fs::read(&path).unwrap())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(
        serde_json::to_value(&view.source).unwrap(),
        serde_json::json!({"kind": "plugin", "path": path, "sha256": sha256, "wit": "0.1.0"})
    );
    // register logs "registered", then each config key and value.
    assert_eq!(
        logs::plugin_messages(&id),
        ["registered", "mode", "fast", "retries", "3"]
    );
    crate::support::listen(&n).await;
    Sender::connect().await.notify(&ch, "hi").await;
    assert!(
        eventually(SOON, || logs::plugin_messages(&id)
            .last()
            .map(String::as_str)
            == Some("hi"))
        .await
    );
    n.shutdown(Duration::from_secs(5)).await;
}

/// The id is the file stem, so one `.wasm` copied under two names is two
/// subscribers, each with its own instance.
#[tokio::test]
async fn copies_under_two_names_are_two_subscribers() {
    logs::install();
    let dir = crate::support::temp_dir("copies");
    let ch = channel("copies");
    let (one, two) = (format!("one_{ch}"), format!("two_{ch}"));
    let first = WatPlugin::new(&[ch.as_str()], Notify::Echo).write(&dir, &one);
    std::fs::copy(&first, dir.join(format!("{two}.wasm"))).unwrap();
    let n = Notifier::new(crate::support::database());
    let outcomes = n.load_plugins(Path::new(&dir)).await.unwrap();
    assert!(outcomes.iter().all(|(_, r)| r.is_ok()));
    assert_eq!(n.subscribers().len(), 2);
    crate::support::listen(&n).await;
    let sender = Sender::connect().await;
    sender.notify(&ch, "count").await;
    sender.notify(&ch, "count").await;
    for id in [&one, &two] {
        assert!(
            eventually(SOON, || logs::plugin_messages(id)
                == ["registered", "first", "again"])
            .await
        );
    }
    n.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn a_missing_folder_is_a_clear_error() {
    let n = Notifier::new(crate::support::database());
    let err = n
        .load_plugins(Path::new("/no/such/folder"))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("/no/such/folder") && err.contains("cannot read the plugins folder"),
        "{err}"
    );
}
