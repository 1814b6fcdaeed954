//! `cargo xtask test`: formatting, lints (also of the facade with each feature alone),
//! tidy, every test of the workspace, the chaos schedules in short mode, the
//! benchmarks' quick mode as a smoke check, and the release dry run.
//!
//! The tests start what they need themselves (throwaway PostgreSQL and Redis from the
//! installed binaries, via `hybridsync-testkit`); this only checks those binaries exist
//! so a missing install fails early with a clear message.

use crate::project_root;
use anyhow::{Context, Result, bail};
use std::process::Command;
use std::time::Instant;

/// Runs cargo with the crash points compiled in: every step of the test run shares one
/// set of build artifacts, and the tests and chaos drills need the crash points.
fn cargo(args: &[&str]) -> Result<()> {
    let started = Instant::now();
    eprintln!("$ cargo {}", args.join(" "));
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(args)
        .env("RUSTFLAGS", crate::rustflags_with_crash_points())
        .current_dir(project_root())
        .status()
        .with_context(|| format!("running cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    eprintln!("  ok in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

fn check_prerequisites() -> Result<()> {
    let pg = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| e.path().join("bin/initdb").exists());
    if !pg && std::env::var_os("HYBRIDSYNC_PG_BIN").is_none() {
        bail!(
            "PostgreSQL server binaries not found (apt-get install postgresql, or set HYBRIDSYNC_PG_BIN)"
        );
    }
    if Command::new("redis-server")
        .arg("--version")
        .output()
        .is_err()
    {
        bail!("redis-server not found (apt-get install redis-server)");
    }
    Ok(())
}

pub(crate) fn run(args: &[String]) -> Result<()> {
    let started = Instant::now();
    check_prerequisites()?;
    cargo(&["fmt", "--all", "--", "--check"])?;
    crate::tidy::run()?;
    cargo(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--locked",
        "--",
        "-D",
        "warnings",
    ])?;
    // Features gate what they say: the facade builds, warning-free, with each one alone
    // and with none (the workspace build above turns them all on).
    for features in ["", "vector", "cloud-postgres", "prometheus"] {
        let mut args = vec![
            "clippy",
            "--locked",
            "-p",
            "hybridsync",
            "--no-default-features",
        ];
        if !features.is_empty() {
            args.extend(["--features", features]);
        }
        args.extend(["--", "-D", "warnings"]);
        cargo(&args)?;
    }
    // The end-to-end tests run the `hybridsync` binary; `cargo test` builds a package's
    // binaries only for that package's own integration tests, so build it explicitly.
    cargo(&[
        "build",
        "--locked",
        "-p",
        "hybridsync-cli",
        "--bin",
        "hybridsync",
    ])?;
    let mut test = vec!["test", "--workspace", "--locked", "--no-fail-fast"];
    test.extend(args.iter().map(String::as_str));
    cargo(&test)?;
    // Chaos in short mode (fixed seeds plus one random), on the debug build the tests
    // just made.
    let started_chaos = Instant::now();
    eprintln!("$ cargo xtask chaos --short (debug build)");
    let test_build = crate::bench::Build {
        debug: true,
        crash_points: true,
    };
    crate::bench::run_tests_bin("hybridsync-chaos", test_build, &["--short".to_owned()])?;
    eprintln!("  ok in {:.1} s", started_chaos.elapsed().as_secs_f64());
    // The benchmarks at their reduced size, as a smoke check only: they must run to the
    // end; their figures (debug build) are not compared with anything.
    let started_bench = Instant::now();
    eprintln!("$ cargo xtask bench --quick (debug build, smoke only)");
    crate::bench::run_tests_bin("hybridsync-bench", test_build, &["--quick".to_owned()])?;
    eprintln!("  ok in {:.1} s", started_bench.elapsed().as_secs_f64());
    // The release path must keep working: every crate packages, in order.
    let started_release = Instant::now();
    eprintln!("$ cargo xtask release --dry-run");
    crate::release::run(&["--dry-run".to_owned()])?;
    eprintln!("  ok in {:.1} s", started_release.elapsed().as_secs_f64());
    eprintln!(
        "cargo xtask test: all green in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
