//! Two-way sync between a device and the cloud: seed (push everything local), hydrate
//! (pull everything remote) and sync (both ways, resolving conflicts), plus auto-sync on
//! an interval. Pulls follow the cloud's change feed from a cursor persisted per
//! collection, so an interrupted run resumes where it stopped.

use crate::{Engine, Error, Result, SyncHandle, Syncer};
use hybridsync_core::{
    ChangeCursor, CloudSink, CollectionName, CollectionSpec, ConflictResolver, HistoryEntry,
    LocalStore, Priority, Strategy, SyncEvent, SyncOperation, VectorCache, WriteRequest,
};
use hybridsync_core::{MutexExt, RwLockExt};
use hybridsync_telemetry::catalogue;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Progress callback: percentage (0–100) and a short message.
pub type Progress<'a> = &'a (dyn Fn(f32, &str) + Send + Sync);

/// A progress callback that ignores progress.
pub fn no_progress(_: f32, _: &str) {}

/// What a seed, hydrate or sync did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SyncReport {
    pub operation: SyncOperation,
    /// Collections visited.
    pub collections: usize,
    /// Records examined: pushed plus every remote row pulled (applied or not).
    pub processed: u64,
    /// Records sent to the cloud.
    pub pushed: u64,
    /// Remote rows that changed the local state.
    pub pulled: u64,
    pub conflicts_detected: u64,
    /// Conflicts whose result was written as a new version (local kept or merged).
    pub conflicts_resolved: u64,
    /// Remote rows refused (stamped too far in the future, or invalid here).
    pub refused: u64,
    /// Local changes the cloud refused for good during the push: parked as failed in
    /// the outbox (see `queue retry-failed`), kept locally.
    pub failed: u64,
    pub duration_ms: u64,
}

impl SyncReport {
    fn new(operation: SyncOperation) -> Self {
        Self {
            operation,
            collections: 0,
            processed: 0,
            pushed: 0,
            pulled: 0,
            conflicts_detected: 0,
            conflicts_resolved: 0,
            refused: 0,
            failed: 0,
            duration_ms: 0,
        }
    }
}

/// Rows per pull or push page.
const PAGE: usize = 1_000;

/// How long a sync waits for its pushes to reach the cloud.
const PUSH_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs seed, hydrate and sync for one device. One operation runs at a time.
pub struct Replicator<S: ?Sized, V: ?Sized, C: ?Sized> {
    engine: Arc<Engine<S, V>>,
    syncer: Arc<Syncer<S, C>>,
    resolvers: RwLock<HashMap<CollectionName, Arc<dyn ConflictResolver>>>,
    running: tokio::sync::Mutex<()>,
    /// The definitions the cloud's catalogue held, identical, at the last sync.
    confirmed: std::sync::Mutex<Vec<CollectionSpec>>,
    /// Where this replicator's last pull of each collection left its cursor.
    cursors: std::sync::Mutex<HashMap<CollectionName, ChangeCursor>>,
}

impl<S: ?Sized, V: ?Sized, C: ?Sized> std::fmt::Debug for Replicator<S, V, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replicator").finish_non_exhaustive()
    }
}

impl<S: LocalStore + ?Sized, V: VectorCache + ?Sized, C: CloudSink + ?Sized> Replicator<S, V, C> {
    /// A replicator over an engine and the syncer that drains its outbox.
    pub fn new(engine: Arc<Engine<S, V>>, syncer: Arc<Syncer<S, C>>) -> Self {
        Self {
            engine,
            syncer,
            resolvers: RwLock::new(HashMap::new()),
            running: tokio::sync::Mutex::new(()),
            confirmed: std::sync::Mutex::new(Vec::new()),
            cursors: std::sync::Mutex::new(HashMap::new()),
        }
    }

    /// The drain this replicator pushes through (and whose event stream it uses).
    pub fn syncer(&self) -> &Arc<Syncer<S, C>> {
        &self.syncer
    }

    /// Settles this collection's conflicts with `resolver` instead of the strategy
    /// passed to [`Self::sync`].
    pub fn set_resolver(&self, collection: CollectionName, resolver: Arc<dyn ConflictResolver>) {
        self.resolvers
            .write_or_recover()
            .insert(collection, resolver);
    }

    fn resolver_for(&self, collection: &CollectionName) -> Option<Arc<dyn ConflictResolver>> {
        self.resolvers.read_or_recover().get(collection).cloned()
    }

    /// Pushes every local record (tombstones included) and the catalogue of the chosen
    /// collections (all when `collections` is empty): a one-way backup.
    pub async fn seed(
        &self,
        collections: &[CollectionName],
        progress: Progress<'_>,
    ) -> Result<SyncReport> {
        self.run(SyncOperation::Seed, progress, async |report| {
            let specs = self.local_specs(collections).await?;
            self.syncer.sink().publish_collections(&specs).await?;
            report.collections = specs.len();
            for (i, spec) in specs.iter().enumerate() {
                let total = self.engine.store().count_all(&spec.name).await?.max(1);
                let mut after = None;
                let mut done = 0u64;
                loop {
                    let page = self
                        .engine
                        .store()
                        .scan(&spec.name, after.as_ref(), PAGE)
                        .await?;
                    let Some(last) = page.last() else { break };
                    after = Some(last.key.clone());
                    let rows = page.len();
                    self.syncer.upload(page).await?;
                    done += rows as u64;
                    report.pushed += rows as u64;
                    self.progress(
                        SyncOperation::Seed,
                        progress,
                        overall(i, specs.len(), done, total),
                        &format!("{}: pushed {done} of {total}", spec.name),
                    );
                    if rows < PAGE {
                        break;
                    }
                }
            }
            report.processed = report.pushed;
            Ok(())
        })
        .await
    }

    /// Pulls every remote change of the chosen collections (all the cloud knows when
    /// `collections` is empty) into this store, learning their definitions first: a
    /// new device's restore. Resumes from the persisted cursor.
    pub async fn hydrate(
        &self,
        collections: &[CollectionName],
        progress: Progress<'_>,
    ) -> Result<SyncReport> {
        self.run(SyncOperation::Hydrate, progress, async |report| {
            let specs = self.learn_catalogue(collections).await?;
            report.collections = specs.len();
            for (i, spec) in specs.iter().enumerate() {
                self.pull(
                    SyncOperation::Hydrate,
                    spec,
                    &Strategy::NewestWins,
                    (i, specs.len()),
                    progress,
                    report,
                )
                .await?;
            }
            Ok(())
        })
        .await
    }

    /// Both ways: publishes and learns collection definitions, pulls remote changes
    /// (settling conflicts with the collection's resolver, else `resolver`), then pushes
    /// every pending local change, including the conflict results. Collections whose
    /// definitions the cloud confirmed at an earlier sync are pulled first, before the
    /// local catalogue is read and before the catalogue step; the rest after it. A
    /// collection named in `collections` that this device does not know is refused
    /// ([`hybridsync_core::Error::UnknownCollection`]) before anything is pulled.
    pub async fn sync(
        &self,
        collections: &[CollectionName],
        resolver: &dyn ConflictResolver,
        progress: Progress<'_>,
    ) -> Result<SyncReport> {
        self.run(SyncOperation::Sync, progress, async |report| {
            // Collections whose definitions the cloud confirmed in an earlier round are
            // pulled first, so a change another device signalled lands before the
            // catalogue's round trip and before the local catalogue is read again:
            // collections are never dropped, so each is still here, and its definition
            // never changes on either side. A round naming a collection not confirmed
            // reads the local catalogue first, which refuses an unknown name before
            // anything is pulled.
            let early = self.confirmed_of(collections);
            let mut of = self.engine.known_collections().max(early.len());
            for (i, spec) in early.iter().enumerate() {
                self.pull_with(spec, resolver, (i, of), progress, report)
                    .await?;
            }
            let local = self.local_specs(collections).await?;
            of = of.max(local.len());
            // Publishing reads the cloud's catalogue back in the same transaction. When
            // the cloud has confirmed every local definition already, reading it is
            // enough (one statement, and no write on the server).
            let remote = if local.iter().all(|s| early.contains(s)) {
                self.syncer.sink().remote_collections().await?
            } else {
                self.syncer.sink().publish_collections(&local).await?
            };
            // A catalogue that holds nothing new (the usual round) is what was just
            // read locally; otherwise its new collections are created here first.
            let chosen =
                |s: &&CollectionSpec| collections.is_empty() || collections.contains(&s.name);
            let specs = if remote.iter().filter(chosen).all(|s| local.contains(s)) {
                local.clone()
            } else {
                self.adopt_catalogue(collections, remote.clone()).await?
            };
            *self.confirmed.lock_or_recover() = specs
                .iter()
                .filter(|s| remote.contains(s))
                .cloned()
                .collect();
            report.collections = specs.len();
            of = of.max(specs.len());
            let rest = specs.iter().filter(|s| !early.contains(s));
            for (i, spec) in rest.enumerate() {
                self.pull_with(spec, resolver, (early.len() + i, of), progress, report)
                    .await?;
            }
            self.push(report).await?;
            self.progress(SyncOperation::Sync, progress, 100.0, "pushed local changes");
            Ok(())
        })
        .await
    }

    /// Re-encrypts every encrypted collection under the keyring's current key (a key
    /// rotation): pulls each first, settling conflicts with its resolver or newest-wins,
    /// so no newer change elsewhere is overwritten; then rewrites every live record
    /// unchanged as a new version at deferred priority, which the drain seals with the
    /// current key behind the application's own writes; then waits for the push. The
    /// rows already in the cloud stay readable with the previous keys until then.
    pub async fn reencrypt(&self, progress: Progress<'_>) -> Result<SyncReport> {
        self.run(SyncOperation::Reencrypt, progress, async |report| {
            let specs: Vec<CollectionSpec> = self
                .learn_catalogue(&[])
                .await?
                .into_iter()
                .filter(|s| s.encrypted)
                .collect();
            if let Some(spec) = specs.first() {
                if self.syncer.sealing().keyring().is_none() {
                    return Err(hybridsync_core::Error::NoEncryptionKey {
                        collection: spec.name.to_string(),
                    }
                    .into());
                }
            }
            report.collections = specs.len();
            let mut queued = 0u64;
            for (i, spec) in specs.iter().enumerate() {
                let custom = self.resolver_for(&spec.name);
                let resolver = custom.as_deref().unwrap_or(&Strategy::NewestWins);
                let of = (i, specs.len());
                self.pull(
                    SyncOperation::Reencrypt,
                    spec,
                    resolver,
                    of,
                    progress,
                    report,
                )
                .await?;
                let store = self.engine.store();
                let mut after = None;
                loop {
                    let page = store.list(&spec.name, after.as_ref(), PAGE).await?;
                    let Some(last) = page.last() else { break };
                    after = Some(last.key.clone());
                    let rows = page.len();
                    let rewrites = page
                        .into_iter()
                        .map(|r| {
                            WriteRequest::put(r.collection, r.key, r.payload, r.embedding)
                                .with_priority(Priority::Deferred)
                        })
                        .collect();
                    self.engine.write(rewrites).await?;
                    queued += rows as u64;
                    self.progress(
                        SyncOperation::Reencrypt,
                        progress,
                        overall(i, specs.len(), 0, 1),
                        &format!("{}: re-encrypting, {queued} rows queued", spec.name),
                    );
                    if rows < PAGE {
                        break;
                    }
                }
            }
            self.push(report).await
        })
        .await
    }

    /// Checks that this device and the cloud hold the same rows of `options`'
    /// collections (all known on either side when none are named), and mends what
    /// differs with `options.repair`. Runs alone, like the other operations.
    pub async fn verify(&self, options: &crate::VerifyOptions) -> Result<crate::VerifyReport> {
        let _one_at_a_time = self.running.lock().await;
        let specs = self.learn_catalogue(&options.collections).await?;
        crate::verify::verify(&self.engine, &self.syncer, &specs, options).await
    }

    /// Starts auto-sync: a [`Self::sync`] of every collection with `strategy` every
    /// `interval`, and at once when the cloud signals that another device changed
    /// something ([`CloudSink::next_change`]), until the handle is shut down. Failures
    /// are reported as events and in the history; the next round tries again.
    pub fn start(self: &Arc<Self>, interval: Duration, strategy: Strategy) -> SyncHandle {
        let (stop, mut stopped) = watch::channel(false);
        let this = self.clone();
        let task = tokio::spawn(async move {
            let mut seen = 0;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(interval) => {}
                    n = this.syncer.sink().next_change(seen) => seen = n,
                    _ = stopped.changed() => break,
                }
                if let Err(e) = this.sync(&[], &strategy, &no_progress).await {
                    tracing::warn!(error = %e, "auto-sync round failed");
                }
            }
        });
        SyncHandle::new(stop, vec![task])
    }

    /// Waits for the drain to push every pending local change, counting what it
    /// shipped and parked in `report`; changes still queued at the timeout are an error
    /// (they ship later).
    async fn push(&self, report: &mut SyncReport) -> Result<()> {
        let before = self.syncer.status();
        let left = self.syncer.flush(PUSH_TIMEOUT).await?;
        let after = self.syncer.status();
        report.pushed = after.shipped_total - before.shipped_total;
        report.failed = after.failed_total - before.failed_total;
        report.processed += report.pushed;
        if left > 0 {
            return Err(Error::NotPushed { left });
        }
        Ok(())
    }

    /// Wraps an operation with its events, timing and history entry.
    async fn run(
        &self,
        operation: SyncOperation,
        progress: Progress<'_>,
        body: impl AsyncFnOnce(&mut SyncReport) -> Result<()>,
    ) -> Result<SyncReport> {
        let _one_at_a_time = self.running.lock().await;
        let started = Instant::now();
        let started_ms = self.syncer.clock().now_ms();
        self.syncer.emit(SyncEvent::SyncStarted { operation });
        progress(0.0, "starting");
        let mut report = SyncReport::new(operation);
        let result = body(&mut report).await;
        report.duration_ms = started.elapsed().as_millis() as u64;
        let entry = HistoryEntry {
            started_ms,
            operation,
            pushed: report.pushed,
            pulled: report.pulled,
            conflicts: report.conflicts_detected,
            duration_ms: report.duration_ms,
            error: result.as_ref().err().map(ToString::to_string),
        };
        if let Err(e) = self.engine.store().record_history(&entry).await {
            tracing::warn!(error = %e, "cannot record sync history");
        }
        match result {
            Ok(()) => {
                self.syncer.touch_if_due().await;
                progress(100.0, "done");
                self.syncer.emit(SyncEvent::SyncCompleted {
                    operation,
                    records: report.processed,
                });
                Ok(report)
            }
            Err(e) => {
                self.syncer.emit(SyncEvent::SyncError {
                    operation,
                    message: e.to_string(),
                });
                Err(e)
            }
        }
    }

    fn progress(
        &self,
        operation: SyncOperation,
        progress: Progress<'_>,
        percent: f32,
        message: &str,
    ) {
        progress(percent, message);
        self.syncer.emit(SyncEvent::SyncProgress {
            operation,
            percent,
            message: message.to_owned(),
        });
    }

    /// The definitions the cloud confirmed at the last round, of the chosen collections
    /// (all when none are chosen); none when a chosen one is not among them.
    fn confirmed_of(&self, collections: &[CollectionName]) -> Vec<CollectionSpec> {
        select(self.confirmed.lock_or_recover().clone(), collections).unwrap_or_default()
    }

    /// The local specs of the chosen collections (all when none are chosen).
    async fn local_specs(&self, collections: &[CollectionName]) -> Result<Vec<CollectionSpec>> {
        let all = self.engine.collections().await?;
        select(all, collections)
    }

    /// Creates locally every remote collection (of the chosen ones) this store lacks;
    /// a remote spec that disagrees with a local one is an error. Returns the specs of
    /// the chosen collections known on either side.
    async fn learn_catalogue(&self, collections: &[CollectionName]) -> Result<Vec<CollectionSpec>> {
        let remote = self.syncer.sink().remote_collections().await?;
        self.adopt_catalogue(collections, remote).await
    }

    /// [`Self::learn_catalogue`] with the cloud's catalogue already read.
    async fn adopt_catalogue(
        &self,
        collections: &[CollectionName],
        remote: Vec<CollectionSpec>,
    ) -> Result<Vec<CollectionSpec>> {
        for spec in &remote {
            if collections.is_empty() || collections.contains(&spec.name) {
                self.engine.create_collection(spec.clone()).await?;
            }
        }
        self.local_specs(collections).await
    }

    /// A sync's pull of one collection, settling conflicts with the collection's
    /// resolver, else `resolver`.
    async fn pull_with(
        &self,
        spec: &CollectionSpec,
        resolver: &dyn ConflictResolver,
        position: (usize, usize),
        progress: Progress<'_>,
        report: &mut SyncReport,
    ) -> Result<()> {
        let custom = self.resolver_for(&spec.name);
        let resolver = custom.as_deref().unwrap_or(resolver);
        self.pull(
            SyncOperation::Sync,
            spec,
            resolver,
            position,
            progress,
            report,
        )
        .await
    }

    /// Pulls one collection's changes from its cursor to the end of the feed.
    async fn pull(
        &self,
        operation: SyncOperation,
        spec: &CollectionSpec,
        resolver: &dyn ConflictResolver,
        (index, of): (usize, usize),
        progress: Progress<'_>,
        report: &mut SyncReport,
    ) -> Result<()> {
        let store = self.engine.store();
        let sink = self.syncer.sink();
        // The first page is asked for from where this replicator's last pull left the
        // cursor while the stored cursor is read, so the local read hides behind the
        // cloud's round trip. Should they differ (the first pull here, or another
        // process pulled meanwhile), the page is fetched again from the stored one.
        let left = self.cursors.lock_or_recover().get(&spec.name).cloned();
        let mut batch = match left {
            Some(left) => {
                let (stored, page) =
                    tokio::join!(store.cursor(&spec.name), sink.pull(&spec.name, &left, PAGE));
                let stored = stored?;
                if stored == left {
                    page?
                } else {
                    sink.pull(&spec.name, &stored, PAGE).await?
                }
            }
            None => {
                let stored = store.cursor(&spec.name).await?;
                sink.pull(&spec.name, &stored, PAGE).await?
            }
        };
        let mut seen = 0u64;
        // The cloud's row count, for progress, only when there is more than one page:
        // a round that finds a few changes (the usual auto-sync round) saves the trip.
        let total = if batch.records.len() == PAGE {
            sink.count(&spec.name).await?.max(1)
        } else {
            batch.records.len().max(1) as u64
        };
        loop {
            let rows = batch.records.len();
            if rows == 0 {
                break;
            }
            // The next page is fetched (on its own task) while this one is applied.
            let prefetch = (rows == PAGE).then(|| {
                let (sink, name, after) = (sink.clone(), spec.name.clone(), batch.next.clone());
                tokio::spawn(async move { sink.pull(&name, &after, PAGE).await })
            });
            // Opened (encrypted collections) before anything is applied: a page that
            // does not open applies nothing and leaves the cursor where it was.
            let records = self
                .syncer
                .sealing()
                .open(sink.tenant(), spec, batch.records)?;
            let outcome = self
                .engine
                .apply_remote(&spec.name, records, &batch.next, resolver)
                .await?;
            self.cursors
                .lock_or_recover()
                .insert(spec.name.clone(), batch.next.clone());
            seen += rows as u64;
            report.processed += rows as u64;
            report.pulled += outcome.applied as u64;
            report.refused += outcome.refused.len() as u64;
            report.conflicts_detected += outcome.conflicts.len() as u64;
            report.conflicts_resolved += (outcome.changed.len() - outcome.applied) as u64;
            metrics::counter!(catalogue::ROWS_PULLED).increment(outcome.applied as u64);
            for conflict in &outcome.conflicts {
                metrics::counter!(catalogue::CONFLICTS, "resolution" => conflict.resolution.as_str())
                    .increment(1);
                self.syncer.emit(SyncEvent::ConflictDetected {
                    collection: spec.name.clone(),
                    key: conflict.key.clone(),
                });
            }
            for (key, reason) in outcome.refused {
                tracing::warn!(collection = %spec.name, %key, %reason, "remote change refused");
                self.syncer.emit(SyncEvent::RecordFailed {
                    collection: spec.name.clone(),
                    key,
                    error: reason,
                });
            }
            self.progress(
                operation,
                progress,
                overall(index, of, seen, total),
                &format!("{}: pulled {seen} of ~{total}", spec.name),
            );
            match prefetch {
                Some(next) => {
                    batch = next.await??;
                }
                None => break,
            }
        }
        Ok(())
    }
}

/// Overall percentage when collection `index` of `of` is `done` of `total` through.
fn overall(index: usize, of: usize, done: u64, total: u64) -> f32 {
    let within = (done as f32 / total as f32).min(1.0);
    ((index as f32 + within) / of.max(1) as f32 * 100.0).min(100.0)
}

/// The specs named in `chosen` (every spec when `chosen` is empty); a name that is not
/// known is an error.
fn select(all: Vec<CollectionSpec>, chosen: &[CollectionName]) -> Result<Vec<CollectionSpec>> {
    if chosen.is_empty() {
        return Ok(all);
    }
    chosen
        .iter()
        .map(|name| {
            all.iter()
                .find(|s| s.name == *name)
                .cloned()
                .ok_or_else(|| hybridsync_core::Error::UnknownCollection(name.to_string()).into())
        })
        .collect()
}
