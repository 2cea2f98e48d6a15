//! The plugin loader: a plugins folder's files become wasm subscribers.
//!
//! [`PluginFiles::read`] and [`load`] turn one `NAME.wasm` (and its optional
//! `NAME.toml`) into a subscriber ready to register. Start-up runs them for
//! every file; the folder [`sync`](super::sync) runs the same for each file that changes.

use super::settings::{Sidecar, Start, SubscriberSettings};
use crate::capabilities::{CapabilityError, Grants, PluginCapabilities};
use crate::channel;
use crate::durable::rows::TableName;
use crate::durable::DeliveryMode;
use crate::registry::SubscriberSource;
use crate::sandbox::{LoadError, Sandbox, WasmSubscriber, PAYLOADS_IN_MEMORY};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A plugin file and its sidecar, read once.
pub(crate) struct PluginFiles {
    pub(crate) id: Arc<str>,
    pub(crate) path: PathBuf,
    wasm: Vec<u8>,
    sidecar: Option<(PathBuf, String)>,
    /// SHA-256 of the wasm, hex.
    pub(crate) sha256: String,
    /// SHA-256 of the wasm and the sidecar: unchanged means nothing to reload.
    pub(crate) fingerprint: String,
}

impl PluginFiles {
    /// Read `NAME.wasm` and, if present, `NAME.toml`.
    pub(crate) fn read(path: &Path) -> Result<Self, LoadError> {
        let id = subscriber_id(path)?;
        let wasm = crate::files::read(path)
            .map_err(|e| LoadError::new(path, format!("cannot read: {e}")))?;
        let sidecar_path = path.with_extension("toml");
        let sidecar = match crate::files::read_to_string(&sidecar_path) {
            Ok(text) => Some((sidecar_path, text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                return Err(LoadError::new(
                    path,
                    format!("sidecar {}: {e}", sidecar_path.display()),
                ))
            }
        };
        let sha256 = format!("{:x}", Sha256::digest(&wasm));
        let mut both = Sha256::new();
        both.update(&wasm);
        if let Some((_, text)) = &sidecar {
            both.update([0]);
            both.update(text.as_bytes());
        }
        Ok(Self {
            id,
            path: path.to_owned(),
            wasm,
            sidecar,
            sha256,
            fingerprint: format!("{:x}", both.finalize()),
        })
    }

    /// Use `text` (read from `path`) as the sidecar instead.
    pub(crate) fn set_sidecar(&mut self, path: &Path, text: String) {
        self.sidecar = Some((path.to_owned(), text));
    }

    /// Set these `[config]` keys in the sidecar (one is made if none).
    pub(crate) fn set_sidecar_config(&mut self, pairs: &[(&str, &str)]) -> Result<(), LoadError> {
        let (path, text) = self
            .sidecar
            .take()
            .unwrap_or_else(|| (self.path.with_extension("toml"), String::new()));
        let mut table: toml::Table = text
            .parse()
            .map_err(|e| LoadError::new(&path, format!("sidecar: {e}")))?;
        let config = table
            .entry("config")
            .or_insert_with(|| toml::Value::Table(Default::default()));
        let toml::Value::Table(config) = config else {
            return Err(LoadError::new(&path, "sidecar: config is not a table"));
        };
        for (key, value) in pairs {
            config.insert((*key).to_owned(), toml::Value::String((*value).to_owned()));
        }
        let text =
            toml::to_string(&table).map_err(|e| LoadError::new(&path, format!("sidecar: {e}")))?;
        self.sidecar = Some((path, text));
        Ok(())
    }

    /// Where this plugin came from, for the registry.
    pub(crate) fn source(&self, loaded: &LoadedPlugin) -> SubscriberSource {
        SubscriberSource::Plugin {
            path: self.path.clone(),
            sha256: self.sha256.clone(),
            wit: loaded.wit_version.into(),
            fingerprint: self.fingerprint.clone(),
        }
    }
}

/// A plugin that compiled, instantiated and registered.
pub(crate) struct LoadedPlugin {
    pub(crate) channels: Vec<String>,
    /// Tables whose row changes it receives: in the WAL transport's
    /// publication before it is fed.
    pub(crate) tables: Vec<TableName>,
    /// Whether it starts with its tables' current rows.
    pub(crate) start: Start,
    /// Shown by `pgnotifier check`.
    pub(crate) grants: Grants,
    pub(crate) settings: SubscriberSettings,
    pub(crate) subscriber: WasmSubscriber,
    /// The `pgnotifier:plugin` version it targets.
    pub(crate) wit_version: &'static str,
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

/// An at-least-once plugin is handed events up to `max_payload_bytes`: its
/// memory cap must hold [`PAYLOADS_IN_MEMORY`] of them, or the first large
/// event would fail every retry and be dead-lettered.
fn check_room_for_payloads(
    path: &Path,
    memory_bytes: usize,
    max_payload_bytes: u32,
) -> std::result::Result<(), LoadError> {
    let needed = PAYLOADS_IN_MEMORY.saturating_mul(max_payload_bytes as usize);
    if memory_bytes >= needed {
        return Ok(());
    }
    Err(LoadError::new(
        path,
        format!(
            "memory_mib = {} is too small for at-least-once delivery with max_payload_bytes = {max_payload_bytes}: give the plugin at least {} MiB (memory_mib in its sidecar)",
            memory_bytes >> 20,
            needed.div_ceil(1 << 20)
        ),
    ))
}

/// Compile, instantiate and register one plugin, with its sidecar.
/// Blocking: call it off the async runtime.
pub(crate) fn load(
    sandbox: &Sandbox,
    files: &PluginFiles,
    defaults: SubscriberSettings,
) -> Result<LoadedPlugin, LoadError> {
    let path = files.path.as_path();
    let sidecar = match &files.sidecar {
        Some((sidecar_path, text)) => {
            let sidecar = Sidecar::parse(sidecar_path, text)
                .map_err(|e| LoadError::new(path, format!("sidecar {e}")))?;
            let settings = sidecar.limits.apply_to(defaults).map_err(|e| {
                LoadError::new(path, format!("sidecar {}: {e}", sidecar_path.display()))
            })?;
            Some((sidecar, settings))
        }
        None => None,
    };
    let (sidecar, settings) = sidecar.unwrap_or_else(|| (Sidecar::default(), defaults));
    if let DeliveryMode::AtLeastOnce(_) = settings.delivery {
        check_room_for_payloads(
            path,
            settings.plugin.memory_bytes,
            sandbox.max_payload_bytes(),
        )?;
    }
    let mut tables = (sidecar.tables.iter().flatten())
        .map(|name| TableName::parse(name))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| LoadError::new(path, format!("sidecar tables: {e}")))?;
    // "orders" and "public.orders" are one table, followed once.
    let mut seen = std::collections::HashSet::new();
    tables.retain(|table| seen.insert(table.clone()));
    if !tables.is_empty() && !matches!(settings.delivery, DeliveryMode::AtLeastOnce(_)) {
        return Err(LoadError::new(
            path,
            "sidecar tables: row changes are durable events; set delivery = \"at-least-once\"",
        ));
    }
    if sidecar.start == Start::Snapshot && tables.is_empty() {
        return Err(LoadError::new(
            path,
            "sidecar start = \"snapshot\" starts with the current rows of the sidecar's tables, and it names none: add tables = [\"schema.table\"]",
        ));
    }
    let grant_error = |e: CapabilityError| {
        let sidecar_path = files.sidecar.as_ref().map(|(p, _)| p.as_path());
        LoadError::new(
            path,
            format!("sidecar {}: {e}", sidecar_path.unwrap_or(path).display()),
        )
    };
    let grants = sidecar.grants.validate().map_err(grant_error)?;
    if !grants.is_empty() {
        tracing::info!(subscriber = %files.id, %grants, "capabilities granted");
    }
    let capabilities = PluginCapabilities {
        id: files.id.clone(),
        grants: grants.clone(),
        limits: settings.capabilities,
        pool: sandbox.pool(),
        offline: sandbox.offline_mode().clone(),
    };
    capabilities.confine_queries().map_err(grant_error)?;
    let pre = sandbox.compile(path, &files.wasm)?;
    let wit_version = pre.wit_version();
    let (subscriber, registration) = WasmSubscriber::start(
        sandbox,
        files.id.clone(),
        path,
        pre,
        settings.plugin,
        sidecar.config_pairs(),
        capabilities,
    )?;
    let mut channels = sidecar.channels.unwrap_or(registration.channels);
    for table in &tables {
        if !channels.contains(&table.channel()) {
            channels.push(table.channel());
        }
    }
    for name in &channels {
        channel::validate(name).map_err(|e| LoadError::new(path, format!("bad channel: {e}")))?;
    }
    if channels.is_empty() {
        tracing::warn!(subscriber = %files.id, "plugin subscribed to no channels");
    }
    Ok(LoadedPlugin {
        channels,
        tables,
        start: sidecar.start,
        grants,
        settings,
        subscriber,
        wit_version,
    })
}
