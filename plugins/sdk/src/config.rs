//! The sidecar's `[config]` table, read as typed values.
//!
//! The host passes each value as text: a TOML string as it is, anything else
//! (numbers, booleans, lists, tables) as JSON. So `every = 5`, `every = "5"`
//! and `--config every=5` all read as `5u64`, and a list can be written as
//! `keys = ["a", "b"]` or `keys = "a,b"`.

use anyhow::{anyhow, Result};
use serde::de::{DeserializeOwned, IntoDeserializer};
use serde_json::Value;

#[derive(Debug, Default, Clone)]
pub struct Config(Vec<(String, String)>);

impl Config {
    pub(crate) fn new(pairs: Vec<(String, String)>) -> Self {
        Config(pairs)
    }

    /// The value of `key` as a `T`, or `None` when unset. An error names the
    /// key, its value and the type it is not.
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        let Some(text) = self.text(key) else {
            return Ok(None);
        };
        parse(text).map(Some).map_err(|why| {
            anyhow!(
                "config {key} = {text:?} is not {}: {why}",
                short_type_name::<T>()
            )
        })
    }

    /// The value of `key` as a `T`, or `default` when unset.
    pub fn get_or<T: DeserializeOwned>(&self, key: &str, default: T) -> Result<T> {
        Ok(self.get(key)?.unwrap_or(default))
    }

    /// Every key and its value as the host passed it.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    fn text(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// JSON first (`5`, `true`, `["a"]`), then the text as a string, then the
/// text as a comma-separated list of strings.
fn parse<T: DeserializeOwned>(text: &str) -> Result<T, String> {
    let json_error = match serde_json::from_str::<T>(text) {
        Ok(value) => return Ok(value),
        Err(e) => e,
    };
    let string_error: serde::de::value::Error = match T::deserialize(text.into_deserializer()) {
        Ok(value) => return Ok(value),
        Err(e) => e,
    };
    let items: Vec<Value> = text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| Value::String(s.to_owned()))
        .collect();
    T::deserialize(Value::Array(items)).map_err(|_| {
        // The error of the reading the text looks meant for.
        if serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok() {
            json_error.to_string()
        } else {
            string_error.to_string()
        }
    })
}

/// `u64` for `u64`, `Settings` for `my_plugin::Settings`, `Vec<String>` for
/// `alloc::vec::Vec<alloc::string::String>`.
pub(crate) fn short_type_name<T>() -> String {
    let full = std::any::type_name::<T>();
    let last = |path: &str| path.rsplit("::").next().unwrap_or(path).to_owned();
    let mut out = String::new();
    let mut start = 0;
    for (i, c) in full.char_indices() {
        if !(c.is_alphanumeric() || c == '_' || c == ':') {
            out += &last(&full[start..i]);
            out.push(c);
            start = i + c.len_utf8();
        }
    }
    out + &last(&full[start..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(pairs: &[(&str, &str)]) -> Config {
        Config::new(
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        )
    }

    #[test]
    fn values_read_as_the_type_asked_for() {
        let c = config(&[
            ("n", "5"),
            ("flag", "true"),
            ("list", r#"["a","b"]"#),
            ("commas", "a, b,,c"),
            ("word", "orders"),
            ("number_text", "5"),
        ]);
        assert_eq!(c.get::<u64>("n").unwrap(), Some(5));
        assert_eq!(c.get::<bool>("flag").unwrap(), Some(true));
        assert_eq!(c.get::<Vec<String>>("list").unwrap().unwrap(), ["a", "b"]);
        assert_eq!(
            c.get::<Vec<String>>("commas").unwrap().unwrap(),
            ["a", "b", "c"]
        );
        assert_eq!(c.get::<Vec<String>>("word").unwrap().unwrap(), ["orders"]);
        assert_eq!(c.get::<String>("word").unwrap().unwrap(), "orders");
        assert_eq!(c.get::<String>("number_text").unwrap().unwrap(), "5");
        assert_eq!(c.get::<u64>("missing").unwrap(), None);
        assert_eq!(c.get_or("missing", 7u64).unwrap(), 7);
    }

    #[test]
    fn a_bad_value_names_its_key_and_type() {
        let c = config(&[("n", "five"), ("m", "-1")]);
        let e = c.get::<u64>("n").unwrap_err().to_string();
        assert!(e.starts_with(r#"config n = "five" is not u64: "#), "{e}");
        let e = c.get::<u64>("m").unwrap_err().to_string();
        assert!(e.starts_with(r#"config m = "-1" is not u64: "#), "{e}");
        assert_eq!(short_type_name::<Vec<String>>(), "Vec<String>");
    }
}
