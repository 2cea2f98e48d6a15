//! `pgnotifier record`: live notifications captured to a file, one JSON
//! object per line, for a plugin author to replay later.
//!
//! Each line is `{"channel": …, "payload": …, "pid": …, "received_at": …}`:
//! the payload exactly as sent (a string), the sender's backend pid, and
//! when the notification arrived, in RFC 3339 UTC with microseconds. The
//! file is written and flushed line by line, so a recording cut short is
//! still whole up to its last line.

use anyhow::Context;
use pgnotifier::channel::quote_ident;
use pgnotifier::pg::connection::drive;
use pgnotifier::pg::DatabaseSettings;
use serde::Serialize;
use std::io::Write;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

/// One recorded notification: a line of the file.
#[derive(Debug, Serialize)]
pub struct Recorded<'a> {
    pub channel: &'a str,
    pub payload: &'a str,
    pub pid: i32,
    pub received_at: String,
}

/// Record `channels` from `database` into `out` (`-`: stdout) until Ctrl-C,
/// or until `count` notifications; how many were recorded.
pub async fn record(
    database: &DatabaseSettings,
    channels: &[String],
    out: &Path,
    count: Option<u64>,
) -> anyhow::Result<u64> {
    anyhow::ensure!(!channels.is_empty(), "--channels names no channel");
    for channel in channels {
        pgnotifier::channel::validate(channel).with_context(|| format!("channel {channel:?}"))?;
    }
    let mut sink: Box<dyn Write> = if out == Path::new("-") {
        Box::new(std::io::stdout().lock())
    } else {
        let file = std::fs::File::create(out)
            .with_context(|| format!("cannot write {}", out.display()))?;
        Box::new(std::io::BufWriter::new(file))
    };
    let (client, connection) = database
        .connect()
        .await
        .with_context(|| format!("connecting to {}", database.redacted()))?;
    let (tx, mut notifications) = tokio::sync::mpsc::unbounded_channel();
    let driver = tokio::spawn(drive(connection, move |n| {
        tx.send((n, SystemTime::now())).is_ok()
    }));
    let listen: String = channels
        .iter()
        .map(|c| format!("LISTEN {};", quote_ident(c)))
        .collect();
    client.batch_execute(&listen).await.context("LISTEN")?;
    eprintln!(
        "recording {} to {}; Ctrl-C stops",
        channels.join(", "),
        out.display()
    );
    let mut recorded = 0u64;
    let stop = tokio::signal::ctrl_c();
    tokio::pin!(stop);
    while count.is_none_or(|n| recorded < n) {
        let (n, at) = tokio::select! {
            next = notifications.recv() => match next {
                Some(next) => next,
                None => break,
            },
            _ = &mut stop => break,
        };
        let line = Recorded {
            channel: n.channel(),
            payload: n.payload(),
            pid: n.process_id(),
            received_at: rfc3339(at),
        };
        serde_json::to_writer(&mut sink, &line)?;
        sink.write_all(b"\n")?;
        sink.flush()
            .with_context(|| format!("writing {}", out.display()))?;
        recorded += 1;
    }
    drop(client);
    if let Ok(Err(e)) = driver.await {
        if count.is_none_or(|n| recorded < n) {
            return Err(e).context("the connection was lost");
        }
    }
    let plural = if recorded == 1 { "" } else { "s" };
    eprintln!("recorded {recorded} notification{plural}");
    Ok(recorded)
}

/// `at` as RFC 3339 in UTC, to the microsecond.
pub(crate) fn rfc3339(at: SystemTime) -> String {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:06}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60,
        since.subsec_micros()
    )
}

/// The proleptic Gregorian date of a day count since 1970-01-01
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// The day count since 1970-01-01 of a proleptic Gregorian date (Howard
/// Hinnant's `days_from_civil`), the inverse of [`civil_from_days`].
pub(crate) fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year.rem_euclid(400);
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn times_are_rfc3339_utc_to_the_microsecond() {
        let at = UNIX_EPOCH + Duration::from_micros(1_796_193_600_123_456);
        assert_eq!(rfc3339(at), "2026-12-02T06:40:00.123456Z");
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000000Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000000Z");
        for days in [0, 11_016, 20_789, -1, 60_000] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, i64::from(m), i64::from(d)), days);
        }
    }
}
