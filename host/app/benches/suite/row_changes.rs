//! Row changes three ways, on a throwaway server with `wal_level = logical`
//! and durable commits: a `pgnotifier.notify_row` trigger on each
//! transport, and the table published (a sidecar's `tables`, no trigger),
//! beside the same update with nothing watching. What a writer pays, and
//! what reaches the noop Rust plugin end to end.

use super::transports::WRITERS;
use super::*;
use pgnotifier::durable::Transport;

/// Rows in the table; writers update one at random.
const ROWS: usize = 10_000;
/// Changes delivered end to end per round.
const CHANGES: usize = 20_000;

/// How the changes reach the subscriber.
#[derive(Clone, Copy)]
enum Watch {
    /// A `notify_row` trigger; `pgnotifier.send` on the outbox.
    TriggerOutbox,
    /// A `notify_row` trigger; `pgnotifier.send` on the WAL.
    TriggerWal,
    /// No trigger: the table in the WAL transport's publication.
    Published,
}

impl Bench {
    /// Writer throughput (eight writers, one update per transaction) with
    /// nothing watching, each way of watching, interleaved; then changes/s
    /// end to end at 100 per transaction, each way.
    pub(crate) async fn row_changes(&mut self) -> anyhow::Result<()> {
        let (cluster, mut bench) = self.on_a_logical_server().await?;
        let mut setup = bench.client().await?;
        pgnotifier::durable::schema::install(&mut setup).await?;
        // A row of about 200 bytes as JSON, as an orders table has.
        setup
            .batch_execute(&format!(
                "CREATE TABLE bench_orders (
                     id int PRIMARY KEY, customer_id int NOT NULL, status text NOT NULL,
                     total numeric(12, 2) NOT NULL, region text NOT NULL, note text,
                     updated_at timestamptz NOT NULL DEFAULT now());
                 INSERT INTO bench_orders
                 SELECT i, 4000 + i % 997, 'new', i * 1.25, 'eu-west-1', 'checkout-service'
                   FROM generate_series(1, {ROWS}) i;"
            ))
            .await?;
        let update = format!(
            "UPDATE bench_orders SET status = 'paid', total = total + 1, updated_at = now()
              WHERE id = 1 + floor(random() * {ROWS})::int"
        );
        let ways = [Watch::TriggerOutbox, Watch::TriggerWal, Watch::Published];
        let mut rates: [Vec<f64>; 4] = Default::default();
        for _ in 0..REPEATS {
            rates[0].push(bench.writers(&update).await?);
            for (i, way) in ways.iter().enumerate() {
                let host = bench.watching(&setup, *way).await?;
                rates[i + 1].push(bench.writers(&update).await?);
                if !matches!(way, Watch::TriggerOutbox) {
                    bench.relayed_to_now(&setup).await?;
                }
                host.shutdown(Duration::from_secs(5)).await;
                bench.unwatch(&setup).await?;
            }
        }
        let [plain, outbox, wal, published] = rates.map(|mut r| median(&mut r));
        self.record(
            "row_changes_writers",
            format!("row changes, {WRITERS} writers, one UPDATE per transaction: unwatched / notify_row trigger (outbox) / trigger (wal) / published table (no trigger)"),
            format!(
                "{plain:.0} / {outbox:.0} ({:.0}%) / {wal:.0} ({:.0}%) / {published:.0} ({:.0}%) transactions/s",
                100.0 * outbox / plain,
                100.0 * wal / plain,
                100.0 * published / plain
            ),
            &[
                ("unwatched_per_s", plain),
                ("trigger_outbox_per_s", outbox),
                ("trigger_wal_per_s", wal),
                ("published_per_s", published),
            ],
        );
        let mut end_to_end: [Vec<f64>; 3] = Default::default();
        for _ in 0..REPEATS {
            for (i, way) in ways.iter().enumerate() {
                end_to_end[i].push(bench.changes_rate(&setup, *way).await?);
            }
        }
        let [outbox, wal, published] = end_to_end.map(|mut r| median(&mut r));
        self.record(
            "row_changes_end_to_end",
            "row changes end to end, 100 per transaction, noop Rust plugin: trigger (outbox) / trigger (wal) / published table".to_owned(),
            format!(
                "{:.1}k / {:.1}k / {:.1}k changes/s",
                outbox / 1e3,
                wal / 1e3,
                published / 1e3
            ),
            &[
                ("trigger_outbox_per_s", outbox),
                ("trigger_wal_per_s", wal),
                ("published_per_s", published),
            ],
        );
        drop(setup);
        drop(cluster);
        Ok(())
    }

    /// A host whose noop plugin receives the table's changes `way`,
    /// reading; the trigger made where `way` has one.
    async fn watching(&mut self, setup: &Client, way: Watch) -> anyhow::Result<Notifier> {
        self.transport = match way {
            Watch::TriggerOutbox => Transport::Outbox,
            Watch::TriggerWal | Watch::Published => Transport::Wal {
                slot: "pgnotifier".to_owned(),
            },
        };
        let tables = match way {
            Watch::Published => "tables = [\"public.bench_orders\"]\n",
            Watch::TriggerOutbox | Watch::TriggerWal => {
                setup
                    .batch_execute(
                        "CREATE TRIGGER bench_orders_changed AFTER INSERT OR UPDATE OR DELETE
                             ON bench_orders FOR EACH ROW
                             EXECUTE FUNCTION pgnotifier.notify_row('public.bench_orders')",
                    )
                    .await?;
                ""
            }
        };
        let sidecar = format!(
            "delivery = \"at-least-once\"\noverflow = \"block\"\nqueue_size = 100000\n{tables}\n[config]\nchannels = \"public.bench_orders\"\n"
        );
        let id = "bench_orders_sink";
        let host = self.host(&[(id.to_owned(), &self.noop, sidecar)]).await?;
        self.wait_for_position(id).await?;
        self.wait_for_relay().await?;
        Ok(host)
    }

    /// The table watched no more: no trigger, not published.
    async fn unwatch(&self, setup: &Client) -> anyhow::Result<()> {
        setup
            .batch_execute(
                "DROP TRIGGER IF EXISTS bench_orders_changed ON bench_orders;
                 DO $$ BEGIN
                     IF EXISTS (SELECT FROM pg_publication_tables
                                 WHERE pubname = 'pgnotifier' AND tablename = 'bench_orders') THEN
                         ALTER PUBLICATION pgnotifier DROP TABLE bench_orders;
                     END IF;
                 END $$;",
            )
            .await?;
        // Each round's subscriber starts anew at the end.
        setup
            .batch_execute(
                "DELETE FROM pgnotifier.positions WHERE subscriber = 'bench_orders_sink'",
            )
            .await?;
        Ok(())
    }

    /// Changes/s from the first update until the noop plugin has every
    /// change: [`CHANGES`] rows updated 100 to a transaction.
    async fn changes_rate(&mut self, setup: &Client, way: Watch) -> anyhow::Result<f64> {
        let host = self.watching(setup, way).await?;
        let started = Instant::now();
        for first in (0..CHANGES).step_by(100) {
            let from = first % ROWS + 1;
            setup
                .execute(
                    "UPDATE bench_orders SET status = 'shipped', updated_at = now()
                      WHERE id BETWEEN $1 AND $1 + 99",
                    &[&(from as i32)],
                )
                .await?;
        }
        let deadline = Instant::now() + Duration::from_secs(120);
        while delivered(&host) < CHANGES as u64 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let elapsed = started.elapsed();
        let got = delivered(&host);
        host.shutdown(Duration::from_secs(5)).await;
        self.unwatch(setup).await?;
        anyhow::ensure!(got >= CHANGES as u64, "received {got} of {CHANGES}");
        Ok(CHANGES as f64 / elapsed.as_secs_f64())
    }
}
