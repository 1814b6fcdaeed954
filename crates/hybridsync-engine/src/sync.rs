//! The write-behind drain: ships the outbox to the cloud in batches, most urgent first,
//! behind a circuit breaker, with per-entry retries and no head-of-line blocking.

use crate::breaker::{BreakerConfig, CircuitBreaker, Transition};
use crate::retry::retry_delay;
use crate::sealing::Sealing;
use hybridsync_core::MutexExt;
use hybridsync_core::{
    CircuitState, Clock, CloudSink, Error, Keyring, LocalStore, OutboxEntry, OutboxOutcome,
    Priority, Record, SyncEvent, SyncOperation, SystemClock,
};
use hybridsync_telemetry::catalogue;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{Notify, broadcast, watch};
use tokio::task::JoinHandle;

/// Drain timing and sizing. Every timing is configurable so tests run fast.
#[derive(Debug, Clone)]
pub struct SyncConfig {
    /// The drain runs at least this often; writes nudge it sooner.
    pub interval: Duration,
    /// Starting batch size; adapts between `min_batch` and `max_batch`.
    pub batch_size: usize,
    pub min_batch: usize,
    pub max_batch: usize,
    /// A batch faster than this grows the next one; slower than twice this shrinks it.
    pub target_batch_latency: Duration,
    /// Failed attempts after which an entry is parked as failed.
    pub max_attempts: u32,
    pub retry_initial: Duration,
    pub retry_max: Duration,
    pub breaker: BreakerConfig,
    /// Health checks run this often while the circuit is not closed.
    pub health_interval: Duration,
    /// Above this pool load only critical and high entries drain.
    pub load_gate: f64,
    /// Most batches on their way to the cloud at once, each on its own pooled
    /// connection: the pool's cap is the only bound (a sink without a pool gets one
    /// lane). Batches are claimed most urgent first; with several lanes a later batch
    /// may land before an earlier one, so one lane gives strict claim-order landing.
    pub lanes: usize,
}

impl Default for SyncConfig {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(30),
            batch_size: 50,
            min_batch: 10,
            max_batch: 1_000,
            target_batch_latency: Duration::from_millis(250),
            max_attempts: 5,
            retry_initial: Duration::from_secs(1),
            retry_max: Duration::from_secs(60),
            breaker: BreakerConfig::default(),
            health_interval: Duration::from_secs(10),
            load_gate: 0.8,
            lanes: 3,
        }
    }
}

/// What one drain pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DrainReport {
    pub claimed: usize,
    pub shipped: usize,
    pub retried: usize,
    pub failed: usize,
    /// The circuit was open, so nothing was tried.
    pub circuit_open: bool,
}

impl std::ops::AddAssign for DrainReport {
    fn add_assign(&mut self, other: Self) {
        self.claimed += other.claimed;
        self.shipped += other.shipped;
        self.retried += other.retried;
        self.failed += other.failed;
        self.circuit_open |= other.circuit_open;
    }
}

/// The drain's state for `status`.
#[derive(Debug, Clone)]
pub struct SyncStatus {
    pub circuit: CircuitState,
    pub last_success: Option<SystemTime>,
    /// When the cloud last answered: a health check or an acknowledged batch.
    pub last_contact: Option<SystemTime>,
    pub shipped_total: u64,
    pub failed_total: u64,
    pub batch_size: usize,
    /// Open connections and the cap.
    pub pool: (u32, u32),
    pub pool_load: f64,
}

/// Ships a [`LocalStore`]'s outbox to a [`CloudSink`].
pub struct Syncer<S: ?Sized, C: ?Sized> {
    store: Arc<S>,
    sink: Arc<C>,
    config: SyncConfig,
    breaker: Mutex<CircuitBreaker>,
    batch_size: AtomicUsize,
    nudge: Arc<Notify>,
    events: broadcast::Sender<SyncEvent>,
    shipped_total: AtomicU64,
    failed_total: AtomicU64,
    last_success: Mutex<Option<SystemTime>>,
    last_contact: Mutex<Option<SystemTime>>,
    clock: Arc<dyn Clock>,
    /// Serialises drain passes within this process.
    draining: tokio::sync::Mutex<()>,
    /// When this device's last-seen time was last updated in the cloud (clock ms).
    last_touch: Mutex<Option<u64>>,
    /// The name this device registers under on first contact ([`default_device_name`]).
    device_name: String,
    /// The earliest retry scheduled since the last pass began (ms since the epoch;
    /// `u64::MAX`: none), so the background drain wakes for it before its interval.
    next_retry_ms: AtomicU64,
    /// Seals what encrypted collections ship, opens what they pull.
    sealing: Sealing,
}

/// A claimed entry's identity while its record is on the way to the cloud.
#[derive(Debug, Clone, Copy)]
struct Claim {
    id: i64,
    attempts: u32,
}

/// How often a syncing device refreshes its last-seen time in the cloud.
const TOUCH_EVERY: Duration = Duration::from_secs(60);

/// The name a device registers under on first contact: the host name when it is a
/// valid device name, else `device-` and the first 8 hex digits of its id. Renaming
/// (`devices register NAME`) is optional and sticks.
pub fn default_device_name(id: hybridsync_core::DeviceId) -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| hybridsync_core::validate_device_name(name).is_ok())
        .unwrap_or_else(|| format!("device-{}", &id.to_string()[..8]))
}

impl<S: ?Sized, C: ?Sized> std::fmt::Debug for Syncer<S, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Syncer")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn is_retryable(e: &Error) -> bool {
    !matches!(
        e,
        Error::Cloud {
            retryable: false,
            ..
        }
    )
}

impl<S: LocalStore + ?Sized, C: CloudSink + ?Sized> Syncer<S, C> {
    /// A syncer; `nudge` is notified by writes (see `Engine::write_nudge`).
    pub fn new(store: Arc<S>, sink: Arc<C>, config: SyncConfig, nudge: Arc<Notify>) -> Self {
        let (events, _) = broadcast::channel(1024);
        Self {
            device_name: default_device_name(store.device_id()),
            store,
            sink,
            batch_size: AtomicUsize::new(
                config
                    .batch_size
                    .clamp(config.min_batch.max(1), config.max_batch.max(1)),
            ),
            breaker: Mutex::new(CircuitBreaker::new(config.breaker)),
            config,
            nudge,
            events,
            shipped_total: AtomicU64::new(0),
            failed_total: AtomicU64::new(0),
            last_success: Mutex::new(None),
            last_contact: Mutex::new(None),
            clock: Arc::new(SystemClock),
            draining: tokio::sync::Mutex::new(()),
            last_touch: Mutex::new(None),
            next_retry_ms: AtomicU64::new(u64::MAX),
            sealing: Sealing::default(),
        }
    }

    /// Seals encrypted collections' records with `keyring` before they ship, and
    /// opens them when they are pulled. Without a keyring, an encrypted collection's
    /// changes are parked (typed [`Error::NoEncryptionKey`]) and its pulls refused.
    pub fn with_keyring(mut self, keyring: Option<Keyring>) -> Self {
        self.sealing = Sealing::new(keyring);
        self
    }

    pub(crate) fn sealing(&self) -> &Sealing {
        &self.sealing
    }

    /// Ships `records` as one batch, sealing those of encrypted collections first;
    /// the first that cannot be sealed fails it all, before anything is sent.
    pub(crate) async fn upload(&self, records: Vec<Record>) -> Result<(), Error> {
        let sealed = self
            .sealing
            .seal(&*self.store, self.sink.tenant(), records)
            .await
            .into_iter()
            .collect::<Result<Vec<_>, _>>()
            .map_err(|(_, e)| e)?;
        self.sink.upsert_batch(&sealed).await
    }

    /// Reads time from `clock` instead of the system clock: retry schedules, the
    /// breaker's open period and last-seen refreshes all follow it, so a test can step
    /// time instead of sleeping.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// The clock this syncer (and the replicator over it) reads.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// The event stream.
    pub fn subscribe(&self) -> broadcast::Receiver<SyncEvent> {
        self.events.subscribe()
    }

    /// The sink underneath.
    pub fn sink(&self) -> &Arc<C> {
        &self.sink
    }

    pub(crate) fn emit(&self, event: SyncEvent) {
        let _ = self.events.send(event);
    }

    fn breaker(&self) -> std::sync::MutexGuard<'_, CircuitBreaker> {
        self.breaker.lock_or_recover()
    }

    fn transitioned(&self, transition: Option<Transition>) {
        if let Some((from, to)) = transition {
            tracing::warn!(?from, ?to, "cloud circuit changed state");
            metrics::gauge!(catalogue::CIRCUIT_STATE).set(to.gauge_value());
            self.emit(SyncEvent::CircuitStateChanged { from, to });
            if to != CircuitState::Open {
                // Recovery: drain the backlog at once rather than at the next interval
                // (half-open, the drain's batches are the probes that close it).
                self.nudge.notify_one();
            }
        }
    }

    /// The drain's state now.
    pub fn status(&self) -> SyncStatus {
        let pool = self.sink.pool_size();
        SyncStatus {
            circuit: self.breaker().state(),
            last_success: *self.last_success.lock_or_recover(),
            last_contact: *self.last_contact.lock_or_recover(),
            shipped_total: self.shipped_total.load(Ordering::Relaxed),
            failed_total: self.failed_total.load(Ordering::Relaxed),
            batch_size: self.batch_size.load(Ordering::Relaxed),
            pool,
            pool_load: self.sink.load(),
        }
    }

    /// One pass: each lane claims a batch due now, ships it and settles every entry.
    pub async fn drain_once(&self) -> crate::Result<DrainReport> {
        Ok(self.drain_pass(self.now_ms(), false).await?)
    }

    /// Ships what is due at `due_ms` through up to [`SyncConfig::lanes`] lanes at once
    /// (never more than the pool's cap; a sink without a pool gets one). Each lane
    /// claims a batch, ships it and settles it; with `until_empty` it then claims the
    /// next, so the cloud always has a batch per lane to work on while the outbox holds
    /// due entries. A lane stops at the first batch that met trouble (retried or parked
    /// entries) or when the circuit opens.
    async fn drain_pass(&self, due_ms: u64, until_empty: bool) -> Result<DrainReport, Error> {
        let _guard = self.draining.lock().await;
        let (allowed, transition) = self.breaker().allow(self.now_ms());
        self.transitioned(transition);
        if !allowed {
            return Ok(DrainReport {
                circuit_open: true,
                ..DrainReport::default()
            });
        }
        metrics::gauge!(catalogue::POOL_LOAD).set(self.sink.load());
        metrics::gauge!(catalogue::POOL_SIZE).set(f64::from(self.sink.pool_size().0));
        // One lane claims first; the others start only if that claim was a full batch
        // (a backlog). A write or two (the usual nudge) ships at once, without lanes
        // that would find nothing contending for the outbox on the way.
        let batch = self.batch_size.load(Ordering::Relaxed);
        let first = self.store.claim_outbox(batch, due_ms, self.gate()).await?;
        if first.is_empty() {
            return Ok(DrainReport::default());
        }
        let lanes = if first.len() >= batch {
            self.lanes()
        } else {
            1
        };
        let lane = |mut claimed: Option<Vec<OutboxEntry>>| async move {
            let mut report = DrainReport::default();
            loop {
                let entries = match claimed.take() {
                    Some(entries) => entries,
                    None => {
                        let batch = self.batch_size.load(Ordering::Relaxed);
                        self.store.claim_outbox(batch, due_ms, self.gate()).await?
                    }
                };
                if entries.is_empty() {
                    return Ok(report);
                }
                report.claimed += entries.len();
                let (settled, shipped) = self.ship_lane(entries).await;
                let trouble = shipped.retried > 0 || shipped.failed > 0;
                report += shipped;
                settled?;
                if !until_empty || trouble {
                    return Ok::<_, Error>(report);
                }
                let (allowed, transition) = self.breaker().allow(self.now_ms());
                self.transitioned(transition);
                if !allowed {
                    return Ok(report);
                }
            }
        };
        let results = futures_util::future::join_all(
            std::iter::once(lane(Some(first))).chain((1..lanes).map(|_| lane(None))),
        )
        .await;
        let mut report = DrainReport::default();
        let mut settled = Ok(());
        for result in results {
            match result {
                Ok(lane) => report += lane,
                Err(e) => settled = Err(e),
            }
        }
        self.shipped_total
            .fetch_add(report.shipped as u64, Ordering::Relaxed);
        self.failed_total
            .fetch_add(report.failed as u64, Ordering::Relaxed);
        settled?;
        if report.shipped > 0 {
            self.touch_if_due().await;
        }
        Ok(report)
    }

    /// How many lanes a pass runs: as the config asks, at most one per connection the
    /// pool may open, at least one.
    fn lanes(&self) -> usize {
        let cap = self.sink.pool_size().1 as usize;
        self.config.lanes.min(cap).max(1)
    }

    /// The least urgent class a claim may take now: only critical and high while the
    /// pool has been busy recently and still is. The drain's own lanes are counted in
    /// neither figure's favour: passes are serialised, so at a pass's start what keeps
    /// the pool busy is someone else's work, and a lane's own shipment ends before it
    /// claims again.
    fn gate(&self) -> Priority {
        let load = self.sink.load();
        if load > self.config.load_gate && self.sink.busy_now() > self.config.load_gate {
            Priority::High
        } else {
            Priority::Deferred
        }
    }

    /// Refreshes this device's last-seen time after a successful sync, at most once a
    /// minute, registering it under its default name on first contact; a failure here
    /// never fails the drain or the sync.
    pub(crate) async fn touch_if_due(&self) {
        {
            let now = self.now_ms();
            let mut last = self.last_touch.lock_or_recover();
            if last.is_some_and(|at| now.saturating_sub(at) < TOUCH_EVERY.as_millis() as u64) {
                return;
            }
            *last = Some(now);
        }
        if let Err(e) = self
            .sink
            .touch_device(self.store.device_id(), &self.device_name)
            .await
        {
            tracing::debug!(error = %e, "could not refresh this device's last-seen time");
        }
    }

    /// Ships one lane's entries and settles their outcomes in the outbox at once, while
    /// the other lanes may still be shipping.
    async fn ship_lane(&self, entries: Vec<OutboxEntry>) -> (Result<(), Error>, DrainReport) {
        let mut outcomes = Vec::new();
        let mut report = DrainReport::default();
        self.ship(entries, &mut outcomes, &mut report).await;
        (self.store.settle_outbox(outcomes).await, report)
    }

    /// Ships `entries`; on a permanent refusal, splits the batch to find the entries
    /// at fault, so one poisonous record is parked and the rest still ship.
    async fn ship(
        &self,
        entries: Vec<OutboxEntry>,
        outcomes: &mut Vec<(i64, OutboxOutcome)>,
        report: &mut DrainReport,
    ) {
        // The records travel to the sink as they are (no copies; sealed if their
        // collection is encrypted); each keeps its entry's id and attempts at the same
        // index. One that cannot be sealed is parked at once.
        let (claims, records): (Vec<Claim>, Vec<Record>) = entries
            .into_iter()
            .map(|e| {
                (
                    Claim {
                        id: e.id,
                        attempts: e.attempts,
                    },
                    e.record,
                )
            })
            .unzip();
        let sealed = self
            .sealing
            .seal(&*self.store, self.sink.tenant(), records)
            .await;
        let (claims, records): (Vec<Claim>, Vec<Record>) = claims
            .into_iter()
            .zip(sealed)
            .filter_map(|(claim, sealed)| match sealed {
                Ok(record) => Some((claim, record)),
                Err((record, e)) => {
                    tracing::error!(collection = %record.collection, key = %record.key, error = %e, "a change could not be sealed; parked as failed");
                    self.park(claim, &record, &e, outcomes, report);
                    None
                }
            })
            .unzip();
        if records.is_empty() {
            return;
        }
        let mut stack = vec![(claims, records)];
        while let Some((claims, records)) = stack.pop() {
            let started = Instant::now();
            let result = self.sink.upsert_batch(&records).await;
            let elapsed = started.elapsed();
            match result {
                Ok(()) => {
                    hybridsync_core::crash_point("after_server_commit");
                    metrics::histogram!(catalogue::SYNC_LATENCY).record(elapsed.as_secs_f64());
                    metrics::counter!(catalogue::SYNCS, "status" => "ok").increment(1);
                    metrics::counter!(catalogue::RECORDS_SYNCED).increment(records.len() as u64);
                    let transition = self.breaker().on_success(self.now_ms());
                    self.transitioned(transition);
                    self.adapt_batch(records.len(), elapsed);
                    let now = Some(SystemTime::UNIX_EPOCH + Duration::from_millis(self.now_ms()));
                    *self.last_success.lock_or_recover() = now;
                    *self.last_contact.lock_or_recover() = now;
                    report.shipped += records.len();
                    // Only built for someone listening: a key and collection copy each.
                    let listened = self.events.receiver_count() > 0;
                    for (claim, record) in claims.into_iter().zip(records) {
                        if listened {
                            self.emit(SyncEvent::RecordSynced {
                                collection: record.collection,
                                key: record.key,
                                version: record.version,
                            });
                        }
                        outcomes.push((claim.id, OutboxOutcome::Shipped));
                    }
                }
                Err(e) if is_retryable(&e) => {
                    metrics::counter!(catalogue::SYNCS, "status" => "retry").increment(1);
                    tracing::warn!(error = %e, entries = records.len(), "cloud write failed; will retry");
                    let transition = self.breaker().on_failure(self.now_ms());
                    self.transitioned(transition);
                    self.shrink_batch();
                    let rest = stack.drain(..).flat_map(|(c, r)| c.into_iter().zip(r));
                    for (claim, record) in claims.into_iter().zip(records).chain(rest) {
                        outcomes.push(self.retry_or_park(claim, &record, &e.to_string(), report));
                    }
                }
                Err(e) if records.len() > 1 => {
                    metrics::counter!(catalogue::SYNCS, "status" => "rejected").increment(1);
                    let (mut claims, mut records) = (claims, records);
                    let half = records.len() / 2;
                    let second = (claims.split_off(half), records.split_off(half));
                    stack.push(second);
                    stack.push((claims, records));
                    tracing::debug!(error = %e, "batch refused; splitting it to isolate the record at fault");
                }
                Err(e) => {
                    metrics::counter!(catalogue::SYNCS, "status" => "rejected").increment(1);
                    let (claim, record) = (claims[0], &records[0]);
                    tracing::error!(collection = %record.collection, key = %record.key, error = %e, "cloud refused a record; parked as failed");
                    self.park(claim, record, &e, outcomes, report);
                }
            }
        }
    }

    /// Parks a claimed entry as failed for good: `error` will not go away by retrying.
    fn park(
        &self,
        claim: Claim,
        record: &Record,
        error: &Error,
        outcomes: &mut Vec<(i64, OutboxOutcome)>,
        report: &mut DrainReport,
    ) {
        self.emit(SyncEvent::RecordFailed {
            collection: record.collection.clone(),
            key: record.key.clone(),
            error: error.to_string(),
        });
        report.failed += 1;
        outcomes.push((
            claim.id,
            OutboxOutcome::Failed {
                error: error.to_string(),
            },
        ));
    }

    fn retry_or_park(
        &self,
        claim: Claim,
        record: &Record,
        error: &str,
        report: &mut DrainReport,
    ) -> (i64, OutboxOutcome) {
        let attempt = claim.attempts + 1;
        if attempt >= self.config.max_attempts {
            report.failed += 1;
            self.emit(SyncEvent::RecordFailed {
                collection: record.collection.clone(),
                key: record.key.clone(),
                error: error.to_owned(),
            });
            return (
                claim.id,
                OutboxOutcome::Failed {
                    error: format!("gave up after {attempt} attempts: {error}"),
                },
            );
        }
        report.retried += 1;
        let delay = retry_delay(attempt, self.config.retry_initial, self.config.retry_max);
        let next_attempt_ms = self.now_ms() + delay.as_millis() as u64;
        self.next_retry_ms
            .fetch_min(next_attempt_ms, Ordering::Relaxed);
        (
            claim.id,
            OutboxOutcome::Retry {
                error: error.to_owned(),
                next_attempt_ms,
            },
        )
    }

    fn adapt_batch(&self, shipped: usize, elapsed: Duration) {
        let current = self.batch_size.load(Ordering::Relaxed);
        let next = if elapsed < self.config.target_batch_latency && shipped >= current {
            current.saturating_mul(2)
        } else if elapsed > self.config.target_batch_latency * 2 {
            current / 2
        } else {
            current
        };
        self.batch_size.store(
            next.clamp(self.config.min_batch.max(1), self.config.max_batch.max(1)),
            Ordering::Relaxed,
        );
    }

    fn shrink_batch(&self) {
        let current = self.batch_size.load(Ordering::Relaxed);
        self.batch_size.store(
            (current / 2).max(self.config.min_batch.max(1)),
            Ordering::Relaxed,
        );
    }

    /// Drains until nothing due is left, the circuit opens, or a pass makes no progress.
    pub async fn drain_until_idle(&self) -> crate::Result<DrainReport> {
        self.next_retry_ms.store(u64::MAX, Ordering::Relaxed);
        let mut total = DrainReport::default();
        loop {
            let report = self.drain_pass(self.now_ms(), true).await?;
            let done = report.claimed == 0 || report.circuit_open || report.retried > 0;
            total += report;
            if done {
                return Ok(total);
            }
        }
    }

    /// Ships everything pending or in flight now, ignoring retry schedules, until the
    /// outbox holds nothing but failed entries or `timeout` passes. Returns how many
    /// entries are still pending or in flight (0 on success).
    pub async fn flush(&self, timeout: Duration) -> crate::Result<u64> {
        let deadline = Instant::now() + timeout;
        // Nothing to ship (every auto-sync round of a device that only reads): one read
        // of the queue's depths (two index ranges, not a count of the whole outbox),
        // rather than a pass through the writer's queue.
        if self.queued().await? == 0 {
            return Ok(0);
        }
        self.store.requeue_in_flight().await?;
        let mut last_probe: Option<Instant> = None;
        let probe_every = self.config.health_interval.min(Duration::from_secs(1));
        loop {
            let report = self.drain_pass(u64::MAX, true).await?;
            let left = self.queued().await?;
            if left == 0 || Instant::now() >= deadline {
                return Ok(left);
            }
            if report.claimed == 0 || report.retried > 0 || report.circuit_open {
                // The cloud is unwell: wait a little, checking its health now and then.
                if last_probe.is_none_or(|at| at.elapsed() >= probe_every) {
                    last_probe = Some(Instant::now());
                    self.probe_if_due().await;
                }
                tokio::time::sleep(Duration::from_millis(100).min(deadline - Instant::now())).await;
            }
        }
    }

    /// Entries pending or in flight.
    async fn queued(&self) -> crate::Result<u64> {
        Ok(self.store.queue_depths().await?.values().sum())
    }

    /// A health check while the circuit is not closed. A healthy answer ends an open
    /// period early (half-open, and the drain is nudged to probe with the backlog).
    async fn probe_if_due(&self) {
        let (_, transition) = {
            let mut breaker = self.breaker();
            if breaker.state() == CircuitState::Closed {
                return;
            }
            breaker.allow(self.now_ms())
        };
        self.transitioned(transition);
        let healthy = self.sink.health_check().await.is_ok();
        if healthy {
            *self.last_contact.lock_or_recover() =
                Some(SystemTime::UNIX_EPOCH + Duration::from_millis(self.now_ms()));
        }
        let transition = self.breaker().on_health(healthy, self.now_ms());
        self.transitioned(transition);
    }

    /// Starts the background drain and health loops.
    pub fn start(self: &Arc<Self>) -> SyncHandle {
        let (stop, stopped) = watch::channel(false);
        let drainer = {
            let this = self.clone();
            let mut stopped = stopped.clone();
            tokio::spawn(async move {
                loop {
                    // The interval, or sooner when a retry falls due before it.
                    let retry_in = this
                        .next_retry_ms
                        .load(Ordering::Relaxed)
                        .saturating_sub(this.now_ms());
                    let wait = this.config.interval.min(Duration::from_millis(retry_in));
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = this.nudge.notified() => {}
                        _ = stopped.changed() => break,
                    }
                    // Shutdown cuts a long drain short: entries it had in flight stay
                    // in the outbox and return to pending (at the next flush or open);
                    // the upsert is idempotent, so shipping them again is safe.
                    let drained = tokio::select! {
                        drained = this.drain_until_idle() => drained,
                        _ = stopped.changed() => break,
                    };
                    if let Err(e) = drained {
                        tracing::warn!(error = %e, "drain pass failed");
                        this.emit(SyncEvent::SyncError {
                            operation: SyncOperation::Drain,
                            message: e.to_string(),
                        });
                    }
                }
            })
        };
        let health = {
            let this = self.clone();
            let mut stopped = stopped;
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(this.config.health_interval) => this.probe_if_due().await,
                        _ = stopped.changed() => break,
                    }
                }
            })
        };
        SyncHandle {
            stop,
            tasks: vec![drainer, health],
        }
    }
}

/// Running background loops; stop them with [`SyncHandle::shutdown`].
#[derive(Debug)]
pub struct SyncHandle {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl SyncHandle {
    pub(crate) fn new(stop: watch::Sender<bool>, tasks: Vec<JoinHandle<()>>) -> Self {
        Self { stop, tasks }
    }

    /// Stops the loops and waits for them. A drain under way stops at once: what it
    /// had in flight stays in the outbox ([`Syncer::flush`] and the next open return it
    /// to pending). An auto-sync round finishes first.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}
