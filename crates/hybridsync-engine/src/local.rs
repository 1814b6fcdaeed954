//! The local read and write paths.

use crate::snapshot::{Ledger, SnapshotFiles};
use crate::warming::{Warmer, WarmingConfig, WarmingStats};
use crate::{Error, Result};
use hybridsync_core::{
    CollectionName, CollectionSpec, HotCacheStats, Key, LocalStore, OutboxStats, Priority, Record,
    RecordCache, VectorCache, VectorHit, WriteReceipt, WriteRequest,
};
use hybridsync_core::{MutexExt, RwLockExt};
use hybridsync_telemetry::catalogue;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

/// Where vector indexes are saved, and how the hot cache is warmed.
#[derive(Debug, Clone, Default)]
pub struct EngineConfig {
    /// Where [`Engine::save_indexes`] writes index snapshots and `open` looks for them
    /// (`None`: indexes are always built from the store).
    pub snapshot_dir: Option<PathBuf>,
    /// Predictive cache warming (its loop runs in the [`Runtime`](crate::Runtime)).
    pub warming: WarmingConfig,
}

/// How a search runs.
#[derive(Debug, Clone, Copy, Default)]
pub struct SearchOptions {
    /// Re-rank the index's candidates by exact f32 distance from the store's vectors,
    /// fetching this many times `k` candidates first (`Some(0)`: no re-rank). `None`
    /// (the default) re-ranks i8 collections with [`I8_RERANK_FACTOR`], whose
    /// quantisation costs recall, and no other.
    pub rerank_factor: Option<usize>,
}

/// The default re-rank factor of i8 collections: on clustered 192-D voiceprints the i8
/// index alone finds about 0.89 of the exact top 10; re-ranking its best 2×k by their
/// stored f32 vectors finds all of them (`docs/benchmarks.md`).
pub const I8_RERANK_FACTOR: usize = 2;

/// `priority` after the soft cap of its class (given the queued `depths`), with `rows` more
/// counted against the class it lands in.
fn capped(depths: &mut BTreeMap<Priority, u64>, priority: Priority, rows: usize) -> Priority {
    let depth = depths.get(&priority).copied().unwrap_or(0);
    let asked = priority;
    let priority = priority.downgraded(depth);
    if priority != asked {
        metrics::counter!(catalogue::WRITES_DOWNGRADED, "priority" => asked.as_str())
            .increment(rows as u64);
    }
    *depths.entry(priority).or_default() += rows as u64;
    priority
}

/// A snapshot of the local side, for `status`.
#[derive(Debug, Clone)]
pub struct LocalStatus {
    /// Live records per collection.
    pub records: BTreeMap<CollectionName, u64>,
    /// Vectors indexed per vector collection.
    pub indexed: BTreeMap<CollectionName, usize>,
    /// Vector collections whose index was restored from a snapshot at open (the
    /// others were built from the store).
    pub restored: std::collections::BTreeSet<CollectionName>,
    pub specs: Vec<CollectionSpec>,
    pub outbox: OutboxStats,
    pub cache: HotCacheStats,
    pub uptime_secs: f64,
}

/// The local-first engine over a store `S`, a vector cache `V` (optional: without one,
/// vector collections are refused) and a hot-record cache.
pub struct Engine<S: ?Sized, V: ?Sized> {
    store: Arc<S>,
    vectors: Option<Arc<V>>,
    hot: Arc<dyn RecordCache>,
    specs: RwLock<HashMap<CollectionName, CollectionSpec>>,
    opened: Instant,
    /// Notified after every committed write, so a drain can start at once.
    nudge: Arc<tokio::sync::Notify>,
    /// Queue depth per priority, refreshed at most once a second, for the soft caps.
    queued: std::sync::Mutex<(Option<Instant>, BTreeMap<Priority, u64>)>,
    /// What each vector index holds. Held while the index changes, so a saved index and
    /// its description agree.
    ledgers: Arc<Mutex<HashMap<CollectionName, Ledger>>>,
    snapshot_dir: Option<PathBuf>,
    restored: Mutex<std::collections::BTreeSet<CollectionName>>,
    /// Records reads and predicts the next ones, when warming is enabled.
    warmer: Option<Warmer>,
}

impl<S: ?Sized, V: ?Sized> std::fmt::Debug for Engine<S, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("hot", &self.hot)
            .field("vectors", &self.vectors.is_some())
            .field("snapshot_dir", &self.snapshot_dir)
            .finish_non_exhaustive()
    }
}

impl<S: LocalStore + ?Sized, V: VectorCache + ?Sized> Engine<S, V> {
    /// Builds the vector index of every vector collection from the store (off the
    /// async executor) and returns a ready engine. Without `vectors`, a store that
    /// holds a vector collection is refused ([`Error::NoVectorIndex`]).
    pub async fn open(
        store: Arc<S>,
        vectors: Option<Arc<V>>,
        hot: Arc<dyn RecordCache>,
        config: EngineConfig,
    ) -> Result<Self> {
        let engine = Self {
            store,
            vectors,
            hot,
            specs: RwLock::new(HashMap::new()),
            opened: Instant::now(),
            nudge: Arc::new(tokio::sync::Notify::new()),
            queued: std::sync::Mutex::new((None, BTreeMap::new())),
            ledgers: Arc::default(),
            snapshot_dir: config.snapshot_dir,
            restored: Mutex::default(),
            warmer: config.warming.enabled.then(|| Warmer::new(config.warming)),
        };
        engine.refresh_specs().await?;
        Ok(engine)
    }

    /// The store underneath.
    pub fn store(&self) -> &Arc<S> {
        &self.store
    }

    /// The hot cache's counters.
    pub fn cache_stats(&self) -> HotCacheStats {
        self.hot.stats()
    }

    /// How long ago this engine was opened.
    pub fn uptime(&self) -> std::time::Duration {
        self.opened.elapsed()
    }

    /// Notified after every committed write; hand it to a `Syncer`.
    pub fn write_nudge(&self) -> Arc<tokio::sync::Notify> {
        self.nudge.clone()
    }

    /// Reflects writes the store committed by another path (a migration's batches and
    /// its rollback) in the index and the hot cache.
    pub(crate) fn reflect_receipts(&self, receipts: &[WriteReceipt]) -> Result<()> {
        self.reflect(receipts)
    }

    /// Applies the per-class soft caps: a class at its cap hands new entries to the
    /// next class down (never critical; nothing is dropped).
    async fn apply_soft_caps(&self, requests: &mut [WriteRequest]) -> Result<()> {
        self.refresh_depths().await?;
        let mut queued = self.queued.lock_or_recover();
        for request in requests {
            request.priority = capped(&mut queued.1, request.priority, 1);
        }
        Ok(())
    }

    /// The priority `rows` new entries asking for `priority` get under the soft caps:
    /// a migration's batch moves down together.
    pub(crate) async fn soft_capped(&self, priority: Priority, rows: usize) -> Result<Priority> {
        self.refresh_depths().await?;
        Ok(capped(&mut self.queued.lock_or_recover().1, priority, rows))
    }

    /// Re-reads the queue depths when the last reading is over a second old.
    async fn refresh_depths(&self) -> Result<()> {
        let stale = {
            let queued = self.queued.lock_or_recover();
            queued
                .0
                .is_none_or(|at| at.elapsed() > std::time::Duration::from_secs(1))
        };
        if stale {
            let depths = self.store.queue_depths().await?;
            *self.queued.lock_or_recover() = (Some(Instant::now()), depths);
        }
        Ok(())
    }

    fn spec(&self, collection: &CollectionName) -> Option<CollectionSpec> {
        self.specs.read_or_recover().get(collection).cloned()
    }

    /// How many collections this engine knows, without asking the store.
    pub(crate) fn known_collections(&self) -> usize {
        self.specs.read_or_recover().len()
    }

    /// Learns collections the store knows and this engine does not (created by another
    /// process, or at open) and builds their indexes.
    async fn refresh_specs(&self) -> Result<()> {
        self.known_specs().await.map(drop)
    }

    /// [`Self::refresh_specs`], returning every collection the store knows.
    async fn known_specs(&self) -> Result<Vec<CollectionSpec>> {
        let specs = self.store.collections().await?;
        for spec in &specs {
            if self.spec(&spec.name).is_none() {
                self.load_index(spec).await?;
                self.specs
                    .write_or_recover()
                    .insert(spec.name.clone(), spec.clone());
            }
        }
        Ok(specs)
    }

    /// The vector index of a vector collection, or why there is none.
    fn index(&self, collection: &CollectionName) -> Result<&Arc<V>> {
        self.vectors.as_ref().ok_or_else(|| Error::NoVectorIndex {
            collection: collection.to_string(),
        })
    }

    async fn load_index(&self, spec: &CollectionSpec) -> Result<()> {
        let Some(vector) = spec.vector else {
            return Ok(());
        };
        let vectors = self.index(&spec.name)?.clone();
        let started = Instant::now();
        if self.restore_index(spec, vector, &vectors).await? {
            tracing::debug!(collection = %spec.name, elapsed_ms = started.elapsed().as_millis() as u64, "vector index restored");
            return Ok(());
        }
        let rows = self.store.embeddings(&spec.name).await?;
        let count = rows.len();
        let ledger = Ledger::of(&rows);
        let rows = rows
            .into_iter()
            .map(|row| (row.label, row.key, row.embedding.unwrap_or_default()))
            .collect();
        let name = spec.name.clone();
        tokio::task::spawn_blocking(move || vectors.build(&name, &vector, rows)).await??;
        self.ledgers().insert(spec.name.clone(), ledger);
        tracing::debug!(collection = %spec.name, count, elapsed_ms = started.elapsed().as_millis() as u64, "vector index built");
        Ok(())
    }

    /// Restores a collection's index from its snapshot if the store still holds
    /// exactly what the snapshot does. `Ok(false)`: no usable snapshot; build instead.
    async fn restore_index(
        &self,
        spec: &CollectionSpec,
        vector: hybridsync_core::VectorSpec,
        vectors: &Arc<V>,
    ) -> Result<bool> {
        let Some(dir) = &self.snapshot_dir else {
            return Ok(false);
        };
        let files = SnapshotFiles::new(dir, spec.name.as_str(), vectors.format());
        let Some(saved) = files.saved_for(&vector) else {
            return Ok(false);
        };
        let rows = self.store.vector_labels(&spec.name).await?;
        let ledger = Ledger::of(&rows);
        if !SnapshotFiles::matches(&saved, &vector, &ledger) {
            tracing::info!(collection = %spec.name, "index snapshot is stale; rebuilding");
            return Ok(false);
        }
        let keys = rows.into_iter().map(|row| (row.label, row.key)).collect();
        let (vectors, name) = (vectors.clone(), spec.name.clone());
        let restored = tokio::task::spawn_blocking(move || {
            vectors.restore(&name, &vector, &saved.index, keys)
        })
        .await?;
        match restored {
            Ok(()) => {
                self.ledgers().insert(spec.name.clone(), ledger);
                self.restored.lock_or_recover().insert(spec.name.clone());
                Ok(true)
            }
            Err(e) => {
                tracing::warn!(collection = %spec.name, error = %e, "index snapshot unusable; rebuilding");
                Ok(false)
            }
        }
    }

    fn ledgers(&self) -> std::sync::MutexGuard<'_, HashMap<CollectionName, Ledger>> {
        self.ledgers.lock_or_recover()
    }

    /// Saves every vector index with a description of what it holds, so the next
    /// `open` restores it instead of building it (`close` calls this). A snapshot
    /// the store has moved past since is detected at open and ignored.
    pub async fn save_indexes(&self) -> Result<()> {
        let (Some(dir), Some(vectors)) = (self.snapshot_dir.clone(), self.vectors.clone()) else {
            return Ok(());
        };
        let specs: Vec<(CollectionName, hybridsync_core::VectorSpec)> = self
            .specs
            .read_or_recover()
            .values()
            .filter_map(|spec| spec.vector.map(|v| (spec.name.clone(), v)))
            .collect();
        if specs.is_empty() {
            return Ok(());
        }
        let ledgers = self.ledgers.clone();
        let io = |path: &std::path::Path| {
            let path = path.to_owned();
            move |source| Error::Snapshot { path, source }
        };
        tokio::task::spawn_blocking(move || -> Result<()> {
            crate::snapshot::create_dir(&dir).map_err(io(&dir))?;
            for (name, vector) in specs {
                let files = SnapshotFiles::new(&dir, name.as_str(), vectors.format());
                // Writes wait while the index and its description are saved together.
                let ledgers = ledgers.lock_or_recover();
                let Some(ledger) = ledgers.get(&name) else {
                    continue;
                };
                let unchanged = files.saved_for(&vector).is_some_and(|saved| {
                    SnapshotFiles::matches(&saved, &vector, ledger) && saved.index.exists()
                });
                if unchanged {
                    continue;
                }
                let index = files.new_index();
                vectors.save(&name, &index)?;
                files.describe(&vector, ledger, &index).map_err(io(&dir))?;
            }
            Ok(())
        })
        .await?
    }

    async fn require_spec(&self, collection: &CollectionName) -> Result<CollectionSpec> {
        if let Some(spec) = self.spec(collection) {
            return Ok(spec);
        }
        self.refresh_specs().await?;
        Ok(self
            .spec(collection)
            .ok_or_else(|| hybridsync_core::Error::UnknownCollection(collection.to_string()))?)
    }

    /// Declares a collection (idempotent for the same spec). A vector collection
    /// without a vector index is refused before anything is written.
    pub async fn create_collection(&self, spec: CollectionSpec) -> Result<()> {
        // Collections are never dropped, so one this engine knows with the same spec
        // exists (sync declares every collection of the cloud's catalogue each round).
        if self.spec(&spec.name).as_ref() == Some(&spec) {
            return Ok(());
        }
        if spec.vector.is_some() {
            self.index(&spec.name)?;
        }
        self.store.create_collection(&spec).await?;
        self.refresh_specs().await
    }

    /// Every known collection.
    pub async fn collections(&self) -> Result<Vec<CollectionSpec>> {
        self.known_specs().await
    }

    /// Applies writes durably (one transaction), then updates the index and the hot
    /// cache. Returns once the local commit is done; never waits on the cloud.
    pub async fn write(&self, mut requests: Vec<WriteRequest>) -> Result<Vec<WriteReceipt>> {
        let started = Instant::now();
        for request in &requests {
            self.require_spec(&request.collection).await?;
        }
        self.apply_soft_caps(&mut requests).await?;
        let receipts = self.store.write(requests).await?;
        self.nudge.notify_one();
        self.reflect(&receipts)?;
        metrics::histogram!(catalogue::WRITE_LATENCY).record(started.elapsed().as_secs_f64());
        Ok(receipts)
    }

    /// Brings the vector index and the hot cache up to committed changes. Runs of
    /// vector upserts go to the index as batches (which it may add in parallel), off
    /// the async workers when large.
    fn reflect(&self, receipts: &[WriteReceipt]) -> Result<()> {
        let mut ledgers = self.ledgers();
        let mut run: Vec<(u64, Key, Vec<f32>)> = Vec::new();
        let mut run_collection: Option<&CollectionName> = None;
        for receipt in receipts {
            let record = &receipt.record;
            if self
                .spec(&record.collection)
                .is_some_and(|s| s.vector.is_some())
            {
                if run_collection.is_some_and(|c| *c != record.collection) {
                    self.upsert_vectors(run_collection.take(), &mut run)?;
                }
                let ledger = ledgers.entry(record.collection.clone()).or_default();
                match (&record.embedding, record.tombstone) {
                    (Some(embedding), false) => {
                        run_collection = Some(&record.collection);
                        run.push((receipt.label, record.key.clone(), embedding.clone()));
                        ledger.set(receipt.label, &record.hash);
                    }
                    _ => {
                        self.upsert_vectors(run_collection.take(), &mut run)?;
                        self.index(&record.collection)?
                            .remove(&record.collection, receipt.label)?;
                        ledger.remove(receipt.label);
                    }
                }
            }
            self.hot.insert(Arc::clone(record));
        }
        self.upsert_vectors(run_collection, &mut run)
    }

    fn upsert_vectors(
        &self,
        collection: Option<&CollectionName>,
        run: &mut Vec<(u64, Key, Vec<f32>)>,
    ) -> Result<()> {
        let Some(collection) = collection else {
            return Ok(());
        };
        let vectors = self.index(collection)?;
        let add = || vectors.upsert_many(collection, run);
        let multi_thread = tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
        if run.len() >= 64 && multi_thread {
            tokio::task::block_in_place(add)?;
        } else {
            add()?;
        }
        run.clear();
        Ok(())
    }

    /// Applies a page of remote changes (see [`LocalStore::apply_remote`]), then updates
    /// the index and the hot cache. Conflict results written as new local versions
    /// nudge the drain.
    pub async fn apply_remote(
        &self,
        collection: &CollectionName,
        records: Vec<Record>,
        next: &hybridsync_core::ChangeCursor,
        resolver: &dyn hybridsync_core::ConflictResolver,
    ) -> Result<hybridsync_core::ApplyOutcome> {
        self.require_spec(collection).await?;
        let outcome = self
            .store
            .apply_remote(collection, records, next, resolver)
            .await?;
        hybridsync_core::crash_point("during_pull_apply");
        self.reflect(&outcome.changed)?;
        if outcome.changed.len() > outcome.applied {
            self.nudge.notify_one();
        }
        Ok(outcome)
    }

    /// One put.
    pub async fn put(&self, request: WriteRequest) -> Result<WriteReceipt> {
        Ok(self.write(vec![request]).await?.remove(0))
    }

    /// Deletes a key (writes a tombstone). Deleting an absent key still records the
    /// tombstone, so the delete reaches other devices.
    pub async fn delete(
        &self,
        collection: CollectionName,
        key: Key,
        priority: Priority,
    ) -> Result<WriteReceipt> {
        self.put(WriteRequest::delete(collection, key).with_priority(priority))
            .await
    }

    /// The live record for a key, from the hot cache or else the store. The key is
    /// checked against the store's limits first; a hit allocates nothing.
    pub async fn get(&self, collection: &CollectionName, key: &str) -> Result<Option<Arc<Record>>> {
        let started = Instant::now();
        Key::check(key, self.store.limits())?;
        if let Some(warmer) = &self.warmer {
            warmer.record(collection, key, started);
        }
        let record = match self.hot.get(collection, key) {
            Some(record) => {
                Self::cache_hit(started);
                record
            }
            None => {
                metrics::counter!(catalogue::CACHE_MISSES).increment(1);
                let key = Key::with_limits(key, self.store.limits())?;
                let Some(record) = self.store.get(collection, &key).await? else {
                    self.require_spec(collection).await?;
                    return Ok(None);
                };
                if let Some(warmer) = &self.warmer {
                    warmer.learn(collection, &key);
                }
                let record = Arc::new(record);
                self.hot.insert(record.clone());
                metrics::histogram!(catalogue::READ_LATENCY, "source" => "sqlite")
                    .record(started.elapsed().as_secs_f64());
                record
            }
        };
        Ok((!record.tombstone).then_some(record))
    }

    /// The warming configuration, when warming is enabled.
    pub fn warming(&self) -> Option<&WarmingConfig> {
        self.warmer.as_ref().map(Warmer::config)
    }

    /// What predictive warming has done (all zero, `enabled` false, when it is off).
    pub fn warming_stats(&self) -> WarmingStats {
        let Some(warmer) = &self.warmer else {
            return WarmingStats::default();
        };
        let cache = self.hot.stats();
        warmer.stats(cache.prefetched, cache.prefetch_hits)
    }

    /// Digests the reads recorded since the last call into the access histories
    /// (the warming loop does this every [`WarmingConfig::DIGEST_EVERY`]).
    pub fn digest_reads(&self) {
        if let Some(warmer) = &self.warmer {
            warmer.digest();
        }
    }

    /// One warming round: digests the recorded reads, predicts the reads due within
    /// the next interval, and loads the `top_k` most confident that are not cached
    /// from the store into the hot cache, never evicting an entry predicted at least
    /// as confidently. Returns how many records it loaded.
    pub async fn warm(&self) -> Result<usize> {
        let Some(warmer) = &self.warmer else {
            return Ok(0);
        };
        warmer.digest();
        let predicted = warmer.predict(warmer.config().top_k, |collection, key| {
            self.hot.contains(collection, key.as_str())
        });
        let mut loaded = 0;
        for prediction in predicted {
            let Some(record) = self
                .store
                .get(&prediction.collection, &prediction.key)
                .await?
            else {
                continue;
            };
            let hotter = |victim: &Record| {
                warmer.confidence_of(&victim.collection, victim.key.as_str())
                    >= prediction.confidence
            };
            if self.hot.prefetch(Arc::new(record), &hotter) {
                loaded += 1;
            } else if !self
                .hot
                .contains(&prediction.collection, prediction.key.as_str())
            {
                // Refused for a hotter entry: the rest rank no higher, and
                // would be refused too (without reading the store for nothing).
                break;
            }
        }
        self.warming_stats().publish();
        Ok(loaded)
    }

    fn cache_hit(started: Instant) {
        metrics::counter!(catalogue::CACHE_HITS).increment(1);
        metrics::histogram!(catalogue::READ_LATENCY, "source" => "cache")
            .record(started.elapsed().as_secs_f64());
    }

    /// Up to `limit` live records after `after`, in key order, from the store.
    pub async fn list(
        &self,
        collection: &CollectionName,
        after: Option<&Key>,
        limit: usize,
    ) -> Result<Vec<Record>> {
        self.require_spec(collection).await?;
        Ok(self.store.list(collection, after, limit).await?)
    }

    /// The `k` nearest keys to `query`. The query is validated like a stored embedding.
    pub async fn search(
        &self,
        collection: &CollectionName,
        query: &[f32],
        k: usize,
        options: SearchOptions,
    ) -> Result<Vec<VectorHit>> {
        let started = Instant::now();
        let spec = self.require_spec(collection).await?;
        let vector = spec
            .vector
            .ok_or_else(|| hybridsync_core::Error::EmbeddingNotAllowed {
                collection: collection.to_string(),
            })?;
        let vectors = self.index(collection)?;
        vector.validate(collection.as_str(), query)?;
        let factor = options.rerank_factor.unwrap_or(match vector.precision {
            hybridsync_core::Precision::I8 => I8_RERANK_FACTOR,
            _ => 0,
        });
        let hits = if factor > 1 {
            let candidates = vectors.search(collection, query, k.saturating_mul(factor))?;
            let labels: Vec<u64> = candidates.iter().map(|hit| hit.label).collect();
            let embeddings = self.store.embeddings_of(collection, &labels).await?;
            let mut exact: Vec<VectorHit> = candidates
                .into_iter()
                .zip(embeddings)
                .filter_map(|(hit, embedding)| {
                    Some(VectorHit {
                        distance: vector.metric.distance(query, &embedding?),
                        ..hit
                    })
                })
                .collect();
            exact.sort_by(|a, b| a.distance.total_cmp(&b.distance));
            exact.truncate(k);
            exact
        } else {
            vectors.search(collection, query, k)?
        };
        metrics::histogram!(catalogue::SEARCH_LATENCY).record(started.elapsed().as_secs_f64());
        Ok(hits)
    }

    /// Counts, outbox depth and cache figures.
    pub async fn status(&self) -> Result<LocalStatus> {
        self.refresh_specs().await?;
        let outbox = self.store.outbox_stats().await?;
        let specs = self.store.collections().await?;
        let indexed = specs
            .iter()
            .filter(|s| s.vector.is_some())
            .map(|s| {
                let indexed = self.vectors.as_ref().map_or(0, |v| v.len(&s.name));
                (s.name.clone(), indexed)
            })
            .collect();
        let status = LocalStatus {
            records: self.store.counts().await?,
            indexed,
            restored: self.restored.lock_or_recover().clone(),
            specs,
            cache: self.hot.stats(),
            uptime_secs: self.opened.elapsed().as_secs_f64(),
            outbox,
        };
        Ok(status)
    }
}
