//! {{name}}: a pgnotifier subscriber. It logs each order it is sent
//! (`{"id": 7, …}`) and any other payload as its case and value.

use pgnotifier_plugin::{info, Config, Notification, Payload, Plugin, Result};
use serde::Deserialize;

struct Subscriber {
    greeting: String,
}

/// The payload an order channel sends; other fields are ignored.
#[derive(Deserialize)]
struct Order {
    id: i64,
}

impl Plugin for Subscriber {
    fn register(_id: &str, config: &Config) -> Result<(Self, Vec<String>)> {
        let greeting = config.get_or("greeting", "received".to_owned())?;
        // The sidecar's `channels` overrides these.
        Ok((Subscriber { greeting }, vec!["orders".into()]))
    }

    fn on_notify(&mut self, n: Notification<'_>) -> Result<()> {
        match n.payload.json::<Order>() {
            Ok(order) => info!("{} order {} on {}", self.greeting, order.id, n.channel),
            Err(_) => info!("{} {} on {}", self.greeting, describe(n.payload), n.channel),
        }
        Ok(())
    }
}

fn describe(payload: &Payload) -> String {
    match payload {
        Payload::Null => "null".into(),
        Payload::Boolean(b) => format!("boolean {b}"),
        Payload::Integer(i) => format!("integer {i}"),
        Payload::Float(f) => format!("float {f}"),
        Payload::Text(t) => format!("text {t:?}"),
        Payload::Json(j) => format!("json {j}"),
    }
}

pgnotifier_plugin::export!(Subscriber);

#[cfg(test)]
mod tests {
    use super::*;
    use pgnotifier_plugin::testing::MockHost;

    #[test]
    fn orders_are_logged_by_id_and_the_rest_by_case() {
        let mut host = MockHost::new();
        host.config("greeting", "saw");
        let mut plugin = host.register::<Subscriber>("{{name}}").unwrap();
        assert_eq!(plugin.channels(), ["orders"]);

        plugin.notify("orders", r#"{"id": 7, "total": 12.5}"#).unwrap();
        plugin.notify("orders", "42").unwrap();
        plugin.notify("orders", "hello").unwrap();

        assert_eq!(
            host.logged(),
            [
                "saw order 7 on orders",
                "saw integer 42 on orders",
                r#"saw text "hello" on orders"#,
            ]
        );
    }
}
