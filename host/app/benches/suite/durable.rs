//! Durable delivery: throughput and latency through `pgnotifier.send`.

use super::*;

/// A payload as an event per row counter `i`: its number.
const SMALL: &str = "i::text";

/// About 1 MB of JSON, under the default `max_payload_bytes` (1 MiB).
const LARGE: &str = "json_build_object('i', i, 'body', repeat('x', 1000000))::text";

impl Bench {
    /// Durable delivery: events through `pgnotifier.send` to an at-least-once
    /// subscriber, beside what PostgreSQL accepts through `send` alone and
    /// plain `pg_notify` to an at-most-once one, in transactions of 100
    /// events and of one; then latency at 1000 events/s.
    pub(crate) async fn durable(&mut self) -> anyhow::Result<()> {
        let mut client = self.client().await?;
        pgnotifier::durable::schema::install(&mut client).await?;
        for (per_tx, events) in [(100usize, 20_000usize), (1, 2_000)] {
            let (mut accepted, mut durable, mut plain) = (Vec::new(), Vec::new(), Vec::new());
            for round in 0..REPEATS {
                let tag = format!("bench_durable_{per_tx}_{round}_{}", std::process::id());
                let started = Instant::now();
                let alone = format!("{tag}_alone");
                self.produce("pgnotifier.send", &alone, per_tx, events, SMALL)
                    .await?;
                accepted.push(events as f64 / started.elapsed().as_secs_f64());
                durable.push(self.durable_rate(&tag, per_tx, events, true, SMALL).await?);
                plain.push(
                    self.durable_rate(&tag, per_tx, events, false, SMALL)
                        .await?,
                );
            }
            let (accepted, durable, plain) = (
                median(&mut accepted),
                median(&mut durable),
                median(&mut plain),
            );
            self.record(
                &format!("durable_{per_tx}_per_tx"),
                format!("durable, noop Rust plugin, {per_tx} per transaction, N={events}: end to end / send accepted / pg_notify end to end"),
                format!(
                    "{:.0}k/s / {:.0}k/s / {:.0}k/s (end to end = {:.0}% of accepted)",
                    durable / 1e3,
                    accepted / 1e3,
                    plain / 1e3,
                    100.0 * durable / accepted
                ),
                &[("durable_per_s", durable), ("accepted_per_s", accepted), ("plain_per_s", plain)],
            );
        }
        self.durable_large().await?;
        let (mut p50s, mut p99s) = (Vec::new(), Vec::new());
        for round in 0..REPEATS {
            let tag = format!("bench_durable_latency_{round}_{}", std::process::id());
            let (p50, p99) = self.durable_latency(&tag, 1000).await?;
            p50s.push(p50);
            p99s.push(p99);
        }
        let (p50, p99) = (median(&mut p50s), median(&mut p99s));
        self.record(
            "durable_latency_1000",
            "durable latency at 1000/s, p50 / p99 (send to on-notify)".to_owned(),
            format!("{p50:.3} / {p99:.3} ms"),
            &[("p50_ms", p50), ("p99_ms", p99)],
        );
        client
            .batch_execute(
                "DELETE FROM pgnotifier.outbox WHERE channel LIKE 'bench\\_durable\\_%';
                 DELETE FROM pgnotifier.positions WHERE subscriber LIKE 'bench\\_durable\\_%'",
            )
            .await?;
        Ok(())
    }

    /// Events of about 1 MB, one per transaction: what `send` accepts alone
    /// and what reaches the noop Rust plugin, in events and megabytes a second.
    async fn durable_large(&mut self) -> anyhow::Result<()> {
        let events = 200;
        let (mut accepted, mut durable) = (Vec::new(), Vec::new());
        for round in 0..REPEATS {
            let tag = format!("bench_durable_large_{round}_{}", std::process::id());
            let started = Instant::now();
            self.produce("pgnotifier.send", &format!("{tag}_alone"), 1, events, LARGE)
                .await?;
            accepted.push(events as f64 / started.elapsed().as_secs_f64());
            durable.push(self.durable_rate(&tag, 1, events, true, LARGE).await?);
        }
        let (accepted, durable) = (median(&mut accepted), median(&mut durable));
        self.record(
            "durable_large",
            format!("durable, 1 MB JSON events, 1 per transaction, N={events}: end to end / send accepted"),
            format!(
                "{durable:.0}/s ({durable:.0} MB/s) / {accepted:.0}/s (end to end = {:.0}% of accepted)",
                100.0 * durable / accepted
            ),
            &[("durable_per_s", durable), ("accepted_per_s", accepted)],
        );
        Ok(())
    }

    /// `events` sent with `function` (`pgnotifier.send` or `pg_notify`) on
    /// `channel`, `per_tx` to a transaction, from four connections, each
    /// payload `payload_sql` of the row counter `i`.
    pub(crate) async fn produce(
        &self,
        function: &str,
        channel: &str,
        per_tx: usize,
        events: usize,
        payload_sql: &str,
    ) -> anyhow::Result<()> {
        const CONNECTIONS: usize = 4;
        let mut producers = Vec::new();
        for _ in 0..CONNECTIONS {
            let client = self.client().await?;
            let sql =
                format!("select {function}($1, {payload_sql}) from generate_series(1, $2) as i");
            let channel = channel.to_owned();
            producers.push(tokio::spawn(async move {
                let statement = client.prepare(&sql).await?;
                let per_tx = per_tx as i32;
                for _ in 0..events / CONNECTIONS / per_tx as usize {
                    client.execute(&statement, &[&channel, &per_tx]).await?;
                }
                anyhow::Ok(())
            }));
        }
        for producer in producers {
            producer.await??;
        }
        Ok(())
    }

    /// Events/s from the first send to the last call into the noop Rust
    /// plugin, at least once through `pgnotifier.send`, or (`durable`
    /// false) at most once through `pg_notify`.
    pub(crate) async fn durable_rate(
        &self,
        tag: &str,
        per_tx: usize,
        events: usize,
        durable: bool,
        payload_sql: &str,
    ) -> anyhow::Result<f64> {
        let (id, channel, delivery) = match durable {
            true => (
                format!("{tag}_sink"),
                format!("{tag}_durable"),
                "at-least-once",
            ),
            false => (
                format!("{tag}_plain_sink"),
                format!("{tag}_plain"),
                "at-most-once",
            ),
        };
        let sidecar = format!(
            "delivery = \"{delivery}\"\noverflow = \"block\"\nqueue_size = 100000\n\n[config]\nchannels = \"{channel}\"\n"
        );
        let notifier = self.host(&[(id.clone(), &self.noop, sidecar)]).await?;
        if durable {
            self.wait_for_position(&id).await?;
            self.wait_for_relay().await?;
        }
        let started = Instant::now();
        let function = if durable {
            "pgnotifier.send"
        } else {
            "pg_notify"
        };
        self.produce(function, &channel, per_tx, events, payload_sql)
            .await?;
        let deadline = Instant::now() + Duration::from_secs(120);
        while delivered(&notifier) < events as u64 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let elapsed = started.elapsed();
        let got = delivered(&notifier);
        notifier.shutdown(Duration::from_secs(5)).await;
        anyhow::ensure!(got >= events as u64, "{id} received {got} of {events}");
        Ok(events as f64 / elapsed.as_secs_f64())
    }

    /// Until the feeder of `subscriber` has its position: it reads from now on.
    pub(crate) async fn wait_for_position(&self, subscriber: &str) -> anyhow::Result<()> {
        let client = self.client().await?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while pgnotifier::durable::reader::position(&client, subscriber)
            .await?
            .is_none()
        {
            anyhow::ensure!(Instant::now() < deadline, "{subscriber} never started");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(())
    }

    /// With the WAL transport, until this host's relay reads the slot (a
    /// probe sent now is relayed): what is sent before waits in the slot,
    /// and would time the relay's start-up.
    pub(crate) async fn wait_for_relay(&self) -> anyhow::Result<()> {
        let pgnotifier::durable::Transport::Wal { slot } = &self.transport else {
            return Ok(());
        };
        let client = self.client().await?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            // The transport is the WAL once the relay has set it.
            let probe: i64 = client
                .query_one("SELECT pgnotifier.send('bench_relay_probe', '')", &[])
                .await?
                .get(0);
            let wal: bool = client
                .query_one(
                    "SELECT EXISTS (SELECT FROM pgnotifier.limits WHERE transport = 'wal')",
                    &[],
                )
                .await?
                .get(0);
            while wal && Instant::now() < deadline {
                let relayed: bool = client
                    .query_one(
                        "SELECT coalesce((SELECT (through - '0/0'::pg_lsn)::bigint >= $1
                                            FROM pgnotifier.relayed WHERE slot = $2), false)",
                        &[&probe, slot],
                    )
                    .await?
                    .get(0);
                if relayed {
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            anyhow::ensure!(Instant::now() < deadline, "the relay never read {slot}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// From `pgnotifier.send` to the call, at `rate` events/s (one per transaction).
    pub(crate) async fn durable_latency(&self, tag: &str, rate: u32) -> anyhow::Result<(f64, f64)> {
        let notifier = Notifier::builder(DatabaseSettings::from_url(&self.url)?)
            .durable_transport(self.transport.clone())
            .build();
        notifier.start().await?;
        let (subscriber, samples) = latency_recorder();
        let subscriber = subscriber.at_least_once(pgnotifier::durable::RetryPolicy::default());
        let (id, channel) = (format!("{tag}_sink"), format!("{tag}_events"));
        notifier.subscribe(&id, channel.as_str(), subscriber)?;
        self.wait_for_position(&id).await?;
        self.wait_for_relay().await?;
        let client = self.client().await?;
        let statement = client
            .prepare("select pgnotifier.send($1, (extract(epoch from clock_timestamp()) * 1e6)::bigint::text)")
            .await?;
        let count = rate as usize * 2;
        let interval = Duration::from_secs_f64(1.0 / rate as f64);
        let start = Instant::now();
        for i in 0..count {
            tokio::time::sleep_until((start + interval * i as u32).into()).await;
            client.execute(&statement, &[&channel]).await?;
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while samples.lock().map(|s| s.len()).unwrap_or(0) < count && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        notifier.shutdown(Duration::from_secs(5)).await;
        let mut all = samples.lock().map(|s| s.clone()).unwrap_or_default();
        anyhow::ensure!(all.len() >= count, "{id} received {} of {count}", all.len());
        Ok(percentiles(&mut all))
    }
}
