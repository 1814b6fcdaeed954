//! The metric catalogue: every metric hybridsync records, in one place. Code refers to
//! the constants; docs and dashboards are generated from [`ALL`].

/// What kind of metric an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// One catalogue entry.
#[derive(Debug, Clone, Copy)]
pub struct MetricDef {
    pub name: &'static str,
    pub kind: Kind,
    pub help: &'static str,
    pub labels: &'static [&'static str],
}

macro_rules! catalogue {
    ($($(#[$doc:meta])* $konst:ident = $name:literal, $kind:ident, [$($label:literal),*], $help:literal;)+) => {
        $($(#[$doc])* pub const $konst: &str = $name;)+
        /// Every metric, in catalogue order.
        pub const ALL: &[MetricDef] = &[
            $(MetricDef { name: $name, kind: Kind::$kind, help: $help, labels: &[$($label),*] },)+
        ];
    };
}

catalogue! {
    /// Reads answered by the hot-record cache.
    CACHE_HITS = "hybridsync_cache_hits_total", Counter, [], "Reads answered by the hot-record cache.";
    /// Reads the hot-record cache could not answer.
    CACHE_MISSES = "hybridsync_cache_misses_total", Counter, [], "Reads the hot-record cache could not answer.";
    /// Point-read latency by source (`cache` or `sqlite`).
    READ_LATENCY = "hybridsync_read_latency_seconds", Histogram, ["source"], "Point-read latency by source (cache or sqlite).";
    /// Reads predictive warming expected within its next round, at or above its threshold.
    WARMING_PREDICTIONS = "hybridsync_warming_predictions_total", Counter, [], "Reads predictive warming expected within its next round, at or above its confidence threshold (cached keys included).";
    /// Records warming loaded into the hot cache ahead of a read.
    WARMING_PREFETCHES = "hybridsync_warming_prefetches_total", Counter, [], "Records predictive warming loaded from SQLite into the hot cache ahead of a read.";
    /// Reads served by a record warming loaded.
    WARMING_PREFETCH_HITS = "hybridsync_warming_prefetch_hits_total", Counter, [], "Reads served by a record predictive warming loaded (its first read after the load).";
    /// Prefetch hits per prefetch.
    WARMING_ACCURACY = "hybridsync_warming_accuracy", Gauge, [], "Share of warming's prefetches that a read used (prefetch hits / prefetches).";
    /// Keys with an access history.
    WARMING_TRACKED_KEYS = "hybridsync_warming_tracked_keys", Gauge, [], "Keys whose reads predictive warming is tracking (bounded by cache.warming.max_keys).";
    /// Bytes of warming state.
    WARMING_MEMORY = "hybridsync_warming_memory_bytes", Gauge, [], "Bytes predictive warming holds: its access ring, the per-key histories and key names.";
    /// Latency of a durable local write (records and outbox in one transaction).
    WRITE_LATENCY = "hybridsync_write_latency_seconds", Histogram, [], "Latency of a durable local write (record and outbox entry in one transaction).";
    /// Latency of a vector similarity search.
    SEARCH_LATENCY = "hybridsync_search_latency_seconds", Histogram, [], "Latency of a vector similarity search.";
    /// Outbox entries waiting to reach the cloud, by priority.
    QUEUE_SIZE = "hybridsync_queue_size", Gauge, ["priority"], "Outbox entries pending or in flight, by priority.";
    /// Outbox entries parked as failed.
    QUEUE_FAILED = "hybridsync_queue_failed", Gauge, [], "Outbox entries parked as failed (kept, retryable).";
    /// Records held by the hot-record cache.
    CACHE_SIZE = "hybridsync_cache_size", Gauge, [], "Records held by the hot-record cache.";
    /// Latency of one drained batch reaching the cloud.
    SYNC_LATENCY = "hybridsync_sync_latency_seconds", Histogram, [], "Latency of one outbox batch reaching the cloud.";
    /// Batches drained, by outcome (`ok`, `retry`, `rejected`).
    SYNCS = "hybridsync_syncs_total", Counter, ["status"], "Outbox batches sent to the cloud, by outcome (ok, retry, rejected).";
    /// Records shipped to the cloud (rows pushed).
    RECORDS_SYNCED = "hybridsync_records_synced_total", Counter, [], "Records pushed that the cloud acknowledged (rows pushed).";
    /// Remote rows applied to this store by hydrate and sync (rows pulled).
    ROWS_PULLED = "hybridsync_rows_pulled_total", Counter, [], "Remote rows hydrate and sync applied to this store (rows pulled).";
    /// Conflicts settled while pulling, by the side kept.
    CONFLICTS = "hybridsync_conflicts_total", Counter, ["resolution"], "Conflicts settled while pulling, by resolution (keep_local, keep_remote, merged).";
    /// Seconds since the cloud last acknowledged a batch.
    LAST_SYNC_AGE = "hybridsync_last_sync_age_seconds", Gauge, [], "Seconds since the cloud last acknowledged an outbox batch (absent before the first).";
    /// Seconds since the cloud last answered (a health check or an acknowledged batch).
    HEALTH_CHECK_AGE = "hybridsync_health_check_age_seconds", Gauge, [], "Seconds since the cloud last answered a health check or acknowledged a batch (absent before the first).";
    /// Writes queued at a lower priority than asked, because that priority's queue
    /// was past its soft cap.
    WRITES_DOWNGRADED = "hybridsync_writes_downgraded_total", Counter, ["priority"], "Writes queued below the priority asked for (label) because its queue was past the soft cap.";
    /// Circuit breaker state: 0 closed, 1 half-open, 2 open.
    CIRCUIT_STATE = "hybridsync_circuit_state", Gauge, [], "Circuit breaker state: 0 closed, 1 half-open, 2 open.";
    /// Open cloud connections.
    POOL_SIZE = "hybridsync_connection_pool_size", Gauge, [], "Open cloud connections (never above the cap).";
    /// The pool's connection cap.
    POOL_MAX = "hybridsync_connection_pool_max", Gauge, [], "The cloud pool's connection cap.";
    /// Connections taken from the pool.
    POOL_ACQUIRES = "hybridsync_pool_acquires_total", Counter, [], "Connections taken from the cloud pool (each with its BEGIN).";
    /// Mean wait for a pooled connection.
    POOL_ACQUIRE_WAIT = "hybridsync_pool_acquire_wait_seconds", Gauge, [], "Mean wait for a cloud pool connection and its BEGIN, since the sink was made.";
    /// Pool takes that failed.
    POOL_ACQUIRE_ERRORS = "hybridsync_pool_acquire_errors_total", Counter, [], "Cloud pool takes that failed (timeouts, refused or broken connections).";
    /// Statements sent to the cloud.
    QUERIES = "hybridsync_queries_total", Counter, [], "Statements sent to the cloud, BEGIN and COMMIT included.";
    /// Mean share of the pool cap in use over the last 100 operations.
    POOL_LOAD = "hybridsync_connection_pool_load", Gauge, [], "Mean share of the cloud pool cap in use over the last 100 operations.";
    /// Consistency checks run.
    VERIFY_RUNS = "hybridsync_verify_runs_total", Counter, [], "Consistency checks (verify) run.";
    /// Rows the consistency checker found different, by kind.
    VERIFY_DIFFERENCES = "hybridsync_verify_differences_total", Counter, ["kind"], "Rows a consistency check found different between device and cloud, by kind (missing_remote, missing_local, stale_local, stale_remote, damaged).";
    /// Rows the consistency checker mended.
    VERIFY_REPAIRED = "hybridsync_verify_repaired_total", Counter, [], "Rows a consistency check with repair mended.";
    /// Rows a migration run read, by outcome.
    MIGRATE_ROWS = "hybridsync_migrate_rows_total", Counter, ["outcome"], "Rows migrations handled, by outcome (imported, rejected, skipped).";
    /// Migration runs finished, by final state.
    MIGRATE_RUNS = "hybridsync_migrate_runs_total", Counter, ["state"], "Migration runs that ended, by state (done, failed).";
    /// Snapshots sent to Redis, by outcome (`ok`, `error`).
    REDIS_PUBLISHES = "hybridsync_redis_publishes_total", Counter, ["outcome"], "Snapshots the Redis publisher sent, by outcome (ok, error).";
    /// Seconds since the store was opened.
    UPTIME = "hybridsync_uptime_seconds", Gauge, [], "Seconds since the store was opened.";
}

/// Histogram buckets for latencies: 10 µs to 10 s.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.00001, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0,
    5.0, 10.0,
];

/// Registers every entry's help text with the installed recorder.
pub fn describe_all() {
    for def in ALL {
        match def.kind {
            Kind::Counter => metrics::describe_counter!(def.name, def.help),
            Kind::Gauge => metrics::describe_gauge!(def.name, def.help),
            Kind::Histogram => {
                metrics::describe_histogram!(def.name, metrics::Unit::Seconds, def.help)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_prefixed_and_suffixed_by_kind() {
        let mut names: Vec<_> = ALL.iter().map(|d| d.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), ALL.len(), "duplicate metric names");
        for def in ALL {
            assert!(def.name.starts_with("hybridsync_"), "{}", def.name);
            match def.kind {
                Kind::Counter => assert!(def.name.ends_with("_total"), "{}", def.name),
                Kind::Histogram => assert!(def.name.ends_with("_seconds"), "{}", def.name),
                Kind::Gauge => assert!(!def.name.ends_with("_total"), "{}", def.name),
            }
        }
    }
}
