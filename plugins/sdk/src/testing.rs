//! Unit tests of a plugin on the host target: `cargo test` runs the plugin's
//! own code against a [`MockHost`] that records what it logs, publishes,
//! queries and sends, and answers queries and HTTP from fixtures.
//!
//! See the crate's example: a `#[test]` makes a `MockHost`, sets config,
//! registers the plugin, notifies it, and asserts on what it logged.
//!
//! Only in native builds: a wasm build has none of this. Grants are not
//! checked here (`pgnotifier call` checks them as the host does).

use crate::{Config, Event, Gap, Level, Notification, Payload, Plugin};
use anyhow::Result;
use serde::Serialize;
use std::cell::RefCell;
use std::rc::Rc;

/// A host for the plugin calls made on this thread. Creating one makes it
/// the thread's host (each `#[test]` runs on a thread of its own).
#[derive(Clone, Default)]
pub struct MockHost {
    state: Rc<RefCell<State>>,
}

#[derive(Default)]
struct State {
    config: Vec<(String, String)>,
    logs: Vec<(Level, String)>,
    published: Vec<(String, String)>,
    queries: Vec<(String, Vec<String>)>,
    query_answers: Vec<(String, Result<String, String>)>,
    requests: Vec<Request>,
    http_answers: Vec<(String, HttpAnswer)>,
    event: Option<Event>,
    gap: Option<Gap>,
}

/// A status and body, or why the request failed.
type HttpAnswer = Result<(u16, Vec<u8>), String>;

/// An HTTP request the plugin sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

thread_local! {
    static CURRENT: RefCell<Option<MockHost>> = const { RefCell::new(None) };
}

impl MockHost {
    pub fn new() -> Self {
        let host = MockHost::default();
        CURRENT.with(|c| *c.borrow_mut() = Some(host.clone()));
        host
    }

    /// Set a `[config]` value, passed as the host passes it: a string as it
    /// is, anything else as JSON.
    pub fn config(&mut self, key: &str, value: impl Serialize) -> &mut Self {
        let value = match serde_json::to_value(value) {
            Ok(serde_json::Value::String(s)) => s,
            Ok(other) => other.to_string(),
            Err(e) => panic!("config {key}: {e}"),
        };
        self.state.borrow_mut().config.push((key.to_owned(), value));
        self
    }

    /// Answer `query(sql, …)` with these rows (a JSON array of objects).
    pub fn answer_query(&mut self, sql: &str, rows: serde_json::Value) -> &mut Self {
        let answer = (normalize(sql), Ok(rows.to_string()));
        self.state.borrow_mut().query_answers.push(answer);
        self
    }

    /// Make `query(sql, …)` fail with `message`, as a database error would.
    pub fn fail_query(&mut self, sql: &str, message: &str) -> &mut Self {
        let answer = (normalize(sql), Err(message.to_owned()));
        self.state.borrow_mut().query_answers.push(answer);
        self
    }

    /// Answer requests to `url` with `status` and `body`.
    pub fn answer_http(&mut self, url: &str, status: u16, body: impl Into<Vec<u8>>) -> &mut Self {
        let answer = (url.to_owned(), Ok((status, body.into())));
        self.state.borrow_mut().http_answers.push(answer);
        self
    }

    /// The durable event the next calls are delivering (`Notification::event`).
    pub fn set_event(&mut self, event: Option<Event>) -> &mut Self {
        self.state.borrow_mut().event = event;
        self
    }

    /// Run `register` with the config set so far.
    pub fn register<P: Plugin>(&self, id: &str) -> Result<Subscriber<P>> {
        let config = Config::new(self.state.borrow().config.clone());
        let (plugin, channels) = P::register(id, &config)?;
        Ok(Subscriber {
            id: id.to_owned(),
            plugin,
            channels,
        })
    }

    /// Every line logged, with its level.
    pub fn logs(&self) -> Vec<(Level, String)> {
        self.state.borrow().logs.clone()
    }

    /// Every message logged, at any level.
    pub fn logged(&self) -> Vec<String> {
        self.state
            .borrow()
            .logs
            .iter()
            .map(|(_, m)| m.clone())
            .collect()
    }

    /// Every `(channel, payload)` published.
    pub fn published(&self) -> Vec<(String, String)> {
        self.state.borrow().published.clone()
    }

    /// Every `(sql, params)` queried.
    pub fn queries(&self) -> Vec<(String, Vec<String>)> {
        self.state.borrow().queries.clone()
    }

    /// Every HTTP request sent.
    pub fn requests(&self) -> Vec<Request> {
        self.state.borrow().requests.clone()
    }

    fn current() -> MockHost {
        CURRENT.with(|c| c.borrow().clone()).unwrap_or_else(|| {
            panic!("a plugin call ran natively with no MockHost: create one with MockHost::new()")
        })
    }
}

/// A registered plugin, called as the host would call it.
pub struct Subscriber<P> {
    id: String,
    plugin: P,
    channels: Vec<String>,
}

impl<P: Plugin> Subscriber<P> {
    /// The channels `register` named.
    pub fn channels(&self) -> &[String] {
        &self.channels
    }

    /// The plugin value, to inspect its state.
    pub fn plugin(&self) -> &P {
        &self.plugin
    }

    /// Deliver `payload` on `channel` (pid 1), decoded as the host decodes it.
    pub fn notify(&mut self, channel: &str, payload: &str) -> Result<()> {
        self.notify_from(channel, payload, 1)
    }

    /// Deliver `payload` on `channel` from backend `pid`.
    pub fn notify_from(&mut self, channel: &str, payload: &str, pid: i32) -> Result<()> {
        let payload = decode(payload);
        self.plugin.on_notify(Notification {
            id: &self.id,
            channel,
            payload: &payload,
            pid,
        })
    }

    /// Tell the plugin it may have missed notifications on `channels`.
    pub fn gap(&mut self, channels: &[&str], gap: Option<Gap>) {
        MockHost::current().state.borrow_mut().gap = gap;
        let channels: Vec<String> = channels.iter().map(|c| (*c).to_owned()).collect();
        self.plugin.on_gap(&channels);
    }
}

/// A payload's text as the host's typed decoding makes it: JSON scalars as
/// their cases, objects and arrays as compact JSON, anything else as text.
/// (The host also keeps a number that `f64` cannot hold exactly as `json`.)
pub fn decode(raw: &str) -> Payload {
    let trimmed = raw.trim_matches(|c| matches!(c, ' ' | '\t' | '\n' | '\r'));
    let text = || Payload::Text(raw.to_owned());
    match serde_json::from_str::<serde_json::Value>(trimmed) {
        Err(_) => text(),
        Ok(serde_json::Value::Null) => Payload::Null,
        Ok(serde_json::Value::Bool(b)) => Payload::Boolean(b),
        Ok(serde_json::Value::String(s)) => Payload::Text(s),
        Ok(serde_json::Value::Number(n)) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) if !trimmed.contains(['.', 'e', 'E']) => Payload::Integer(i),
            (_, Some(f)) if trimmed.contains(['.', 'e', 'E']) => Payload::Float(f),
            _ => Payload::Json(trimmed.to_owned()),
        },
        Ok(_) => Payload::Json(compact(trimmed)),
    }
}

/// Valid JSON without the whitespace between tokens, keys in their order.
fn compact(json: &str) -> String {
    let mut out = String::with_capacity(json.len());
    let (mut in_string, mut escaped) = (false, false);
    for c in json.chars() {
        if in_string {
            out.push(c);
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => in_string = false,
                _ => {}
            }
        } else if !matches!(c, ' ' | '\t' | '\n' | '\r') {
            in_string = c == '"';
            out.push(c);
        }
    }
    out
}

/// SQL compared without differences in whitespace.
fn normalize(sql: &str) -> String {
    sql.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The host imports, natively: each goes to the thread's [`MockHost`].
pub(crate) mod host {
    use super::{normalize, MockHost, Request};
    use crate::{Event, Gap, Level};

    pub fn log(level: Level, message: &str) {
        eprintln!("{level:?}: {message}");
        let host = MockHost::current();
        host.state
            .borrow_mut()
            .logs
            .push((level, message.to_owned()));
    }

    pub fn publish(channel: &str, payload: &str) -> Result<(), String> {
        let host = MockHost::current();
        let mut state = host.state.borrow_mut();
        state
            .published
            .push((channel.to_owned(), payload.to_owned()));
        Ok(())
    }

    pub fn query(sql: &str, params: &[String]) -> Result<String, String> {
        let host = MockHost::current();
        let mut state = host.state.borrow_mut();
        state.queries.push((sql.to_owned(), params.to_vec()));
        let key = normalize(sql);
        match state.query_answers.iter().find(|(s, _)| *s == key) {
            Some((_, answer)) => answer.clone(),
            None => Err(format!(
                "the MockHost has no answer for {sql:?}: give it one with answer_query"
            )),
        }
    }

    #[cfg_attr(not(feature = "http"), allow(dead_code))]
    pub fn http(request: Request) -> super::HttpAnswer {
        let host = MockHost::current();
        let mut state = host.state.borrow_mut();
        let answer = match state.http_answers.iter().find(|(u, _)| *u == request.url) {
            Some((_, answer)) => answer.clone(),
            None => Err(format!(
                "the MockHost has no answer for {} {}: give it one with answer_http",
                request.method, request.url
            )),
        };
        state.requests.push(request);
        answer
    }

    pub fn current_event() -> Option<Event> {
        MockHost::current().state.borrow().event.clone()
    }

    pub fn current_gap() -> Option<Gap> {
        MockHost::current().state.borrow().gap.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug, PartialEq)]
    struct Row {
        n: i64,
    }

    #[test]
    fn capabilities_are_recorded_and_answered_from_fixtures() {
        let mut host = MockHost::new();
        host.answer_query(
            "SELECT n\n FROM t WHERE id = $1",
            serde_json::json!([{"n": 1}]),
        )
        .fail_query("SELECT boom", "ERROR: boom");
        crate::publish("out", "hi").unwrap();
        let rows: Vec<Row> = crate::query("SELECT n FROM t WHERE id = $1", &["7"]).unwrap();
        assert_eq!(rows, [Row { n: 1 }]);
        let e = crate::query::<Row>("SELECT boom", &[]).unwrap_err();
        assert_eq!(e.to_string(), "ERROR: boom");
        let e = crate::query::<Row>("SELECT other", &[]).unwrap_err();
        assert!(
            e.to_string().contains("no answer for \"SELECT other\""),
            "{e}"
        );
        crate::info!("n = {}", rows[0].n);
        assert_eq!(host.published(), [("out".to_owned(), "hi".to_owned())]);
        assert_eq!(host.queries().len(), 3);
        assert_eq!(host.queries()[0].1, ["7"]);
        assert_eq!(host.logs(), [(Level::Info, "n = 1".to_owned())]);
    }

    #[cfg(feature = "http")]
    #[test]
    fn http_is_recorded_and_answered() {
        let mut host = MockHost::new();
        host.answer_http("https://hooks.test/a", 202, "ok");
        let r = crate::http::post("https://hooks.test/a", "application/json", b"{}").unwrap();
        assert_eq!((r.status, r.body.as_slice()), (202, b"ok".as_slice()));
        assert!(crate::http::post("https://hooks.test/b", "text/plain", b"").is_err());
        let sent = host.requests();
        assert_eq!(sent.len(), 2);
        assert_eq!(
            (sent[0].method.as_str(), sent[0].body.as_slice()),
            ("POST", b"{}".as_slice())
        );
    }

    #[test]
    fn payloads_decode_as_the_host_decodes_them() {
        assert_eq!(decode("42"), Payload::Integer(42));
        assert_eq!(decode(" 2.5 "), Payload::Float(2.5));
        assert_eq!(decode("true"), Payload::Boolean(true));
        assert_eq!(decode("null"), Payload::Null);
        assert_eq!(decode(r#""hi""#), Payload::Text("hi".into()));
        assert_eq!(decode("hi there"), Payload::Text("hi there".into()));
        assert_eq!(decode(""), Payload::Text(String::new()));
        assert_eq!(
            decode(r#"{"b": 1, "a": [1, 2], "s": "x y"}"#),
            Payload::Json(r#"{"b":1,"a":[1,2],"s":"x y"}"#.into())
        );
    }
}
