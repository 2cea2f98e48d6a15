//! The layers, checked: the import graph of the library, read from the
//! source, has no cycle between files, and each room (top-level module)
//! imports only rooms listed before it in [`LAYERS`], the order `lib.rs`
//! gives. Cargo checks the rest: the library cannot import the application,
//! which is another crate.
//!
//! An import is a `crate::` or `super::` path, or a `use` of a child module.
//! A path through a re-export (`pub use child::Name`) counts as an import of
//! the module the name comes from, so a parent that re-exports its children
//! is not made to depend on them. Comments and `mod tests` are not read.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

type Graph = BTreeMap<String, BTreeSet<String>>;

/// One source file as a module: `dispatch/mailbox.rs` is `dispatch::mailbox`,
/// `dispatch/mod.rs` is `dispatch`, and `lib.rs` is the crate root (`""`).
struct Module {
    name: String,
    /// The code, without comments and test modules.
    code: String,
}

/// The rooms from the bottom up, as `lib.rs` lists them; a room imports
/// only rooms before it here (those of one step import each other freely).
const LAYERS: &[&[&str]] = &[
    &[
        "channel",
        "payload",
        "bindings",
        "files",
        "printable",
        "settings",
        "sync",
        "journal",
    ],
    &["pg"],
    &["dispatch"],
    &["capabilities", "sandbox"],
    &["registry"],
    &["durable"],
    &["error"],
    &["plugins"],
    &["cluster"],
    &["listener"],
    &["metrics"],
    &["notifier", "subscriber", "blocking"],
    &[""],
];

/// Every module of the library.
fn modules() -> Vec<Module> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = Vec::new();
    let mut next = vec![src.clone()];
    while let Some(path) = next.pop() {
        if path.is_dir() {
            let entries = std::fs::read_dir(&path).expect("read a source folder");
            next.extend(entries.map(|e| e.expect("a folder entry").path()));
            continue;
        }
        // This test reads the others, and is no layer itself.
        if path.extension().is_none_or(|e| e != "rs") || path.ends_with("layering.rs") {
            continue;
        }
        let relative = path.strip_prefix(&src).expect("under src");
        let mut segments: Vec<String> = (relative.with_extension("").components())
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        if matches!(segments.last().map(String::as_str), Some("mod" | "lib")) {
            segments.pop();
        }
        let text = std::fs::read_to_string(&path).expect("read a source file");
        out.push(Module {
            name: segments.join("::"),
            code: code_of(&text),
        });
    }
    out
}

/// The text without comments and without the `#[cfg(test)] mod tests` block.
fn code_of(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests {") {
        Some(at) => &text[..at],
        None => text,
    };
    text.lines()
        .filter(|line| !line.trim_start().starts_with("//"))
        .map(|line| line.split(" // ").next().unwrap_or(line))
        .collect::<Vec<_>>()
        .join("\n")
}

fn parent(module: &str) -> &str {
    module.rsplit_once("::").map_or("", |(p, _)| p)
}

/// Every path that starts at `prefix` (`crate::`, `super::`), with
/// `{a, b::c}` groups opened into one path each.
fn paths_after(code: &str, prefix: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for (at, _) in code.match_indices(prefix) {
        let before = code[..at].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        expand(&code[at + prefix.len()..], Vec::new(), &mut out);
    }
    out
}

/// Read one path (with groups) from the start of `text`.
fn expand(text: &str, base: Vec<String>, out: &mut Vec<Vec<String>>) {
    let mut path = base;
    let mut rest = text;
    loop {
        if let Some(group) = rest.strip_prefix('{') {
            for item in split_group(group) {
                expand(item.trim(), path.clone(), out);
            }
            return;
        }
        let name: String = (rest.chars())
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty() {
            rest = &rest[name.len()..];
            if name != "self" {
                path.push(name);
            }
        }
        match rest.strip_prefix("::") {
            Some(after) => rest = after,
            None => break,
        }
    }
    out.push(path);
}

/// The top-level items of a `{…}` group, up to its closing brace.
fn split_group(group: &str) -> Vec<&str> {
    let (mut depth, mut start, mut items) = (0, 0, Vec::new());
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => {
                items.push(&group[start..i]);
                return items;
            }
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(&group[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    items
}

/// `use child::…` statements of a module: `(is a re-export, path)`.
fn child_uses(code: &str, children: &BTreeSet<String>) -> Vec<(bool, Vec<String>)> {
    let mut out = Vec::new();
    for statement in code.split(';') {
        let statement = statement.trim();
        let (public, rest) = match statement.split_once("use ") {
            Some((head, rest)) if head.trim().is_empty() => (false, rest),
            Some((head, rest)) if head.trim().starts_with("pub") && !head.contains('\n') => {
                (true, rest)
            }
            _ => continue,
        };
        let mut paths = Vec::new();
        expand(rest, Vec::new(), &mut paths);
        for path in paths {
            if path.first().is_some_and(|first| children.contains(first)) {
                out.push((public, path));
            }
        }
    }
    out
}

/// The import graph between files.
fn import_graph() -> Graph {
    let modules = modules();
    let names: BTreeSet<String> = modules.iter().map(|m| m.name.clone()).collect();
    let children = |module: &str| -> BTreeSet<String> {
        (names.iter())
            .filter(|n| !n.is_empty() && parent(n) == module && *n != module)
            .map(|n| n.rsplit("::").next().unwrap_or(n).to_owned())
            .collect()
    };
    // Module → a name it re-exports → the module that name comes from.
    let mut reexports: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    // Module → absolute paths it names.
    let mut named: BTreeMap<String, Vec<Vec<String>>> = BTreeMap::new();
    for module in &modules {
        let mine = children(&module.name);
        let absolute = |path: &[String]| {
            let mut full: Vec<String> = (module.name.split("::"))
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect();
            full.extend(path.iter().cloned());
            full
        };
        let mut paths = paths_after(&module.code, "crate::");
        let up: Vec<String> = (parent(&module.name).split("::"))
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        for path in paths_after(&module.code, "super::") {
            paths.push(up.iter().cloned().chain(path).collect());
        }
        for (public, path) in child_uses(&module.code, &mine) {
            let full = absolute(&path);
            if public && path.len() >= 2 {
                let origin = resolve_module(&names, &full);
                let item = path.last().cloned().unwrap_or_default();
                (reexports.entry(module.name.clone()).or_default()).insert(item, origin);
            } else if !public {
                paths.push(full);
            }
        }
        named.insert(module.name.clone(), paths);
    }
    let mut graph = Graph::new();
    for module in &modules {
        let targets = graph.entry(module.name.clone()).or_default();
        for path in &named[&module.name] {
            let mut target = resolve_module(&names, path);
            let depth = if target.is_empty() {
                0
            } else {
                target.split("::").count()
            };
            // A name re-exported by the module reached comes from its origin.
            while let Some(origin) =
                (path.get(depth)).and_then(|item| reexports.get(&target)?.get(item))
            {
                if *origin == target {
                    break;
                }
                target = origin.clone();
            }
            if target != module.name && !target.is_empty() {
                targets.insert(target);
            }
        }
    }
    graph
}

/// The longest prefix of `path` that names a module.
fn resolve_module(names: &BTreeSet<String>, path: &[String]) -> String {
    let mut found = String::new();
    for i in 1..=path.len() {
        let candidate = path[..i].join("::");
        if names.contains(&candidate) {
            found = candidate;
        } else {
            break;
        }
    }
    found
}

/// The same graph between rooms: `dispatch::mailbox` is in `dispatch`.
fn room_graph(files: &Graph) -> Graph {
    let room = |m: &str| m.split("::").next().unwrap_or(m).to_owned();
    let mut graph = Graph::new();
    for (module, targets) in files {
        let from = room(module);
        let entry = graph.entry(from.clone()).or_default();
        entry.extend(targets.iter().map(|t| room(t)).filter(|t| *t != from));
    }
    graph
}

/// The groups of modules that import each other, directly or not.
fn cycles(graph: &Graph) -> Vec<BTreeSet<String>> {
    let reaches = |from: &String| {
        let mut seen = BTreeSet::new();
        let mut next = vec![from.clone()];
        while let Some(module) = next.pop() {
            for target in graph.get(&module).into_iter().flatten() {
                if seen.insert(target.clone()) {
                    next.push(target.clone());
                }
            }
        }
        seen
    };
    let reach: BTreeMap<&String, BTreeSet<String>> =
        graph.keys().map(|m| (m, reaches(m))).collect();
    let mut groups: Vec<BTreeSet<String>> = Vec::new();
    for (module, reached) in &reach {
        if !reached.contains(*module) || groups.iter().any(|g| g.contains(*module)) {
            continue;
        }
        let group: BTreeSet<String> = reached
            .iter()
            .filter(|other| reach.get(other).is_some_and(|r| r.contains(*module)))
            .cloned()
            .collect();
        groups.push(group);
    }
    groups
}

#[test]
fn the_import_graph_has_no_cycle_between_files() {
    let files = import_graph();
    for expected in [
        "dispatch::mailbox",
        "plugins::sync",
        "notifier",
        "durable::feeder",
    ] {
        assert!(
            files.contains_key(expected),
            "{expected} missing: {files:?}"
        );
    }
    assert!(
        files["dispatch::worker"].contains("dispatch::mailbox"),
        "{:?}",
        files["dispatch::worker"]
    );
    assert_eq!(cycles(&files), Vec::<BTreeSet<String>>::new(), "{files:#?}");
}

#[test]
fn each_room_imports_only_the_rooms_lib_rs_lists_before_it() {
    let step = |room: &str| LAYERS.iter().position(|layer| layer.contains(&room));
    let rooms = room_graph(&import_graph());
    let mut upward = Vec::new();
    for (room, targets) in &rooms {
        let from = step(room).unwrap_or_else(|| panic!("room {room:?} is not in LAYERS"));
        for target in targets {
            let to = step(target).unwrap_or_else(|| panic!("room {target:?} is not in LAYERS"));
            if to > from {
                upward.push(format!("{room} -> {target}"));
            }
        }
    }
    assert!(upward.is_empty(), "imports that run back up: {upward:?}");
    // And each room named in lib.rs's list, in this order.
    let lib = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/lib.rs"))
        .expect("read lib.rs");
    let mut at = 0;
    for room in LAYERS
        .iter()
        .flat_map(|layer| layer.iter())
        .filter(|r| !r.is_empty())
    {
        let found = lib[at..]
            .find(&format!("`{room}`"))
            .or_else(|| lib[at..].find(&format!("[`{room}`]")))
            .unwrap_or_else(|| panic!("lib.rs does not list `{room}` after the rooms before it"));
        at += found;
    }
}

#[test]
fn dispatch_imports_neither_the_registry_nor_the_plugins_nor_any_config() {
    let rooms = room_graph(&import_graph());
    let dispatch = &rooms["dispatch"];
    for above in ["registry", "plugins", "listener", "notifier", "pg"] {
        assert!(
            !dispatch.contains(above),
            "dispatch imports {above}: {dispatch:?}"
        );
    }
}

#[test]
fn paths_are_read_from_uses_groups_re_exports_and_inline_paths() {
    let code = "use crate::config::{A, B};\nuse crate::{dispatch::{lock, X}, error::Error};\nlet x = crate::metrics::clock();\nuse super::{queue::Queue, Mailbox};";
    let crate_paths: Vec<String> = paths_after(code, "crate::")
        .into_iter()
        .map(|p| p.join("::"))
        .collect();
    assert_eq!(
        crate_paths,
        [
            "config::A",
            "config::B",
            "dispatch::lock",
            "dispatch::X",
            "error::Error",
            "metrics::clock"
        ]
    );
    let super_paths: Vec<String> = (paths_after(code, "super::").into_iter())
        .map(|p| p.join("::"))
        .collect();
    assert_eq!(super_paths, ["queue::Queue", "Mailbox"]);
    let children = BTreeSet::from(["mailbox".to_owned(), "state".to_owned()]);
    let uses = child_uses(
        "pub(crate) use mailbox::{Mailbox, Hook};\nuse state::File;\nuse std::x;",
        &children,
    );
    assert_eq!(uses.len(), 3, "{uses:?}");
    assert!(uses[0].0 && uses[1].0 && !uses[2].0, "{uses:?}");
    let graph = Graph::from([
        ("a".to_owned(), BTreeSet::from(["b".to_owned()])),
        (
            "b".to_owned(),
            BTreeSet::from(["a".to_owned(), "c".to_owned()]),
        ),
        ("c".to_owned(), BTreeSet::new()),
    ]);
    assert_eq!(
        cycles(&graph),
        [BTreeSet::from(["a".to_owned(), "b".to_owned()])]
    );
}
