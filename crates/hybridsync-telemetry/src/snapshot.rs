//! [`SyncMetrics`]: the figures the metrics endpoint exports, as one value, and the one
//! place that sets the gauges from them.

use crate::catalogue;
use hybridsync_core::{CircuitState, HotCacheStats, OutboxStats, Priority};
use std::collections::BTreeMap;

/// The drain's side of [`SyncMetrics`]: `None` in [`SyncMetrics::new`] without a cloud.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DrainGauges {
    pub circuit: CircuitState,
    /// Open connections now.
    pub pool_size: u32,
    /// The pool's cap.
    pub pool_max: u32,
    /// Mean share of the cap in use recently (0.0–1.0).
    pub pool_load: f64,
}

/// A snapshot of the figures the metrics endpoint exports, for applications that want
/// them without scraping.
#[derive(Debug, Clone, PartialEq)]
pub struct SyncMetrics {
    /// Seconds since the store was opened.
    pub uptime_secs: f64,
    pub cache_hits: u64,
    pub cache_misses: u64,
    /// Hits over reads answered so far (0 before any read).
    pub cache_hit_rate: f64,
    pub cache_entries: usize,
    /// Outbox entries pending or in flight, per priority.
    pub queue: BTreeMap<Priority, u64>,
    pub failed: u64,
    /// Entries the cloud acknowledged (kept as history), and when the last one was.
    pub synced_total: u64,
    pub last_sync_ms: Option<u64>,
    /// `None` without a cloud.
    pub circuit: Option<CircuitState>,
    pub pool_size: u32,
    pub pool_max: u32,
    pub pool_load: f64,
}

impl SyncMetrics {
    /// The snapshot of these figures.
    pub fn new(
        cache: &HotCacheStats,
        outbox: &OutboxStats,
        drain: Option<DrainGauges>,
        uptime_secs: f64,
    ) -> Self {
        let reads = cache.hits + cache.misses;
        Self {
            uptime_secs,
            cache_hits: cache.hits,
            cache_misses: cache.misses,
            cache_hit_rate: if reads == 0 {
                0.0
            } else {
                cache.hits as f64 / reads as f64
            },
            cache_entries: cache.entries,
            queue: outbox.by_priority.clone(),
            failed: outbox.failed,
            synced_total: outbox.done,
            last_sync_ms: outbox.last_shipped_ms,
            circuit: drain.map(|d| d.circuit),
            pool_size: drain.map_or(0, |d| d.pool_size),
            pool_max: drain.map_or(0, |d| d.pool_max),
            pool_load: drain.map_or(0.0, |d| d.pool_load),
        }
    }

    /// Sets every gauge of the catalogue from this snapshot (through the `metrics`
    /// facade: a no-op until an application installs a recorder).
    pub fn publish(&self) {
        for priority in Priority::ALL {
            let depth = self.queue.get(&priority).copied().unwrap_or(0);
            metrics::gauge!(catalogue::QUEUE_SIZE, "priority" => priority.as_str())
                .set(depth as f64);
        }
        metrics::gauge!(catalogue::QUEUE_FAILED).set(self.failed as f64);
        metrics::gauge!(catalogue::CACHE_SIZE).set(self.cache_entries as f64);
        metrics::gauge!(catalogue::UPTIME).set(self.uptime_secs);
        if let Some(circuit) = self.circuit {
            metrics::gauge!(catalogue::CIRCUIT_STATE).set(circuit.gauge_value());
            metrics::gauge!(catalogue::POOL_SIZE).set(f64::from(self.pool_size));
            metrics::gauge!(catalogue::POOL_LOAD).set(self.pool_load);
        }
    }
}
