//! The `pgnotifier` binary as a user runs it: `run` in the background with
//! its log collected, and `ctl` against it.

use super::process::Process;
use super::wat::{Notify, WatPlugin};
use super::{until, SOON};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_pgnotifier");

/// A running `pgnotifier run`, with its stderr collected line by line.
pub struct Host {
    process: Process,
}

impl Host {
    /// `pgnotifier` with the admin API on a free port and its state in a
    /// fresh folder, so hosts started by parallel tests never meet.
    pub fn command() -> Command {
        let mut command = Command::new(BIN);
        command
            .env("PGNOTIFIER_ADMIN_ADDR", "127.0.0.1:0")
            .env("PGNOTIFIER_DATA_DIR", super::temp_dir("data"));
        command
    }

    pub fn start(mut command: Command) -> Self {
        let process = Process::spawn(&mut command).expect("start pgnotifier");
        Self { process }
    }

    pub fn run(plugins: &Path, database_url: &str) -> Self {
        let mut command = Self::command();
        command
            .args(["run", "--plugins"])
            .arg(plugins)
            .args(["--database-url", database_url]);
        Self::start(command)
    }

    /// `pgnotifier run --config FILE`, everything else from the file.
    pub fn with_config(config: &Path) -> Self {
        let mut command = Command::new(BIN);
        command.args(["run", "--config"]).arg(config);
        Self::start(command)
    }

    pub fn output(&self) -> String {
        self.process.output()
    }

    /// Wait for a line containing every one of `parts`.
    pub fn wait_for(&self, parts: &[&str]) -> String {
        self.wait_for_within(SOON, parts)
    }

    /// [`wait_for`](Self::wait_for), for things that take longer (compiling a large plugin).
    pub fn wait_for_within(&self, timeout: Duration, parts: &[&str]) -> String {
        let state = || format!("no line with {parts:?} in:\n{}", self.output());
        until(timeout, state, || {
            self.process.lines_with(parts).into_iter().next()
        })
    }

    /// Wait until at least `n` lines contain every one of `parts`.
    pub fn wait_for_count(&self, parts: &[&str], n: usize) {
        let state = || format!("fewer than {n} lines with {parts:?} in:\n{}", self.output());
        until(SOON, state, || (self.count(parts) >= n).then_some(()));
    }

    /// How many lines contain every one of `parts`.
    pub fn count(&self, parts: &[&str]) -> usize {
        self.process.lines_with(parts).len()
    }

    /// The process's peak resident memory, in bytes.
    pub fn peak_memory(&self) -> u64 {
        self.process.memory("VmHWM").unwrap()
    }

    pub fn signal(&self, name: &str) {
        self.process.signal(name);
    }

    /// Wait for exit; the exit status.
    pub fn wait(mut self) -> (std::process::ExitStatus, String) {
        let deadline = Instant::now() + SOON;
        loop {
            if let Some(status) = self.process.exited() {
                std::thread::sleep(Duration::from_millis(50)); // let the reader drain
                return (status, self.output());
            }
            assert!(
                Instant::now() < deadline,
                "pgnotifier did not exit:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, and wait for a clean exit.
    pub fn stop(self) -> String {
        self.signal("TERM");
        let (status, output) = self.wait();
        assert!(status.success(), "{status}\n{output}");
        output
    }
}

/// One raw HTTP/1.1 request to `addr` (with `Connection: close`, and
/// `Host: addr` as ctl and a browser send it, unless `headers` has one) and
/// `headers`; the whole
/// response, or what came before the server closed the connection.
pub fn http(addr: &str, request_line: &str, headers: &[&str], body: &[u8]) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("connect to the admin API");
    let mut head = format!(
        "{request_line}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if !headers
        .iter()
        .any(|h| h.to_ascii_lowercase().starts_with("host:"))
    {
        head.push_str(&format!("Host: {addr}\r\n"));
    }
    for header in headers {
        head.push_str(header);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).expect("send the request");
    let _ = stream.write_all(body);
    stream.set_read_timeout(Some(SOON)).unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer
}

/// `pgnotifier ctl --config FILE ARGS…`.
pub fn ctl(config: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("ctl")
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .expect("run pgnotifier ctl")
}

/// `ctl` that must succeed; its stdout.
pub fn ctl_ok(config: &Path, args: &[&str]) -> String {
    let out = ctl(config, args);
    assert!(
        out.status.success(),
        "ctl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("ctl prints UTF-8")
}

/// `ctl --json` that must succeed; its JSON.
pub fn ctl_json(config: &Path, args: &[&str]) -> serde_json::Value {
    let mut with_json = vec!["--json"];
    with_json.extend_from_slice(args);
    let out = ctl_ok(config, &with_json);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("ctl {args:?}: {e}: {out}"))
}

/// A config file for a host on a free port with its state in `data_dir`.
pub fn write_config(dir: &Path, plugins: &Path, data_dir: &Path, extra: &str) -> PathBuf {
    let config = dir.join("pgnotifier.toml");
    // `extra` may name a database of its own.
    let url = match extra.contains("database_url") {
        true => String::new(),
        false => format!("database_url = {:?}\n", super::database_url()),
    };
    let text = format!(
        "{url}plugins = {plugins:?}\ndata_dir = {data:?}\n\
         admin_addr = \"127.0.0.1:0\"\nwatch_debounce_ms = 25\n{extra}\n",
        plugins = plugins.display().to_string(),
        data = data_dir.display().to_string(),
    );
    std::fs::write(&config, text).expect("write config");
    config
}

/// Parse a Prometheus text scrape into `series → value`.
pub fn parse_metrics(text: &str) -> std::collections::BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("bad line {l:?}"));
            let value = value
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {l:?}"));
            (series.to_owned(), value)
        })
        .collect()
}

/// A temp dir with a `plugins` folder and a config for a host on a free port.
pub struct Setup {
    pub dir: PathBuf,
    pub plugins: PathBuf,
    pub data_dir: PathBuf,
    pub config: PathBuf,
}

impl Setup {
    pub fn new(name: &str, extra: &str) -> Self {
        let dir = super::temp_dir(name);
        let plugins = dir.join("plugins");
        std::fs::create_dir_all(&plugins).unwrap();
        let data_dir = dir.join("data");
        let config = write_config(&dir, &plugins, &data_dir, extra);
        Self {
            dir,
            plugins,
            data_dir,
            config,
        }
    }

    /// An echo plugin `ID.wasm` on `channel`.
    pub fn echo(&self, id: &str, channel: &str) {
        WatPlugin::new(&[channel], Notify::Echo).write(&self.plugins, id);
    }

    /// One series of the host's `/metrics`, through `ctl`.
    pub fn metric(&self, series: &str) -> f64 {
        let metrics = parse_metrics(&ctl_ok(&self.config, &["metrics"]));
        *metrics
            .get(series)
            .unwrap_or_else(|| panic!("no series {series}"))
    }

    /// The address the running host wrote down.
    pub fn admin_addr(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("admin.addr"))
            .expect("the host wrote admin.addr")
            .trim()
            .to_owned()
    }
}
