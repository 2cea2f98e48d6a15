//! A browser for the console's tests: Debian's `chromium`, headless, driven
//! through `chromedriver` over the W3C WebDriver protocol (JSON over HTTP,
//! spoken here with a plain socket: a few commands need no client crate).

use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// One headless browser window, closed (and its driver stopped) on drop.
pub struct Browser {
    driver: Child,
    addr: String,
    session: String,
}

impl Browser {
    /// A window of `width` × `height`.
    pub fn start(width: u32, height: u32) -> Self {
        for (path, package) in [(CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")] {
            assert!(
                Path::new(path).exists(),
                "{path} is missing: tests/run installs Debian's {package}"
            );
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let addr = format!("127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while request(&addr, "GET", "/status", None)
            .map(|s| s["value"]["ready"] != true)
            .unwrap_or(true)
        {
            assert!(Instant::now() < deadline, "chromedriver never became ready");
            std::thread::sleep(Duration::from_millis(50));
        }
        let profile = super::temp_dir("browser-profile");
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--hide-scrollbars",
                         format!("--window-size={width},{height}"),
                         format!("--user-data-dir={}", profile.display())],
            },
        }}});
        let session = request(&addr, "POST", "/session", Some(&capabilities))
            .unwrap_or_else(|e| panic!("chromedriver made no session: {e}"));
        let session = session["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("chromedriver made no session: {session}"))
            .to_owned();
        Self {
            driver,
            addr,
            session,
        }
    }

    fn command(&self, method: &str, path: &str, body: Option<&Value>) -> Value {
        let path = format!("/session/{}{path}", self.session);
        let reply = request(&self.addr, method, &path, body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        assert!(
            reply["value"].get("error").is_none(),
            "{method} {path}: {reply}"
        );
        reply["value"].clone()
    }

    pub fn goto(&self, url: &str) {
        self.command("POST", "/url", Some(&json!({ "url": url })));
    }

    pub fn resize(&self, width: u32, height: u32) {
        let rect = json!({ "width": width, "height": height });
        self.command("POST", "/window/rect", Some(&rect));
    }

    /// Run `script` in the page; what it returns.
    pub fn run(&self, script: &str) -> Value {
        let body = json!({ "script": script, "args": [] });
        self.command("POST", "/execute/sync", Some(&body))
    }

    /// The text of the first element matching `css` (None: there is none).
    pub fn text(&self, css: &str) -> Option<String> {
        let script = format!(
            "const e = document.querySelector({}); return e ? e.innerText : null;",
            json!(css)
        );
        self.run(&script).as_str().map(str::to_owned)
    }

    /// Wait until the text of `css` satisfies `done`; that text.
    pub fn wait_for_text(&self, css: &str, what: &str, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + super::SOON;
        loop {
            let text = self.text(css);
            if let Some(text) = text.as_deref().filter(|t| done(t)) {
                return text.to_owned();
            }
            assert!(
                Instant::now() < deadline,
                "the page never showed {what} ({css}: {text:?}); the page: {:?}",
                self.text("body")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The first element matching `css`, as WebDriver names it.
    fn element(&self, css: &str) -> String {
        let found = self.command(
            "POST",
            "/element",
            Some(&json!({ "using": "css selector", "value": css })),
        );
        (found.as_object().and_then(|o| o.values().next()))
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no element {css}: {found}"))
            .to_owned()
    }

    /// Click the first element matching `css`, as a user does.
    pub fn click(&self, css: &str) {
        let element = self.element(css);
        self.command(
            "POST",
            &format!("/element/{element}/click"),
            Some(&json!({})),
        );
    }

    /// Type `text` into the first element matching `css`.
    pub fn type_into(&self, css: &str, text: &str) {
        let element = self.element(css);
        let keys = json!({ "text": text });
        self.command("POST", &format!("/element/{element}/value"), Some(&keys));
    }

    /// Save the window as a PNG at `path`.
    pub fn screenshot(&self, path: &Path) {
        let png = self.command("GET", "/screenshot", None);
        let png = from_base64(png.as_str().expect("a screenshot as base64"));
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = request(
            &self.addr,
            "DELETE",
            &format!("/session/{}", self.session),
            None,
        );
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// One WebDriver request; the JSON reply.
fn request(addr: &str, method: &str, path: &str, body: Option<&Value>) -> Result<Value, String> {
    let body = body.map(Value::to_string).unwrap_or_default();
    let mut stream = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(|e| e.to_string())?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream
        .write_all(head.as_bytes())
        .and_then(|_| stream.write_all(body.as_bytes()))
        .map_err(|e| e.to_string())?;
    // The driver may keep the connection open: read the head, then as much
    // body as it says.
    let mut reply = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let head_end = loop {
        if let Some(at) = reply.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let n = stream.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("the driver closed the connection".to_owned());
        }
        reply.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&reply[..head_end]).to_ascii_lowercase();
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|n| n.trim().parse::<usize>().ok());
    match length {
        Some(length) => {
            while reply.len() < head_end + length {
                let n = stream.read(&mut buf).map_err(|e| e.to_string())?;
                if n == 0 {
                    break;
                }
                reply.extend_from_slice(&buf[..n]);
            }
        }
        None => {
            stream.read_to_end(&mut reply).map_err(|e| e.to_string())?;
        }
    }
    let body = String::from_utf8_lossy(&reply[head_end..]);
    let body = if head.contains("transfer-encoding: chunked") {
        unchunk(&body)
    } else {
        body.into_owned()
    };
    serde_json::from_str(&body).map_err(|e| format!("{e}: {head} {body}"))
}

fn unchunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

/// Standard base64, as WebDriver sends a screenshot.
fn from_base64(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {:?}", c as char),
    };
    let digits: Vec<u8> = text.bytes().filter(|&c| c != b'=').map(value).collect();
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for group in digits.chunks(4) {
        let bits = group
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, &d)| acc | u32::from(d) << (18 - 6 * i));
        out.extend_from_slice(&bits.to_be_bytes()[1..group.len()]);
    }
    out
}
