//! pgnotifier example plugin (Rust): log the JSON objects that match.
//!
//! `[config] keys = ["order_id", "status=shipped"]` (or `"order_id,status=shipped"`):
//! an object matches when it has every key, and for `key=value`, that value
//! (a string, or any JSON value's text). Everything else is ignored.
//! `trace = true` also logs each payload as `got <case> <value>`, the line
//! every language's example writes.

use pgnotifier_plugin::{info, Config, Notification, Payload, Plugin, Result};
use serde_json::{Map, Value};

struct JsonFilter {
    rules: Vec<(String, Option<String>)>,
    trace: bool,
}

impl Plugin for JsonFilter {
    fn register(_id: &str, config: &Config) -> Result<(Self, Vec<String>)> {
        let rules = config
            .get_or::<Vec<String>>("keys", Vec::new())?
            .into_iter()
            .map(|rule| match rule.split_once('=') {
                Some((key, value)) => (key.trim().to_owned(), Some(value.trim().to_owned())),
                None => (rule, None),
            })
            .collect();
        let plugin = JsonFilter {
            rules,
            trace: config.get_or("trace", false)?,
        };
        Ok((plugin, config.get_or("channels", Vec::new())?))
    }

    fn on_notify(&mut self, n: Notification<'_>) -> Result<()> {
        if self.trace {
            info!("{}", trace_line(n.payload));
        }
        if let (Payload::Json(text), Ok(Value::Object(object))) = (n.payload, n.payload.json()) {
            if self.matches(&object) {
                info!("matched on {}: {text}", n.channel);
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
                (Some(value), Some(want)) => serde_json::to_string(value).is_ok_and(|v| v == *want),
            })
    }
}

/// `got <case> <value>`, text unquoted, as C, Python and JavaScript print it.
fn trace_line(payload: &Payload) -> String {
    match payload {
        Payload::Null => "got null".into(),
        Payload::Boolean(b) => format!("got boolean {b}"),
        Payload::Integer(i) => format!("got integer {i}"),
        Payload::Float(f) => format!("got float {f:?}"),
        Payload::Text(t) => format!("got text {t}"),
        Payload::Json(j) => format!("got json {j}"),
    }
}

pgnotifier_plugin::export!(JsonFilter);

#[cfg(test)]
mod tests {
    use super::*;
    use pgnotifier_plugin::testing::MockHost;

    #[test]
    fn objects_with_every_key_and_value_are_logged() {
        let mut host = MockHost::new();
        host.config("keys", ["id", "status=shipped"])
            .config("channels", "orders");
        let mut filter = host.register::<JsonFilter>("json-filter").unwrap();
        assert_eq!(filter.channels(), ["orders"]);

        filter
            .notify("orders", r#"{"id": 1, "status": "shipped"}"#)
            .unwrap();
        filter
            .notify("orders", r#"{"id": 2, "status": "new"}"#)
            .unwrap();
        filter.notify("orders", r#"{"status": "shipped"}"#).unwrap();
        filter.notify("orders", "not json").unwrap();
        filter.notify("orders", "[1, 2]").unwrap();

        assert_eq!(
            host.logged(),
            [r#"matched on orders: {"id":1,"status":"shipped"}"#]
        );
    }

    #[test]
    fn a_value_rule_compares_any_json_value_by_its_text() {
        let mut host = MockHost::new();
        host.config("keys", "n=3, ok=true");
        let mut filter = host.register::<JsonFilter>("json-filter").unwrap();
        filter.notify("c", r#"{"n": 3, "ok": true}"#).unwrap();
        filter.notify("c", r#"{"n": "3", "ok": true}"#).unwrap();
        filter.notify("c", r#"{"n": 4, "ok": true}"#).unwrap();
        filter.notify("c", r#"{"n": 3, "ok": "yes"}"#).unwrap();
        assert_eq!(
            host.logged(),
            [
                r#"matched on c: {"n":3,"ok":true}"#,
                r#"matched on c: {"n":"3","ok":true}"#,
            ]
        );
    }

    #[test]
    fn trace_logs_every_payload_typed() {
        let mut host = MockHost::new();
        host.config("trace", true).config("keys", "never");
        let mut filter = host.register::<JsonFilter>("json-filter").unwrap();
        for payload in ["42", "2.5", "true", "null", "hi", r#"{"a": [1]}"#] {
            filter.notify("c", payload).unwrap();
        }
        assert_eq!(
            host.logged(),
            [
                "got integer 42",
                "got float 2.5",
                "got boolean true",
                "got null",
                "got text hi",
                r#"got json {"a":[1]}"#,
            ]
        );
    }

    #[test]
    fn a_bad_config_value_refuses_the_load_by_name() {
        let mut host = MockHost::new();
        host.config("trace", "sometimes");
        let error = host.register::<JsonFilter>("json-filter").err().unwrap();
        assert!(
            error
                .to_string()
                .starts_with(r#"config trace = "sometimes" is not bool"#),
            "{error}"
        );
    }
}
