//! `cargo xtask test`: formatting, lints (also of the facade with each feature alone),
//! tidy, every test of the workspace, the chaos schedules in short mode, the
//! benchmarks' quick mode as a smoke check, and the release dry run.
//!
//! The tests start what they need themselves (throwaway PostgreSQL, Redis and
//! Prometheus from the installed binaries, via `hybridsync-testkit`); this first
//! installs the system packages those binaries come from when they are missing and it
//! may (as root or with passwordless sudo), and otherwise says the one command to run.

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

/// A system package the tests use, and how to tell it is installed.
struct Package {
    name: &'static str,
    installed: fn() -> bool,
}

/// Whether `binary` runs (`args`: a harmless way to ask it its version).
fn runs(binary: &str, args: &[&str]) -> bool {
    Command::new(binary)
        .args(args)
        .output()
        .is_ok_and(|o| o.status.success())
}

const PACKAGES: &[Package] = &[
    Package {
        name: "postgresql",
        installed: || {
            std::env::var_os("HYBRIDSYNC_PG_BIN").is_some()
                || std::fs::read_dir("/usr/lib/postgresql")
                    .into_iter()
                    .flatten()
                    .flatten()
                    .any(|e| e.path().join("bin/initdb").exists())
        },
    },
    Package {
        name: "redis-server",
        installed: || runs("redis-server", &["--version"]),
    },
    // promtool (check metrics, check and test rules) and the end-to-end alert test.
    Package {
        name: "prometheus",
        installed: || runs("promtool", &["--version"]) && runs("prometheus", &["--version"]),
    },
    // PgBouncer in transaction pooling mode: the sink and sync suites run through it.
    Package {
        name: "pgbouncer",
        installed: || {
            std::env::var_os("HYBRIDSYNC_PGBOUNCER").is_some()
                || ["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"]
                    .iter()
                    .any(|p| std::path::Path::new(p).exists())
        },
    },
    // The live `status --watch` is tested in a real terminal.
    Package {
        name: "tmux",
        installed: || runs("tmux", &["-V"]),
    },
    Package {
        name: "openssl",
        installed: || runs("openssl", &["version"]),
    },
];

/// Installs the missing system packages the tests need, non-interactively, when it can
/// (as root, or with passwordless sudo), saying what it installs; otherwise fails with
/// the one command to run. Also adds the clippy and rustfmt components if missing.
fn install_prerequisites() -> Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .filter(|p| !(p.installed)())
        .map(|p| p.name)
        .collect();
    if !missing.is_empty() {
        let root = effective_uid() == Some(0);
        let sudo = !root
            && Command::new("sudo")
                .args(["-n", "true"])
                .output()
                .is_ok_and(|o| o.status.success());
        let install = format!(
            "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq {}",
            missing.join(" ")
        );
        if !root && !sudo {
            bail!(
                "missing system packages: {}; install them with:\n  sudo sh -c '{install}'",
                missing.join(", ")
            );
        }
        eprintln!("installing system packages: {}", missing.join(" "));
        let mut cmd = if root {
            Command::new("sh")
        } else {
            let mut sudo = Command::new("sudo");
            sudo.args(["-n", "sh"]);
            sudo
        };
        let status = cmd
            .args(["-c", &install])
            .status()
            .context("running apt-get")?;
        if !status.success() {
            bail!("installing {} failed ({status})", missing.join(" "));
        }
        if let Some(still) = PACKAGES.iter().find(|p| !(p.installed)()) {
            bail!("{} is still missing after apt-get install", still.name);
        }
    }
    let components = Command::new("rustup")
        .args(["component", "list", "--installed"])
        .output();
    if let Ok(out) = components {
        let installed = String::from_utf8_lossy(&out.stdout);
        if !installed.contains("clippy") || !installed.contains("rustfmt") {
            eprintln!("installing rustup components: clippy rustfmt");
            let _ = Command::new("rustup")
                .args(["component", "add", "clippy", "rustfmt"])
                .status();
        }
    }
    Ok(())
}

/// The effective user id, from `id -u` (xtask keeps no libc dependency).
fn effective_uid() -> Option<u32> {
    let out = Command::new("id").arg("-u").output().ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

pub(crate) fn run(args: &[String]) -> Result<()> {
    let started = Instant::now();
    install_prerequisites()?;
    cargo(&["fmt", "--all", "--", "--check"])?;
    // Tidy reads the resolved graph offline, so the locked crates come down first: a
    // fresh machine has an empty registry.
    cargo(&["fetch", "--locked"])?;
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
    for features in ["", "vector", "cloud-postgres", "prometheus", "redis"] {
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
