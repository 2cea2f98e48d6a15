//! Host-side bindings generated from the WIT packages in `wit/`.
//!
//! The generated `Payload` is also the library's public payload type, so a
//! decoded payload is handed to guests and native closures without conversion.
//! Plugins built against 0.1.0 and 0.2.0 use [`v0_1`] and [`v0_2`], which
//! share these types.

wasmtime::component::bindgen!({
    world: "plugin",
    path: "../wit",
    additional_derives: [PartialEq, serde::Serialize],
});

pub use self::exports::pgnotifier::plugin::subscriber::Registration;
pub use self::pgnotifier::plugin::host::Level;
pub use self::pgnotifier::plugin::types::Payload;

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

/// The WIT source, for `pgnotifier wit` and plugin authors.
pub const WIT: &str = include_str!("../../wit/plugin.wit");
