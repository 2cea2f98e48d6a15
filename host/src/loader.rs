//! The plugin loader: a plugins folder's files become wasm subscribers.
//!
//! One function turns one `NAME.wasm` (and its optional `NAME.toml`) into a
//! registered-ready subscriber. Start-up calls it for every file; hot reload
//! calls the same function for each file that changes.

use crate::channel;
use crate::config::{Sidecar, SubscriberSettings};
use crate::sandbox::{LoadError, Sandbox, WasmSubscriber};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A plugin that compiled, instantiated and registered.
pub(crate) struct LoadedPlugin {
    pub(crate) id: Arc<str>,
    pub(crate) path: PathBuf,
    pub(crate) channels: Vec<String>,
    pub(crate) settings: SubscriberSettings,
    pub(crate) subscriber: WasmSubscriber,
}

/// The `*.wasm` files in `dir`, sorted; hidden files are skipped.
pub fn plugin_files(dir: &Path) -> Result<Vec<PathBuf>, LoadError> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| LoadError::new(dir, format!("cannot read the plugins folder: {e}")))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| is_plugin_file(p))
        .collect();
    files.sort();
    Ok(files)
}

/// A visible `NAME.wasm` file.
pub fn is_plugin_file(path: &Path) -> bool {
    let visible = path
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| !n.starts_with('.'));
    visible && path.extension().is_some_and(|e| e == "wasm") && path.is_file()
}

/// The subscriber id of a plugin file: its stem.
pub fn subscriber_id(path: &Path) -> Result<Arc<str>, LoadError> {
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .ok_or_else(|| LoadError::new(path, "file name is not valid UTF-8"))?;
    if stem.is_empty() || stem.chars().any(char::is_control) {
        return Err(LoadError::new(
            path,
            "file name is not a usable subscriber id",
        ));
    }
    Ok(stem.into())
}

/// Compile, instantiate and register one plugin file, with its sidecar.
/// Blocking: call it off the async runtime.
pub(crate) fn load(
    sandbox: &Sandbox,
    path: &Path,
    defaults: SubscriberSettings,
) -> Result<LoadedPlugin, LoadError> {
    let id = subscriber_id(path)?;
    let sidecar_path = path.with_extension("toml");
    let sidecar = if sidecar_path.is_file() {
        Sidecar::load(&sidecar_path).map_err(|e| LoadError::new(path, format!("sidecar {e}")))?
    } else {
        Sidecar::default()
    };
    let settings = sidecar
        .limits
        .apply_to(defaults)
        .map_err(|e| LoadError::new(path, format!("sidecar {}: {e}", sidecar_path.display())))?;
    let pre = sandbox.compile(path)?;
    let (subscriber, registration) = WasmSubscriber::start(
        sandbox,
        id.clone(),
        path,
        pre,
        settings.plugin,
        sidecar.config_pairs(),
    )?;
    let channels = sidecar.channels.unwrap_or(registration.channels);
    for name in &channels {
        channel::validate(name).map_err(|e| LoadError::new(path, format!("bad channel: {e}")))?;
    }
    if channels.is_empty() {
        tracing::warn!(subscriber = %id, "plugin subscribed to no channels");
    }
    Ok(LoadedPlugin {
        id,
        path: path.to_owned(),
        channels,
        settings,
        subscriber,
    })
}
