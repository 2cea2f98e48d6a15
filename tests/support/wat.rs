//! Test plugins written in WAT and turned into components at test time, with
//! the `wat` and `wit-component` crates: no guest toolchain needed.
//!
//! The core module implements the `plugin` world's canonical ABI by hand:
//! `register` returns a fixed channel list, `on-notify` runs one of a few
//! behaviours, and a bump allocator is reset after each call.

use std::path::{Path, PathBuf};
use wit_component::{ComponentEncoder, StringEncoding};
use wit_parser::Resolve;

/// What `on-notify` does.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Notify {
    /// Log text and JSON payloads verbatim. The payload `boom` traps; the
    /// payload `count` logs `first` on an instance's first such call and
    /// `again` after, which shows whether the instance survived.
    Echo,
    /// Spin forever.
    Spin,
    /// Burn this many loop iterations, then behave like `Echo`.
    Burn(u32),
    /// Return `err("nope")`.
    Fail,
    /// Grow memory a page at a time until it cannot.
    Grow,
    /// Write text payloads to stdout and to stderr through WASI.
    Stdio,
    /// Trap with `unreachable`.
    Trap,
    /// Recurse until the stack overflows.
    Recurse,
    /// Call `log` this many times, then write this many 4 KiB blocks of
    /// newlines (empty lines) to stdout.
    Flood { logs: u32, blocks: u32 },
    /// Fill 100 MB of memory with `A` and hand it all to `log` as one message.
    HugeLog,
    /// Through WASI, read the environment, list preopened directories and
    /// create a TCP socket; log `env empty` or `env SEEN`, `no dirs` or
    /// `dirs SEEN`, `socket refused` or `socket OPEN`.
    Probe,
}

/// What `register` does.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Register {
    /// Log `registered`, then log each config key and value, and return the channels.
    Ok,
    /// Return `err("not today")`.
    Fail,
    /// Spin forever.
    Spin,
    /// Trap at once.
    Trap,
}

pub struct WatPlugin {
    pub channels: Vec<String>,
    pub notify: Notify,
    pub register: Register,
    /// Logged by `register` after `registered`, to tell versions apart.
    pub label: Option<String>,
    /// The `pgnotifier:plugin` version it targets; 0.1.0 unless set.
    pub version: &'static str,
}

impl WatPlugin {
    pub fn new(channels: &[&str], notify: Notify) -> Self {
        Self {
            channels: channels.iter().map(|c| c.to_string()).collect(),
            notify,
            register: Register::Ok,
            label: None,
            version: "0.1.0",
        }
    }

    /// Target `version` of the WIT (0.1.0 to 0.5.0): all have the same
    /// exports in the `plugin` world, so only the names change.
    pub fn wit_version(mut self, version: &'static str) -> Self {
        self.version = version;
        self
    }

    pub fn label(mut self, label: &str) -> Self {
        assert!(
            label.len() < 256 && label.is_ascii(),
            "short ASCII labels only"
        );
        self.label = Some(label.to_owned());
        self
    }

    pub fn register(mut self, register: Register) -> Self {
        self.register = register;
        self
    }

    /// The component's bytes.
    pub fn component(&self) -> Vec<u8> {
        let mut module = wat::parse_str(self.wat()).expect("test plugin WAT parses");
        let (resolve, world) = resolve(self.notify, self.version);
        wit_component::embed_component_metadata(&mut module, &resolve, world, StringEncoding::UTF8)
            .expect("embed WIT metadata");
        ComponentEncoder::default()
            .module(&module)
            .expect("core module is usable")
            .validate(true)
            .encode()
            .expect("component encodes")
    }

    /// Write the component to `dir/NAME.wasm` (atomically) and return its path.
    pub fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(format!("{name}.wasm"));
        let tmp = dir.join(format!(".{name}.wasm.tmp"));
        std::fs::write(&tmp, self.component()).expect("write plugin");
        std::fs::rename(&tmp, &path).expect("rename plugin");
        path
    }

    fn wat(&self) -> String {
        // Channel names at 1024.., their (ptr, len) list at 512.
        let mut names = String::new();
        let mut list = String::new();
        let mut offset = 1024u32;
        for channel in &self.channels {
            for b in channel.as_bytes() {
                names.push_str(&format!("\\{b:02x}"));
            }
            for word in [offset, channel.len() as u32] {
                for b in word.to_le_bytes() {
                    list.push_str(&format!("\\{b:02x}"));
                }
            }
            offset += channel.len() as u32;
        }
        assert!(offset < 2048, "test plugin channel names too long");
        let count = self.channels.len();

        let label = self.label.clone().unwrap_or_default();
        let label_len = label.len();
        let log_label = if label.is_empty() {
            String::new()
        } else {
            format!("(call $log (i32.const 2) (i32.const 3072) (i32.const {label_len}))")
        };
        let register_body = match self.register {
            Register::Ok => format!(
                r#"(call $log (i32.const 2) (i32.const 2058) (i32.const 10))
                   {log_label}
                   (local.set $i (i32.const 0))
                   (block $done (loop $next
                     (br_if $done (i32.ge_u (local.get $i) (local.get $cfgl)))
                     (local.set $e (i32.add (local.get $cfg) (i32.mul (local.get $i) (i32.const 16))))
                     (call $log (i32.const 2) (i32.load (local.get $e)) (i32.load offset=4 (local.get $e)))
                     (call $log (i32.const 2) (i32.load offset=8 (local.get $e)) (i32.load offset=12 (local.get $e)))
                     (local.set $i (i32.add (local.get $i) (i32.const 1)))
                     (br $next)))
                   (i32.store8 (i32.const 256) (i32.const 0))
                   (i32.store (i32.const 260) (i32.const 512))
                   (i32.store (i32.const 264) (i32.const {count}))"#
            ),
            Register::Fail => r#"(i32.store8 (i32.const 256) (i32.const 1))
                   (i32.store (i32.const 260) (i32.const 2076))
                   (i32.store (i32.const 264) (i32.const 9))"#
                .to_owned(),
            Register::Spin => "(loop $forever (br $forever))".to_owned(),
            Register::Trap => "unreachable".to_owned(),
        };

        let echo = r#"
            (if (i32.or (i32.eq (local.get $disc) (i32.const 4)) (i32.eq (local.get $disc) (i32.const 5)))
              (then
                (if (i32.and (i32.eq (local.get $p1) (i32.const 4))
                             (i32.eq (i32.load (i32.wrap_i64 (local.get $p0))) (i32.const 0x6d6f6f62)))
                  (then unreachable))
                (if (i32.and (i32.eq (local.get $p1) (i32.const 5))
                             (i32.eq (i32.load (i32.wrap_i64 (local.get $p0))) (i32.const 0x6e756f63)))
                  (then
                    (if (i32.eqz (global.get $calls))
                      (then (call $log (i32.const 2) (i32.const 2048) (i32.const 5)))
                      (else (call $log (i32.const 2) (i32.const 2053) (i32.const 5))))
                    (global.set $calls (i32.add (global.get $calls) (i32.const 1))))
                  (else (call $log (i32.const 2) (i32.wrap_i64 (local.get $p0)) (local.get $p1))))))"#;
        let notify_body = match self.notify {
            Notify::Echo => echo.to_owned(),
            Notify::Spin => "(loop $forever (br $forever))".to_owned(),
            Notify::Burn(n) => format!(
                r#"(local.set $i (i32.const {n}))
                   (block $done (loop $next
                     (br_if $done (i32.eqz (local.get $i)))
                     (local.set $i (i32.sub (local.get $i) (i32.const 1)))
                     (br $next)))
                   {echo}"#
            ),
            Notify::Fail => r#"(i32.store8 (i32.const 256) (i32.const 1))
                   (i32.store (i32.const 260) (i32.const 2072))
                   (i32.store (i32.const 264) (i32.const 4))
                   (return (i32.const 256))"#
                .to_owned(),
            Notify::Grow => r#"(block $full (loop $more
                     (br_if $full (i32.eq (memory.grow (i32.const 1)) (i32.const -1)))
                     (br $more)))
                   (call $log (i32.const 2) (i32.const 2085) (i32.const 11))"#
                .to_owned(),
            Notify::Stdio => r#"
                (if (i32.eq (local.get $disc) (i32.const 4))
                  (then
                    (local.set $i (call $get_stdout))
                    (call $write (local.get $i) (i32.wrap_i64 (local.get $p0)) (local.get $p1) (i32.const 384))
                    (call $drop_stream (local.get $i))
                    (local.set $i (call $get_stderr))
                    (call $write (local.get $i) (i32.wrap_i64 (local.get $p0)) (local.get $p1) (i32.const 384))
                    (call $drop_stream (local.get $i))))"#
                .to_owned(),
            Notify::Trap => "unreachable".to_owned(),
            Notify::Recurse => "(drop (call $deep (i32.const 0)))".to_owned(),
            Notify::Flood { logs, blocks } => format!(
                r#"(local.set $i (i32.const {logs}))
                   (block $done (loop $next
                     (br_if $done (i32.eqz (local.get $i)))
                     (call $log (i32.const 2) (i32.const 2258) (i32.const 8))
                     (local.set $i (i32.sub (local.get $i) (i32.const 1)))
                     (br $next)))
                   (memory.fill (i32.const 8192) (i32.const 10) (i32.const 4096))
                   (local.set $s (call $get_stdout))
                   (local.set $i (i32.const {blocks}))
                   (block $done (loop $next
                     (br_if $done (i32.eqz (local.get $i)))
                     (call $write (local.get $s) (i32.const 8192) (i32.const 4096) (i32.const 384))
                     (local.set $i (i32.sub (local.get $i) (i32.const 1)))
                     (br $next)))
                   (call $drop_stream (local.get $s))"#
            ),
            Notify::HugeLog => r#"(drop (memory.grow (i32.const 1600)))
                   (memory.fill (i32.const 131072) (i32.const 65) (i32.const 100000000))
                   (call $log (i32.const 2) (i32.const 131072) (i32.const 100000000))"#
                .to_owned(),
            Notify::Probe => r#"(call $get_env (i32.const 384))
                   (if (i32.eqz (i32.load offset=4 (i32.const 384)))
                     (then (call $log (i32.const 2) (i32.const 2200) (i32.const 9)))
                     (else (call $log (i32.const 2) (i32.const 2209) (i32.const 8))))
                   (call $get_dirs (i32.const 384))
                   (if (i32.eqz (i32.load offset=4 (i32.const 384)))
                     (then (call $log (i32.const 2) (i32.const 2217) (i32.const 7)))
                     (else (call $log (i32.const 2) (i32.const 2224) (i32.const 9))))
                   (call $tcp (i32.const 0) (i32.const 384))
                   (if (i32.load8_u (i32.const 384))
                     (then (call $log (i32.const 2) (i32.const 2233) (i32.const 14)))
                     (else (call $log (i32.const 2) (i32.const 2247) (i32.const 11))))"#
                .to_owned(),
        };
        let wasi_imports = match self.notify {
            Notify::Stdio | Notify::Flood { .. } => {
                r#"(import "wasi:cli/stdout@0.2.0" "get-stdout" (func $get_stdout (result i32)))
               (import "wasi:cli/stderr@0.2.0" "get-stderr" (func $get_stderr (result i32)))
               (import "wasi:io/streams@0.2.0" "[method]output-stream.blocking-write-and-flush" (func $write (param i32 i32 i32 i32)))
               (import "wasi:io/streams@0.2.0" "[resource-drop]output-stream" (func $drop_stream (param i32)))"#
            }
            Notify::Probe => {
                r#"(import "wasi:cli/environment@0.2.0" "get-environment" (func $get_env (param i32)))
               (import "wasi:filesystem/preopens@0.2.0" "get-directories" (func $get_dirs (param i32)))
               (import "wasi:sockets/tcp-create-socket@0.2.0" "create-tcp-socket" (func $tcp (param i32 i32)))"#
            }
            _ => "",
        };
        let version = self.version;
        // Each capability of its version, imported (not called), so loading
        // it checks that the host links that version's interfaces.
        let capability_imports = match version {
            "0.1.0" => String::new(),
            "0.2.0" => capability_imports(version, false),
            _ => capability_imports(version, true),
        };
        format!(
            r#"(module
  (import "pgnotifier:plugin/host@{version}" "log" (func $log (param i32 i32 i32)))
  {wasi_imports}
  {capability_imports}
  (memory (export "memory") 2)
  (global $bump (mut i32) (i32.const 65536))
  (global $calls (mut i32) (i32.const 0))
  (data (i32.const 512) "{list}")
  (data (i32.const 1024) "{names}")
  ;; 2048 first, 2053 again, 2058 registered, 2072 nope, 2076 not today, 2085 grow failed
  (data (i32.const 2048) "firstagainregistered")
  (data (i32.const 2072) "nopenot today")
  (data (i32.const 2085) "grow failed")
  ;; 2200 env empty, 2209 env SEEN, 2217 no dirs, 2224 dirs SEEN,
  ;; 2233 socket refused, 2247 socket OPEN, 2258 flooding
  (data (i32.const 2200) "env emptyenv SEENno dirsdirs SEENsocket refusedsocket OPENflooding")
  (data (i32.const 3072) "{label}")

  (func (export "cabi_realloc") (param $old i32) (param $old_size i32) (param $align i32) (param $size i32) (result i32)
    (local $p i32) (local $end i32)
    (local.set $p (i32.and (i32.add (global.get $bump) (i32.sub (local.get $align) (i32.const 1)))
                           (i32.sub (i32.const 0) (local.get $align))))
    (local.set $end (i32.add (local.get $p) (local.get $size)))
    (if (i32.gt_u (local.get $end) (i32.mul (memory.size) (i32.const 65536)))
      (then
        (if (i32.eq (memory.grow (i32.add (i32.shr_u (i32.sub (local.get $end) (i32.mul (memory.size) (i32.const 65536))) (i32.const 16)) (i32.const 1)))
                    (i32.const -1))
          (then unreachable))))
    (global.set $bump (local.get $end))
    (local.get $p))

  (func (export "pgnotifier:plugin/subscriber@{version}#register")
        (param $id i32) (param $idl i32) (param $cfg i32) (param $cfgl i32) (result i32)
    (local $i i32) (local $e i32)
    {register_body}
    (i32.const 256))

  (func (export "pgnotifier:plugin/subscriber@{version}#on-notify")
        (param $id i32) (param $idl i32) (param $ch i32) (param $chl i32)
        (param $disc i32) (param $p0 i64) (param $p1 i32) (param $pid i32) (result i32)
    (local $i i32) (local $s i32)
    {notify_body}
    (i32.store8 (i32.const 256) (i32.const 0))
    (i32.const 256))

  (func $deep (param $n i32) (result i32)
    (i32.add (call $deep (i32.add (local.get $n) (i32.const 1))) (i32.const 1)))

  (func (export "cabi_post_pgnotifier:plugin/subscriber@{version}#on-notify") (param i32)
    (global.set $bump (i32.const 65536)))

  (func (export "pgnotifier:plugin/subscriber@{version}#on-gap")
        (param $id i32) (param $idl i32) (param $chs i32) (param $chsl i32)
    (if (i32.gt_u (local.get $chsl) (i32.const 0))
      (then (call $log (i32.const 3) (i32.load (local.get $chs)) (i32.load offset=4 (local.get $chs))))))
)"#
        )
    }
}

/// The core imports of `publish`, `query` and (with `delivery`) `delivery`.
fn capability_imports(version: &str, delivery: bool) -> String {
    let mut imports = format!(
        r#"(import "pgnotifier:plugin/publish@{version}" "publish" (func (param i32 i32 i32 i32 i32)))
  (import "pgnotifier:plugin/query@{version}" "query" (func (param i32 i32 i32 i32 i32)))"#
    );
    if delivery {
        imports.push_str(&format!(
            r#"
  (import "pgnotifier:plugin/delivery@{version}" "current-event" (func (param i32)))
  (import "pgnotifier:plugin/delivery@{version}" "current-gap" (func (param i32)))"#
        ));
    }
    imports
}

/// The `plugin` world, or one that also imports the WASI interfaces the
/// behaviour uses (subsets of the real WIT, as a guest would import them).
fn resolve(notify: Notify, version: &str) -> (Resolve, wit_parser::WorldId) {
    let mut resolve = Resolve::default();
    let (plugin_pkg, _) = resolve.push_dir(wit_dir(version)).expect("wit/ parses");
    if version != "0.1.0" {
        assert!(
            matches!(notify, Notify::Echo),
            "only Echo targets other WIT versions"
        );
        let world = resolve
            .select_world(&[plugin_pkg], Some("plugin"))
            .expect("world plugin");
        return (resolve, world);
    }
    let wasi: &[(&str, &str)] = match notify {
        Notify::Stdio | Notify::Flood { .. } => &[
            (
                "wasi-io.wit",
                r#"package wasi:io@0.2.0;
                   interface error { resource error; }
                   interface streams {
                     use error.{error};
                     variant stream-error { last-operation-failed(error), closed }
                     resource output-stream {
                       blocking-write-and-flush: func(contents: list<u8>) -> result<_, stream-error>;
                     }
                   }"#,
            ),
            (
                "wasi-cli.wit",
                r#"package wasi:cli@0.2.0;
                   interface stdout { use wasi:io/streams@0.2.0.{output-stream}; get-stdout: func() -> output-stream; }
                   interface stderr { use wasi:io/streams@0.2.0.{output-stream}; get-stderr: func() -> output-stream; }"#,
            ),
            (
                "world.wit",
                r#"package test:wasi;
                   world plugin-with-wasi {
                     include pgnotifier:plugin/plugin@0.1.0;
                     import wasi:cli/stdout@0.2.0;
                     import wasi:cli/stderr@0.2.0;
                   }"#,
            ),
        ],
        Notify::Probe => &[
            (
                "wasi-cli.wit",
                r#"package wasi:cli@0.2.0;
                   interface environment { get-environment: func() -> list<tuple<string, string>>; }"#,
            ),
            (
                "wasi-filesystem.wit",
                r#"package wasi:filesystem@0.2.0;
                   interface types { resource descriptor; }
                   interface preopens {
                     use types.{descriptor};
                     get-directories: func() -> list<tuple<descriptor, string>>;
                   }"#,
            ),
            (
                "wasi-sockets.wit",
                r#"package wasi:sockets@0.2.0;
                   interface network {
                     resource network;
                     enum error-code {
                       unknown, access-denied, not-supported, invalid-argument, out-of-memory,
                       timeout, concurrency-conflict, not-in-progress, would-block, invalid-state,
                       new-socket-limit, address-not-bindable, address-in-use, remote-unreachable,
                       connection-refused, connection-reset, connection-aborted, datagram-too-large,
                       name-unresolvable, temporary-resolver-failure, permanent-resolver-failure,
                     }
                     enum ip-address-family { ipv4, ipv6 }
                   }
                   interface tcp { resource tcp-socket; }
                   interface tcp-create-socket {
                     use network.{error-code, ip-address-family};
                     use tcp.{tcp-socket};
                     create-tcp-socket: func(address-family: ip-address-family) -> result<tcp-socket, error-code>;
                   }"#,
            ),
            (
                "world.wit",
                r#"package test:wasi;
                   world plugin-with-wasi {
                     include pgnotifier:plugin/plugin@0.1.0;
                     import wasi:cli/environment@0.2.0;
                     import wasi:filesystem/preopens@0.2.0;
                     import wasi:sockets/tcp-create-socket@0.2.0;
                   }"#,
            ),
        ],
        _ => &[],
    };
    if wasi.is_empty() {
        let world = resolve
            .select_world(&[plugin_pkg], Some("plugin"))
            .expect("world plugin");
        return (resolve, world);
    }
    let mut pkg = plugin_pkg;
    for (name, text) in wasi {
        pkg = resolve
            .push_str(name, text)
            .unwrap_or_else(|e| panic!("{name} parses: {e:#}"));
    }
    let world = resolve
        .select_world(&[pkg], Some("plugin-with-wasi"))
        .expect("world plugin-with-wasi");
    (resolve, world)
}

/// A valid component that also imports `interface`, which no host provides.
pub fn component_importing(interface: &str) -> Vec<u8> {
    let (package, name) = interface.split_once('/').expect("package/interface");
    let mut resolve = Resolve::default();
    let wit_dir = super::repo().join("wit/v0.1.0");
    resolve.push_dir(&wit_dir).expect("wit/ parses");
    resolve
        .push_str(
            "missing.wit",
            &format!("package {package}; interface {name} {{ hello: func(); }}"),
        )
        .expect("missing interface parses");
    let pkg = resolve
        .push_str(
            "world.wit",
            &format!(
                "package test:needy; world needy {{ include pgnotifier:plugin/plugin@0.1.0; import {interface}; }}"
            ),
        )
        .expect("needy world parses");
    let world = resolve
        .select_world(&[pkg], Some("needy"))
        .expect("world needy");
    let plugin = WatPlugin::new(&["unused"], Notify::Echo);
    let wat = plugin.wat().replacen(
        "(module",
        &format!("(module\n  (import \"{interface}\" \"hello\" (func $hello))"),
        1,
    );
    let mut module = wat::parse_str(wat).expect("needy WAT parses");
    wit_component::embed_component_metadata(&mut module, &resolve, world, StringEncoding::UTF8)
        .expect("embed WIT metadata");
    ComponentEncoder::default()
        .module(&module)
        .expect("core module is usable")
        .encode()
        .expect("component encodes")
}

/// A valid component of some other world than `plugin`.
pub fn other_world_component() -> Vec<u8> {
    let mut resolve = Resolve::default();
    let pkg = resolve
        .push_str(
            "other.wit",
            "package test:other; world other { export ping: func(); }",
        )
        .expect("other world parses");
    let world = resolve
        .select_world(&[pkg], Some("other"))
        .expect("world other");
    let mut module = wat::parse_str(r#"(module (func (export "ping")))"#).expect("WAT parses");
    wit_component::embed_component_metadata(&mut module, &resolve, world, StringEncoding::UTF8)
        .expect("embed WIT metadata");
    ComponentEncoder::default()
        .module(&module)
        .expect("core module is usable")
        .encode()
        .expect("component encodes")
}

/// Where the WIT of `version` lives: the current one in `wit/`, frozen ones beside it.
fn wit_dir(version: &str) -> PathBuf {
    let wit = super::repo().join("wit");
    let current = std::fs::read_to_string(wit.join("plugin.wit")).expect("wit/plugin.wit");
    match current.contains(&format!("package pgnotifier:plugin@{version};")) {
        true => wit,
        false => wit.join(format!("v{version}")),
    }
}
