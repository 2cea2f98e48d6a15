//! pgnotifier test fixture: a sink for at-least-once delivery. It logs each
//! text payload as `sink PAYLOAD #ID @ATTEMPT KEY` as a call ends, reading
//! the event through `delivery.current-event` (`#- @- -` for a live
//! notification), and fails an event's first `fail_attempts` attempts
//! (config, default 0). With `log_start = "true"` it also logs
//! `sink-start PAYLOAD #ID @ATTEMPT TAG` as a call starts; between the two it
//! spins `spin` thousand rounds (default 0), so calls take time. With
//! `wait_queries = N` (and a query grant) it also waits in the database,
//! N times `pg_sleep(0.2)`, logging `sink-wait PAYLOAD TAG ROUND` before
//! each (`tag`: config, default `-`), so a call takes wall-clock time but
//! little CPU; a failed query fails the call. With `record = SQL` (and a
//! `query_write` grant) it runs SQL with the payload as `$1` as a call
//! ends, so a test can read back more events than logs keep. A gap is
//! logged as `gap CHANNELS CAUSE`.

wit_bindgen::generate!({ world: "plugin", path: "../../../wit" });

use exports::pgnotifier::plugin::subscriber::{Guest, Payload, Registration};
use pgnotifier::plugin::delivery::{current_event, current_gap, GapCause};
use pgnotifier::plugin::host::{log, Level};
use pgnotifier::plugin::query::query;
use std::cell::Cell;

struct Sink;

thread_local! {
    static FAIL_ATTEMPTS: Cell<u32> = const { Cell::new(0) };
    static SPIN: Cell<u64> = const { Cell::new(0) };
    static LOG_START: Cell<bool> = const { Cell::new(false) };
    static WAIT_QUERIES: Cell<u32> = const { Cell::new(0) };
    static TAG: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
    static RECORD: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
}

impl Guest for Sink {
    fn register(_id: String, config: Vec<(String, String)>) -> Result<Registration, String> {
        let get = |key: &str| {
            config
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
        };
        let fail = get("fail_attempts").unwrap_or("0");
        let fail = fail
            .parse()
            .map_err(|_| format!("fail_attempts = {fail:?} is not a whole number"))?;
        FAIL_ATTEMPTS.set(fail);
        let spin = get("spin").unwrap_or("0");
        let spin: u64 = spin
            .parse()
            .map_err(|_| format!("spin = {spin:?} is not a whole number"))?;
        SPIN.set(spin * 1000);
        LOG_START.set(get("log_start") == Some("true"));
        let waits = get("wait_queries").unwrap_or("0");
        let waits = waits
            .parse()
            .map_err(|_| format!("wait_queries = {waits:?} is not a whole number"))?;
        WAIT_QUERIES.set(waits);
        TAG.with_borrow_mut(|tag| *tag = get("tag").unwrap_or("-").to_owned());
        RECORD.with_borrow_mut(|sql| *sql = get("record").unwrap_or_default().to_owned());
        let channels = get("channels").unwrap_or("work");
        Ok(Registration {
            channels: channels.split(',').map(|c| c.trim().to_string()).collect(),
        })
    }

    fn on_notify(_id: String, _channel: String, payload: Payload, _pid: i32) -> Result<(), String> {
        let Payload::Text(text) = payload else {
            return Ok(());
        };
        let event = current_event();
        let (id, attempt, key) = match &event {
            Some(event) => (
                event.id.to_string(),
                event.attempt.to_string(),
                event.key.clone(),
            ),
            None => ("-".into(), "-".into(), "-".into()),
        };
        let tag = TAG.with_borrow(|tag| tag.clone());
        if LOG_START.get() {
            log(
                Level::Info,
                &format!("sink-start {text} #{id} @{attempt} {tag}"),
            );
        }
        if let Some(event) = &event {
            if event.attempt <= FAIL_ATTEMPTS.get() {
                return Err(format!("attempt {} of {text} fails", event.attempt));
            }
        }
        for round in 0..WAIT_QUERIES.get() {
            log(Level::Info, &format!("sink-wait {text} {tag} {round}"));
            query("select pg_sleep(0.2)", &[])?;
        }
        let mut x = 0u64;
        for round in 0..SPIN.get() {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(round));
        }
        std::hint::black_box(x);
        let record = RECORD.with_borrow(|sql| sql.clone());
        if !record.is_empty() {
            query(&record, std::slice::from_ref(&text))?;
        }
        log(Level::Info, &format!("sink {text} #{id} @{attempt} {key}"));
        Ok(())
    }

    fn on_gap(_id: String, channels: Vec<String>) {
        let cause = match current_gap().map(|gap| gap.cause) {
            Some(GapCause::ConnectionLost(_)) => "connection-lost".to_owned(),
            Some(GapCause::Pruned(events)) => format!("pruned {events}"),
            None => "unknown".to_owned(),
        };
        log(Level::Info, &format!("gap {} {cause}", channels.join(",")));
    }
}

export!(Sink);
