//! 3. Latency in process at fixed rates: the host beside a bare loop.

use super::*;

impl Bench {
    /// 3. Latency at a fixed rate, one NOTIFY per transaction from several
    ///    connections, stamped with clock_timestamp(): host and bare loop.
    pub(crate) async fn latency(&mut self) -> anyhow::Result<()> {
        for rate in [1_000u32, 10_000] {
            let mut host_p50 = Vec::new();
            let mut host_p99 = Vec::new();
            let mut bare_p50 = Vec::new();
            let mut bare_p99 = Vec::new();
            for round in 0..REPEATS {
                let channel = format!("bench_lat_{rate}_{round}_{}", std::process::id());
                let (p50, p99) = self.host_latency(&channel, rate).await?;
                host_p50.push(p50);
                host_p99.push(p99);
                let (p50, p99) = self.bare_latency(&format!("{channel}_bare"), rate).await?;
                bare_p50.push(p50);
                bare_p99.push(p99);
            }
            let (hp50, hp99, bp50, bp99) = (
                median(&mut host_p50),
                median(&mut host_p99),
                median(&mut bare_p50),
                median(&mut bare_p99),
            );
            self.record(
                &format!("latency_{rate}"),
                format!("latency at {rate}/s, p50 / p99: host vs bare loop"),
                format!(
                    "{hp50:.3} / {hp99:.3} ms vs {bp50:.3} / {bp99:.3} ms (p99 ratio {:.2})",
                    hp99 / bp99
                ),
                &[
                    ("host_p50_ms", hp50),
                    ("host_p99_ms", hp99),
                    ("bare_p50_ms", bp50),
                    ("bare_p99_ms", bp99),
                ],
            );
        }
        Ok(())
    }

    pub(crate) async fn host_latency(
        &self,
        channel: &str,
        rate: u32,
    ) -> anyhow::Result<(f64, f64)> {
        let notifier = Notifier::new(DatabaseSettings::from_url(&self.url)?);
        let (subscriber, samples) = latency_recorder();
        notifier.subscribe("latency", channel, subscriber)?;
        notifier.start().await?;
        notifier
            .wait_until_listening(Duration::from_secs(30))
            .await?;
        let sent = self
            .send_at_rate(channel, rate, &format!("{STAMP_SQL}::text"), 2.0)
            .await?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while samples.lock().map(|s| s.len()).unwrap_or(0) < sent && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        notifier.shutdown(Duration::from_secs(5)).await;
        let mut all = samples.lock().map(|s| s.clone()).unwrap_or_default();
        anyhow::ensure!(all.len() == sent, "host received {} of {sent}", all.len());
        Ok(percentiles(&mut all))
    }

    pub(crate) async fn bare_latency(
        &self,
        channel: &str,
        rate: u32,
    ) -> anyhow::Result<(f64, f64)> {
        let expected = sent_at_rate(rate, 2.0);
        let (listening_tx, listening) = tokio::sync::oneshot::channel();
        let (url, listened) = (self.url.clone(), channel.to_owned());
        let received = on_own_thread(move || async move {
            let mut samples = Vec::with_capacity(expected);
            bare_listen(&url, &listened, listening_tx, |n| {
                let now = now_micros();
                if let Ok(sent) = n.payload().parse::<i64>() {
                    samples.push((now - sent) as f64 / 1000.0);
                }
                (samples.len() == expected).then(|| std::mem::take(&mut samples))
            })
            .await
        });
        listening.await??;
        let sent = self
            .send_at_rate(channel, rate, &format!("{STAMP_SQL}::text"), 2.0)
            .await?;
        anyhow::ensure!(sent == expected, "sent {sent}, not {expected}");
        let mut all = tokio::time::timeout(Duration::from_secs(30), received)
            .await
            .map_err(|_| anyhow::anyhow!("the bare loop did not receive all {sent}"))???;
        Ok(percentiles(&mut all))
    }

    /// Send for `seconds` at `rate`/s from [`SENDERS`] connections, one
    /// NOTIFY per transaction, `payload_sql` (an expression of `i`, the
    /// connection's count) as the payload. Returns how many were sent.
    pub(crate) async fn send_at_rate(
        &self,
        channel: &str,
        rate: u32,
        payload_sql: &str,
        seconds: f64,
    ) -> anyhow::Result<usize> {
        let per_connection = sent_at_rate(rate, seconds) / SENDERS as usize;
        let interval = Duration::from_secs_f64(SENDERS as f64 / rate as f64);
        let mut senders = Vec::new();
        for c in 0..SENDERS {
            let client = self.client().await?;
            let channel = channel.to_owned();
            let sql =
                format!("select pg_notify($1, {payload_sql}) from (select $2::int as i) as s");
            senders.push(tokio::spawn(async move {
                let statement = client.prepare(&sql).await?;
                let start = Instant::now() + interval.mul_f64(c as f64 / SENDERS as f64);
                for i in 0..per_connection {
                    tokio::time::sleep_until((start + interval * i as u32).into()).await;
                    client.execute(&statement, &[&channel, &(i as i32)]).await?;
                }
                anyhow::Ok(per_connection)
            }));
        }
        let mut sent = 0;
        for s in senders {
            sent += s.await??;
        }
        Ok(sent)
    }
}
