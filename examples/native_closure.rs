//! Embed pgnotifier in a synchronous Rust program, with a closure as the subscriber.
//!
//! ```text
//! cargo run --example native_closure -- postgres://postgres@127.0.0.1:5432/postgres
//! psql -h 127.0.0.1 -U postgres -c "select pg_notify('orders', '{\"id\": 7}')"
//! ```
//! Without an argument, `DATABASE_URL` and then the `PG*` variables are used.

use pgnotifier::blocking::Notifier;
use pgnotifier::{DatabaseSettings, Selection, Subscriber};
use std::time::Duration;

fn main() -> anyhow::Result<()> {
    let url = std::env::args().nth(1);
    let database = DatabaseSettings::resolve(url.as_deref())?;
    println!("connecting to {}", database.redacted());
    let notifier = Notifier::new(database)?;

    // One callback on two channels, called as (id, channel, payload, pid).
    let printer = Subscriber::native(|id, channel, payload, pid| {
        println!("{id}: {payload:?} on {channel:?} from backend {pid}");
    })
    .on_gap(|id, channels| println!("{id}: may have missed notifications on {channels:?}"));
    notifier.subscribe("printer", ["orders", "invoices"], printer)?;
    notifier.mute_subscriber("printer", "invoices")?;
    notifier.unmute_subscriber("printer", Selection::All)?;

    notifier.start()?;
    notifier.wait_until_listening(Duration::from_secs(10))?;
    println!(
        "listening on {:?}; press Enter to stop",
        notifier.as_async().listening()
    );
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    notifier.shutdown(Duration::from_secs(5));
    Ok(())
}
