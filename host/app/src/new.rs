//! `pgnotifier new NAME --lang LANG`: a plugin project from a template this
//! binary carries, so it builds with no checkout of this repository. It
//! holds the source, a sidecar with every key commented, the WIT, `build`
//! (the recipes `plugins/build` uses, for this one plugin) and `test`, which
//! builds it and calls it offline with `pgnotifier call`. A Rust project also
//! vendors the SDK and has unit tests against its mock host (`cargo test`).

use anyhow::Context;
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Language {
    Rust,
    C,
    Python,
    Js,
    Wat,
}

/// One file of a project: its path inside it, and its text.
struct File {
    path: String,
    text: String,
    executable: bool,
}

const BUILD: &str = include_str!("../../../plugins/build-plugin");
const SIDECAR: &str = include_str!("../templates/sidecar.toml");
const WIT: &str = pgnotifier::bindings::WIT;

/// The SDK's files, vendored into a Rust project (`vendor/pgnotifier-plugin`).
const SDK: [(&str, &str); 9] = [
    (
        "Cargo.toml",
        include_str!("../../../plugins/sdk/Cargo.toml"),
    ),
    (
        "src/lib.rs",
        include_str!("../../../plugins/sdk/src/lib.rs"),
    ),
    (
        "src/capabilities.rs",
        include_str!("../../../plugins/sdk/src/capabilities.rs"),
    ),
    (
        "src/config.rs",
        include_str!("../../../plugins/sdk/src/config.rs"),
    ),
    (
        "src/http.rs",
        include_str!("../../../plugins/sdk/src/http.rs"),
    ),
    (
        "src/log.rs",
        include_str!("../../../plugins/sdk/src/log.rs"),
    ),
    (
        "src/payload.rs",
        include_str!("../../../plugins/sdk/src/payload.rs"),
    ),
    (
        "src/runtime.rs",
        include_str!("../../../plugins/sdk/src/runtime.rs"),
    ),
    (
        "src/testing.rs",
        include_str!("../../../plugins/sdk/src/testing.rs"),
    ),
];

impl Language {
    /// The source files, by path in the project (`{{name}}` filled in later).
    fn sources(self, name: &str) -> Vec<(String, &'static str)> {
        match self {
            Language::Rust => vec![
                (
                    "Cargo.toml".into(),
                    include_str!("../templates/rust/Cargo.toml"),
                ),
                (
                    "src/lib.rs".into(),
                    include_str!("../templates/rust/src/lib.rs"),
                ),
            ],
            Language::C => vec![(format!("{name}.c"), include_str!("../templates/c/plugin.c"))],
            Language::Python => vec![("app.py".into(), include_str!("../templates/python/app.py"))],
            Language::Js => vec![("app.js".into(), include_str!("../templates/js/app.js"))],
            Language::Wat => vec![(
                format!("{name}.wat"),
                include_str!("../../../plugins/minimal/minimal.wat"),
            )],
        }
    }

    /// What `call --channel orders --payload '{"id": 7}'` logs.
    pub fn expected_line(self) -> &'static str {
        match self {
            Language::Rust | Language::Python | Language::Js => "received order 7 on orders",
            Language::C => r#"received json {"id":7} on orders"#,
            Language::Wat => r#"got json {"id":7}"#,
        }
    }

    fn title(self) -> &'static str {
        match self {
            Language::Rust => "Rust",
            Language::C => "C",
            Language::Python => "Python",
            Language::Js => "JavaScript",
            Language::Wat => "WAT",
        }
    }

    fn source_note(self, name: &str) -> String {
        match self {
            Language::Rust => "`src/lib.rs` is the plugin: one trait (`Plugin`) and one macro \
                (`export!`) from the SDK in `vendor/pgnotifier-plugin`. `n.payload.json::<T>()` \
                reads a payload as any serde type, `config.get::<T>(key)` a config value, and \
                `info!`/`warn!` log. Its unit tests run natively against the SDK's mock host, \
                which records what the plugin logs, publishes, queries and sends."
                .into(),
            Language::C => format!(
                "`{name}.c` is the plugin. `./build` generates `plugin.h` from the WIT with \
                 wit-bindgen and compiles with zig for wasm32-wasi."
            ),
            Language::Python => "`app.py` is the plugin, built with componentize-py. \
                `value(payload)` is the typed way in: a JSON payload as dicts and lists, a \
                scalar as itself."
                .into(),
            Language::Js => "`app.js` is the plugin, built with componentize-js. \
                `value(payload)` is the typed way in: a JSON payload parsed, an integer as a \
                BigInt."
                .into(),
            Language::Wat => format!(
                "`{name}.wat` is the plugin, written against the canonical ABI by hand; its \
                 comments are the reference for how a core module sees the WIT."
            ),
        }
    }
}

/// Create `dir/name` (default `./name`) with the template for `language`.
pub fn new(name: &str, language: Language, dir: Option<&Path>) -> anyhow::Result<()> {
    check_name(name)?;
    let root = dir.unwrap_or(Path::new(".")).join(name);
    if root.exists() && root.read_dir().map_or(true, |mut d| d.next().is_some()) {
        anyhow::bail!(
            "{} already exists and is not empty: choose another NAME or --dir",
            root.display()
        );
    }
    for file in files(name, language) {
        write(&root, &file)?;
    }
    println!(
        "created {} ({} plugin)\n\n  cd {}\n  ./build    # makes {name}.wasm\n  ./test     # builds it and calls it offline",
        root.display(),
        language.title(),
        root.display()
    );
    Ok(())
}

/// A name that is a subscriber id, a file stem and a Rust crate name.
fn check_name(name: &str) -> anyhow::Result<()> {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_lowercase());
    let rest_ok =
        chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if !first_ok || !rest_ok || name.len() > 63 {
        anyhow::bail!(
            "plugin name {name:?}: use a lowercase letter, then lowercase letters, digits, - or _ (at most 63)"
        );
    }
    Ok(())
}

fn files(name: &str, language: Language) -> Vec<File> {
    // The WAT template is the `minimal` example: its build lines name the
    // example's files, which become this project's.
    let fill = |text: &str| {
        text.replace("{{name}}", name)
            .replace("../../wit", "wit")
            .replace("minimal.wat", &format!("{name}.wat"))
            .replace("-o minimal.wasm", &format!("-o {name}.wasm"))
    };
    let mut files: Vec<File> = language
        .sources(name)
        .into_iter()
        .map(|(path, text)| File::new(path, fill(text)))
        .collect();
    files.push(File::new(format!("{name}.toml"), fill(SIDECAR)));
    files.push(File::new("wit/plugin.wit".into(), WIT.to_owned()));
    files.push(File::executable("build", BUILD.to_owned()));
    files.push(File::executable("test", test_script(name, language)));
    files.push(File::new("README.md".into(), readme(name, language)));
    files.push(File::new(".gitignore".into(), "*.wasm\n/target\n".into()));
    if language == Language::Rust {
        for (path, text) in SDK {
            // The vendored copy is a member of the project's workspace, and
            // its WIT path (`../../wit`) already points at the project's.
            let text = match path {
                "Cargo.toml" => without_workspace(text),
                _ => text.to_owned(),
            };
            files.push(File::new(format!("vendor/pgnotifier-plugin/{path}"), text));
        }
    }
    files
}

/// The SDK's manifest without its `[workspace]` table.
fn without_workspace(manifest: &str) -> String {
    manifest
        .lines()
        .filter(|line| {
            line.trim() != "[workspace]" && !line.starts_with("# A workspace of its own")
        })
        .map(|line| format!("{line}\n"))
        .collect()
}

fn test_script(name: &str, language: Language) -> String {
    let unit = match language {
        Language::Rust => "cargo test --quiet\n",
        _ => "",
    };
    let expected = language.expected_line();
    format!(
        r#"#!/usr/bin/env bash
# Test {name}: {unit_note}build it, then call it as the host would, offline,
# and check the line it logs. PGNOTIFIER names the binary (default: pgnotifier).
set -euo pipefail
cd "$(dirname "$0")"
{unit}./build
out=$("${{PGNOTIFIER:-pgnotifier}}" call {name}.wasm --channel orders --payload '{{"id": 7}}' 2>&1) || {{ echo "$out"; exit 1; }}
echo "$out"
grep -qF -- '{expected}' <<<"$out" || {{ echo "test: {name} did not log: {expected}"; exit 1; }}
echo "test: ok"
"#,
        unit_note = if unit.is_empty() {
            ""
        } else {
            "run the unit tests, "
        },
    )
}

fn readme(name: &str, language: Language) -> String {
    let expected = language.expected_line();
    let unit = match language {
        Language::Rust => {
            "`cargo test` runs the unit tests in `src/lib.rs` natively; `./test` runs them too.\n"
        }
        _ => "",
    };
    format!(
        r#"# {name}

A pgnotifier subscriber in {title}, made by `pgnotifier new`.

```sh
./build                     # makes {name}.wasm (the first build installs the toolchain)
./test                      # builds it and calls it offline
pgnotifier call {name}.wasm --channel orders --payload '{{"id": 7}}'
```

The call prints what the plugin received and returned; its log line is `{expected}`.
{unit}
{source}

`{name}.toml` is its sidecar: the channels, `[config]` (what `register` gets) and
`[grants]` (what it may do besides logging), every key commented. To run it, copy
`{name}.wasm` and `{name}.toml` into the plugins folder of `pgnotifier run`: it is loaded
while the host runs.

- `pgnotifier call --help`: `--config KEY=VALUE`, `--input FILE.jsonl` (a recording from
  `pgnotifier record`), `--query-fixture FILE`, `--database-url`, `--allow-http`, `--json`.
- `pgnotifier replay FILE.jsonl {name}.wasm` runs a recording through it.
- `wit/plugin.wit` is the contract, as the pgnotifier that made this project speaks it.
- `build` installs what it needs into `~/.cache/pgnotifier/tools`, from the package
  registries only.
"#,
        title = language.title(),
        source = language.source_note(name),
    )
}

impl File {
    fn new(path: String, text: String) -> Self {
        Self {
            path,
            text,
            executable: false,
        }
    }

    fn executable(path: &str, text: String) -> Self {
        Self {
            path: path.into(),
            text,
            executable: true,
        }
    }
}

fn write(root: &Path, file: &File) -> anyhow::Result<()> {
    let path: PathBuf = root.join(&file.path);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    std::fs::write(&path, &file.text)
        .with_context(|| format!("cannot write {}", path.display()))?;
    if file.executable {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("cannot make {} executable", path.display()))?;
    }
    Ok(())
}
