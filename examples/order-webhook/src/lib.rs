//! On `orders_changed`, fetch the changed row and POST it to a webhook.
//!
//! The trigger in `orders.sql` sends only the key (`{"op": "UPDATE", "id": 42}`),
//! as a NOTIFY payload should: the row is read here, when it is delivered, so
//! the webhook always gets the row as it is now. A deleted row is sent as
//! `"order": null`.
//!
//! Delivery is at least once (the sidecar's `delivery`, the trigger's
//! `pgnotifier.send`): a webhook that does not answer 2xx fails the call,
//! which the host retries, then dead-letters. An event may therefore be
//! posted twice; each post carries `Idempotency-Key: order-event-<event id>`,
//! the same on every delivery of one event, so the receiver can drop repeats.

use pgnotifier_plugin::{http, info, query, Config, Notification, Payload, Plugin};
use serde_json::{json, Value};

struct OrderWebhook {
    webhook: String,
}

impl Plugin for OrderWebhook {
    fn register(_id: &str, config: &Config) -> Result<(Self, Vec<String>), String> {
        let webhook = config
            .get("webhook")
            .ok_or("config `webhook` is missing: the URL to POST each order to")?
            .to_owned();
        Ok((OrderWebhook { webhook }, vec!["orders_changed".into()]))
    }

    fn on_notify(&mut self, n: Notification<'_>) -> Result<(), String> {
        let (op, id) = key_of(n.payload)?;
        let rows = query("SELECT * FROM orders WHERE id = $1", &[&id.to_string()])?;
        let rows: Vec<Value> =
            serde_json::from_str(&rows).map_err(|e| format!("rows are not JSON: {e}"))?;
        let order = rows.into_iter().next().unwrap_or(Value::Null);
        let body = json!({ "op": op, "id": id, "order": order }).to_string();
        // A live notification (a plain pg_notify) has no event: no key.
        let key = n.event().map(|event| format!("order-event-{}", event.id));
        let mut headers = vec![("content-type", "application/json")];
        if let Some(key) = &key {
            headers.push(("idempotency-key", key));
        }
        let response = http::request("POST", &self.webhook, &headers, body.as_bytes())?;
        if !(200..300).contains(&response.status) {
            return Err(format!("webhook answered {} for order {id}", response.status));
        }
        let attempt = n.event().map_or(1, |event| event.attempt);
        info(&format!(
            "order {id} ({op}) posted: {} (attempt {attempt})",
            response.status
        ));
        Ok(())
    }
}

/// `{"op": ..., "id": N}` from the trigger, or a bare id.
fn key_of(payload: &Payload) -> Result<(String, i64), String> {
    match payload {
        Payload::Integer(id) => Ok(("UPDATE".into(), *id)),
        Payload::Json(text) => {
            let v: Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
            let id = v["id"]
                .as_i64()
                .ok_or_else(|| format!("no integer `id` in {text}"))?;
            let op = v["op"].as_str().unwrap_or("UPDATE").to_owned();
            Ok((op, id))
        }
        other => Err(format!("expected an order key, got {other:?}")),
    }
}

pgnotifier_plugin::export!(OrderWebhook);
