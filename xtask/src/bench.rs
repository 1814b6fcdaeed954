//! `cargo xtask bench [--quick] [GROUP]...` and `cargo xtask chaos [ARGS]`: run the
//! benchmark and chaos binaries of `tests/` (hybridsync-tests); this only drives them.

use crate::project_root;
use anyhow::{Result, bail};
use std::process::Command;

/// Runs a binary of hybridsync-tests with `args`, in release mode unless `debug`.
pub(crate) fn run_tests_bin(bin: &str, debug: bool, args: &[String]) -> Result<()> {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args(["run", "--locked", "-p", "hybridsync-tests", "--bin", bin]);
    if !debug {
        cmd.arg("--release");
    }
    cmd.arg("--").args(args).current_dir(project_root());
    let status = cmd.status()?;
    if !status.success() {
        bail!("{bin} failed ({status})");
    }
    Ok(())
}

pub(crate) fn run(args: &[String]) -> Result<()> {
    run_tests_bin("hybridsync-bench", false, args)
}

pub(crate) fn chaos(args: &[String]) -> Result<()> {
    run_tests_bin("hybridsync-chaos", false, args)
}
