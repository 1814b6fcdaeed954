//! [`Runtime`]: the one owner of the engine's lifecycle. It holds the local engine and,
//! with a cloud, the sink, the [`Syncer`] and the [`Replicator`]; it starts the
//! background loops (gauges, warming, drain and health, auto-sync) and shuts everything down
//! in one fixed order, once.

use crate::{Engine, Error, Replicator, Result, SyncConfig, SyncHandle, SyncStatus, Syncer};
use hybridsync_core::{
    Clock, CloudSink, DeviceId, DeviceInfo, Keyring, LocalStore, Strategy, SystemClock, VectorCache,
};
use hybridsync_telemetry::{DrainGauges, SyncMetrics};
use std::sync::{Arc, Weak};
use std::time::Duration;

/// How a [`Runtime`] runs.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Drain timing and sizing (with a cloud).
    pub sync: SyncConfig,
    /// The one clock of the syncer, the replicator and their schedules.
    pub clock: Arc<dyn Clock>,
    /// How often the gauges (queue depth, cache size, circuit, pool, uptime) are set
    /// from a fresh [`SyncMetrics`], so a scrape sees current values.
    pub gauge_interval: Duration,
    /// The keys that seal encrypted collections on their way to the cloud and open
    /// them on the way back (none: such collections stay local, and pulls of them are
    /// refused with a typed error).
    pub keyring: Option<Keyring>,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            sync: SyncConfig::default(),
            clock: Arc::new(SystemClock),
            gauge_interval: Duration::from_secs(1),
            keyring: None,
        }
    }
}

/// The cloud half: present when the runtime has a sink.
struct Cloud<S: ?Sized, V: ?Sized, C: ?Sized> {
    sink: Arc<C>,
    syncer: Arc<Syncer<S, C>>,
    replicator: Arc<Replicator<S, V, C>>,
}

#[derive(Debug, Default)]
struct Loops {
    gauges: Option<SyncHandle>,
    warming: Option<SyncHandle>,
    drain: Option<SyncHandle>,
    auto_sync: Option<SyncHandle>,
    /// Set by the first shutdown: what it left queued. Later shutdowns return it.
    shut_down: Option<u64>,
}

/// Owns an [`Engine`] and, optionally, its cloud: the loops that run beside them and the
/// order they stop in. Handles given to users (the `hybridsync` facade) are thin
/// wrappers around one shared runtime.
pub struct Runtime<S: ?Sized, V: ?Sized, C: ?Sized> {
    engine: Arc<Engine<S, V>>,
    cloud: Option<Cloud<S, V, C>>,
    config: RuntimeConfig,
    loops: tokio::sync::Mutex<Loops>,
    /// Set when shutdown begins: nothing is served after it.
    closing: std::sync::atomic::AtomicBool,
    /// The gauge loop's latest snapshot, for publishers that must never wait on the
    /// store (the newest replaces one not yet read).
    snapshots: tokio::sync::watch::Sender<Option<SyncMetrics>>,
}

impl<S: ?Sized, V: ?Sized, C: ?Sized> std::fmt::Debug for Runtime<S, V, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("engine", &self.engine)
            .field("cloud", &self.cloud.as_ref().map(|c| &c.syncer))
            .finish_non_exhaustive()
    }
}

impl<S, V, C> Runtime<S, V, C>
where
    S: LocalStore + ?Sized,
    V: VectorCache + ?Sized,
    C: CloudSink + ?Sized,
{
    /// A runtime over `engine`, syncing to `sink` when there is one. Starts the gauge
    /// loop at once (call it inside a Tokio runtime); nothing here waits on the network.
    pub fn new(engine: Arc<Engine<S, V>>, sink: Option<Arc<C>>, config: RuntimeConfig) -> Self {
        let cloud = sink.map(|sink| {
            let syncer = Arc::new(
                Syncer::new(
                    engine.store().clone(),
                    sink.clone(),
                    config.sync.clone(),
                    engine.write_nudge(),
                )
                .with_clock(config.clock.clone())
                .with_keyring(config.keyring.clone()),
            );
            let replicator = Arc::new(Replicator::new(engine.clone(), syncer.clone()));
            Cloud {
                sink,
                syncer,
                replicator,
            }
        });
        let runtime = Self {
            engine,
            cloud,
            config,
            loops: tokio::sync::Mutex::default(),
            closing: std::sync::atomic::AtomicBool::new(false),
            snapshots: tokio::sync::watch::Sender::new(None),
        };
        let gauges = runtime.start_gauges();
        let warming = runtime.start_warming();
        let mut loops = runtime.loops.try_lock().expect("new runtime");
        loops.gauges = Some(gauges);
        loops.warming = warming;
        drop(loops);
        runtime
    }

    /// Whether shutdown has begun (or finished): the store no longer serves.
    pub fn is_shut_down(&self) -> bool {
        self.closing.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The local engine.
    pub fn engine(&self) -> &Arc<Engine<S, V>> {
        &self.engine
    }

    fn cloud(&self) -> Result<&Cloud<S, V, C>> {
        self.cloud.as_ref().ok_or(Error::NoCloud)
    }

    /// Whether the runtime has a cloud.
    pub fn has_cloud(&self) -> bool {
        self.cloud.is_some()
    }

    /// The drain ([`Error::NoCloud`] without a cloud).
    pub fn syncer(&self) -> Result<&Arc<Syncer<S, C>>> {
        Ok(&self.cloud()?.syncer)
    }

    /// Seed, hydrate and sync ([`Error::NoCloud`] without a cloud).
    pub fn replicator(&self) -> Result<&Arc<Replicator<S, V, C>>> {
        Ok(&self.cloud()?.replicator)
    }

    /// The drain's state, with a cloud.
    pub fn sync_status(&self) -> Option<SyncStatus> {
        self.cloud.as_ref().map(|c| c.syncer.status())
    }

    /// The figures the metrics endpoint exports, as a value.
    pub async fn metrics(&self) -> Result<SyncMetrics> {
        metrics_of(&self.engine, self.cloud.as_ref().map(|c| &*c.syncer)).await
    }

    /// The gauge loop's snapshots, every `gauge_interval`: a receiver sees the newest
    /// (it never holds the loop back). The channel closes when the gauge loop ends.
    pub fn watch_metrics(&self) -> tokio::sync::watch::Receiver<Option<SyncMetrics>> {
        self.snapshots.subscribe()
    }

    /// Sets the gauges every `gauge_interval` (and once now) until shutdown or until
    /// the engine is dropped: the loop holds only weak references.
    fn start_gauges(&self) -> SyncHandle {
        let snapshots = self.snapshots.clone();
        let syncer: Option<Weak<Syncer<S, C>>> =
            self.cloud.as_ref().map(|c| Arc::downgrade(&c.syncer));
        let every = self.config.gauge_interval.max(Duration::from_millis(10));
        every_tick(&self.engine, every, move |engine| {
            let (snapshots, syncer) = (snapshots.clone(), syncer.clone());
            async move {
                let syncer = syncer.as_ref().and_then(Weak::upgrade);
                match metrics_of(&engine, syncer.as_deref()).await {
                    Ok(snapshot) => {
                        snapshot.publish();
                        snapshots.send_replace(Some(snapshot));
                    }
                    Err(e) => tracing::debug!(error = %e, "gauge refresh failed"),
                }
            }
        })
    }

    /// With warming enabled, digests the recorded reads every
    /// [`WarmingConfig::DIGEST_EVERY`](crate::WarmingConfig::DIGEST_EVERY) (or every
    /// interval, when shorter) and runs a warming round every interval, until shutdown
    /// or until the engine is dropped.
    fn start_warming(&self) -> Option<SyncHandle> {
        let interval = self
            .engine
            .warming()?
            .interval
            .max(Duration::from_millis(10));
        let mut last_round = std::time::Instant::now();
        let every = interval.min(crate::WarmingConfig::DIGEST_EVERY);
        Some(every_tick(&self.engine, every, move |engine| {
            let round = last_round.elapsed() >= interval;
            if round {
                last_round = std::time::Instant::now();
            }
            async move {
                if !round {
                    engine.digest_reads();
                } else if let Err(e) = engine.warm().await {
                    tracing::debug!(error = %e, "warming round failed");
                }
            }
        }))
    }

    /// Starts the background drain and health loops (idempotent).
    pub async fn start_sync(&self) -> Result<()> {
        let syncer = self.syncer()?;
        let mut loops = self.loops.lock().await;
        if loops.drain.is_none() && loops.shut_down.is_none() {
            loops.drain = Some(syncer.start());
        }
        Ok(())
    }

    /// Starts syncing every collection both ways every `interval`, replacing a running
    /// auto-sync.
    pub async fn start_auto_sync(&self, interval: Duration, strategy: Strategy) -> Result<()> {
        let replicator = self.replicator()?;
        let mut loops = self.loops.lock().await;
        if loops.shut_down.is_some() {
            return Ok(());
        }
        let old = loops
            .auto_sync
            .replace(replicator.start(interval, strategy));
        drop(loops);
        if let Some(old) = old {
            old.shutdown().await;
        }
        Ok(())
    }

    /// Stops auto-sync after its current round; a no-op when it is not running.
    pub async fn stop_auto_sync(&self) {
        let handle = self.loops.lock().await.auto_sync.take();
        if let Some(handle) = handle {
            handle.shutdown().await;
        }
    }

    /// Runs a migration ([`Engine::migrate`]); with a cloud and `options.cloud_check`,
    /// then ships the outbox (within that timeout) and compares the collection with
    /// the cloud through the consistency checker.
    pub async fn migrate(
        &self,
        job: crate::MigrationJob,
        options: &crate::RunOptions,
        progress: &(dyn Fn(&crate::MigrateProgress) + Send + Sync),
    ) -> Result<crate::MigrationReport> {
        let mut report = self.engine.migrate(job, options, progress).await?;
        if let (Some(timeout), true) = (options.cloud_check, self.has_cloud()) {
            report.unshipped = Some(self.flush(timeout).await?);
            let check = crate::VerifyOptions {
                collections: vec![report.collection.clone()],
                ..crate::VerifyOptions::default()
            };
            report.cloud = Some(self.replicator()?.verify(&check).await?);
        }
        Ok(report)
    }

    /// Ships everything pending now; returns how many entries are still pending or in
    /// flight when `timeout` passes (0 when all reached the cloud).
    pub async fn flush(&self, timeout: Duration) -> Result<u64> {
        self.syncer()?.flush(timeout).await
    }

    /// Whether the cloud answers a health check within `timeout`; `None` without one.
    pub async fn cloud_reachable(&self, timeout: Duration) -> Option<bool> {
        let sink = &self.cloud.as_ref()?.sink;
        Some(matches!(
            tokio::time::timeout(timeout, sink.health_check()).await,
            Ok(Ok(()))
        ))
    }

    /// Checks that the cloud holds the schema this build expects.
    pub async fn verify_cloud_schema(&self) -> Result<()> {
        Ok(self.cloud()?.sink.verify_schema().await?)
    }

    /// Registers this device in the cloud under `name` (or renames it).
    pub async fn register_device(&self, name: &str) -> Result<()> {
        let id = self.engine.store().device_id();
        Ok(self.cloud()?.sink.register_device(id, name).await?)
    }

    /// Every device of this tenant.
    pub async fn devices(&self) -> Result<Vec<DeviceInfo>> {
        Ok(self.cloud()?.sink.list_devices().await?)
    }

    /// Removes a device from the cloud's list; false when it was not registered.
    pub async fn deregister_device(&self, id: DeviceId) -> Result<bool> {
        Ok(self.cloud()?.sink.deregister_device(id).await?)
    }

    /// Stops the loops, ships what it can within `deadline` (nothing is shipped when it
    /// is zero), returns what is still in flight to pending, closes the sink, saves the
    /// vector indexes and closes the store: in that order, once. Returns how many
    /// entries are still queued for the cloud (0 without one). Later calls do nothing
    /// and return the first call's answer.
    pub async fn shutdown(&self, deadline: Duration) -> Result<u64> {
        self.closing
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let mut loops = self.loops.lock().await;
        if let Some(left) = loops.shut_down {
            return Ok(left);
        }
        for handle in [
            loops.warming.take(),
            loops.auto_sync.take(),
            loops.drain.take(),
            loops.gauges.take(),
        ]
        .into_iter()
        .flatten()
        {
            handle.shutdown().await;
        }
        let store = self.engine.store();
        let mut left = 0;
        if let Some(cloud) = &self.cloud {
            if !deadline.is_zero() {
                if let Err(e) = cloud.syncer.flush(deadline).await {
                    tracing::warn!(error = %e, "final flush failed; the outbox keeps the rest");
                }
            }
            store.requeue_in_flight().await?;
            let stats = store.outbox_stats().await?;
            left = stats.pending + stats.in_flight;
            cloud.sink.close().await;
        }
        if let Err(e) = self.engine.save_indexes().await {
            tracing::warn!(error = %e, "vector index snapshot not saved; the next open builds it");
        }
        store.close().await;
        loops.shut_down = Some(left);
        Ok(left)
    }
}

/// Runs `round` on the engine at every tick of `every` (the first at once; a late tick
/// delays the rest) until the handle stops it or the engine is dropped: between rounds
/// the loop holds the engine only weakly.
fn every_tick<S, V, F, R>(engine: &Arc<Engine<S, V>>, every: Duration, mut round: F) -> SyncHandle
where
    S: LocalStore + ?Sized,
    V: VectorCache + ?Sized,
    F: FnMut(Arc<Engine<S, V>>) -> R + Send + 'static,
    R: std::future::Future<Output = ()> + Send,
{
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let engine = Arc::downgrade(engine);
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stopped.changed() => break,
            }
            let Some(engine) = engine.upgrade() else {
                break;
            };
            round(engine).await;
        }
    });
    SyncHandle::new(stop, vec![task])
}

/// A fresh [`SyncMetrics`] of `engine` and, with a cloud, its drain.
async fn metrics_of<S, V, C>(
    engine: &Engine<S, V>,
    syncer: Option<&Syncer<S, C>>,
) -> Result<SyncMetrics>
where
    S: LocalStore + ?Sized,
    V: VectorCache + ?Sized,
    C: CloudSink + ?Sized,
{
    let outbox = engine.store().outbox_stats().await?;
    let drain = syncer.map(|s| {
        let status = s.status();
        DrainGauges {
            circuit: status.circuit,
            pool_size: status.pool.0,
            pool_max: status.pool.1,
            pool_load: status.pool_load,
            pool_stats: s.sink().pool_stats(),
            last_contact_ms: status.last_contact.and_then(|at| {
                at.duration_since(std::time::SystemTime::UNIX_EPOCH)
                    .ok()
                    .map(|d| d.as_millis() as u64)
            }),
        }
    });
    Ok(SyncMetrics::new(
        &engine.cache_stats(),
        &outbox,
        drain,
        engine.uptime().as_secs_f64(),
        syncer.map_or_else(|| SystemClock.now_ms(), |s| s.clock().now_ms()),
    ))
}
