//! [`SyncMetrics`]: the figures the metrics endpoint exports, as one value, and the one
//! place that sets the gauges from them.

use crate::catalogue;
use hybridsync_core::{CircuitState, HotCacheStats, OutboxStats, PoolStats, Priority};
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
    /// The pool's and statements' counters.
    pub pool_stats: PoolStats,
    /// When the cloud last answered (a health check or an acknowledged batch), ms
    /// since the epoch.
    pub last_contact_ms: Option<u64>,
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
    pub pool_stats: PoolStats,
    /// Seconds since the last acknowledged batch, and since the cloud last answered.
    pub last_sync_age_secs: Option<f64>,
    pub health_check_age_secs: Option<f64>,
}

impl SyncMetrics {
    /// The snapshot of these figures, at `now_ms` (ms since the epoch).
    pub fn new(
        cache: &HotCacheStats,
        outbox: &OutboxStats,
        drain: Option<DrainGauges>,
        uptime_secs: f64,
        now_ms: u64,
    ) -> Self {
        let age = |at: Option<u64>| at.map(|at| now_ms.saturating_sub(at) as f64 / 1000.0);
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
            pool_stats: drain.map(|d| d.pool_stats).unwrap_or_default(),
            last_sync_age_secs: age(outbox.last_shipped_ms),
            health_check_age_secs: age(drain.and_then(|d| d.last_contact_ms)),
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
        if let Some(age) = self.last_sync_age_secs {
            metrics::gauge!(catalogue::LAST_SYNC_AGE).set(age);
        }
        if let Some(circuit) = self.circuit {
            metrics::gauge!(catalogue::CIRCUIT_STATE).set(circuit.gauge_value());
            metrics::gauge!(catalogue::POOL_SIZE).set(f64::from(self.pool_size));
            metrics::gauge!(catalogue::POOL_MAX).set(f64::from(self.pool_max));
            metrics::gauge!(catalogue::POOL_LOAD).set(self.pool_load);
            let stats = &self.pool_stats;
            metrics::counter!(catalogue::POOL_ACQUIRES).absolute(stats.acquires);
            metrics::counter!(catalogue::POOL_ACQUIRE_ERRORS).absolute(stats.acquire_errors);
            if stats.acquires > 0 {
                metrics::gauge!(catalogue::POOL_ACQUIRE_WAIT)
                    .set(stats.acquire_wait_secs / stats.acquires as f64);
            }
            metrics::counter!(catalogue::QUERIES).absolute(stats.queries);
            if let Some(age) = self.health_check_age_secs {
                metrics::gauge!(catalogue::HEALTH_CHECK_AGE).set(age);
            }
        }
    }
}
