//! 10. More than one host.

use super::*;

impl Bench {
    /// 10. More than one host, as `pgnotifier run` processes: the takeover
    ///     after the leader is SIGKILLed (median of 5), and the dispatch rate
    ///     of a two-host cluster's leader beside a host alone, in the same run.
    pub(crate) async fn cluster(&mut self) -> anyhow::Result<()> {
        let mut takeovers = Vec::new();
        for round in 0..5 {
            let name = format!("bench_cluster_{}_{round}", std::process::id());
            let a = RunHost::start(
                self,
                &format!("takeover-a{round}"),
                Some(&name),
                "bench_takeover",
            )?;
            a.wait_for("leading").await?;
            let b = RunHost::start(
                self,
                &format!("takeover-b{round}"),
                Some(&name),
                "bench_takeover",
            )?;
            b.wait_for("standing by").await?;
            drop(a); // SIGKILL, on drop
            let killed = Instant::now();
            b.wait_for("leading").await?;
            takeovers.push(killed.elapsed().as_secs_f64() * 1e3);
        }
        let takeover = median(&mut takeovers);
        let (mut alone, mut clustered) = (Vec::new(), Vec::new());
        for round in 0..REPEATS {
            let channel = format!("bench_cl_alone_{round}_{}", std::process::id());
            let host = RunHost::start(self, &format!("alone{round}"), None, &channel)?;
            alone.push(host.drain(self, &channel).await?);
            let name = format!("bench_cl_rate_{}_{round}", std::process::id());
            let channel = format!("bench_cl_two_{round}_{}", std::process::id());
            let leader = RunHost::start(self, &format!("leader{round}"), Some(&name), &channel)?;
            leader.wait_for("leading").await?;
            let standby = RunHost::start(self, &format!("standby{round}"), Some(&name), &channel)?;
            standby.wait_for("standing by").await?;
            clustered.push(leader.drain(self, &channel).await?);
        }
        let (alone, clustered) = (median(&mut alone), median(&mut clustered));
        self.record(
            "cluster",
            format!("cluster: takeover after SIGKILL of the leader (median of 5, takeover_ms {CLUSTER_TAKEOVER_MS}); drain of {CLUSTER_N} 16 B notifications, leader with a standby / host alone"),
            format!(
                "{takeover:.0} ms; {:.0}k/s / {:.0}k/s ({:.0}%)",
                clustered / 1e3,
                alone / 1e3,
                100.0 * clustered / alone
            ),
            &[("takeover_ms", takeover), ("leader_per_s", clustered), ("alone_per_s", alone)],
        );
        Ok(())
    }
}
