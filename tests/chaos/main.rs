//! `hybridsync-chaos`: seeded fault schedules against a real PostgreSQL, with the
//! invariants checked after healing. Driven by `cargo xtask chaos`.
//!
//! Each schedule runs a writer process (this binary, `writer` mode) that writes unique
//! values to its own device and prints every acknowledged write, while faults are
//! injected: a fault proxy between the writer and PostgreSQL (latency, blackhole, RST,
//! close after N bytes, down), SIGKILL and SIGSTOP/SIGCONT of the writer, PostgreSQL
//! restarts (fast and immediate) and `pg_terminate_backend`. A reader probes local
//! reads throughout. Then everything heals, the outbox is drained, and the checkers
//! compare what was acknowledged with the device and the cloud.

mod check;
mod ops;
mod probe;
mod report;
mod schedule;
mod verdict;
mod writer;

use anyhow::{Context, Result, bail};
use report::Report;
use schedule::Options;

fn usage() -> String {
    let mut text = String::from(
        "hybridsync-chaos [--seed S] [--schedules N] [--duration SECS] [--devices D] [--faults LIST] [--short]\nfaults:\n",
    );
    for (_, name, what) in schedule::ALL {
        text.push_str(&format!("  {name:<13} {what}\n"));
    }
    text
}

fn parse(args: &[String]) -> Result<Options> {
    let mut options = Options::default();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = || {
            it.next()
                .with_context(|| format!("{arg} needs a value\n{}", usage()))
        };
        match arg.as_str() {
            "--seed" => options.seed = Some(value()?.parse().context("--seed")?),
            "--schedules" => options.schedules = value()?.parse().context("--schedules")?,
            "--duration" => options.duration_secs = value()?.parse().context("--duration")?,
            "--devices" => options.devices = value()?.parse().context("--devices")?,
            "--faults" => options.faults = schedule::parse_faults(value()?)?,
            "--short" => options.short = true,
            "--help" | "-h" => {
                println!("{}", usage());
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}\n{}", usage()),
        }
    }
    if options.short {
        options.schedules = options.schedules.min(3);
        options.duration_secs = options.duration_secs.min(8);
        options.devices = options.devices.min(2);
    }
    if options.devices == 0 || options.faults.is_empty() {
        bail!("at least one device and one fault\n{}", usage());
    }
    Ok(options)
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("writer") {
        return writer::run(&args[1..]);
    }
    let options = parse(&args)?;
    let report: Report = schedule::run_all(&options)?;
    report.print_and_save()?;
    if report.violations() > 0 {
        bail!(
            "{} invariant violation(s); replay with the seeds above",
            report.violations()
        );
    }
    Ok(())
}
