//! 1. Drains in process: the host beside a bare loop, and the payloads' parse rates.

use super::*;

impl Bench {
    /// 1. One transaction of N distinct notifications, drained by the host
    ///    (one trivial Rust plugin, typed payloads) and by a bare loop. For
    ///    JSON, also how fast this process parses the same payloads into a
    ///    `serde_json::Value`, the cost a plugin that parses them pays.
    pub(crate) async fn drain(&mut self) -> anyhow::Result<()> {
        let cases = [
            ("16 B", 200_000, "(1e15 + i)::bigint::text"),
            (
                "1 KB JSON",
                100_000,
                "json_build_object('i', i, 'pad', repeat('x', 1000))::text",
            ),
            ("200 B row key", 100_000, ROW_KEY_SQL),
            ("1 KB row change", 100_000, ROW_CHANGE_SQL),
        ];
        for (label, n, payload_sql) in cases {
            let parse = if payload_sql.starts_with("json") {
                Some(self.parse_rates(payload_sql, n).await?)
            } else {
                None
            };
            let mut bare = Vec::new();
            let mut host = Vec::new();
            let mut native = Vec::new();
            for round in 0..REPEATS {
                let channel = format!("bench_drain_{round}_{}", std::process::id());
                let produce = format!("select count(pg_notify('{channel}', {payload_sql})) from generate_series(1, {n}) as i");
                bare.push(n as f64 / self.bare_drain(&channel, &produce, n).await?);
                host.push(n as f64 / self.host_drain(&channel, &produce, n, true).await?);
                native.push(n as f64 / self.host_drain(&channel, &produce, n, false).await?);
            }
            let (b, h, c) = (median(&mut bare), median(&mut host), median(&mut native));
            println!(
                "drain {label}: with a native closure instead of the plugin: {:.0}k/s ({:.0}% of bare)",
                c / 1e3,
                100.0 * c / b
            );
            if let Some(ParseRates { value, decode }) = parse {
                // The bare loop's own multiple bounds what any host reading
                // through tokio-postgres can reach where the bench runs.
                println!(
                    "drain {label}: serde_json::Value parse of the same payloads: {:.0}k/s (host = {:.1}x, the bare loop itself = {:.1}x); the host's decode alone: {:.0}k/s ({:.1}x)",
                    value / 1e3,
                    h / value,
                    b / value,
                    decode / 1e3,
                    decode / value
                );
            }
            self.record(
                &format!("drain_{}", label.replace(' ', "_").to_lowercase()),
                format!("drain {label}, N={n}: host / bare loop"),
                format!(
                    "{:.0}k/s / {:.0}k/s = {:.0}%",
                    h / 1e3,
                    b / 1e3,
                    100.0 * h / b
                ),
                &[
                    ("host_per_s", h),
                    ("bare_per_s", b),
                    ("ratio", h / b),
                    ("native_closure_per_s", c),
                    ("value_parse_per_s", parse.map_or(0.0, |p| p.value)),
                    ("decode_per_s", parse.map_or(0.0, |p| p.decode)),
                ],
            );
        }
        Ok(())
    }

    /// Parses per second of the payloads `payload_sql` makes for `i` in
    /// 1..=n, on one thread (medians of `REPEATS`, the two taken in turn):
    /// into a `serde_json::Value`, and the host's own decode (validated and
    /// compacted, into a reused buffer, as the listener does it).
    pub(crate) async fn parse_rates(
        &self,
        payload_sql: &str,
        n: usize,
    ) -> anyhow::Result<ParseRates> {
        let client = self.client().await?;
        let rows = client
            .query(
                &format!("select {payload_sql} from generate_series(1, {n}) as i"),
                &[],
            )
            .await?;
        let payloads: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
        let per_s = |started: Instant| n as f64 / started.elapsed().as_secs_f64();
        let (mut value, mut decode) = (Vec::new(), Vec::new());
        let mut buffer = String::new();
        for _ in 0..REPEATS {
            let started = Instant::now();
            for payload in &payloads {
                std::hint::black_box(serde_json::from_str::<serde_json::Value>(payload)?);
            }
            value.push(per_s(started));
            let started = Instant::now();
            for payload in &payloads {
                match pgnotifier::payload::decode_into(payload, PayloadMode::Typed, &mut buffer) {
                    Payload::Json(text) => buffer = std::hint::black_box(text),
                    other => anyhow::bail!("{payload} decoded as {other:?}, not json"),
                }
            }
            decode.push(per_s(started));
        }
        Ok(ParseRates {
            value: median(&mut value),
            decode: median(&mut decode),
        })
    }

    /// Seconds from the bare loop's first notification to its last.
    pub(crate) async fn bare_drain(
        &self,
        channel: &str,
        produce: &str,
        n: usize,
    ) -> anyhow::Result<f64> {
        let (listening_tx, listening) = tokio::sync::oneshot::channel();
        let (url, channel) = (self.url.clone(), channel.to_owned());
        let done = on_own_thread(move || async move {
            let (mut received, mut first) = (0, None);
            bare_listen(&url, &channel, listening_tx, |_| {
                let first = *first.get_or_insert_with(Instant::now);
                received += 1;
                (received == n).then(|| first.elapsed())
            })
            .await
        });
        listening.await??;
        let producer = self.client().await?;
        producer.execute(produce, &[]).await?;
        let took = tokio::time::timeout(Duration::from_secs(120), done).await???;
        Ok(took.as_secs_f64().max(1e-6))
    }

    /// Seconds from the host's first delivery to its last, through the noop
    /// plugin, or (to tell host cost from sandbox cost) a native closure.
    pub(crate) async fn host_drain(
        &self,
        channel: &str,
        produce: &str,
        n: usize,
        wasm: bool,
    ) -> anyhow::Result<f64> {
        let notifier = if wasm {
            let sidecar = format!("overflow = \"block\"\n\n[config]\nchannels = \"{channel}\"\n");
            self.host(&[("noop".into(), &self.noop, sidecar)]).await?
        } else {
            let notifier = Notifier::new(DatabaseSettings::from_url(&self.url)?);
            let closure = Subscriber::native(|_, _, _, _| {}).queue(
                1024,
                pgnotifier::Overflow::Block,
                Duration::ZERO,
            );
            notifier.subscribe("closure", channel, closure)?;
            notifier.start().await?;
            notifier
                .wait_until_listening(Duration::from_secs(30))
                .await?;
            notifier
        };
        self.drain_through(notifier, produce, n).await
    }

    /// Seconds from the first delivery to the n-th, for one transaction of n
    /// notifications (`produce`) into `notifier`'s one subscriber; then shuts it down.
    pub(crate) async fn drain_through(
        &self,
        notifier: Notifier,
        produce: &str,
        n: usize,
    ) -> anyhow::Result<f64> {
        let poll = Duration::from_micros(200);
        let took = self
            .time_deliveries(&notifier, produce, n as u64, poll)
            .await?;
        notifier.shutdown(Duration::from_secs(5)).await;
        Ok(took)
    }

    /// Seconds from the first delivery to the `total`-th, over all of
    /// `notifier`'s subscribers, for one transaction (`produce`), counted
    /// every `poll`. Timing from the first delivery, not from the commit,
    /// keeps the producer's own statement out, and a drain that ends before
    /// the statement returns in.
    pub(crate) async fn time_deliveries(
        &self,
        notifier: &Notifier,
        produce: &str,
        total: u64,
        poll: Duration,
    ) -> anyhow::Result<f64> {
        let producer = self.client().await?;
        let produce = produce.to_owned();
        let produced = tokio::spawn(async move { producer.execute(&produce, &[]).await });
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut first = None;
        loop {
            let count = delivered(notifier);
            if count > 0 && first.is_none() {
                first = Some(Instant::now());
            }
            if count >= total {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "host delivered {count} of {total}"
            );
            tokio::time::sleep(poll).await;
        }
        let took = first.map_or(1e-6, |f| f.elapsed().as_secs_f64());
        produced.await??;
        for subscriber in notifier.subscribers() {
            let stats = &subscriber.stats;
            anyhow::ensure!(
                stats.dropped == 0 && stats.failed == 0,
                "drops or failures at {}: {stats:?}",
                subscriber.id
            );
        }
        Ok(took)
    }
}

/// Parses per second of the same payloads: see `Bench::parse_rates`.
#[derive(Clone, Copy)]
pub(crate) struct ParseRates {
    value: f64,
    decode: f64,
}
