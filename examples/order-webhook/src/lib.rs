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
//! posted twice; each post carries `Idempotency-Key: order-event-<event key>`,
//! the same on every delivery of one event and never given to another, so
//! the receiver can drop repeats.

use pgnotifier_plugin::{bail, http, info, query, Config, Context, Notification, Plugin, Result};
use serde::Deserialize;
use serde_json::{json, Value};

struct OrderWebhook {
    webhook: String,
}

/// What the trigger sends; a bare id is an update.
#[derive(Deserialize)]
#[serde(untagged)]
enum Key {
    Change {
        #[serde(default = "update")]
        op: String,
        id: i64,
    },
    Id(i64),
}

fn update() -> String {
    "UPDATE".into()
}

impl Plugin for OrderWebhook {
    fn register(_id: &str, config: &Config) -> Result<(Self, Vec<String>)> {
        let webhook = config
            .get("webhook")?
            .context("config `webhook` is missing: the URL to POST each order to")?;
        Ok((OrderWebhook { webhook }, vec!["orders_changed".into()]))
    }

    fn on_notify(&mut self, n: Notification<'_>) -> Result<()> {
        let (op, id) = match n.payload.json()? {
            Key::Change { op, id } => (op, id),
            Key::Id(id) => (update(), id),
        };
        let rows: Vec<Value> = query("SELECT * FROM orders WHERE id = $1", &[&id.to_string()])?;
        let order = rows.into_iter().next().unwrap_or(Value::Null);
        let body = json!({ "op": op, "id": id, "order": order }).to_string();
        // A live notification (a plain pg_notify) has no event: no key.
        let key = n.event().map(|event| format!("order-event-{}", event.key));
        let mut headers = vec![("content-type", "application/json")];
        if let Some(key) = &key {
            headers.push(("idempotency-key", key));
        }
        let response = http::request("POST", &self.webhook, &headers, body.as_bytes())?;
        if !(200..300).contains(&response.status) {
            bail!("webhook answered {} for order {id}", response.status);
        }
        let attempt = n.event().map_or(1, |event| event.attempt);
        info!(
            "order {id} ({op}) posted: {} (attempt {attempt})",
            response.status
        );
        Ok(())
    }
}

pgnotifier_plugin::export!(OrderWebhook);
