//! Result rows: printed as a table, written as JSON and as docs/benchmarks.md.

use anyhow::{Context, Result};
use std::fmt::Write as _;
use std::path::PathBuf;

/// One measured figure next to its baseline. `ratio` is ours ÷ baseline; `better` says
/// which way is better for the unit (`higher` for throughput and recall, `lower` for
/// times and memory), so a ratio reads the same way as its figures.
#[derive(Debug, serde::Serialize)]
pub(crate) struct Row {
    pub name: String,
    pub unit: String,
    pub value: f64,
    pub baseline: String,
    pub baseline_value: f64,
    pub ratio: f64,
    pub better: &'static str,
    pub goal: String,
    /// The trials' range, ours / baseline, when the row is a median of several.
    pub trials: String,
}

impl Row {
    /// A row with ratio = ours ÷ baseline, read in the unit's sense.
    pub(crate) fn new(
        name: &str,
        unit: &str,
        value: f64,
        baseline: &str,
        baseline_value: f64,
        goal: &str,
    ) -> Self {
        Self {
            name: name.into(),
            unit: unit.into(),
            value,
            baseline: baseline.into(),
            baseline_value,
            ratio: value / baseline_value,
            better: if matches!(unit, "records/s" | "recall" | "hit rate") {
                "higher"
            } else {
                "lower"
            },
            goal: goal.into(),
            trials: String::new(),
        }
    }

    /// A row from paired trials (`ours[i]` measured beside `base[i]`, on the same
    /// server in the same state): the figures are the medians, the ratio the median
    /// of the trials' own ratios (what one trial's conditions do to both sides
    /// cancels), and the trials' ranges are shown.
    pub(crate) fn paired(mut self, ours: &[f64], base: &[f64]) -> Self {
        let mut ratios: Vec<f64> = ours.iter().zip(base).map(|(o, b)| o / b).collect();
        if !ratios.is_empty() {
            self.ratio = median(&mut ratios);
        }
        let shown: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
        self.trials = format!(
            "{} / {} (ratios {})",
            range(ours),
            range(base),
            shown.join(", ")
        );
        self
    }

    /// A row that is the median of several samples of ours alone (batches of one
    /// loop): their range and count are shown.
    pub(crate) fn spread(mut self, samples: &[f64], what: &str) -> Self {
        self.trials = format!("{} ({} {what})", range(samples), samples.len());
        self
    }

    /// Throughput in records/s: higher is better.
    pub(crate) fn throughput(
        name: &str,
        value: f64,
        baseline: &str,
        baseline_value: f64,
        goal: &str,
    ) -> Self {
        Self::new(name, "records/s", value, baseline, baseline_value, goal)
    }

    /// Latency in ns: lower is better.
    pub(crate) fn latency(
        name: &str,
        value: f64,
        baseline: &str,
        baseline_value: f64,
        goal: &str,
    ) -> Self {
        Self::new(name, "ns", value, baseline, baseline_value, goal)
    }
}

/// The median of `values` (sorted here).
pub(crate) fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// The lowest and highest of `values`.
fn range(values: &[f64]) -> String {
    let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{}–{}", figure(lo), figure(hi))
}

/// Whole numbers for big figures, one decimal for tens (a record's nanoseconds),
/// three for small ones (recall).
fn figure(value: f64) -> String {
    if value.abs() < 10.0 {
        format!("{value:.3}")
    } else if value.abs() < 100.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.0}")
    }
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn command_line(program: &str, args: &[&str]) -> String {
    std::process::Command::new(program)
        .args(args)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// What each row of docs/benchmarks.md measures.
const MEASURES: &str = include_str!("measures.md");

/// What earlier measurements taught (the architecture notes keep to shape).
const HISTORY: &str = include_str!("history.md");

/// Prints the table and writes results.json; a full run (not `partial`) also
/// refreshes docs/benchmarks.md.
pub(crate) fn write(rows: &[Row], partial: bool) -> Result<()> {
    let mut table = String::from(
        "| benchmark | ours | baseline | baseline value | ratio | better | goal | trials: ours / baseline |\n|---|---|---|---|---|---|---|---|\n",
    );
    for row in rows {
        let (value, base) = (figure(row.value), figure(row.baseline_value));
        let _ = writeln!(
            table,
            "| {} | {value} {} | {} | {base} {} | {:.2}× | {} | {} | {} |",
            row.name, row.unit, row.baseline, row.unit, row.ratio, row.better, row.goal, row.trials
        );
    }
    println!("\n{table}");
    let dir = root().join("target/bench");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("results.json"),
        serde_json::to_string_pretty(rows)?,
    )
    .context("writing results.json")?;
    if partial {
        println!("(--quick or a subset of groups: docs/benchmarks.md left unchanged)");
        return Ok(());
    }
    let doc = format!(
        "# Benchmarks\n\nGenerated by `cargo xtask bench` (do not edit by hand). Every figure is measured next to its\n\
         baseline in the same run on the same data; quote the ratios, not the absolute numbers.\n\n\
         - machine: {} cores, {}\n- date: {}\n- commit: {}\n\n{table}\n\
         {MEASURES}{HISTORY}",
        command_line("nproc", &[]),
        command_line("uname", &["-sr"]),
        command_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        command_line("git", &["rev-parse", "--short", "HEAD"]),
    );
    std::fs::write(root().join("docs/benchmarks.md"), doc).context("writing docs/benchmarks.md")?;
    Ok(())
}
