//! The generated docs and deploy files: fresh (`hybridsync-codegen --check`, what
//! `cargo xtask codegen --check` runs), accepted by promtool, their alerts unit-tested,
//! and naming only metrics the catalogue has.

use crate::generate;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn codegen(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hybridsync-codegen"))
        .args(args)
        .output()
        .unwrap()
}

fn promtool(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("promtool is installed (cargo xtask test installs prometheus)");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{said}");
    said
}

#[test]
fn the_generated_files_are_fresh_and_a_stale_or_missing_one_fails_the_check() {
    let fresh = codegen(&["--check"]);
    assert!(
        fresh.status.success(),
        "{}",
        String::from_utf8_lossy(&fresh.stderr)
    );

    // A copy of the tree with one file edited by hand and one deleted.
    let tmp = tempfile::tempdir().unwrap();
    for (path, _) in generate::files() {
        let to = tmp.path().join(path);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(root().join(path), &to).unwrap();
    }
    let alerts = tmp.path().join("deploy/prometheus/alerts.yml");
    let edited = std::fs::read_to_string(&alerts)
        .unwrap()
        .replace("for: 1m", "for: 30m");
    std::fs::write(&alerts, edited).unwrap();
    std::fs::remove_file(tmp.path().join("docs/configuration.md")).unwrap();
    let root_arg = tmp.path().to_str().unwrap();
    let stale = codegen(&["--check", "--root", root_arg]);
    let said = String::from_utf8_lossy(&stale.stderr);
    assert!(!stale.status.success(), "{said}");
    assert!(said.contains("deploy/prometheus/alerts.yml"), "{said}");
    assert!(said.contains("docs/configuration.md (missing)"), "{said}");
    assert!(
        !said.contains("docs/metrics.md"),
        "only what differs: {said}"
    );

    assert!(codegen(&["--root", root_arg]).status.success());
    assert!(codegen(&["--check", "--root", root_arg]).status.success());
    assert!(!codegen(&["--bogus"]).status.success());
}

#[test]
fn promtool_accepts_the_rules_and_the_scrape_config_and_each_alert_fires_only_when_it_should() {
    let dir = root().join("deploy/prometheus");
    let checked = promtool(&dir, &["check", "rules", "alerts.yml"]);
    assert!(
        checked.contains(&format!("{} rules found", generate::ALERTS.len())),
        "{checked}"
    );
    promtool(&dir, &["check", "config", "prometheus.yml"]);
    let tested = promtool(&dir, &["test", "rules", "alerts.test.yml"]);
    eprintln!("{checked}{tested}");
    assert!(tested.contains("SUCCESS"), "{tested}");
    let cases = std::fs::read_to_string(dir.join("alerts.test.yml")).unwrap();
    for alert in generate::ALERTS {
        for case in ["fires", "quiet"] {
            assert!(
                cases.contains(&format!("# {} {case}", alert.name)),
                "{} lacks a {case} case",
                alert.name
            );
        }
    }
}

#[test]
fn a_broken_alert_fails_its_promtool_unit_test() {
    // The unit tests can fail: the same cases against a rule that never fires.
    let tmp = tempfile::tempdir().unwrap();
    let dir = root().join("deploy/prometheus");
    let rules = std::fs::read_to_string(dir.join("alerts.yml"))
        .unwrap()
        .replace(
            "(hybridsync_circuit_state) > 0",
            "(hybridsync_circuit_state) > 2",
        );
    assert!(rules.contains("> 2"), "the rule to break is still there");
    std::fs::write(tmp.path().join("alerts.yml"), rules).unwrap();
    std::fs::copy(
        dir.join("alerts.test.yml"),
        tmp.path().join("alerts.test.yml"),
    )
    .unwrap();
    let out = Command::new("promtool")
        .args(["test", "rules", "alerts.test.yml"])
        .current_dir(tmp.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("HybridsyncCircuitOpen"), "{said}");
}

/// Every metric name an expression refers to (histogram series mapped to their
/// family), for the check that dashboards and alerts name only catalogue metrics.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(at) = expr[i..].find("hybridsync_") {
        let start = i + at;
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        let name = &expr[start..end];
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .filter(|family| family.ends_with("_seconds"))
            .unwrap_or(name);
        names.push(family.to_owned());
        i = end;
    }
    names
}

/// Every `expr` in a Grafana dashboard.
fn dashboard_expressions(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("expr", serde_json::Value::String(expr)) => out.push(expr.clone()),
                    _ => dashboard_expressions(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => {
            for v in items {
                dashboard_expressions(v, out);
            }
        }
        _ => {}
    }
}

#[test]
fn the_dashboard_and_the_alerts_name_only_catalogue_metrics() {
    let known: Vec<&str> = hybridsync_telemetry::catalogue::ALL
        .iter()
        .map(|d| d.name)
        .collect();
    let text = std::fs::read_to_string(root().join("deploy/grafana/hybridsync.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut exprs = Vec::new();
    dashboard_expressions(&dashboard, &mut exprs);
    assert!(exprs.len() >= 10, "{exprs:?}");
    exprs.extend(generate::ALERTS.iter().map(|a| a.expr.to_owned()));
    let mut used = std::collections::BTreeSet::new();
    for expr in &exprs {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "{expr} names no hybridsync metric");
        for name in names {
            assert!(
                known.contains(&name.as_str()),
                "{name} (in {expr}) is not in the catalogue"
            );
            used.insert(name);
        }
    }
    // The panels the issue asks for.
    for name in [
        "hybridsync_queue_size",
        "hybridsync_queue_failed",
        "hybridsync_syncs_total",
        "hybridsync_sync_latency_seconds",
        "hybridsync_circuit_state",
        "hybridsync_connection_pool_load",
        "hybridsync_cache_hits_total",
        "hybridsync_conflicts_total",
        "hybridsync_read_latency_seconds",
    ] {
        assert!(used.contains(name), "no panel or alert uses {name}");
    }
    // The check can fail: a made-up name and a histogram series are read as such.
    assert_eq!(
        metric_names("rate(hybridsync_made_up_total[5m]) + hybridsync_read_latency_seconds_bucket"),
        [
            "hybridsync_made_up_total",
            "hybridsync_read_latency_seconds"
        ]
    );
}

#[test]
fn the_configuration_keys_come_from_serde() {
    #[derive(serde::Deserialize)]
    #[allow(dead_code)]
    struct Inner {
        b: Option<u32>,
        c: Vec<String>,
    }
    #[derive(serde::Deserialize)]
    #[allow(dead_code)]
    struct Outer {
        a: Option<String>,
        #[serde(default)]
        inner: Option<Inner>,
        #[serde(rename = "renamed")]
        d: Option<bool>,
    }
    // An Option of a struct is a leaf to the probe: the configuration nests plain
    // structs with `#[serde(default)]`, which it walks.
    assert_eq!(generate::serde_keys::<Outer>(), ["a", "inner", "renamed"]);
    let keys = generate::serde_keys::<hybridsync::Config>();
    assert!(keys.contains(&"redis.url".to_owned()), "{keys:?}");
    assert!(keys.contains(&"sync.interval_secs".to_owned()), "{keys:?}");
    let described: Vec<&str> = hybridsync::SETTINGS.iter().map(|s| s.key).collect();
    assert_eq!(keys, described);
}
