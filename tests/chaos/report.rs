//! The report over every schedule: a table on stdout and `target/chaos/report.json`.

use crate::check::{CONVERGENCE_BOUND, ScheduleResult};
use crate::schedule::{POOL_CAP, root};
use anyhow::Result;
use std::collections::BTreeMap;
use std::fmt::Write as _;

#[derive(Debug, Default, serde::Serialize)]
pub(crate) struct Report {
    pub devices: usize,
    pub schedules: Vec<ScheduleResult>,
}

fn percentile(sorted: &[u64], q: f64) -> u64 {
    sorted
        .get(((sorted.len() as f64 * q).ceil() as usize).saturating_sub(1))
        .copied()
        .unwrap_or(0)
}

impl Report {
    pub(crate) fn violations(&self) -> u64 {
        self.schedules.iter().map(ScheduleResult::violations).sum()
    }

    /// Counts by name summed over every schedule, as `name n, name n` (or `none`).
    fn tally<'a>(&'a self, counts: impl Fn(&'a ScheduleResult) -> Vec<(&'a str, u64)>) -> String {
        let mut total: BTreeMap<&str, u64> = BTreeMap::new();
        for (name, n) in self.schedules.iter().flat_map(counts) {
            *total.entry(name).or_default() += n;
        }
        if total.is_empty() {
            return "none".into();
        }
        total
            .iter()
            .map(|(name, n)| format!("{name} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The report as a Markdown table.
    pub(crate) fn table(&self) -> String {
        let faults = self.tally(|s| s.faults.iter().map(|(f, n)| (*f, *n)).collect());
        let sum = |f: fn(&ScheduleResult) -> u64| self.schedules.iter().map(f).sum::<u64>();
        let max = |f: fn(&ScheduleResult) -> u64| self.schedules.iter().map(f).max().unwrap_or(0);
        let mut conv: Vec<u64> = self.schedules.iter().map(|s| s.convergence_ms).collect();
        conv.sort_unstable();
        let mut table = String::from("| measure | value |\n|---|---|\n");
        let mut row = |k: &str, v: String| {
            let _ = writeln!(table, "| {k} | {v} |");
        };
        row(
            "schedules × devices",
            format!("{} × {}", self.schedules.len(), self.devices),
        );
        row("faults injected", faults);
        row("writer processes", sum(|s| s.writers_started).to_string());
        let crashes = self.tally(|s| {
            s.crash_points_hit
                .iter()
                .map(|(p, n)| (p.as_str(), *n))
                .collect()
        });
        row("crash points hit", crashes);
        row(
            "operations invoked / ok / failed / unknown",
            format!(
                "{} / {} / {} / {}",
                sum(|s| s.ops_invoked),
                sum(|s| s.ops_ok),
                sum(|s| s.ops_failed),
                sum(|s| s.ops_unknown)
            ),
        );
        row(
            "writes acknowledged",
            sum(|s| s.writes_acknowledged).to_string(),
        );
        row(
            "lost (acknowledged, absent)",
            sum(|s| s.verdict.lost).to_string(),
        );
        row(
            "stale (older version in place)",
            sum(|s| s.verdict.stale).to_string(),
        );
        row(
            "duplicated (value with another version)",
            sum(|s| s.verdict.version_mismatches).to_string(),
        );
        row(
            "resurrected deletes",
            sum(|s| s.verdict.resurrected).to_string(),
        );
        row(
            "values nobody wrote",
            sum(|s| s.verdict.unknown_values).to_string(),
        );
        row(
            "rogue-clock writes (parked / leaked to the cloud)",
            format!(
                "{} ({} / {})",
                sum(|s| s.rogue_writes),
                sum(|s| s.rogue_parked),
                sum(|s| s.verdict.rogue_leaked)
            ),
        );
        row(
            "device ≠ cloud rows",
            sum(|s| s.device_cloud_mismatches).to_string(),
        );
        row(
            "verify after healing: differences / unmatched roots (rows exchanged)",
            format!(
                "{} / {} ({})",
                sum(|s| s.verify_differences),
                sum(|s| s.verify_roots_unmatched),
                sum(|s| s.verify_rows_exchanged)
            ),
        );
        row(
            "convergence after healing p50 / p99 / max",
            format!(
                "{} / {} / {} ms (bound {} s; {} sync rounds)",
                percentile(&conv, 0.5),
                percentile(&conv, 0.99),
                conv.last().unwrap_or(&0),
                CONVERGENCE_BOUND.as_secs(),
                sum(|s| s.sync_rounds)
            ),
        );
        row(
            "schedules not converged",
            sum(|s| s.not_converged).to_string(),
        );
        row(
            "outbox left after healing (parked as failed)",
            format!("{} ({})", sum(|s| s.outbox_left), sum(|s| s.parked_failed)),
        );
        row(
            &format!("max pool connections of one device (cap {POOL_CAP}); seen by the server"),
            format!("{}; {}", max(|s| s.max_pool), max(|s| s.max_pool_server)),
        );
        row(
            "local reads during faults (errors)",
            format!("{} ({})", sum(|s| s.reads), sum(|s| s.read_errors)),
        );
        row(
            "read latency p50 / p99 / max (worst schedule)",
            format!(
                "{} / {} / {} µs",
                max(|s| s.read_p50_us),
                max(|s| s.read_p99_us),
                max(|s| s.read_max_us)
            ),
        );
        row(
            "retried shipments / connections opened / breaker transitions",
            format!(
                "{} / {} / {}",
                sum(|s| s.retries),
                sum(|s| s.reconnects),
                sum(|s| s.breaker_transitions)
            ),
        );
        row(
            &format!(
                "propagation under an open unrelated transaction: probes, max (bound {} ms)",
                crate::schedule::PROPAGATION_BOUND.as_millis()
            ),
            format!(
                "{}, {} ms ({} over)",
                sum(|s| s.propagation_probes),
                max(|s| s.propagation_max_ms),
                sum(|s| s.propagation_over_bound)
            ),
        );
        row(
            &format!(
                "writers frozen mid-transaction: released after, max (bound {} ms)",
                crate::schedule::vanish_bound().as_millis()
            ),
            format!(
                "{}, {} ms ({} over; {} not seen open)",
                sum(|s| s.vanished),
                max(|s| s.vanish_release_max_ms),
                sum(|s| s.vanish_over_bound),
                sum(|s| s.vanish_unseen)
            ),
        );
        row("violations", self.violations().to_string());
        table
    }

    pub(crate) fn print_and_save(&self) -> Result<()> {
        println!("\n{}", self.table());
        let dir = root().join("target/chaos");
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("report.json"), serde_json::to_string_pretty(self)?)?;
        std::fs::write(dir.join("report.md"), self.table())?;
        println!("report: {}", dir.join("report.json").display());
        Ok(())
    }
}
