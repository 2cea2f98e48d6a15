//! 8 and 9. The example plugin of each language, and the capabilities.

use super::*;

impl Bench {
    /// 8. The example plugins, one per language: component size, load time
    ///    (compiled, then from the compile cache), and time per notification
    ///    through the host while the plugin does its job.
    pub(crate) async fn languages(&mut self, dist: &Path) -> anyhow::Result<()> {
        const N: usize = 20_000;
        let examples = [
            ("json-filter", "Rust", "keys = \"id\""),
            ("counter", "C", "every = \"1000\""),
            ("formatter", "Python", ""),
            ("field-filter", "JavaScript", "field = \"id\""),
            ("minimal", "WAT", ""),
        ];
        for (name, language, config) in examples {
            let path = dist.join(format!("{name}.wasm"));
            let bytes = std::fs::read(&path)
                .map_err(|e| anyhow::anyhow!("{}: {e}; run plugins/build first", path.display()))?;
            let (mut compiled, mut cached, mut per_call) = (Vec::new(), Vec::new(), Vec::new());
            for round in 0..REPEATS {
                let cache = self.work.join(format!("cache-{name}-{round}"));
                compiled.push(self.load_seconds(&path, &cache).await?);
                cached.push(self.load_seconds(&path, &cache).await?);
                let channel = format!("bench_lang_{round}_{}", std::process::id());
                let sidecar = format!(
                    "overflow = \"block\"\nchannels = [\"{channel}\"]\n\n[config]\n{config}\n"
                );
                let notifier = self.host(&[(name.to_owned(), &bytes, sidecar)]).await?;
                let produce = format!(
                    "select count(pg_notify('{channel}', (1e15 + i)::bigint::text)) from generate_series(1, {N}) as i"
                );
                per_call.push(self.drain_through(notifier, &produce, N).await? * 1e6 / N as f64);
            }
            let (c, h, p) = (
                median(&mut compiled),
                median(&mut cached),
                median(&mut per_call),
            );
            let mb = bytes.len() as f64 / 1e6;
            self.record(
                &format!("language_{}", language.to_lowercase()),
                format!("{language} example ({name}, {mb:.2} MB): load compiled / cached, per notification"),
                format!("{:.0} ms / {:.0} ms, {p:.1} µs", c * 1e3, h * 1e3),
                &[
                    ("size_bytes", bytes.len() as f64),
                    ("load_compiled_ms", c * 1e3),
                    ("load_cached_ms", h * 1e3),
                    ("per_notification_us", p),
                ],
            );
        }
        Ok(())
    }

    /// 9. Capabilities: notifications drained through a plugin that makes one
    ///    capability call each (the `capable` test fixture, strict, so any
    ///    failed call fails the run): publish, a query by key, an HTTP POST to
    ///    a local server (a new connection each).
    pub(crate) async fn capabilities(&mut self, dist: &Path) -> anyhow::Result<()> {
        let path = dist.join("tests/capable.wasm");
        let bytes = std::fs::read(&path)
            .map_err(|e| anyhow::anyhow!("{}: {e}; run plugins/build first", path.display()))?;
        let server = webhook::WebhookServer::start();
        let table = format!("bench_orders_{}", std::process::id());
        self.client()
            .await?
            .batch_execute(&format!(
                "create table {table} as select i as id, 'shipped' as status from generate_series(1, 10000) i;
                 alter table {table} add primary key (id);
                 do $$ begin create role pgnotifier_bench_reader nologin;
                   exception when duplicate_object or unique_violation then null; end $$;
                 grant select on {table} to pgnotifier_bench_reader"
            ))
            .await?;
        let origin = server.origin();
        // (op, notifications, its arguments as SQL, the grant)
        let cases = [
            (
                "publish",
                5_000,
                "'bench_unheard', i::text".to_owned(),
                "publish = [\"bench_unheard\"]".to_owned(),
            ),
            (
                "query",
                5_000,
                format!("'select id, status from {table} where id = $1', i::text"),
                "query = true\nquery_role = \"pgnotifier_bench_reader\"".to_owned(),
            ),
            (
                "http",
                1_000,
                format!("'{origin}/hook', json_build_object('id', i)::text"),
                format!("http = [\"{origin}\"]"),
            ),
        ];
        let mut text = Vec::new();
        let mut figures = Vec::new();
        for (op, n, args, grant) in cases {
            let mut per_call = Vec::new();
            for round in 0..REPEATS {
                let channel = format!("bench_cap_{op}_{round}_{}", std::process::id());
                let sidecar = format!(
                    "overflow = \"block\"\nchannels = [\"{channel}\"]\n[grants]\n{grant}\n"
                );
                let notifier = self
                    .host(&[("capable".to_owned(), &bytes, sidecar)])
                    .await?;
                let produce = format!(
                    "select count(pg_notify('{channel}', json_build_object('{op}!', json_build_array({args}))::text)) from generate_series(1, {n}) as i"
                );
                per_call.push(self.drain_through(notifier, &produce, n).await? * 1e6 / n as f64);
            }
            let us = median(&mut per_call);
            text.push(format!("{op} {us:.0} µs"));
            figures.push((op, us));
        }
        anyhow::ensure!(
            server.requests().len() == 1_000 * REPEATS,
            "the webhook got {} requests",
            server.requests().len()
        );
        self.client()
            .await?
            .batch_execute(&format!("drop table {table}"))
            .await?;
        self.record(
            "capabilities",
            "per notification, one capability call each (host included)".into(),
            text.join(", "),
            &figures
                .iter()
                .map(|(op, us)| (*op, *us))
                .collect::<Vec<_>>(),
        );
        Ok(())
    }

    /// Seconds to load one plugin (compile or cache, instantiate, register)
    /// into a fresh notifier using the compile cache in `cache`.
    pub(crate) async fn load_seconds(&self, plugin: &Path, cache: &Path) -> anyhow::Result<f64> {
        let notifier = Notifier::builder(DatabaseSettings::from_url(&self.url)?)
            .sandbox(SandboxSettings {
                cache_dir: Some(cache.to_owned()),
                ..SandboxSettings::default()
            })
            .build();
        let started = Instant::now();
        notifier.load_plugin(plugin).await?;
        let took = started.elapsed().as_secs_f64();
        notifier.shutdown(Duration::from_secs(5)).await;
        Ok(took)
    }
}
