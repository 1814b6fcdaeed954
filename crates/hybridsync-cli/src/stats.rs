//! Rendering status and latency figures.

use hybridsync::{Status, SyncStatus};
use serde_json::json;
use std::fmt::Write as _;
use std::time::Duration;

/// The `status --json` document. Fields are only ever added, never renamed.
pub(crate) fn status_json(
    status: &Status,
    reachable: Option<bool>,
    sync: Option<&SyncStatus>,
) -> serde_json::Value {
    let by_priority: serde_json::Map<String, serde_json::Value> = status
        .outbox
        .by_priority
        .iter()
        .map(|(p, n)| (p.to_string(), json!(n)))
        .collect();
    let collections: serde_json::Map<String, serde_json::Value> = status
        .collections
        .iter()
        .map(|c| {
            let vector = c.vector.map(|v| json!({"dim": v.dim, "metric": v.metric.as_str(), "precision": v.precision.as_str()}));
            (c.name.to_string(), json!({"records": c.records, "indexed": c.indexed, "index_restored": c.index_restored, "vector": vector, "encrypted": c.encrypted}))
        })
        .collect();
    json!({
        "device_id": status.device_id.to_string(),
        "data_dir": status.data_dir,
        "outbox": {
            "pending": status.outbox.pending,
            "in_flight": status.outbox.in_flight,
            "failed": status.outbox.failed,
            "done": status.outbox.done,
            "by_priority": by_priority,
        },
        "collections": collections,
        "encryption": {"key_ids": status.key_ids.iter().map(ToString::to_string).collect::<Vec<_>>()},
        "cache": {"entries": status.cache.entries, "bytes": status.cache.bytes, "hits": status.cache.hits, "misses": status.cache.misses},
        "cloud": {
            "configured": status.cloud.is_some(),
            "url": status.cloud,
            "reachable": reachable,
            "circuit": sync.map(|s| s.circuit.as_str()),
            "pool": sync.map(|s| json!({"size": s.pool.0, "max": s.pool.1, "load": s.pool_load})),
        },
        "sync": {
            "last_sync_ms": status.outbox.last_shipped_ms,
            "synced_total": status.outbox.done,
            "failed_total": status.outbox.failed,
            "history": status.history,
        },
    })
}

/// The human `status` view.
pub(crate) fn status_text(
    status: &Status,
    reachable: Option<bool>,
    sync: Option<&SyncStatus>,
) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "device     {}", status.device_id);
    let _ = writeln!(out, "data dir   {}", status.data_dir.display());
    let cloud = status
        .cloud
        .as_deref()
        .unwrap_or("not configured (local-only; changes wait in the outbox)");
    let _ = writeln!(out, "cloud      {cloud}");
    if let (Some(reachable), Some(sync)) = (reachable, sync) {
        let _ = writeln!(
            out,
            "           {}, circuit {}, pool {}/{} (load {:.0}%)",
            if reachable {
                "reachable"
            } else {
                "UNREACHABLE"
            },
            sync.circuit,
            sync.pool.0,
            sync.pool.1,
            sync.pool_load * 100.0
        );
    }
    let last = status
        .outbox
        .last_shipped_ms
        .map_or("never".to_owned(), |ms| {
            format!("{:.1} s ago", now_ms().saturating_sub(ms) as f64 / 1000.0)
        });
    let _ = writeln!(out, "last sync  {last}");
    let keys = match status.key_ids.split_first() {
        None => "no key (encrypted collections stay local)".to_owned(),
        Some((current, [])) => format!("key {current}"),
        Some((current, previous)) => format!(
            "key {current}; also opens {}",
            previous
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let _ = writeln!(out, "encryption {keys}");
    let _ = writeln!(
        out,
        "outbox     {} pending, {} in flight, {} failed, {} done",
        status.outbox.pending, status.outbox.in_flight, status.outbox.failed, status.outbox.done
    );
    for (priority, n) in &status.outbox.by_priority {
        let _ = writeln!(out, "           {priority:<9} {n}");
    }
    if !status.history.is_empty() {
        let _ = writeln!(out, "history");
        for h in &status.history {
            let outcome = h.error.as_deref().unwrap_or("ok");
            let _ = writeln!(
                out,
                "  {:>6.1} min ago  {:<8} {} pushed, {} pulled, {} conflicts, {} ms: {outcome}",
                now_ms().saturating_sub(h.started_ms) as f64 / 60_000.0,
                h.operation,
                h.pushed,
                h.pulled,
                h.conflicts,
                h.duration_ms
            );
        }
    }
    let _ = writeln!(out, "collections");
    for c in &status.collections {
        let vector = c.vector.map_or(String::new(), |v| {
            format!(
                "  [{}-D {} {}; {} indexed{}]",
                v.dim,
                v.metric,
                v.precision,
                c.indexed,
                if c.index_restored {
                    ", from snapshot"
                } else {
                    ""
                }
            )
        });
        let _ = writeln!(
            out,
            "  {:<24} {:>8} records{vector}{}",
            c.name.as_str(),
            c.records,
            if c.encrypted { "  encrypted" } else { "" }
        );
    }
    out
}

/// The wall clock, through the library's one `Clock`.
fn now_ms() -> u64 {
    hybridsync::Clock::now_ms(&hybridsync::SystemClock)
}

/// p50 and p99 of `samples`.
pub(crate) fn percentiles(samples: &mut [Duration]) -> (Duration, Duration) {
    if samples.is_empty() {
        return (Duration::ZERO, Duration::ZERO);
    }
    samples.sort();
    let at =
        |q: f64| samples[((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1];
    (at(0.50), at(0.99))
}

/// A duration in the most readable unit.
pub(crate) fn fmt_duration(d: Duration) -> String {
    let micros = d.as_secs_f64() * 1e6;
    if micros < 1_000.0 {
        format!("{micros:.1} µs")
    } else {
        format!("{:.2} ms", micros / 1_000.0)
    }
}
