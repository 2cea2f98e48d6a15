//! Host-side bindings generated from the WIT packages in `wit/`.
//!
//! The generated `Payload` is also the library's public payload type, so a
//! decoded payload is handed to guests and native closures without conversion.
//! Plugins built against 0.1.0 to 0.4.0 use [`v0_1`] to [`v0_4`], which
//! share these types, but for 0.3.0's and 0.4.0's durable event, which has
//! no key ([`v0_4`]'s). The optional `batch` export has no generated
//! binding: the sandbox looks it up, and lowers borrowed payloads through
//! [`BatchItem`].

wasmtime::component::bindgen!({
    world: "plugin",
    path: "../wit",
    additional_derives: [PartialEq, serde::Serialize],
});

pub use self::exports::pgnotifier::plugin::subscriber::Registration;
pub use self::pgnotifier::plugin::host::Level;
pub use self::pgnotifier::plugin::types::Payload;

/// The frozen 0.4.0 world: 0.5.0's, without the durable event's key.
pub mod v0_4 {
    wasmtime::component::bindgen!({
        world: "plugin",
        path: "../wit/v0.4.0",
        with: {
            "pgnotifier:plugin/types@0.4.0": super::pgnotifier::plugin::types,
            "pgnotifier:plugin/host@0.4.0": super::pgnotifier::plugin::host,
            "pgnotifier:plugin/publish@0.4.0": super::pgnotifier::plugin::publish,
            "pgnotifier:plugin/query@0.4.0": super::pgnotifier::plugin::query,
        },
    });
}

/// The frozen 0.3.0 world: 0.4.0's `plugin` world, without `batch`.
pub mod v0_3 {
    wasmtime::component::bindgen!({
        world: "plugin",
        path: "../wit/v0.3.0",
        with: {
            "pgnotifier:plugin/types@0.3.0": super::pgnotifier::plugin::types,
            "pgnotifier:plugin/host@0.3.0": super::pgnotifier::plugin::host,
            "pgnotifier:plugin/publish@0.3.0": super::pgnotifier::plugin::publish,
            "pgnotifier:plugin/query@0.3.0": super::pgnotifier::plugin::query,
            "pgnotifier:plugin/delivery@0.3.0": super::v0_4::pgnotifier::plugin::delivery,
        },
    });
}

/// The frozen 0.2.0 world: 0.3.0 without `delivery`.
pub mod v0_2 {
    wasmtime::component::bindgen!({
        world: "plugin",
        path: "../wit/v0.2.0",
        with: {
            "pgnotifier:plugin/types@0.2.0": super::pgnotifier::plugin::types,
            "pgnotifier:plugin/host@0.2.0": super::pgnotifier::plugin::host,
            "pgnotifier:plugin/publish@0.2.0": super::pgnotifier::plugin::publish,
            "pgnotifier:plugin/query@0.2.0": super::pgnotifier::plugin::query,
        },
    });
}

/// The frozen 0.1.0 world: no capabilities, the same types and log levels.
pub mod v0_1 {
    wasmtime::component::bindgen!({
        world: "plugin",
        path: "../wit/v0.1.0",
        with: {
            "pgnotifier:plugin/types@0.1.0": super::pgnotifier::plugin::types,
            "pgnotifier:plugin/host@0.1.0": super::pgnotifier::plugin::host,
        },
    });
}

/// The `batch` interface's export, as a plugin built for `batched-plugin`
/// names it, by the version it targets.
pub const BATCH_INTERFACE: &str = "pgnotifier:plugin/batch@0.5.0";
pub const BATCH_INTERFACE_0_4: &str = "pgnotifier:plugin/batch@0.4.0";
pub const BATCH_FUNCTION: &str = "on-notify-batch";

/// One notification of an `on-notify-batch` call, lowered from the shared
/// payload without copying it first.
#[derive(wasmtime::component::ComponentType, wasmtime::component::Lower)]
#[component(record)]
pub struct BatchItem<'a> {
    pub payload: &'a Payload,
    pub pid: i32,
}

/// A notification of a batch that failed, as the plugin returns it.
#[derive(Debug, wasmtime::component::ComponentType, wasmtime::component::Lift)]
#[component(record)]
pub struct BatchFailure {
    pub index: u32,
    pub message: String,
}

/// The WIT source, for `pgnotifier wit` and plugin authors.
pub const WIT: &str = include_str!("../../wit/plugin.wit");
