//! `pgnotifier demo`, as a newcomer runs it: `--once` runs the script and
//! exits, and the output shows what each subscriber received.

use crate::support::host::BIN;
use std::process::{Command, Output};

fn demo(configure: impl FnOnce(&mut Command)) -> (Output, String) {
    let mut command = Command::new(BIN);
    command
        .args(["demo", "--once"])
        .env_remove("PGNOTIFIER_LOG")
        .env_remove("DATABASE_URL");
    configure(&mut command);
    let out = command.output().expect("run pgnotifier demo");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out, text)
}

/// What every run of the script must show, whichever database it used.
fn assert_script_delivered(out: &str) {
    // The native closures, with typed payloads.
    for expected in [
        r#"42 got (42, "ch1", text "WARNING: Something really bad happened", "#,
        r#"42 got (42, "ch1", json {"topic":"abc","data":"some data","something":"else"}, "#,
        r#"42 got (42, "ch1", integer 42, "#,
        r#"42 got (42, "ch1", float 2.5, "#,
        r#"42 got (42, "ch1", boolean true, "#,
        r#"42 got (42, "ch1", text "plain words, not JSON", "#,
    ] {
        assert!(out.contains(expected), "missing {expected:?} in:\n{out}");
    }
    assert_eq!(
        out.matches("an_id: I'm just going to ignore that.").count(),
        2,
        "{out}"
    );
    // The WAT plugin, with raw payloads, on ch1 and ch2.
    for expected in [
        r#"ch1: "WARNING: Something really bad happened" subscriber=echo"#,
        r#"ch2: {"topic": "xyz", "notice": "update", "data": [2, "stuff"]} subscriber=echo"#,
        "ch2: [1,2,3,4,5] subscriber=echo",
    ] {
        assert!(out.contains(expected), "missing {expected:?} in:\n{out}");
    }
    // ch3 has no subscriber: nothing received it.
    assert!(!out.contains("ch3: "), "{out}");
    assert!(!out.contains("\"ch3\""), "{out}");
    // The example plugins, when plugins/build has built them (CI does).
    if crate::support::plugins_dist().join("logger.wasm").is_file() {
        assert!(
            out.contains(r#"(logger, "ch1", integer 42, "#),
            "the Rust example plugin's line is missing:\n{out}"
        );
        assert!(out.contains("subscriber=json-filter"), "{out}");
    }
}

#[test]
fn the_demo_starts_a_throwaway_postgres_runs_its_script_and_cleans_up() {
    let (out, text) = demo(|_| {});
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("started a throwaway PostgreSQL on 127.0.0.1:"),
        "{text}"
    );
    assert_script_delivered(&text);
    let removed = text
        .lines()
        .find_map(|l| l.strip_prefix("stopped the throwaway PostgreSQL and removed "))
        .unwrap_or_else(|| panic!("no cleanup line in:\n{text}"));
    assert!(
        !std::path::Path::new(removed.trim()).exists(),
        "{removed} is still there"
    );
}

#[test]
fn the_demo_uses_a_reachable_database_url() {
    let (out, text) = demo(|c| {
        c.env("DATABASE_URL", crate::support::database_url());
    });
    assert!(out.status.success(), "{text}");
    assert!(text.contains("using DATABASE_URL: postgres://"), "{text}");
    assert!(!text.contains("throwaway"), "{text}");
    assert_script_delivered(&text);
}

#[test]
fn without_postgresql_the_demo_says_what_to_install() {
    let empty = crate::support::temp_dir("no-pg-bin");
    let (out, text) = demo(|c| {
        c.env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")
            .env("PGNOTIFIER_PG_BIN_DIR", &empty);
    });
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("is unreachable"), "{text}");
    assert!(
        text.contains("install the PostgreSQL server") && text.contains("initdb"),
        "{text}"
    );
}
