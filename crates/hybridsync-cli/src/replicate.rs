//! `hybridsync seed | hydrate | sync`: two-way sync with progress on stderr (a bar on
//! a terminal, plain lines otherwise) and a one-line report on stdout.

use anyhow::{Result, bail};
use hybridsync::{HybridStore, Strategy, SyncReport, VerifyOptions, VerifyReport};
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::sync::Mutex;

/// Which collections an operation covers.
#[derive(Debug, Default, clap::Args)]
pub(crate) struct Selection {
    /// Only this collection (repeatable); every collection when omitted
    #[arg(long = "collection", value_name = "NAME")]
    collections: Vec<String>,
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum Operation {
    Seed,
    Hydrate,
    Sync(Strategy),
    /// Rewrite encrypted collections under the current key.
    Reencrypt,
}

/// A progress callback: percentage and message.
type Reporter = Box<dyn Fn(f32, &str) + Send + Sync>;

/// Reports progress: a bar on a terminal, a line per 10 % otherwise.
fn progress() -> Reporter {
    if std::io::stderr().is_terminal() {
        let bar = ProgressBar::new(100);
        if let Ok(style) = ProgressStyle::with_template("{bar:40} {pos:>3}% {msg}") {
            bar.set_style(style);
        }
        Box::new(move |percent, message| {
            bar.set_position(percent as u64);
            bar.set_message(message.to_owned());
            if percent >= 100.0 {
                bar.finish_and_clear();
            }
        })
    } else {
        let last = Mutex::new(-100.0f32);
        Box::new(move |percent, message| {
            let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
            if percent - *last >= 10.0 || (percent >= 100.0 && *last < 100.0) {
                *last = percent;
                eprintln!("{percent:5.1}% {message}");
            }
        })
    }
}

pub(crate) async fn run(
    store: &HybridStore,
    operation: Operation,
    selection: &Selection,
) -> Result<()> {
    if !store.cloud_configured() {
        bail!("no cloud configured (set --cloud-url, HYBRIDSYNC_CLOUD_URL or cloud_url)");
    }
    let names: Vec<&str> = selection.collections.iter().map(String::as_str).collect();
    let progress = progress();
    let report = match operation {
        Operation::Seed => store.seed(&names, &progress).await?,
        Operation::Hydrate => store.hydrate(&names, &progress).await?,
        Operation::Sync(strategy) => store.sync(&names, strategy, &progress).await?,
        Operation::Reencrypt => store.reencrypt(&progress).await?,
    };
    say!("{}", summary(&report))?;
    Ok(())
}

/// `hybridsync verify`: the report (text or JSON) on stdout; after a repair, a second
/// check proves what it mended. Fails when differences remain.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn verify(
    store: &HybridStore,
    selection: &Selection,
    repair: bool,
    deep: bool,
    sample: Option<f64>,
    strategy: Strategy,
    json: bool,
) -> Result<()> {
    if !store.cloud_configured() {
        bail!("no cloud configured (set --cloud-url, HYBRIDSYNC_CLOUD_URL or cloud_url)");
    }
    let collections = selection
        .collections
        .iter()
        .map(|c| hybridsync::CollectionName::new(c.as_str()))
        .collect::<Result<Vec<_>, _>>()?;
    let options = VerifyOptions {
        collections,
        repair,
        deep,
        sample,
        strategy,
        ..VerifyOptions::default()
    };
    let report = store.verify(options.clone()).await?;
    let after = if repair && report.repaired > 0 {
        let check = VerifyOptions {
            repair: false,
            ..options
        };
        Some(store.verify(check).await?)
    } else {
        None
    };
    if json {
        let value = serde_json::json!({"report": report, "consistent": report.consistent(), "after_repair": after});
        say!("{}", serde_json::to_string_pretty(&value)?)?;
    } else {
        say!("{}", verify_text(&report))?;
        if let Some(after) = &after {
            say!(
                "after repair: {}",
                if after.consistent() {
                    "consistent".to_owned()
                } else {
                    format!("{} differences remain", after.differences())
                }
            )?;
        }
    }
    let left = after.as_ref().unwrap_or(&report).differences();
    if left > 0 {
        bail!("{left} rows differ between this device and the cloud");
    }
    Ok(())
}

/// The human report of a check.
fn verify_text(report: &VerifyReport) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    for c in &report.collections {
        let verdict = if c.differences() == 0 {
            "consistent"
        } else {
            "DIFFERS"
        };
        let _ = writeln!(
            out,
            "{}: {verdict} ({} rows here, {} in the cloud; {} nodes, {} rows, {} bytes exchanged)",
            c.collection,
            c.local_rows,
            c.remote_rows,
            c.nodes_exchanged,
            c.rows_exchanged,
            c.bytes_exchanged
        );
        if let (Some(share), Some((estimate, low, high))) = (c.sampled, c.estimated_differences) {
            let _ = writeln!(
                out,
                "  sampled {:.1} % of the buckets: about {estimate:.0} differences in all ({low:.0}-{high:.0}, 95 %)",
                share * 100.0
            );
        }
        for (kind, found) in &c.found {
            let _ = writeln!(
                out,
                "  {kind:<15} {:>6}  {}",
                found.count,
                found.keys.join(", ")
            );
        }
        if c.repaired > 0 {
            let _ = writeln!(out, "  repaired {}", c.repaired);
        }
    }
    let _ = write!(
        out,
        "{} differences in {} collections, {} ms",
        report.differences(),
        report.collections.len(),
        report.duration_ms
    );
    out
}

pub(crate) fn summary(report: &SyncReport) -> String {
    format!(
        "{}: {} collections, {} pushed, {} pulled, {} conflicts ({} resolved by a new version), {} refused, {} parked as failed, in {:.2} s",
        report.operation,
        report.collections,
        report.pushed,
        report.pulled,
        report.conflicts_detected,
        report.conflicts_resolved,
        report.refused,
        report.failed,
        report.duration_ms as f64 / 1000.0
    )
}
