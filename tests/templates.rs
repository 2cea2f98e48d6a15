//! `pgnotifier new` for each of the five languages, as an author starts: the
//! project it writes is built with its own `./build` (the recipes of
//! `plugins/build`, with the tools `plugins/build` installed), and
//! `pgnotifier call` with a JSON payload prints the template's line. The
//! Rust project's `./test` also runs its unit tests natively, against the
//! SDK's mock host.

use crate::support::host::BIN;
use std::path::{Path, PathBuf};
use std::process::Command;

/// `pgnotifier new NAME --lang LANG --dir DIR`; the project folder.
fn new_project(lang: &str) -> PathBuf {
    let dir = crate::support::temp_dir(&format!("new-{lang}"));
    let name = format!("my-{lang}");
    let out = Command::new(BIN)
        .args(["new", &name, "--lang", lang, "--dir"])
        .arg(&dir)
        .output()
        .expect("run pgnotifier new");
    assert!(
        out.status.success(),
        "pgnotifier new: {}",
        text(&out.stderr)
    );
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("./build"),
        "new names the build command: {stdout}"
    );
    let project = dir.join(&name);
    for file in [
        "build",
        "test",
        "README.md",
        "wit/plugin.wit",
        &format!("{name}.toml"),
    ] {
        assert!(project.join(file).is_file(), "{lang} project lacks {file}");
    }
    project
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Run a project's script (`build` or `test`) with `pgnotifier` on PATH.
fn script(project: &Path, name: &str) -> String {
    let bin_dir = Path::new(BIN).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    // Native builds (`cargo test` in the Rust project) get a target folder of
    // their own: the one this test runs from stays locked by its cargo.
    let cache = std::env::var_os("PGNOTIFIER_CACHE").map_or_else(
        || Path::new(&std::env::var_os("HOME").unwrap_or_default()).join(".cache/pgnotifier"),
        PathBuf::from,
    );
    let out = Command::new(project.join(name))
        .current_dir(project)
        .env("PATH", path)
        .env("CARGO_TARGET_DIR", cache.join("template-target"))
        .output()
        .unwrap_or_else(|e| panic!("run {}/{name}: {e}", project.display()));
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(
        out.status.success(),
        "{}/{name} failed ({}); the tools come from plugins/build, which .ci/run runs first:\n{all}",
        project.display(),
        out.status
    );
    all
}

/// Build a new project, then call it with `{"id": 7}` on `orders`.
fn builds_and_calls(lang: &str, expected: &str) -> PathBuf {
    let project = new_project(lang);
    script(&project, "build");
    let name = project.file_name().unwrap().to_str().unwrap().to_owned();
    let wasm = project.join(format!("{name}.wasm"));
    assert!(wasm.is_file(), "./build made no {}", wasm.display());
    let out = Command::new(BIN)
        .arg("call")
        .arg(&wasm)
        .args(["--channel", "orders", "--payload", r#"{"id": 7}"#])
        .output()
        .expect("run pgnotifier call");
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "call failed:\n{stdout}{stderr}");
    assert!(
        stdout.contains(r#"on-notify(orders, Payload::Json("{\"id\":7}"), pid 0): ok"#),
        "call says what the plugin got and returned: {stdout}"
    );
    assert!(
        stderr.contains(expected) && stderr.contains(&format!("subscriber={name}")),
        "{lang}: expected the plugin to log {expected:?}:\n{stderr}"
    );
    project
}

#[test]
fn rust_template_builds_calls_and_tests_natively() {
    let project = builds_and_calls("rust", "received order 7 on orders");
    let vendored = project.join("vendor/pgnotifier-plugin/Cargo.toml");
    assert!(vendored.is_file(), "the SDK is vendored");
    let out = script(&project, "test");
    assert!(
        out.contains("test result: ok. 1 passed") || out.contains("1 passed"),
        "cargo test ran the template's unit test:\n{out}"
    );
    assert!(out.contains("test: ok"), "{out}");
}

#[test]
fn c_template_builds_and_calls() {
    builds_and_calls("c", r#"received json {"id":7} on orders"#);
}

#[test]
fn python_template_builds_and_calls() {
    builds_and_calls("python", "received order 7 on orders");
}

#[test]
fn js_template_builds_and_calls() {
    builds_and_calls("js", "received order 7 on orders");
}

#[test]
fn wat_template_builds_and_calls() {
    builds_and_calls("wat", r#"got json {"id":7}"#);
}

#[test]
fn new_refuses_a_bad_name_and_a_used_folder() {
    let dir = crate::support::temp_dir("new-refused");
    let run = |name: &str| {
        Command::new(BIN)
            .args(["new", name, "--lang", "wat", "--dir"])
            .arg(&dir)
            .output()
            .unwrap()
    };
    let bad = run("Bad Name");
    assert!(!bad.status.success());
    assert!(
        text(&bad.stderr).contains(r#"plugin name "Bad Name": use a lowercase letter"#),
        "{}",
        text(&bad.stderr)
    );
    assert!(run("fine").status.success());
    let again = run("fine");
    assert!(!again.status.success());
    assert!(
        text(&again.stderr).contains("already exists and is not empty"),
        "{}",
        text(&again.stderr)
    );
}
