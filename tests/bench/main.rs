//! `hybridsync-bench`: benchmarks with their baselines measured in the same run, on the
//! same data. Driven by `cargo xtask bench`; writes `target/bench/results.json` and
//! `docs/benchmarks.md`. Ratios are what we quote: the machines are noisy.

mod drain;
mod encryption;
mod local;
mod migrate;
mod peers;
mod reads;
mod replicate;
mod report;
mod search;
mod verify;
mod warming;

use anyhow::Result;

const GROUPS: [&str; 9] = [
    "reads",
    "warming",
    "local",
    "search",
    "sync",
    "drain",
    "propagation",
    "verify",
    "migrate",
];

/// `hybridsync-bench [--quick] [GROUP]...`: groups are `reads`, `warming`, `local`,
/// `search`, `sync` (drain, hydrate, propagation, encryption), `verify` and `migrate`;
/// all by default. `drain` and `propagation` run only the sync group's drain rows or
/// its propagation rows. A partial run leaves docs/benchmarks.md unchanged.
#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [probe, side, n] = &args[..]
        && probe == search::PROBE_ARG
    {
        return search::run_memory_probe(side, n.parse()?).await;
    }
    let quick = args.iter().any(|a| a == "--quick");
    let groups: Vec<&str> = args
        .iter()
        .filter(|a| !a.starts_with("--"))
        .map(String::as_str)
        .collect();
    if let Some(unknown) = groups.iter().find(|g| !GROUPS.contains(g)) {
        anyhow::bail!(
            "unknown benchmark group {unknown:?} ({})",
            GROUPS.join(", ")
        );
    }
    let wanted = |group: &str| groups.is_empty() || groups.contains(&group);
    let mut rows = Vec::new();
    if wanted("reads") {
        rows.extend(reads::run(if quick { 5_000 } else { 200_000 }).await?);
    }
    if wanted("warming") {
        rows.extend(warming::run(quick).await?);
    }
    // Recording a read for warming beside the reads group's cached read (10,000 keys),
    // the canonical one; the warming group's own row compares with its smaller store.
    let record = rows
        .iter()
        .find(|r| r.name == "warming_record_access")
        .map(|r| (r.value, r.trials.clone()));
    let cached = rows
        .iter()
        .find(|r| r.name == "cached_read_p50" && r.baseline == "hashmap_clone_p50")
        .map(|r| r.value);
    if let (Some((record, trials)), Some(cached)) = (record, cached) {
        rows.push(report::Row {
            trials,
            ..report::Row::latency(
                "warming_record_access",
                record,
                "cached_read_p50",
                cached,
                "<= 0.05x",
            )
        });
    }
    if wanted("local") {
        rows.extend(local::run(if quick { 200 } else { 5_000 }).await?);
    }
    // A cache miss (served by SQLite) beside the direct PostgreSQL point read the reads
    // group measured in this run: the "before" of our users.
    let pg_read = rows
        .iter()
        .find(|r| r.baseline == "postgres_point_read_p50")
        .map(|r| r.baseline_value);
    let miss = rows
        .iter()
        .find(|r| r.name == "cache_miss_read_p50")
        .map(|r| r.value);
    if let (Some(pg_read), Some(miss)) = (pg_read, miss) {
        rows.push(report::Row::latency(
            "cache_miss_read_p50",
            miss,
            "postgres_point_read_p50",
            pg_read,
            "report",
        ));
    }
    if wanted("search") {
        rows.extend(search::run(if quick { 5_000 } else { 100_000 }, !quick).await?);
    }
    if wanted("sync") {
        let cloud = drain::durable_server().await?;
        let records = if quick { 3_000 } else { 100_000 };
        let drained = drain::run(&cloud, records).await?;
        let drain_secs = records as f64 / drained[0].value;
        rows.extend(drained);
        rows.push(drain::recovery(&cloud, records, drain_secs).await?);
        rows.extend(replicate::hydrate(&cloud, records).await?);
        rows.extend(replicate::hydrate_plain(&cloud, records).await?);
        rows.extend(replicate::propagation(&cloud, if quick { 20 } else { 500 }).await?);
        drop(cloud);
        rows.extend(encryption::run(records).await?);
    } else {
        if wanted("drain") {
            let cloud = drain::durable_server().await?;
            rows.extend(drain::run(&cloud, if quick { 3_000 } else { 100_000 }).await?);
        }
        if wanted("propagation") {
            let cloud = drain::durable_server().await?;
            rows.extend(replicate::propagation(&cloud, if quick { 20 } else { 500 }).await?);
        }
    }
    if wanted("verify") {
        rows.extend(verify::run(quick).await?);
    }
    if wanted("migrate") {
        rows.extend(migrate::run(quick).await?);
    }
    report::write(&rows, quick || !groups.is_empty())?;
    Ok(())
}
