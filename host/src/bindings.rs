//! Host-side bindings generated from the WIT package in `wit/`.
//!
//! The generated `Payload` is also the library's public payload type, so a
//! decoded payload is handed to guests and native closures without conversion.

wasmtime::component::bindgen!({
    world: "plugin",
    path: "../wit",
    additional_derives: [PartialEq, serde::Serialize],
});

pub use self::exports::pgnotifier::plugin::subscriber::Registration;
pub use self::pgnotifier::plugin::host::Level;
pub use self::pgnotifier::plugin::types::Payload;

/// The WIT source, for `pgnotifier wit` and plugin authors.
pub const WIT: &str = include_str!("../../wit/plugin.wit");
