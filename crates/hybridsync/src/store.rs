//! `HybridStore`, its builder and the typed and untyped collection handles.

use crate::{Config, Result};
use hybridsync_cloud::{CloudOptions, PostgresSink};
use hybridsync_core::{
    Clock, CloudUrl, CollectionName, CollectionSpec, DeviceId, HistoryEntry, Hlc, Key, Limits,
    OutboxStats, Priority, Strategy, VectorHit, VectorSpec, WriteRequest, decode_payload,
    encode_payload,
};
use hybridsync_engine::{
    Engine, EngineConfig, HotCacheStats, Replicator, SearchOptions, SyncConfig, SyncHandle,
    SyncReport, SyncStatus, Syncer,
};
use hybridsync_store::{Durability, SqliteStore, StoreOptions};
use hybridsync_vector::{UsearchCache, VectorOptions};
use std::marker::PhantomData;
use std::path::PathBuf;
use std::sync::Arc;

/// Configures and opens a [`HybridStore`].
#[derive(Debug, Clone)]
pub struct HybridStoreBuilder {
    store: StoreOptions,
    engine: EngineConfig,
    cloud_url: Option<CloudUrl>,
    tenant: String,
    max_connections: u32,
    application_name: String,
    sync: SyncConfig,
}

impl HybridStoreBuilder {
    /// Applies a [`Config`] (file and environment); unset fields keep their values.
    pub fn config(mut self, config: &Config) -> Result<Self> {
        if let Some(dir) = &config.data_dir {
            self.store.data_dir = dir.clone();
        }
        if let Some(url) = &config.cloud_url {
            self.cloud_url = Some(CloudUrl::new(url.clone()));
        }
        if let Some(durability) = &config.durability {
            self.store.durability = durability.parse::<Durability>()?;
        }
        if let Some(n) = config.limits.max_key_bytes {
            self.store.limits.max_key_bytes = n;
        }
        if let Some(n) = config.limits.max_payload_bytes {
            self.store.limits.max_payload_bytes = n;
        }
        if let Some(n) = config.cache.entries {
            self.engine.hot_entries = n;
        }
        if let Some(n) = config.cache.bytes {
            self.engine.hot_bytes = n;
        }
        if let Some(tenant) = &config.cloud.tenant {
            self.tenant = tenant.clone();
        }
        if let Some(n) = config.cloud.max_connections {
            self.max_connections = n;
        }
        if let Some(secs) = config.sync.interval_secs {
            self.sync.interval = std::time::Duration::try_from_secs_f64(secs).map_err(|_| {
                hybridsync_core::Error::Parse {
                    what: "sync interval",
                    value: secs.to_string(),
                }
            })?;
        }
        if let Some(n) = config.sync.batch_size {
            self.sync.batch_size = n;
        }
        if let Some(n) = config.sync.max_attempts {
            self.sync.max_attempts = n;
        }
        Ok(self)
    }

    /// The data directory (created 0700 if missing).
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.store.data_dir = dir.into();
        self
    }

    /// The cloud PostgreSQL URL. Optional: without one the store runs local-only and
    /// keeps every change in the outbox for later.
    pub fn cloud_url(mut self, url: impl Into<String>) -> Self {
        self.cloud_url = Some(CloudUrl::new(url));
        self
    }

    /// The tenant this device's cloud rows belong to (default `default`).
    pub fn tenant(mut self, tenant: impl Into<String>) -> Self {
        self.tenant = tenant.into();
        self
    }

    /// The `application_name` this device's cloud connections carry (default
    /// `hybridsync`), so an operator can tell devices apart in `pg_stat_activity`.
    pub fn application_name(mut self, name: impl Into<String>) -> Self {
        self.application_name = name.into();
        self
    }

    /// Drain timing and sizing.
    pub fn sync_config(mut self, sync: SyncConfig) -> Self {
        self.sync = sync;
        self
    }

    /// Commit durability (default [`Durability::Normal`]).
    pub fn durability(mut self, durability: Durability) -> Self {
        self.store.durability = durability;
        self
    }

    /// Key and payload limits.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.store.limits = limits;
        self
    }

    /// Hot-cache bounds.
    pub fn hot_cache(mut self, entries: usize, bytes: usize) -> Self {
        self.engine.hot_entries = entries;
        self.engine.hot_bytes = bytes;
        self
    }

    /// The physical clock for version stamps (tests inject a manual one).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.store.clock = clock;
        self
    }

    /// Opens the store, checks the file, and builds the vector indexes.
    pub async fn open(self) -> Result<HybridStore> {
        let store = Arc::new(SqliteStore::open(self.store).await?);
        let vectors = Arc::new(UsearchCache::new(VectorOptions::default()));
        let engine = Arc::new(Engine::open(store.clone(), vectors, self.engine).await?);
        let syncer = match &self.cloud_url {
            None => None,
            Some(url) => {
                let mut options = CloudOptions::new(url.clone(), self.tenant.clone());
                options.max_connections = self.max_connections;
                options.application_name = self.application_name;
                options.min_connections = options.min_connections.min(self.max_connections);
                // Lazy: nothing here waits on the network.
                let sink = Arc::new(PostgresSink::new(options)?);
                Some(Arc::new(Syncer::new(
                    store,
                    sink,
                    self.sync,
                    engine.write_nudge(),
                )))
            }
        };
        let replicator = syncer
            .as_ref()
            .map(|syncer| Arc::new(Replicator::new(engine.clone(), syncer.clone())));
        let inner = Inner {
            engine,
            cloud_url: self.cloud_url,
            syncer,
            replicator,
            running: tokio::sync::Mutex::new(None),
            auto_sync: tokio::sync::Mutex::new(None),
        };
        Ok(HybridStore {
            inner: Arc::new(inner),
        })
    }
}

#[derive(Debug)]
struct Inner {
    engine: Arc<Engine<SqliteStore, UsearchCache>>,
    cloud_url: Option<CloudUrl>,
    syncer: Option<Arc<Syncer<SqliteStore, PostgresSink>>>,
    replicator: Option<Arc<Replicator<SqliteStore, UsearchCache, PostgresSink>>>,
    running: tokio::sync::Mutex<Option<SyncHandle>>,
    auto_sync: tokio::sync::Mutex<Option<SyncHandle>>,
}

/// A local-first store: SQLite for durability, usearch for similarity search, an
/// outbox for the cloud. Cheap to clone; every clone shares the same store.
#[derive(Debug, Clone)]
pub struct HybridStore {
    inner: Arc<Inner>,
}

/// Per-write options.
#[derive(Debug, Clone, Default)]
pub struct WriteOptions {
    pub embedding: Option<Vec<f32>>,
    pub priority: Priority,
}

impl WriteOptions {
    /// Attaches an embedding (vector collections only).
    pub fn embedding(mut self, embedding: Vec<f32>) -> Self {
        self.embedding = Some(embedding);
        self
    }

    /// Sets the sync priority.
    pub fn priority(mut self, priority: Priority) -> Self {
        self.priority = priority;
        self
    }
}

/// What `status` reports.
#[derive(Debug, Clone)]
pub struct Status {
    pub device_id: DeviceId,
    pub data_dir: PathBuf,
    pub collections: Vec<CollectionStatus>,
    pub outbox: OutboxStats,
    pub cache: HotCacheStats,
    /// The configured cloud, redacted.
    pub cloud: Option<String>,
    /// The newest seed, hydrate and sync runs, newest first.
    pub history: Vec<HistoryEntry>,
}

/// A snapshot of the figures the metrics endpoint exports, for applications that want
/// them without scraping (`HybridStore::metrics`).
#[derive(Debug, Clone, PartialEq)]
pub struct SyncMetrics {
    pub cache_hits: u64,
    pub cache_misses: u64,
    /// Hits over reads answered so far (0 before any read).
    pub cache_hit_rate: f64,
    pub cache_entries: usize,
    /// Outbox entries pending or in flight, per priority.
    pub queue: std::collections::BTreeMap<Priority, u64>,
    pub failed: u64,
    /// Entries the cloud acknowledged (kept as history), and when the last one was.
    pub synced_total: u64,
    pub last_sync_ms: Option<u64>,
    /// `None` without a cloud.
    pub circuit: Option<hybridsync_core::CircuitState>,
    pub pool_size: u32,
    pub pool_max: u32,
    pub pool_load: f64,
}

/// One collection in [`Status`].
#[derive(Debug, Clone)]
pub struct CollectionStatus {
    pub name: CollectionName,
    pub vector: Option<VectorSpec>,
    pub records: u64,
    pub indexed: usize,
    /// Whether the index was restored from its snapshot at open (else built).
    pub index_restored: bool,
}

impl HybridStore {
    /// A builder for a store in `data_dir`.
    pub fn builder(data_dir: impl Into<PathBuf>) -> HybridStoreBuilder {
        let data_dir = data_dir.into();
        HybridStoreBuilder {
            engine: EngineConfig {
                snapshot_dir: Some(data_dir.join("indexes")),
                ..EngineConfig::default()
            },
            store: StoreOptions::new(data_dir),
            cloud_url: None,
            tenant: "default".into(),
            max_connections: 3,
            application_name: "hybridsync".into(),
            sync: SyncConfig::default(),
        }
    }

    fn engine(&self) -> &Engine<SqliteStore, UsearchCache> {
        &self.inner.engine
    }

    /// Declares a collection, with a vector spec for similarity search. Idempotent for
    /// the same spec; a different spec for an existing name is an error.
    pub async fn create_collection(&self, name: &str, vector: Option<VectorSpec>) -> Result<()> {
        let name = CollectionName::new(name)?;
        Ok(self
            .engine()
            .create_collection(CollectionSpec { name, vector })
            .await?)
    }

    /// Every collection.
    pub async fn collections(&self) -> Result<Vec<CollectionSpec>> {
        Ok(self.engine().collections().await?)
    }

    /// A typed handle: payloads are `T` encoded with bincode.
    pub fn collection<T>(&self, name: &str) -> Result<Collection<T>> {
        Ok(Collection {
            raw: self.raw(name)?,
            _payload: PhantomData,
        })
    }

    /// An untyped handle: payloads are bytes.
    pub fn raw(&self, name: &str) -> Result<RawCollection> {
        Ok(RawCollection {
            store: self.clone(),
            name: CollectionName::new(name)?,
        })
    }

    /// This device's persistent id.
    pub fn device_id(&self) -> DeviceId {
        self.engine().store().device_id()
    }

    /// Whether a cloud URL is configured.
    pub fn cloud_configured(&self) -> bool {
        self.inner.cloud_url.is_some()
    }

    /// Counts per collection, outbox depth, cache figures and the (redacted) cloud.
    pub async fn status(&self) -> Result<Status> {
        let local = self.engine().status().await?;
        let collections = local
            .specs
            .iter()
            .map(|spec| CollectionStatus {
                name: spec.name.clone(),
                vector: spec.vector,
                records: local.records.get(&spec.name).copied().unwrap_or(0),
                indexed: local.indexed.get(&spec.name).copied().unwrap_or(0),
                index_restored: local.restored.contains(&spec.name),
            })
            .collect();
        Ok(Status {
            device_id: self.device_id(),
            data_dir: self
                .engine()
                .store()
                .path()
                .parent()
                .map(PathBuf::from)
                .unwrap_or_default(),
            collections,
            outbox: local.outbox,
            cache: local.cache,
            cloud: self.inner.cloud_url.as_ref().map(CloudUrl::redacted),
            history: self.history(5).await?,
        })
    }

    /// The figures the metrics endpoint exports, as a value.
    pub async fn metrics(&self) -> Result<SyncMetrics> {
        let status = self.status().await?;
        let sync = self.sync_status();
        let reads = status.cache.hits + status.cache.misses;
        Ok(SyncMetrics {
            cache_hits: status.cache.hits,
            cache_misses: status.cache.misses,
            cache_hit_rate: if reads == 0 {
                0.0
            } else {
                status.cache.hits as f64 / reads as f64
            },
            cache_entries: status.cache.entries,
            queue: status.outbox.by_priority,
            failed: status.outbox.failed,
            synced_total: status.outbox.done,
            last_sync_ms: status.outbox.last_shipped_ms,
            circuit: sync.as_ref().map(|s| s.circuit),
            pool_size: sync.as_ref().map_or(0, |s| s.pool.0),
            pool_max: sync.as_ref().map_or(0, |s| s.pool.1),
            pool_load: sync.as_ref().map_or(0.0, |s| s.pool_load),
        })
    }

    fn syncer(&self) -> Result<&Arc<Syncer<SqliteStore, PostgresSink>>> {
        self.inner.syncer.as_ref().ok_or(crate::Error::NoCloud)
    }

    /// Starts the background drain and health loops (idempotent). Writes nudge the
    /// drain; it also runs every sync interval and picks up entries other processes
    /// wrote to the same data directory.
    pub async fn start_sync(&self) -> Result<()> {
        let syncer = self.syncer()?;
        let mut running = self.inner.running.lock().await;
        if running.is_none() {
            *running = Some(syncer.start());
        }
        Ok(())
    }

    /// Ships everything pending now; returns how many entries are still pending or in
    /// flight when `timeout` passes (0 when all reached the cloud).
    pub async fn flush(&self, timeout: std::time::Duration) -> Result<u64> {
        Ok(self.syncer()?.flush(timeout).await?)
    }

    /// The drain's state, when a cloud is configured.
    pub fn sync_status(&self) -> Option<SyncStatus> {
        self.inner.syncer.as_ref().map(|s| s.status())
    }

    /// Whether the cloud answers a health check within `timeout`; `None` without a cloud.
    pub async fn cloud_reachable(&self, timeout: std::time::Duration) -> Option<bool> {
        let syncer = self.inner.syncer.as_ref()?;
        let check = hybridsync_core::CloudSink::health_check(&**syncer.sink());
        Some(matches!(
            tokio::time::timeout(timeout, check).await,
            Ok(Ok(()))
        ))
    }

    /// Checks that the cloud holds the schema this build expects.
    pub async fn verify_cloud_schema(&self) -> Result<()> {
        Ok(self.syncer()?.sink().verify_schema().await?)
    }

    /// Events from the drain (record synced or failed, circuit changes, errors).
    pub fn subscribe(
        &self,
    ) -> Result<tokio::sync::broadcast::Receiver<hybridsync_core::SyncEvent>> {
        Ok(self.syncer()?.subscribe())
    }

    /// Registers this device in the cloud under `name` (or renames it).
    pub async fn register_device(&self, name: &str) -> Result<()> {
        let sink = self.syncer()?.sink();
        Ok(hybridsync_core::CloudSink::register_device(&**sink, self.device_id(), name).await?)
    }

    /// Every device of this tenant.
    pub async fn devices(&self) -> Result<Vec<hybridsync_core::DeviceInfo>> {
        Ok(hybridsync_core::CloudSink::list_devices(&**self.syncer()?.sink()).await?)
    }

    /// Removes a device from the cloud's list; false when it was not registered.
    pub async fn deregister_device(&self, id: DeviceId) -> Result<bool> {
        Ok(hybridsync_core::CloudSink::deregister_device(&**self.syncer()?.sink(), id).await?)
    }

    fn replicator(&self) -> Result<&Arc<Replicator<SqliteStore, UsearchCache, PostgresSink>>> {
        self.inner.replicator.as_ref().ok_or(crate::Error::NoCloud)
    }

    fn names(&self, collections: &[&str]) -> Result<Vec<CollectionName>> {
        Ok(collections
            .iter()
            .map(|name| CollectionName::new(*name))
            .collect::<std::result::Result<_, _>>()?)
    }

    /// Pushes every local record and collection definition of `collections` (all when
    /// empty) to the cloud: a one-way backup. `progress` gets a percentage and a message.
    pub async fn seed(
        &self,
        collections: &[&str],
        progress: impl Fn(f32, &str) + Send + Sync,
    ) -> Result<SyncReport> {
        let names = self.names(collections)?;
        Ok(self.replicator()?.seed(&names, &progress).await?)
    }

    /// Pulls every remote record of `collections` (all the cloud knows when empty),
    /// learning their definitions: a new device's restore. Resumes where an
    /// interrupted run stopped.
    pub async fn hydrate(
        &self,
        collections: &[&str],
        progress: impl Fn(f32, &str) + Send + Sync,
    ) -> Result<SyncReport> {
        let names = self.names(collections)?;
        Ok(self.replicator()?.hydrate(&names, &progress).await?)
    }

    /// Both ways: pulls remote changes (conflicts settled by the collection's resolver,
    /// else `strategy`), then pushes every pending local change.
    pub async fn sync(
        &self,
        collections: &[&str],
        strategy: Strategy,
        progress: impl Fn(f32, &str) + Send + Sync,
    ) -> Result<SyncReport> {
        let names = self.names(collections)?;
        Ok(self
            .replicator()?
            .sync(&names, &strategy, &progress)
            .await?)
    }

    /// Settles `collection`'s conflicts with a custom resolver (which may merge).
    pub fn set_resolver(
        &self,
        collection: &str,
        resolver: Arc<dyn hybridsync_core::ConflictResolver>,
    ) -> Result<()> {
        let name = CollectionName::new(collection)?;
        self.replicator()?.set_resolver(name, resolver);
        Ok(())
    }

    /// Starts syncing every collection both ways every `interval` (replacing a running
    /// auto-sync).
    pub async fn start_auto_sync(
        &self,
        interval: std::time::Duration,
        strategy: Strategy,
    ) -> Result<()> {
        let handle = self.replicator()?.start(interval, strategy);
        if let Some(old) = self.inner.auto_sync.lock().await.replace(handle) {
            old.shutdown().await;
        }
        Ok(())
    }

    /// Stops auto-sync (after its current round); a no-op when it is not running.
    pub async fn stop_auto_sync(&self) {
        if let Some(handle) = self.inner.auto_sync.lock().await.take() {
            handle.shutdown().await;
        }
    }

    /// The newest `limit` seed, hydrate and sync runs, newest first.
    pub async fn history(&self, limit: usize) -> Result<Vec<HistoryEntry>> {
        Ok(hybridsync_core::LocalStore::history(&**self.engine().store(), limit).await?)
    }

    /// Deletes shipped outbox entries older than `age`; returns how many.
    pub async fn clear_completed(&self, age: std::time::Duration) -> Result<u64> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let before = now.saturating_sub(age).as_millis().min(u64::MAX as u128) as u64;
        Ok(hybridsync_core::LocalStore::clear_done(&**self.engine().store(), before).await?)
    }

    /// Moves every failed outbox entry back to pending; returns how many.
    pub async fn retry_failed(&self) -> Result<u64> {
        Ok(hybridsync_core::LocalStore::retry_failed(&**self.engine().store()).await?)
    }

    /// Deletes failed outbox entries (their changes will not be shipped); returns how many.
    pub async fn clear_failed(&self) -> Result<u64> {
        Ok(hybridsync_core::LocalStore::clear_failed(&**self.engine().store()).await?)
    }

    /// Stops the background loops, ships what it can within `deadline`, returns
    /// entries still in flight to pending, and closes every connection.
    pub async fn shutdown(&self, deadline: std::time::Duration) -> Result<u64> {
        let mut left = 0;
        self.stop_auto_sync().await;
        if let Some(handle) = self.inner.running.lock().await.take() {
            handle.shutdown().await;
        }
        if let Some(syncer) = &self.inner.syncer {
            left = syncer.flush(deadline).await.unwrap_or_else(|e| {
                tracing::warn!(error = %e, "final flush failed; the outbox keeps the rest");
                u64::MAX
            });
            hybridsync_core::LocalStore::requeue_in_flight(&**self.engine().store()).await?;
            syncer.sink().close().await;
        }
        self.close().await;
        Ok(left)
    }

    /// Saves the vector indexes (so the next open restores them instead of building
    /// them) and closes the database connections (checkpointing the WAL). A snapshot
    /// that cannot be written is logged and skipped: the next open builds the index.
    pub async fn close(&self) {
        if let Err(e) = self.save_indexes().await {
            tracing::warn!(error = %e, "vector index snapshot not saved");
        }
        self.engine().store().close().await;
    }

    /// Saves every vector index to `<data dir>/indexes` with a description of what it
    /// holds; `open` restores an index from there when the store still holds exactly
    /// that, and builds it otherwise. `close` calls this; long-running processes may
    /// call it now and then so a restart after a crash is fast too.
    pub async fn save_indexes(&self) -> Result<()> {
        Ok(self.engine().save_indexes().await?)
    }

    fn key(&self, key: &str) -> Result<Key> {
        Ok(Key::with_limits(key, self.engine().store().limits())?)
    }
}

/// An untyped collection handle: payloads are bytes.
#[derive(Debug, Clone)]
pub struct RawCollection {
    store: HybridStore,
    name: CollectionName,
}

impl RawCollection {
    /// The collection's name.
    pub fn name(&self) -> &CollectionName {
        &self.name
    }

    /// Writes `payload` under `key`; returns the new version once it is durable locally.
    pub async fn put(&self, key: &str, payload: Vec<u8>, options: WriteOptions) -> Result<Hlc> {
        let request = WriteRequest::put(
            self.name.clone(),
            self.store.key(key)?,
            payload,
            options.embedding,
        )
        .with_priority(options.priority);
        Ok(self.store.engine().put(request).await?.record.version)
    }

    /// Writes many records in one transaction: all or nothing.
    pub async fn put_many(&self, items: Vec<(String, Vec<u8>, WriteOptions)>) -> Result<Vec<Hlc>> {
        let requests = items
            .into_iter()
            .map(|(key, payload, options)| {
                Ok(WriteRequest::put(
                    self.name.clone(),
                    self.store.key(&key)?,
                    payload,
                    options.embedding,
                )
                .with_priority(options.priority))
            })
            .collect::<Result<Vec<_>>>()?;
        let receipts = self.store.engine().write(requests).await?;
        Ok(receipts.into_iter().map(|r| r.record.version).collect())
    }

    /// The payload under `key`, if it exists and is not deleted.
    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.get_record(key).await?.map(|r| r.payload.clone()))
    }

    /// The whole record under `key` (payload, embedding, version), if live.
    pub async fn get_record(&self, key: &str) -> Result<Option<Arc<hybridsync_core::Record>>> {
        let engine = self.store.engine();
        // A hot-cache hit needs no owned key: validate in place and look it up.
        Key::check(key, engine.store().limits())?;
        if let Some(record) = engine.get_cached(&self.name, key) {
            return Ok((!record.tombstone).then_some(record));
        }
        Ok(engine.get(&self.name, &self.store.key(key)?).await?)
    }

    /// Deletes `key` (a versioned tombstone that will reach the cloud).
    pub async fn delete(&self, key: &str, priority: Priority) -> Result<Hlc> {
        let receipt = self
            .store
            .engine()
            .delete(self.name.clone(), self.store.key(key)?, priority)
            .await?;
        Ok(receipt.record.version)
    }

    /// The `k` nearest keys to `query`, nearest first. In an i8 collection the index's
    /// `2 × k` best candidates are re-ranked by exact distance over their stored f32
    /// vectors (quantisation alone loses about a tenth of the true top 10).
    pub async fn search(&self, query: &[f32], k: usize) -> Result<Vec<VectorHit>> {
        Ok(self
            .store
            .engine()
            .search(&self.name, query, k, SearchOptions::default())
            .await?)
    }

    /// Like [`RawCollection::search`], re-ranked by exact f32 distance over
    /// `rerank_factor × k` candidates (0 or 1: the index's answer as it is, even for
    /// an i8 collection).
    pub async fn search_exact_rerank(
        &self,
        query: &[f32],
        k: usize,
        rerank_factor: usize,
    ) -> Result<Vec<VectorHit>> {
        Ok(self
            .store
            .engine()
            .search(
                &self.name,
                query,
                k,
                SearchOptions {
                    rerank_factor: Some(rerank_factor),
                },
            )
            .await?)
    }

    /// Up to `limit` live records after `after`, in key order.
    pub async fn list(&self, after: Option<&str>, limit: usize) -> Result<Vec<(Key, Vec<u8>)>> {
        let after = after.map(|k| self.store.key(k)).transpose()?;
        let records = self
            .store
            .engine()
            .list(&self.name, after.as_ref(), limit)
            .await?;
        Ok(records.into_iter().map(|r| (r.key, r.payload)).collect())
    }
}

/// A typed collection handle: payloads are `T`, encoded with bincode.
#[derive(Debug)]
pub struct Collection<T> {
    raw: RawCollection,
    _payload: PhantomData<fn() -> T>,
}

impl<T> Clone for Collection<T> {
    fn clone(&self) -> Self {
        Self {
            raw: self.raw.clone(),
            _payload: PhantomData,
        }
    }
}

impl<T: serde::Serialize + serde::de::DeserializeOwned> Collection<T> {
    /// The untyped handle underneath.
    pub fn raw(&self) -> &RawCollection {
        &self.raw
    }

    /// Writes `value` under `key`.
    pub async fn put(&self, key: &str, value: &T) -> Result<Hlc> {
        self.put_with(key, value, WriteOptions::default()).await
    }

    /// Writes `value` under `key` with an embedding and/or a priority.
    pub async fn put_with(&self, key: &str, value: &T, options: WriteOptions) -> Result<Hlc> {
        self.raw.put(key, encode_payload(value)?, options).await
    }

    /// The value under `key`; a payload that does not decode as `T` is
    /// [`hybridsync_core::Error::Decode`].
    pub async fn get(&self, key: &str) -> Result<Option<T>> {
        match self.raw.get(key).await? {
            Some(bytes) => Ok(Some(decode_payload(&bytes)?)),
            None => Ok(None),
        }
    }

    /// Deletes `key`.
    pub async fn delete(&self, key: &str) -> Result<Hlc> {
        self.raw.delete(key, Priority::Normal).await
    }

    /// The `k` nearest keys to `query`.
    pub async fn search(&self, query: &[f32], k: usize) -> Result<Vec<VectorHit>> {
        self.raw.search(query, k).await
    }

    /// Up to `limit` live values after `after`, in key order.
    pub async fn list(&self, after: Option<&str>, limit: usize) -> Result<Vec<(Key, T)>> {
        self.raw
            .list(after, limit)
            .await?
            .into_iter()
            .map(|(key, bytes)| Ok((key, decode_payload(&bytes)?)))
            .collect()
    }
}
