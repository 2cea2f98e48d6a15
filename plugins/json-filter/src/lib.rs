//! pgnotifier example plugin (Rust): log the JSON objects that match.
//!
//! `[config] keys = "order_id,status=shipped"`: an object matches when it has
//! every key, and for `key=value`, that value (a string, or any JSON value's
//! text). Everything else is ignored.

use pgnotifier_plugin::{info, Config, Notification, Payload, Plugin};
use serde_json::{Map, Value};

struct JsonFilter {
    rules: Vec<(String, Option<String>)>,
}

impl Plugin for JsonFilter {
    fn register(_id: &str, config: &Config) -> Result<(Self, Vec<String>), String> {
        let rules = config
            .list("keys")
            .into_iter()
            .map(|rule| match rule.split_once('=') {
                Some((key, value)) => (key.trim().to_owned(), Some(value.trim().to_owned())),
                None => (rule, None),
            });
        Ok((
            JsonFilter {
                rules: rules.collect(),
            },
            config.list("channels"),
        ))
    }

    fn on_notify(&mut self, n: Notification<'_>) -> Result<(), String> {
        if let Payload::Json(text) = n.payload {
            if let Ok(Value::Object(object)) = serde_json::from_str(text) {
                if self.matches(&object) {
                    info(&format!("matched on {}: {text}", n.channel));
                }
            }
        }
        Ok(())
    }
}

impl JsonFilter {
    fn matches(&self, object: &Map<String, Value>) -> bool {
        self.rules
            .iter()
            .all(|(key, want)| match (object.get(key), want) {
                (None, _) => false,
                (Some(_), None) => true,
                (Some(Value::String(s)), Some(want)) => s == want,
                (Some(value), Some(want)) => value.to_string() == *want,
            })
    }
}

pgnotifier_plugin::export!(JsonFilter);
