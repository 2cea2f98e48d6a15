//! Test fixture: each JSON payload names one capability call, and the plugin
//! logs its outcome as `<op> ok <value>` or `<op> err <message>`:
//! - `{"publish": [channel, payload]}`
//! - `{"publish_sized": [channel, n]}` (a payload of `n` times `x`)
//! - `{"query": [sql, param, ...]}`
//! - `{"http": [url, body]}` (a POST; logs the status and the response body)
//!
//! Any other payload is logged as `received <channel> <payload>`, which is
//! how a chained plugin shows what it got. An op ending in `!` (`"query!"`)
//! returns the call's error as the plugin's, so failures are counted (the
//! benchmark relies on it).

use pgnotifier_plugin::{
    anyhow, http, info, publish, query, Config, Notification, Payload, Plugin, Result,
};
use serde_json::value::RawValue;
use serde_json::Value;

struct Capable;

impl Plugin for Capable {
    fn register(_id: &str, config: &Config) -> Result<(Self, Vec<String>)> {
        Ok((Capable, config.get_or("channels", Vec::new())?))
    }

    fn on_notify(&mut self, n: Notification<'_>) -> Result<()> {
        let text = match n.payload {
            Payload::Json(text) | Payload::Text(text) => text.as_str(),
            other => {
                info!("received {} {other:?}", n.channel);
                return Ok(());
            }
        };
        let command: Option<(String, Vec<String>)> =
            serde_json::from_str::<Value>(text).ok().and_then(|v| {
                let (op, args) = v.as_object()?.iter().next()?;
                let args = args
                    .as_array()?
                    .iter()
                    .map(|a| a.as_str().map(str::to_owned))
                    .collect::<Option<Vec<_>>>()?;
                Some((op.clone(), args))
            });
        let Some((op, args)) = command else {
            info!("received {} {text}", n.channel);
            return Ok(());
        };
        let arg = |i: usize| args.get(i).map(String::as_str).unwrap_or("");
        let strict = op.ends_with('!');
        let op = op.trim_end_matches('!');
        let outcome = match op {
            "publish" => publish(arg(0), arg(1)).map(|()| String::new()),
            "publish_sized" => {
                let n: usize = arg(1).parse().map_err(|_| anyhow!("n is not a number"))?;
                publish(arg(0), &"x".repeat(n)).map(|()| String::new())
            }
            "query" => {
                let params: Vec<&str> = args.iter().skip(1).map(String::as_str).collect();
                // Each row's JSON as the host wrote it.
                query::<Box<RawValue>>(arg(0), &params).map(|rows| {
                    let rows: Vec<&str> = rows.iter().map(|r| r.get()).collect();
                    format!("[{}]", rows.join(","))
                })
            }
            "http" => http::post(arg(0), "application/json", arg(1).as_bytes())
                .map(|r| format!("{} {}", r.status, String::from_utf8_lossy(&r.body))),
            other => Err(anyhow!("unknown op {other}")),
        };
        match outcome {
            Ok(value) if strict => drop(value),
            Ok(value) => info!("{op} ok {value}"),
            Err(message) if strict => return Err(message),
            Err(message) => info!("{op} err {message}"),
        }
        Ok(())
    }
}

pgnotifier_plugin::export!(Capable);
