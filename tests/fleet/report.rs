//! The fleet's report: a table on standard output and `target/fleet/*.json`.

use crate::verdict::Verdict;
use anyhow::Result;

/// How the devices reach PostgreSQL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Through {
    PgBouncer,
    Direct,
}

impl std::fmt::Display for Through {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Through::PgBouncer => "pgbouncer",
            Through::Direct => "direct",
        })
    }
}

impl std::str::FromStr for Through {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "pgbouncer" => Ok(Through::PgBouncer),
            "direct" => Ok(Through::Direct),
            other => anyhow::bail!("--through is pgbouncer or direct, not {other:?}"),
        }
    }
}

#[derive(Debug, serde::Serialize)]
pub(crate) struct Report {
    pub devices: u64,
    pub tenants: u64,
    pub through: Through,
    pub pool_size: u32,
    pub max_connections: u32,
    pub duration_secs: f64,
    pub rate: f64,
    pub writes_acknowledged: u64,
    pub write_errors: u64,
    pub backends_max: u64,
    pub backends_p99: u64,
    /// Connections the server refused for want of slots (from its log).
    pub server_refusals: u64,
    pub bouncer_waiting_clients_max: u64,
    pub bouncer_max_wait_ms: f64,
    pub bouncer_avg_wait_us: Option<f64>,
    pub bouncer_transactions: Option<u64>,
    pub commits_per_sec: f64,
    pub rows_per_sec: f64,
    pub propagation_samples: u64,
    pub propagation_p50_ms: u64,
    pub propagation_p99_ms: u64,
    pub not_propagated: u64,
    pub convergence_p50_ms: u64,
    pub convergence_p99_ms: u64,
    pub convergence_max_ms: u64,
    pub not_converged: u64,
    pub outbox_left: u64,
    /// Keys whose newest write is still queued on its device (not in the cloud yet).
    pub queued_keys: u64,
    #[serde(flatten)]
    pub verdict: Verdict,
    pub memory_per_device_kib: u64,
    pub memory_peak_mib: u64,
}

impl Report {
    fn rows(&self) -> Vec<(&'static str, String)> {
        let bouncer = self.through == Through::PgBouncer;
        let mut rows = vec![
            (
                "devices × tenants",
                format!("{} × {}", self.devices, self.tenants),
            ),
            (
                "through",
                if bouncer {
                    format!(
                        "PgBouncer (transaction mode, default_pool_size {})",
                        self.pool_size
                    )
                } else {
                    format!("direct (max_connections {})", self.max_connections)
                },
            ),
            (
                "writes acknowledged (errors)",
                format!(
                    "{} ({}) in {:.0} s at {:.2}/s per device",
                    self.writes_acknowledged, self.write_errors, self.duration_secs, self.rate
                ),
            ),
            (
                "server backends of the devices, max / p99",
                format!("{} / {}", self.backends_max, self.backends_p99),
            ),
            (
                "connections refused by the server (slots)",
                self.server_refusals.to_string(),
            ),
        ];
        if bouncer {
            rows.push((
                "PgBouncer waiting clients max / longest wait",
                format!(
                    "{} / {:.1} ms",
                    self.bouncer_waiting_clients_max, self.bouncer_max_wait_ms
                ),
            ));
            rows.push((
                "PgBouncer transactions / mean wait",
                format!(
                    "{} / {:.0} µs",
                    self.bouncer_transactions.unwrap_or(0),
                    self.bouncer_avg_wait_us.unwrap_or(0.0)
                ),
            ));
        }
        rows.extend([
            (
                "server commits/s, rows/s",
                format!("{:.0}, {:.0}", self.commits_per_sec, self.rows_per_sec),
            ),
            (
                "propagation p50 / p99 (samples; not within 60 s)",
                format!(
                    "{} / {} ms ({}; {})",
                    self.propagation_p50_ms,
                    self.propagation_p99_ms,
                    self.propagation_samples,
                    self.not_propagated
                ),
            ),
            (
                "convergence after the last write p50 / p99 / max",
                format!(
                    "{} / {} / {} ms",
                    self.convergence_p50_ms, self.convergence_p99_ms, self.convergence_max_ms
                ),
            ),
            ("devices not converged", self.not_converged.to_string()),
            (
                "outbox entries left (keys whose newest write is still queued)",
                format!("{} ({})", self.outbox_left, self.queued_keys),
            ),
            (
                "lost / stale / duplicated",
                format!(
                    "{} / {} / {}",
                    self.verdict.lost, self.verdict.stale, self.verdict.version_mismatches
                ),
            ),
            (
                "values nobody wrote",
                self.verdict.unknown_values.to_string(),
            ),
            (
                "memory per device (process peak)",
                format!(
                    "{} KiB ({} MiB)",
                    self.memory_per_device_kib, self.memory_peak_mib
                ),
            ),
        ]);
        rows
    }

    pub(crate) fn print_and_save(&self) -> Result<()> {
        println!("\n| measure | value |\n|---|---|");
        for (what, value) in self.rows() {
            println!("| {what} | {value} |");
        }
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/fleet");
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(format!("fleet-{}-{}.json", self.through, self.devices));
        std::fs::write(&path, serde_json::to_string_pretty(self)?)?;
        println!("\nreport: {}", path.display());
        Ok(())
    }
}
