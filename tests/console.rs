//! The operator console in a real browser (Debian's chromium, headless,
//! through WebDriver) against a real host, real plugins and PostgreSQL:
//! what an operator sees and clicks. Screenshots of the page (1280×800,
//! and narrow) go to `CARGO_TARGET_TMPDIR/console/`.

use crate::support::durable::{feeding, fresh_database};
use crate::support::host::{Host, Setup};
use crate::support::wat::{Notify, WatPlugin};
use crate::support::webdriver::Browser;
use crate::support::{channel, SOON};
use std::path::PathBuf;

/// Where the screenshots go: beside the build, kept after the run.
fn screenshots() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console")
}

/// `sql` through psql, as an operator sends a notification.
fn psql(url: &str, sql: &str) {
    let out = std::process::Command::new("psql")
        .args([url, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .output()
        .expect("run psql");
    assert!(
        out.status.success(),
        "psql: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn admin_url(setup: &Setup) -> String {
    format!("http://{}/", setup.admin_addr())
}

/// The page follows delivery live, and its buttons act: a channel muted
/// stops delivery; a broken plugin file shows as a reload failure among
/// the events; a failing at-least-once subscriber's dead letter shows,
/// and redelivered from the page, arrives.
#[tokio::test(flavor = "multi_thread")]
async fn the_console_shows_delivery_mutes_reload_failures_and_redelivers() {
    let (url, client) = fresh_database("console").await;
    let (live, marker) = (channel("console_live"), channel("console_marker"));
    let setup = Setup::new("console", &format!("database_url = {url:?}\n"));
    WatPlugin::new(&[live.as_str(), marker.as_str()], Notify::Echo).write(&setup.plugins, "echo");
    std::fs::write(
        setup.plugins.join("letters.toml"),
        "delivery = 'at-least-once'\nretry_max_attempts = 2\nretry_backoff_ms = 1\n\
         failure_threshold = 0\n",
    )
    .unwrap();
    WatPlugin::new(&["work"], Notify::Fail).write(&setup.plugins, "letters");
    let host = Host::with_config(&setup.config);
    host.wait_for(&["LISTEN set updated"]);
    feeding(&client, "letters").await;

    let browser = Browser::start(1280, 800);
    browser.goto(&admin_url(&setup));
    browser.wait_for_text("#connection", "the live stream", |t| t == "live");
    let delivered = "tr[data-subscriber='echo'] td[data-field='delivered']";
    browser.wait_for_text(delivered, "no delivery yet", |t| t == "0");

    // A notification sent with psql: the count rises on the page.
    psql(&url, &format!("NOTIFY {live}, 'from-psql'"));
    host.wait_for(&["from-psql", "subscriber=echo"]);
    browser.wait_for_text(delivered, "one delivery", |t| t == "1");
    // The channel's count with its rate and a line of it; the call times.
    let received = format!("tr[data-channel='{live}'] td[data-field='received']");
    browser.wait_for_text(&received, "the count received", |t| t.starts_with("1, "));
    let line = format!("return !!document.querySelector(\"{received} svg.sparkline polyline\")");
    assert_eq!(
        browser.run(&line),
        true,
        "a sparkline of the channel's rate"
    );
    let calls = "tr[data-subscriber='echo'] td[data-label='Call p50 / p99']";
    browser.wait_for_text(calls, "the call times", |t| t.starts_with('≤'));

    // Mute the channel from the page: nothing on it is delivered, while
    // the marker channel still is.
    browser.click(&format!("tr[data-channel='{live}'] button"));
    let state = format!("tr[data-channel='{live}'] td[data-label='State']");
    browser.wait_for_text(&state, "the channel muted", |t| t == "muted");
    psql(
        &url,
        &format!("NOTIFY {live}, 'while-muted'; NOTIFY {marker}, 'marker-after-mute'"),
    );
    host.wait_for(&["marker-after-mute", "subscriber=echo"]);
    assert_eq!(host.count(&["while-muted"]), 0, "{}", host.output());

    // A broken plugin file: its reload failure, with its error, in the events.
    std::fs::write(setup.plugins.join("broken.wasm"), b"not a component").unwrap();
    let failure = browser.wait_for_text(
        "#events li[data-kind='load_failed']",
        "the reload failure",
        |t| t.contains("broken"),
    );
    assert!(failure.contains("broken.wasm"), "{failure}");

    // A dead letter shows; fixed, and redelivered from the page, it arrives.
    psql(&url, "SELECT pgnotifier.send('work', 'dead-one')");
    let row = "#dead-letters tr[data-dead-letter]";
    browser.wait_for_text(row, "the dead letter", |t| t.contains("dead-one"));
    browser.screenshot(&screenshots().join("console-1280x800.png"));
    WatPlugin::new(&["work"], Notify::Echo).write(&setup.plugins, "letters");
    host.wait_for(&["plugin reloaded", "subscriber=letters"]);
    browser.click(&format!("{row} button"));
    host.wait_for(&["dead-one", "subscriber=letters"]);
    let deadline = std::time::Instant::now() + SOON;
    while browser.text(row).is_some() {
        assert!(
            std::time::Instant::now() < deadline,
            "the redelivered letter stayed on the page"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }

    // Narrow: one column, every value labelled.
    browser.resize(480, 900);
    browser.screenshot(&screenshots().join("console-narrow.png"));
    drop(browser);
    host.stop();
}

/// With a token, the page asks for it, and shows nothing of the host
/// until it is entered; then it follows the host live.
#[tokio::test(flavor = "multi_thread")]
async fn the_console_asks_for_the_token_and_shows_nothing_before_it() {
    let live = channel("console_token");
    let setup = Setup::new("console-token", "admin_token = \"console-s3cret\"\n");
    setup.echo("echo", &live);
    let host = Host::with_config(&setup.config);
    host.wait_for(&["LISTEN set updated"]);
    let browser = Browser::start(1280, 800);
    browser.goto(&admin_url(&setup));
    browser.wait_for_text("#connection", "the token asked for", |t| {
        t == "token needed"
    });
    let shown = browser.run("return !document.querySelector('#token-form').hidden");
    assert_eq!(shown, true, "the token form is shown");
    assert_eq!(
        browser.text("#subscribers tbody"),
        Some(String::new()),
        "nothing of the host before the token"
    );
    browser.type_into("#token", "console-s3cret");
    browser.click("#token-form button");
    browser.wait_for_text("#connection", "the live stream", |t| t == "live");
    browser.wait_for_text("tr[data-subscriber='echo']", "the subscriber", |t| {
        t.contains(&live)
    });
    drop(browser);
    host.stop();
}
