//! `hybridsync seed | hydrate | sync`: two-way sync with progress on stderr (a bar on
//! a terminal, plain lines otherwise) and a one-line report on stdout.

use anyhow::{Result, bail};
use hybridsync::{HybridStore, Strategy, SyncReport};
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
