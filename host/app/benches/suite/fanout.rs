//! 2. Fan-out: one channel, 1 to 100 subscribers.

use super::*;

impl Bench {
    /// 2. One channel, 1, 10 and 100 subscribers: dispatches/s and CPU per notification.
    pub(crate) async fn fanout(&mut self) -> anyhow::Result<()> {
        const N: usize = 20_000;
        for subscribers in [1usize, 10, 100] {
            let mut rates = Vec::new();
            let mut cpu = Vec::new();
            for round in 0..REPEATS {
                let channel = format!("bench_fan_{subscribers}_{round}_{}", std::process::id());
                let sidecar = format!("overflow = \"block\"\nqueue_size = 100000\n\n[config]\nchannels = \"{channel}\"\n");
                let plugins: Vec<(String, &[u8], String)> = (0..subscribers)
                    .map(|i| (format!("noop{i}"), self.noop.as_slice(), sidecar.clone()))
                    .collect();
                let notifier = self.host(&plugins).await?;
                let total = (N * subscribers) as u64;
                let produce = format!("select count(pg_notify('{channel}', (1e15 + i)::bigint::text)) from generate_series(1, {N}) as i");
                let cpu_before = cpu_seconds();
                // Counting 100 subscribers' deliveries costs CPU too: poll less often than the drain.
                let poll = Duration::from_micros(500);
                let took = self
                    .time_deliveries(&notifier, &produce, total, poll)
                    .await?;
                let cpu_used = cpu_seconds() - cpu_before;
                rates.push(total as f64 / took);
                cpu.push(cpu_used * 1e6 / N as f64);
                notifier.shutdown(Duration::from_secs(5)).await;
            }
            let (rate, us) = (median(&mut rates), median(&mut cpu));
            self.record(
                &format!("fanout_{subscribers}"),
                format!("fan-out to {subscribers} subscriber(s), N={N}"),
                format!(
                    "{:.0}k dispatches/s, {us:.1} CPU µs per notification",
                    rate / 1e3
                ),
                &[("dispatches_per_s", rate), ("cpu_us_per_notification", us)],
            );
        }
        Ok(())
    }
}
