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
        let relative = file
            .strip_prefix(&root)
            .unwrap_or(file)
            .display()
            .to_string();
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
    violations.extend(file_conventions()?);
    if !violations.is_empty() {
        bail!(
            "tidy found {} problem(s):\n  {}",
            violations.len(),
            violations.join("\n  ")
        );
    }
    eprintln!(
        "tidy: layering and file conventions hold ({} packages)",
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
}
