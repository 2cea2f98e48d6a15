//! The five example plugins (Rust, C, Python, JavaScript, WAT), built from
//! source by `plugins/build`, loaded into one host: each must see every
//! payload case with the right type and value, read back from what it logs,
//! and do its own job. Also: the compile cache covers the large components.

use crate::support::{channel, eventually, logs, payload_cases, send_all, Sender, SOON};
use pgnotifier::sandbox::SandboxSettings;
use pgnotifier::{Notifier, Payload};
use std::path::Path;
use std::time::{Duration, Instant};

/// (plugin, its `[config]` beyond `trace`). Every example understands
/// `trace = "true"`, which logs each payload as `got <case> <value>`; the
/// WAT one always does.
const EXAMPLES: [(&str, &str); 5] = [
    ("json-filter", "keys = \"id,msg=hello\""),
    ("counter", "every = \"5\""),
    ("formatter", ""),
    ("field-filter", "field = \"msg\"\nequals = \"hello\""),
    ("minimal", ""),
];

/// The trace line for `payload`, or for a float, `None`: floats are compared
/// by value (`float_matches`), as each language prints them its own way.
fn trace_line(payload: &Payload) -> Option<String> {
    Some(match payload {
        Payload::Null => "got null".into(),
        Payload::Boolean(b) => format!("got boolean {b}"),
        Payload::Integer(i) => format!("got integer {i}"),
        Payload::Float(_) => return None,
        Payload::Text(t) => format!("got text {t}"),
        Payload::Json(j) => format!("got json {j}"),
    })
}

/// A float printed in decimal, or as `0x` + its IEEE-754 bits (WAT), that is
/// exactly `want`.
fn float_matches(line: &str, want: f64) -> bool {
    let Some(text) = line.strip_prefix("got float ") else {
        return false;
    };
    let got = match text.strip_prefix("0x") {
        Some(bits) => u64::from_str_radix(bits, 16).ok().map(f64::from_bits),
        None => text.parse::<f64>().ok(),
    };
    got.is_some_and(|g| g.to_bits() == want.to_bits())
}

fn traces(id: &str) -> Vec<String> {
    logs::plugin_messages(id)
        .into_iter()
        .filter(|m| m.starts_with("got "))
        .collect()
}

fn copy_example(dir: &Path, name: &str, ch: &str, config: &str) {
    std::fs::copy(
        crate::support::example_plugin(name),
        dir.join(format!("{name}.wasm")),
    )
    .unwrap();
    std::fs::write(
        dir.join(format!("{name}.toml")),
        format!("channels = [\"{ch}\"]\n\n[config]\ntrace = \"true\"\n{config}\n"),
    )
    .unwrap();
}

#[tokio::test]
async fn every_language_sees_every_payload_typed() {
    logs::install();
    let dir = crate::support::temp_dir("languages");
    let ch = channel("langs");
    for (name, config) in EXAMPLES {
        copy_example(&dir, name, &ch, config);
    }

    let n = Notifier::new(crate::support::database());
    for (name, _) in EXAMPLES {
        let started = Instant::now();
        let loaded = n.load_plugin(&dir.join(format!("{name}.wasm"))).await;
        assert_eq!(
            loaded.as_deref().ok(),
            Some(name),
            "loading {name}: {loaded:?}"
        );
        eprintln!("{name}: loaded in {:.0?}", started.elapsed());
    }
    crate::support::listen(&n).await;
    let sender = Sender::connect().await;
    let pid = sender.pid().await;
    let cases = payload_cases();
    send_all(&sender, &ch, &cases).await;

    // Every wrong value of every language, so one run shows them all.
    let mut wrong = Vec::new();
    for (name, _) in EXAMPLES {
        assert!(
            eventually(SOON, || traces(name).len() >= cases.len()).await,
            "{name} traced {} of {} payloads: {:?}",
            traces(name).len(),
            cases.len(),
            traces(name)
        );
        let got = traces(name);
        assert_eq!(got.len(), cases.len(), "{name} traced too much: {got:?}");
        for ((raw, want), line) in cases.iter().zip(&got) {
            let right = match (trace_line(want), want) {
                (Some(expected), _) => *line == expected,
                (None, Payload::Float(f)) => float_matches(line, *f),
                (None, _) => unreachable!("only floats have no fixed line"),
            };
            if !right {
                wrong.push(format!("{name} saw {raw:?} as {line:?}; want {want:?}"));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));

    // Each does its own job too.
    let object = r#"{"id":1,"msg":"hello"}"#;
    let matched = format!("matched on {ch}: {object}");
    for filter in ["json-filter", "field-filter"] {
        let lines: Vec<_> = logs::plugin_messages(filter)
            .into_iter()
            .filter(|m| m.starts_with("matched"))
            .collect();
        assert_eq!(lines, [matched.as_str()], "{filter}");
    }
    let formatted = logs::plugin_messages("formatter");
    for human in [
        "id=1, msg=hello",
        "5 items: 1, 2, 3, 4, 5",
        "9,223,372,036,854,775,807",
        "yes",
        "nothing (null)",
        "(empty)",
        "ünïcødé ✓",
    ] {
        let line = format!("#{ch} from pid {pid}: {human}");
        assert!(
            formatted.contains(&line),
            "formatter never wrote {line:?}: {formatted:?}"
        );
    }
    // The counter keeps state across calls: a summary every 5 of the 19.
    let summaries: Vec<_> = logs::plugin_messages("counter")
        .into_iter()
        .filter(|m| m.starts_with(&format!("{ch}: ")))
        .collect();
    assert_eq!(
        summaries,
        [
            format!(
                "{ch}: 5 notifications (null 0, boolean 0, integer 0, float 0, text 1, json 4)"
            ),
            format!(
                "{ch}: 10 notifications (null 1, boolean 2, integer 2, float 0, text 1, json 4)"
            ),
            format!(
                "{ch}: 15 notifications (null 1, boolean 2, integer 2, float 2, text 2, json 6)"
            ),
        ]
    );
    for (name, _) in EXAMPLES {
        let stats = crate::support::stats_of(&n, name);
        assert_eq!(
            (stats.delivered, stats.failed),
            (cases.len() as u64, 0),
            "{name}: {stats:?}"
        );
    }
    n.shutdown(Duration::from_secs(5)).await;
}

/// The Python and JavaScript components are tens of MB; their compiled code
/// comes from the compile cache the second time, as every plugin's does.
#[tokio::test]
async fn large_components_load_from_the_compile_cache() {
    let dir = crate::support::temp_dir("languages-cache");
    let cache = crate::support::temp_dir("languages-cache-dir");
    let ch = channel("cache");
    for name in ["formatter", "field-filter"] {
        copy_example(&dir, name, &ch, "field = \"id\"");
        let size = std::fs::metadata(dir.join(format!("{name}.wasm")))
            .unwrap()
            .len();
        assert!(
            size > 5_000_000,
            "{name} is only {size} bytes: not the large case"
        );
    }
    let mut loads = Vec::new();
    for round in ["compiled", "cached"] {
        let n = Notifier::builder(crate::support::database())
            .sandbox(SandboxSettings {
                cache_dir: Some(cache.clone()),
                ..SandboxSettings::default()
            })
            .build();
        for name in ["formatter", "field-filter"] {
            let started = Instant::now();
            n.load_plugin(&dir.join(format!("{name}.wasm")))
                .await
                .unwrap();
            loads.push(format!("{name} {round} in {:.0?}", started.elapsed()));
        }
        let stats = n.compile_cache_stats().expect("the cache is on");
        match round {
            "compiled" => assert_eq!((stats.hits, stats.misses), (0, 2), "{stats:?}"),
            _ => assert_eq!((stats.hits, stats.misses), (2, 0), "{stats:?}"),
        }
        n.shutdown(Duration::from_secs(5)).await;
    }
    eprintln!("{}", loads.join("; "));
}
