//! `cargo xtask bench [--quick] [GROUP]...`, `cargo xtask chaos [ARGS]` and `cargo xtask
//! fleet [ARGS]`: run the benchmark, chaos and fleet binaries of `tests/`
//! (hybridsync-tests); this only drives them.

use crate::project_root;
use anyhow::{Result, bail};
use std::process::Command;

/// How a binary of hybridsync-tests is built.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Build {
    /// Unoptimised (the test build) rather than release.
    pub(crate) debug: bool,
    /// With the crash points compiled in (`--cfg hybridsync_crash_points`).
    pub(crate) crash_points: bool,
}

/// Runs a binary of hybridsync-tests with `args`.
pub(crate) fn run_tests_bin(bin: &str, build: Build, args: &[String]) -> Result<()> {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args(["run", "--locked", "-p", "hybridsync-tests", "--bin", bin]);
    if build.crash_points {
        cmd.env("RUSTFLAGS", crate::rustflags_with_crash_points());
    }
    let debug = build.debug;
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

/// The benchmarks measure what users build: release, no crash points.
pub(crate) fn run(args: &[String]) -> Result<()> {
    let build = Build {
        debug: false,
        crash_points: false,
    };
    run_tests_bin("hybridsync-bench", build, args)
}

/// The generated docs and deploy files (a debug build: it only formats text).
pub(crate) fn codegen(args: &[String]) -> Result<()> {
    let build = Build {
        debug: true,
        crash_points: false,
    };
    run_tests_bin("hybridsync-codegen", build, args)
}

/// The fleet measures what users run: release, no crash points.
pub(crate) fn fleet(args: &[String]) -> Result<()> {
    let build = Build {
        debug: false,
        crash_points: false,
    };
    run_tests_bin("hybridsync-fleet", build, args)
}

/// The chaos drills need their crash points.
pub(crate) fn chaos(args: &[String]) -> Result<()> {
    let build = Build {
        debug: false,
        crash_points: true,
    };
    run_tests_bin("hybridsync-chaos", build, args)
}
