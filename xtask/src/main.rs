//! Project automation: `cargo xtask test` (the one test command), the tidy checks it
//! runs, `bench`, `chaos`, `fleet`, `codegen` and `release`. Each task is a module with a `run` function, working from the project root.

mod bench;
mod release;
mod test;
mod tidy;

use anyhow::{Result, bail};
use std::path::PathBuf;

/// The workspace root (the parent of this crate's directory).
pub(crate) fn project_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// The cfg that compiles the named crash points in (`hybridsync_core::crash_point`).
/// Only `cargo xtask test` and `cargo xtask chaos` pass it; no manifest can, so a plain
/// `cargo build --release` never links a crash point.
pub(crate) const CRASH_POINTS_CFG: &str = "--cfg hybridsync_crash_points";

/// `RUSTFLAGS` for a build with crash points: the caller's flags plus the cfg.
pub(crate) fn rustflags_with_crash_points() -> String {
    match std::env::var("RUSTFLAGS") {
        Ok(flags) if !flags.trim().is_empty() => format!("{flags} {CRASH_POINTS_CFG}"),
        _ => CRASH_POINTS_CFG.to_owned(),
    }
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("test") => test::run(&args[1..]),
        Some("tidy") => tidy::run(),
        Some("bench") => bench::run(&args[1..]),
        Some("chaos") => bench::chaos(&args[1..]),
        Some("fleet") => bench::fleet(&args[1..]),
        Some("release") => release::run(&args[1..]),
        Some("codegen") => bench::codegen(&args[1..]),
        _ => bail!(
            "usage: cargo xtask <test|tidy|bench|chaos|fleet|codegen|release>\n  test   fmt check, clippy -D warnings, tidy, every test of the workspace\n  tidy   layering and file-header checks only\n  bench  benchmarks beside their baselines (--quick for a smoke run)\n  chaos  seeded fault schedules with invariant checks (--short, --seed, --schedules, --duration, --devices, --faults)\n  fleet  many devices in one process against one PostgreSQL (--devices N, --through pgbouncer|direct, --duration S, --pool-size N, --max-connections N, --rate W)\n  codegen  write docs/metrics.md, docs/configuration.md, deploy/prometheus/*.yml and deploy/grafana/hybridsync.json from the catalogue and the config types (--check: fail if any is stale)\n  release  bump the version in lockstep, write CHANGELOG.md, cargo package (--dry-run, --bump patch|minor|major)"
        ),
    }
}
