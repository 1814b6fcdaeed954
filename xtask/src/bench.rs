//! `cargo xtask bench [--quick]`: runs the benchmark binary in release mode. The work
//! lives in `tests/bench` (hybridsync-bench); this only drives it.

use crate::project_root;
use anyhow::{Result, bail};
use std::process::Command;

pub(crate) fn run(args: &[String]) -> Result<()> {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args([
        "run",
        "--release",
        "--locked",
        "-p",
        "hybridsync-tests",
        "--bin",
        "hybridsync-bench",
        "--",
    ])
    .args(args)
    .current_dir(project_root());
    let status = cmd.status()?;
    if !status.success() {
        bail!("benchmarks failed ({status})");
    }
    Ok(())
}
