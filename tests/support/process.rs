//! A child process whose standard error is kept line by line, killed when
//! dropped: the `pgnotifier run` the tests start, and the hosts and bare
//! loops the bench measures from the outside. It stands alone (the bench
//! includes this file by path), and it never waits: each side polls in its
//! own way, the tests blocking and the bench in its runtime.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};

pub struct Process {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Process {
    /// Start `command`, its stdout dropped and its stderr collected.
    pub fn spawn(command: &mut Command) -> std::io::Result<Self> {
        let mut child = command
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        let stderr = child.stderr.take().expect("stderr is piped");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Ok(Self { child, lines })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything it printed so far.
    pub fn output(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// The lines so far that contain every one of `parts`.
    pub fn lines_with(&self, parts: &[&str]) -> Vec<String> {
        (self.lines.lock().unwrap().iter())
            .filter(|l| parts.iter().all(|p| l.contains(p)))
            .cloned()
            .collect()
    }

    /// The last `n` lines, to say where it stood.
    pub fn last_lines(&self, n: usize) -> Vec<String> {
        let lines = self.lines.lock().unwrap();
        lines[lines.len().saturating_sub(n)..].to_vec()
    }

    /// One memory figure of `/proc/PID/status` (`VmHWM`, `VmRSS`), in bytes.
    pub fn memory(&self, field: &str) -> std::io::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        let kib: Option<u64> = (status.lines())
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok());
        kib.map(|kib| kib * 1024).ok_or_else(|| {
            std::io::Error::other(format!("no {field} in /proc/{}/status", self.pid()))
        })
    }

    /// Send signal `name` (`TERM`, `HUP`, `KILL`).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args(["-s", name, &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -s {name} {}", self.pid());
    }

    /// Its exit status, once it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("wait for the process")
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
