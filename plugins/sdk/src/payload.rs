//! Reading a payload as a Rust type.

use crate::config::short_type_name;
use crate::Payload;
use anyhow::{anyhow, Result};
use serde::de::DeserializeOwned;
use serde_json::Value;

impl Payload {
    /// The payload as a `T`, through serde: a JSON object or array into a
    /// struct, map or `Vec`, a scalar into a number, `bool` or `Option`, and
    /// text into a `String`. An error says what the payload is not.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T> {
        let value = match self {
            Payload::Json(text) => return serde_json::from_str(text).map_err(|e| not_a::<T>(e)),
            Payload::Null => Value::Null,
            Payload::Boolean(b) => Value::Bool(*b),
            Payload::Integer(i) => Value::from(*i),
            Payload::Float(f) => Value::from(*f),
            Payload::Text(t) => Value::String(t.clone()),
        };
        T::deserialize(value).map_err(|e| not_a::<T>(e))
    }

    /// The payload's text, when it arrived as text (not JSON).
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Payload::Text(t) => Some(t),
            _ => None,
        }
    }
}

fn not_a<T>(why: serde_json::Error) -> anyhow::Error {
    anyhow!("payload is not {}: {why}", short_type_name::<T>())
}
