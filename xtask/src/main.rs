//! Project automation: `cargo xtask test` (the one test command), the tidy checks it
//! runs, `bench` and `chaos`. Each task is a module with a `run` function, working from the project root.

mod bench;
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

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("test") => test::run(&args[1..]),
        Some("tidy") => tidy::run(),
        Some("bench") => bench::run(&args[1..]),
        Some("chaos") => bench::chaos(&args[1..]),
        _ => bail!(
            "usage: cargo xtask <test|tidy|bench|chaos>\n  test   fmt check, clippy -D warnings, tidy, every test of the workspace\n  tidy   layering and file-header checks only\n  bench  benchmarks beside their baselines (--quick for a smoke run)\n  chaos  seeded fault schedules with invariant checks (--short, --seed, --schedules, --duration, --devices, --faults)"
        ),
    }
}
