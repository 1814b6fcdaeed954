//! `hybridsync-bench`: benchmarks with their baselines measured in the same run, on the
//! same data. Driven by `cargo xtask bench`; writes `target/bench/results.json` and
//! `docs/benchmarks.md`. Ratios are what we quote: the machines are noisy.

mod drain;
mod local;
mod reads;
mod report;
mod search;

use anyhow::Result;

#[tokio::main]
async fn main() -> Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let mut rows = Vec::new();
    rows.extend(reads::run(if quick { 20_000 } else { 200_000 }).await?);
    rows.extend(local::run(if quick { 200 } else { 1_000 }).await?);
    rows.extend(search::run(if quick { 20_000 } else { 100_000 }).await?);
    rows.extend(drain::run(if quick { 10_000 } else { 100_000 }).await?);
    report::write(&rows, quick)?;
    Ok(())
}
