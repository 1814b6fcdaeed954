//! Tidy checks: the layering written in docs/architecture.md, enforced from
//! `cargo metadata`, plus file conventions. Runs in `cargo xtask test` and as a test.

use crate::project_root;
use anyhow::{Context, Result, bail};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

/// Normal (non-dev) dependencies of every workspace package, by package name.
fn dependency_graph() -> Result<BTreeMap<String, BTreeSet<String>>> {
    let output = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(project_root())
        .output()
        .context("running cargo metadata")?;
    if !output.status.success() {
        bail!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    let mut graph = BTreeMap::new();
    for package in metadata["packages"].as_array().context("no packages")? {
        let name = package["name"]
            .as_str()
            .context("package without a name")?
            .to_owned();
        let deps = package["dependencies"]
            .as_array()
            .context("no dependencies array")?
            .iter()
            .filter(|d| d["kind"].is_null())
            .filter_map(|d| d["name"].as_str().map(str::to_owned))
            .collect();
        graph.insert(name, deps);
    }
    Ok(graph)
}

/// Dependency edges the architecture forbids, as (package, dependency, reason).
fn forbidden_edges(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    const LEAVES: [&str; 4] = [
        "hybridsync-store",
        "hybridsync-vector",
        "hybridsync-cloud",
        "hybridsync-telemetry",
    ];
    let mut violations = Vec::new();
    let mut forbid = |package: &str, dependency: &str, why: &str| {
        if graph
            .get(package)
            .is_some_and(|deps| deps.contains(dependency))
        {
            violations.push(format!("{package} -> {dependency}: {why}"));
        }
    };
    for a in LEAVES {
        for b in LEAVES {
            forbid(
                a,
                b,
                "store, vector, cloud and telemetry never depend on each other",
            );
        }
        for upper in ["hybridsync-engine", "hybridsync", "hybridsync-cli"] {
            forbid(a, upper, "dependencies point towards core, never up");
        }
    }
    for dep in [
        "sqlx",
        "usearch",
        "tokio",
        "metrics-exporter-prometheus",
        "anyhow",
        "metrics",
    ] {
        forbid(
            "hybridsync-core",
            dep,
            "hybridsync-core is types and traits only, no I/O or runtime",
        );
    }
    // The end-to-end test and benchmark crate is not a library: it may use anything.
    for package in graph
        .keys()
        .filter(|p| p.starts_with("hybridsync") && *p != "hybridsync-tests")
    {
        if package != "hybridsync-core" {
            forbid(
                "hybridsync-core",
                package,
                "hybridsync-core depends on no other hybridsync crate",
            );
        }
        if package != "hybridsync-telemetry" {
            forbid(
                package,
                "metrics-exporter-prometheus",
                "only hybridsync-telemetry knows the exporter",
            );
            forbid(
                package,
                "redis",
                "only hybridsync-telemetry knows Redis (the publisher)",
            );
        }
        if package != "hybridsync-vector" {
            forbid(
                package,
                "usearch",
                "only hybridsync-vector touches usearch (FFI)",
            );
        }
        if !["hybridsync-store", "hybridsync-cloud"].contains(&package.as_str()) {
            forbid(
                package,
                "sqlx",
                "only the store and the cloud sink talk SQL",
            );
        }
        if package != "hybridsync-store" {
            forbid(
                package,
                "rusqlite",
                "only the store opens SQLite connections of its own",
            );
        }
        if package != "hybridsync-cli" {
            forbid(
                package,
                "anyhow",
                "libraries use typed errors; anyhow is for the CLI, xtask and tests",
            );
        }
    }
    forbid(
        "hybridsync-engine",
        "hybridsync",
        "the engine sits below the facade",
    );
    forbid(
        "hybridsync-engine",
        "hybridsync-cli",
        "the engine sits below the CLI",
    );
    forbid(
        "hybridsync",
        "hybridsync-cli",
        "the facade sits below the CLI",
    );
    violations
}

/// The packages `package` really links with a feature selection (`None`: its
/// defaults; `Some(list)`: exactly `list`), transitively, normal dependencies only: what
/// a user who depends on it that way compiles.
fn resolved(package: &str, features: Option<&[&str]>) -> Result<BTreeSet<String>> {
    let mut args = vec![
        "tree",
        "--offline",
        "-p",
        package,
        "-e",
        "normal",
        "--prefix",
        "none",
        "--format",
        "{p}",
    ];
    let joined;
    if let Some(features) = features {
        args.push("--no-default-features");
        if !features.is_empty() {
            joined = features.join(",");
            args.extend(["--features", &joined]);
        }
    }
    let output = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(&args)
        .current_dir(project_root())
        .output()
        .context("running cargo tree")?;
    if !output.status.success() {
        bail!(
            "cargo {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .collect())
}

/// Checks on the resolved graph: what a feature selection really links.
fn resolved_violations() -> Result<Vec<String>> {
    let mut violations = Vec::new();
    let mut absent = |package: &str, features: Option<&[&str]>, crates: &[&str], why: &str| {
        let linked = resolved(package, features)?;
        for krate in crates {
            if linked.contains(*krate) {
                violations.push(format!(
                    "{package} (features {features:?}) links {krate}: {why}"
                ));
            }
        }
        anyhow::Ok(())
    };
    let server = ["hyper", "metrics-exporter-prometheus"];
    absent(
        "hybridsync",
        Some(&[]),
        &[
            "hyper",
            "metrics-exporter-prometheus",
            "sqlx-postgres",
            "usearch",
            "redis",
        ],
        "default-features = false is a local store: no exporter, HTTP server, PostgreSQL driver, usearch or Redis client",
    )?;
    absent(
        "hybridsync",
        Some(&["vector", "cloud-postgres"]),
        &server,
        "the exporter and its HTTP server come only with the `prometheus` feature",
    )?;
    absent(
        "hybridsync",
        Some(&["vector", "cloud-postgres", "prometheus"]),
        &["redis"],
        "the Redis client comes only with the `redis` feature",
    )?;
    absent(
        "hybridsync-telemetry",
        Some(&[]),
        &server,
        "telemetry links the exporter only with its `prometheus` feature",
    )?;
    absent(
        "hybridsync-engine",
        None,
        &[
            "hyper",
            "metrics-exporter-prometheus",
            "usearch",
            "sqlx-core",
            "rusqlite",
            "hybridsync-store",
            "hybridsync-vector",
            "hybridsync-cloud",
        ],
        "the engine knows its layers only through the core traits",
    )?;
    absent(
        "hybridsync-cli",
        None,
        &["hybridsync-testkit"],
        "test tooling stays out of the shipped binary",
    )?;
    for package in ["hybridsync", "hybridsync-cli"] {
        let linked = resolved(package, None)?;
        if linked.contains("rusqlite") && !linked.contains("hybridsync-store") {
            violations.push(format!(
                "{package} links rusqlite without the store: only the store uses it"
            ));
        }
    }
    Ok(violations)
}

/// Crash points compile only under `--cfg hybridsync_crash_points`, which xtask alone
/// passes: no manifest, cargo config or feature may turn them on, so a plain
/// `cargo build --release --workspace` never links one.
fn crash_points_stay_out_of_release() -> Result<Vec<String>> {
    let root = project_root();
    let mut violations = Vec::new();
    let crash = std::fs::read_to_string(root.join("crates/hybridsync-core/src/crash.rs"))?;
    if !crash.contains("#[cfg(hybridsync_crash_points)]") {
        violations
            .push("crash.rs: crash_point is not gated on cfg(hybridsync_crash_points)".into());
    }
    let mut manifests = vec![
        root.join("Cargo.toml"),
        root.join("tests/Cargo.toml"),
        root.join("xtask/Cargo.toml"),
    ];
    for entry in std::fs::read_dir(root.join("crates"))? {
        manifests.push(entry?.path().join("Cargo.toml"));
    }
    for config in [".cargo/config.toml", ".cargo/config"] {
        manifests.push(root.join(config));
    }
    for manifest in manifests.iter().filter(|m| m.exists()) {
        let text = std::fs::read_to_string(manifest)?;
        let relative = relative_to(&root, manifest);
        // Comments and the workspace's check-cfg list name the cfg without setting it.
        let switches = text
            .lines()
            .filter(|l| !l.trim_start().starts_with('#') && !l.contains("check-cfg"))
            .any(|l| l.contains("hybridsync_crash_points") || l.contains("crash-points"));
        if switches {
            violations.push(format!("{relative}: turns crash points on"));
        }
    }
    Ok(violations)
}

/// `path` relative to `root`, for messages.
fn relative_to(root: &Path, path: &Path) -> String {
    path.strip_prefix(root)
        .unwrap_or(path)
        .display()
        .to_string()
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            rust_files(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    Ok(())
}

/// Every `.rs` file opens with a `//!` comment; every crate root but the vector crate
/// (the one FFI user) forbids unsafe code.
fn file_conventions() -> Result<Vec<String>> {
    let root = project_root();
    let mut files = Vec::new();
    for dir in ["crates", "xtask", "tests"] {
        rust_files(&root.join(dir), &mut files)?;
    }
    let mut violations = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file)?;
        let relative = relative_to(&root, file);
        if !text.starts_with("//!") {
            violations.push(format!("{relative}: does not start with a `//!` comment"));
        }
        let is_crate_root = relative.starts_with("crates/")
            && (relative.ends_with("src/lib.rs") || relative.ends_with("src/main.rs"))
            && !relative.starts_with("crates/hybridsync-vector/");
        if is_crate_root && !text.contains("#![forbid(unsafe_code)]") {
            violations.push(format!(
                "{relative}: crate root lacks #![forbid(unsafe_code)]"
            ));
        }
    }
    if files.len() < 10 {
        violations.push(format!(
            "only {} Rust files found: is the project root right?",
            files.len()
        ));
    }
    Ok(violations)
}

pub(crate) fn run() -> Result<()> {
    let graph = dependency_graph()?;
    let mut violations = forbidden_edges(&graph);
    violations.extend(resolved_violations()?);
    violations.extend(crash_points_stay_out_of_release()?);
    violations.extend(file_conventions()?);
    if !violations.is_empty() {
        bail!(
            "tidy found {} problem(s):\n  {}",
            violations.len(),
            violations.join("\n  ")
        );
    }
    eprintln!(
        "tidy: layering, resolved features, crash-point gating and file conventions hold ({} packages)",
        graph.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_workspace_is_tidy() {
        run().unwrap();
    }

    #[test]
    fn a_forbidden_edge_is_caught() {
        let mut graph = dependency_graph().unwrap();
        graph
            .get_mut("hybridsync-store")
            .unwrap()
            .insert("hybridsync-vector".into());
        graph
            .get_mut("hybridsync-core")
            .unwrap()
            .insert("sqlx".into());
        graph
            .get_mut("hybridsync-engine")
            .unwrap()
            .insert("metrics-exporter-prometheus".into());
        let violations = forbidden_edges(&graph);
        for edge in [
            "hybridsync-store -> hybridsync-vector",
            "hybridsync-core -> sqlx",
            "hybridsync-engine -> metrics-exporter",
        ] {
            assert!(
                violations.iter().any(|v| v.starts_with(edge)),
                "{edge} not caught: {violations:#?}"
            );
        }
        assert!(forbidden_edges(&dependency_graph().unwrap()).is_empty());
    }

    #[test]
    fn the_resolved_graph_is_what_the_features_say() {
        let local_only = resolved("hybridsync", Some(&[])).unwrap();
        assert!(local_only.contains("hybridsync-store") && local_only.contains("rusqlite"));
        let full = resolved("hybridsync", Some(&["full"])).unwrap();
        // hyper is gone from every build (the endpoint is our own small server); the
        // `absent` checks above keep it out.
        for krate in [
            "usearch",
            "sqlx-postgres",
            "metrics-exporter-prometheus",
            "redis",
        ] {
            assert!(
                full.contains(krate) && !local_only.contains(krate),
                "{krate}: the check must see it come and go with the features"
            );
        }
        assert!(resolved_violations().unwrap().is_empty());
    }
}
