//! `HybridStore`, its builder and the typed and untyped collection handles: thin typed
//! handles over one shared [`Runtime`], which owns the engine, the cloud and their
//! lifecycle.

use crate::publish::{Publisher, RedisTarget};
use crate::{Config, Result};
use hybridsync_core::{
    Clock, CloudSink, CloudUrl, CollectionName, CollectionSpec, DeviceId, DeviceInfo,
    EncryptionKey, HistoryEntry, Hlc, HotCacheStats, Key, KeyId, Keyring, Limits, LocalStore,
    OutboxStats, Pooler, Priority, Record, Strategy, SyncEvent, VectorCache, VectorHit, VectorSpec,
    WriteRequest, decode_payload, encode_payload,
};
use hybridsync_engine::{
    Engine, EngineConfig, Runtime, RuntimeConfig, SearchOptions, SyncConfig, SyncReport,
    SyncStatus, VerifyOptions, VerifyReport, WarmingConfig, WarmingStats,
};
use hybridsync_store::{Durability, SqliteStore, StoreOptions};
use hybridsync_telemetry::SyncMetrics;
use hybridsync_vector::HotCache;
use std::marker::PhantomData;
use std::path::PathBuf;
use std::sync::Arc;

/// The runtime the facade drives: the SQLite store, whichever vector index and cloud
/// sink this build has (behind cargo features), and the hot cache.
type HybridRuntime = Runtime<SqliteStore, dyn VectorCache, dyn CloudSink>;

/// Configures and opens a [`HybridStore`].
#[derive(Debug, Clone)]
pub struct HybridStoreBuilder {
    store: StoreOptions,
    engine: EngineConfig,
    hot_entries: usize,
    hot_bytes: usize,
    cloud_url: Option<CloudUrl>,
    tenant: String,
    max_connections: u32,
    application_name: String,
    pooler: Pooler,
    listen_url: Option<CloudUrl>,
    idle_in_transaction_timeout: Option<std::time::Duration>,
    poll_interval: Option<std::time::Duration>,
    gauge_interval: Option<std::time::Duration>,
    sync: SyncConfig,
    clock: Option<Arc<dyn Clock>>,
    encryption_key: Option<EncryptionKey>,
    previous_keys: Vec<EncryptionKey>,
    redis: Option<RedisTarget>,
    vector_index: VectorIndex,
    vector_ef: usize,
}

/// Which HNSW implementation indexes vector collections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum VectorIndex {
    /// Ours (the default): at equal recall it searches faster than usearch on the same
    /// graph parameters (`docs/benchmarks.md`).
    #[default]
    Hnsw,
    /// usearch, through its C++ library.
    Usearch,
}

impl std::str::FromStr for VectorIndex {
    type Err = hybridsync_core::Error;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s {
            "hnsw" => Ok(Self::Hnsw),
            "usearch" => Ok(Self::Usearch),
            other => Err(hybridsync_core::Error::Parse {
                what: "vector.index (hnsw or usearch)",
                value: other.into(),
            }),
        }
    }
}

impl HybridStoreBuilder {
    /// Applies a [`Config`] (file and environment); unset fields keep their values.
    pub fn config(mut self, config: &Config) -> Result<Self> {
        if let Some(dir) = &config.data_dir {
            self.store.data_dir = dir.clone();
            self.engine.snapshot_dir = Some(dir.join("indexes"));
        }
        if let Some(url) = &config.cloud_url {
            self.cloud_url = Some(url.clone());
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
            self.hot_entries = n;
        }
        if let Some(n) = config.cache.bytes {
            self.hot_bytes = n;
        }
        let warming = &config.cache.warming;
        let mut settings = self.engine.warming.clone();
        if let Some(on) = warming.enabled {
            settings.enabled = on;
        }
        if let Some(ms) = warming.interval_ms {
            settings.interval = std::time::Duration::from_millis(ms);
        }
        if let Some(threshold) = warming.threshold {
            settings.threshold = threshold;
        }
        if let Some(n) = warming.top_k {
            settings.top_k = n;
        }
        if let Some(n) = warming.max_keys {
            settings.max_keys = n;
        }
        self = self.warming(settings)?;
        if let Some(index) = &config.vector.index {
            self.vector_index = index.parse()?;
        }
        if let Some(ef) = config.vector.ef {
            self.vector_ef = ef;
        }
        if let Some(tenant) = &config.cloud.tenant {
            self.tenant = tenant.clone();
        }
        if let Some(n) = config.cloud.max_connections {
            self.max_connections = n;
        }
        if let Some(pooler) = &config.cloud.pooler {
            self.pooler = pooler.parse()?;
        }
        if let Some(url) = &config.cloud.listen_url {
            self.listen_url = Some(url.clone());
        }
        if let Some(ms) = config.cloud.idle_in_transaction_timeout_ms {
            self.idle_in_transaction_timeout = Some(std::time::Duration::from_millis(ms));
        }
        if let Some(ms) = config.cloud.poll_interval_ms {
            self.poll_interval = Some(std::time::Duration::from_millis(ms));
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
        if let Some(path) = &config.encryption.key_file {
            self.encryption_key = Some(read_key_file(path)?);
        }
        for path in &config.encryption.previous_key_files {
            self.previous_keys.push(read_key_file(path)?);
        }
        if let Some(url) = &config.redis.url {
            self = self.redis_url(url.expose());
        }
        if let (Some(secs), Some(target)) = (config.redis.ttl_secs, self.redis.as_mut()) {
            target.ttl = std::time::Duration::from_secs(secs.max(1));
        }
        Ok(self)
    }

    /// The key that seals encrypted collections on their way to the cloud (and opens
    /// what it sealed). Without one, an encrypted collection works locally and its
    /// changes wait in the outbox, parked with a typed error, until a key is set.
    pub fn encryption_key(mut self, key: EncryptionKey) -> Self {
        self.encryption_key = Some(key);
        self
    }

    /// A key rotated out: it no longer seals, and still opens rows it sealed until
    /// [`HybridStore::reencrypt`] has rewritten them under the current key.
    pub fn previous_encryption_key(mut self, key: EncryptionKey) -> Self {
        self.previous_keys.push(key);
        self
    }

    /// [`Self::encryption_key`] from a key file: 32 raw bytes, or 64 hex digits.
    pub fn encryption_key_file(self, path: impl AsRef<std::path::Path>) -> Result<Self> {
        Ok(self.encryption_key(read_key_file(path.as_ref())?))
    }

    fn keyring(&mut self) -> Result<Option<Keyring>> {
        let previous = std::mem::take(&mut self.previous_keys);
        match self.encryption_key.take() {
            Some(current) => Ok(Some(
                previous
                    .into_iter()
                    .fold(Keyring::new(current), Keyring::with_previous),
            )),
            None if previous.is_empty() => Ok(None),
            None => Err(crate::Error::KeyFile {
                path: PathBuf::new(),
                reason: "previous encryption keys are set without a current one".into(),
            }),
        }
    }

    /// The data directory (created 0700 if missing).
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.store.data_dir = dir.into();
        self.engine.snapshot_dir = Some(self.store.data_dir.join("indexes"));
        self
    }

    /// The cloud PostgreSQL URL. Optional: without one the store runs local-only and
    /// keeps every change in the outbox for later. Needs the `cloud-postgres` feature
    /// (`open` refuses a URL without it).
    pub fn cloud_url(mut self, url: impl Into<String>) -> Self {
        self.cloud_url = Some(CloudUrl::new(url));
        self
    }

    /// Publish this instance's figures to Redis, under
    /// `hybridsync:{tenant}:{device}:…` with a TTL of 1 h, for `hybridsync top`. Needs
    /// the `redis` feature (`open` refuses a URL without it). Publishing never waits
    /// on the read or write paths, and a Redis that is absent or dies costs nothing
    /// but failed publishes (counted in `hybridsync_redis_publishes_total`).
    pub fn redis_url(mut self, url: impl Into<String>) -> Self {
        self.redis = Some(RedisTarget {
            url: CloudUrl::new(url),
            ttl: std::time::Duration::from_secs(3600),
        });
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

    /// What the cloud URL reaches: PostgreSQL itself (default) or a PgBouncer in
    /// transaction pooling mode.
    pub fn pooler(mut self, pooler: Pooler) -> Self {
        self.pooler = pooler;
        self
    }

    /// A direct session URL for `LISTEN` (one connection), for a cloud URL that goes
    /// through a transaction pooler. Without it such a device polls for changes.
    pub fn listen_url(mut self, url: impl Into<String>) -> Self {
        self.listen_url = Some(CloudUrl::new(url));
        self
    }

    /// How often a device that cannot `LISTEN` looks for other devices' changes
    /// (default 2 s).
    pub fn poll_interval(mut self, interval: std::time::Duration) -> Self {
        self.poll_interval = Some(interval);
        self
    }

    /// How long a transaction may sit idle after its upsert before the server ends the
    /// session (default 5 s; zero keeps the server's setting).
    pub fn idle_in_transaction_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.idle_in_transaction_timeout = Some(timeout);
        self
    }

    /// SQLite reader connections for scans (default 4; each is a thread). A small device,
    /// or many stores in one process, does well with 1.
    pub fn readers(mut self, readers: u32) -> Self {
        self.store.readers = readers.max(1);
        self
    }

    /// How often the gauges (queue depth, pool, circuit, ...) are refreshed (default
    /// 1 s); each refresh reads the outbox's counts.
    pub fn gauge_interval(mut self, every: std::time::Duration) -> Self {
        self.gauge_interval = Some(every);
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
        self.hot_entries = entries;
        self.hot_bytes = bytes;
        self
    }

    /// Predictive warming of the hot cache (on by default: a round every 60 s loads
    /// the reads it predicts for the next minute). Refuses a threshold outside 0–1,
    /// and a zero interval, `top_k` or `max_keys`, by name.
    pub fn warming(mut self, warming: WarmingConfig) -> Result<Self> {
        let refuse = |what: &'static str, value: String| {
            Err(hybridsync_core::Error::Parse { what, value }.into())
        };
        if !(0.0..=1.0).contains(&warming.threshold) {
            return refuse(
                "cache.warming.threshold (0 to 1)",
                warming.threshold.to_string(),
            );
        }
        if warming.interval.is_zero() {
            return refuse("cache.warming.interval_ms (at least 1)", "0".into());
        }
        if warming.top_k == 0 {
            return refuse("cache.warming.top_k (at least 1)", "0".into());
        }
        if warming.max_keys == 0 {
            return refuse("cache.warming.max_keys (at least 1)", "0".into());
        }
        self.engine.warming = warming;
        Ok(self)
    }

    /// The index of vector collections, and the breadth of a search's walk (`ef`; 0 =
    /// the index's default). A wider walk finds more of the true nearest, slower.
    pub fn vector_index(mut self, index: VectorIndex, ef: usize) -> Self {
        self.vector_index = index;
        self.vector_ef = ef;
        self
    }

    /// The one clock of the store's version stamps, the drain's retry schedule and
    /// breaker, and sync history (tests inject a manual one).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.store.clock = clock.clone();
        self.clock = Some(clock);
        self
    }

    /// Opens the store, checks the file, and builds the vector indexes.
    pub async fn open(mut self) -> Result<HybridStore> {
        let keyring = self.keyring()?;
        if let Some(target) = &self.redis {
            crate::publish::check(target)?;
        }
        // Lazy: nothing here waits on the network.
        let sink = match &self.cloud_url {
            None => None,
            Some(url) => Some(cloud_sink(url, &self)?),
        };
        let data_dir = self.store.data_dir.clone();
        let store = Arc::new(SqliteStore::open(self.store).await?);
        let hot = Arc::new(HotCache::new(self.hot_entries, self.hot_bytes));
        let engine = Engine::open(
            store,
            vector_index(self.vector_index, self.vector_ef),
            hot,
            self.engine,
        )
        .await;
        let engine = match engine {
            Ok(engine) => Arc::new(engine),
            Err(e) => return Err(e.into()),
        };
        let mut config = RuntimeConfig {
            sync: self.sync,
            keyring,
            ..RuntimeConfig::default()
        };
        if let Some(clock) = self.clock {
            config.clock = clock;
        }
        if let Some(every) = self.gauge_interval {
            config.gauge_interval = every;
        }
        let key_ids = config
            .keyring
            .as_ref()
            .map(Keyring::ids)
            .unwrap_or_default();
        let device = engine.store().device_id();
        let runtime = Runtime::new(engine, sink, config);
        let publisher = match &self.redis {
            None => None,
            Some(target) => Some(crate::publish::start(
                target,
                &self.tenant,
                device,
                runtime.watch_metrics(),
            )?),
        };
        Ok(HybridStore {
            inner: Arc::new(Inner {
                key_ids,
                runtime,
                cloud_url: self.cloud_url,
                data_dir,
                publisher: std::sync::Mutex::new(publisher),
            }),
        })
    }
}

/// Reads a key file (32 raw bytes, or 64 hex digits). A file others may read is
/// accepted with a warning: the key is the one thing standing between the cloud and
/// the plaintext.
fn read_key_file(path: &std::path::Path) -> Result<EncryptionKey> {
    let fail = |reason: String| crate::Error::KeyFile {
        path: path.to_owned(),
        reason,
    };
    let contents = zeroize::Zeroizing::new(std::fs::read(path).map_err(|e| fail(e.to_string()))?);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)
            .map_err(|e| fail(e.to_string()))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            tracing::warn!(path = %path.display(), mode = format!("{:o}", mode & 0o777), "the encryption key file is readable by others; chmod 600 it");
        }
    }
    EncryptionKey::parse(&contents).map_err(|e| fail(e.to_string()))
}

/// The vector indexes, with the `vector` feature.
#[cfg(feature = "vector")]
fn vector_index(index: VectorIndex, ef: usize) -> Option<Arc<dyn VectorCache>> {
    let options = hybridsync_vector::VectorOptions {
        expansion_search: ef,
        ..hybridsync_vector::VectorOptions::default()
    };
    Some(match index {
        VectorIndex::Hnsw => Arc::new(hybridsync_vector::HnswCache::new(options)),
        VectorIndex::Usearch => Arc::new(hybridsync_vector::UsearchCache::new(options)),
    })
}

/// Without the `vector` feature there is no index: vector collections are refused.
#[cfg(not(feature = "vector"))]
fn vector_index(_: VectorIndex, _: usize) -> Option<Arc<dyn VectorCache>> {
    None
}

/// The PostgreSQL sink, with the `cloud-postgres` feature. Lazy: nothing here waits on
/// the network.
#[cfg(feature = "cloud-postgres")]
fn cloud_sink(url: &CloudUrl, builder: &HybridStoreBuilder) -> Result<Arc<dyn CloudSink>> {
    let mut options = hybridsync_cloud::CloudOptions::new(url.clone(), &builder.tenant);
    options.max_connections = builder.max_connections;
    options.application_name = builder.application_name.clone();
    options.min_connections = options.min_connections.min(builder.max_connections);
    options.pooler = builder.pooler;
    options.listen_url = builder.listen_url.clone();
    if let Some(timeout) = builder.idle_in_transaction_timeout {
        options.idle_in_transaction_timeout = timeout;
    }
    if let Some(interval) = builder.poll_interval {
        options.poll_interval = interval;
    }
    Ok(Arc::new(hybridsync_cloud::PostgresSink::new(options)?))
}

/// Without the `cloud-postgres` feature a cloud URL is refused at open.
#[cfg(not(feature = "cloud-postgres"))]
fn cloud_sink(url: &CloudUrl, _: &HybridStoreBuilder) -> Result<Arc<dyn CloudSink>> {
    Err(crate::Error::CloudUnavailable {
        url: url.redacted(),
    })
}

#[derive(Debug)]
pub(crate) struct Inner {
    runtime: HybridRuntime,
    cloud_url: Option<CloudUrl>,
    data_dir: PathBuf,
    key_ids: Vec<KeyId>,
    /// The Redis publisher, while there is one.
    publisher: std::sync::Mutex<Option<Publisher>>,
}

/// A local-first store: SQLite for durability, usearch for similarity search, an
/// outbox for the cloud. Cheap to clone; every clone shares the same store.
#[derive(Debug, Clone)]
pub struct HybridStore {
    pub(crate) inner: Arc<Inner>,
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
    /// The encryption keys this device holds, the one that seals first (empty
    /// without a key).
    pub key_ids: Vec<KeyId>,
    /// The newest seed, hydrate and sync runs, newest first.
    pub history: Vec<HistoryEntry>,
}

/// One collection in [`Status`].
#[derive(Debug, Clone)]
pub struct CollectionStatus {
    pub name: CollectionName,
    pub vector: Option<VectorSpec>,
    /// Whether what it sends to the cloud is encrypted first.
    pub encrypted: bool,
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
            hot_entries: 10_000,
            hot_bytes: 64 << 20,
            cloud_url: None,
            tenant: "default".into(),
            max_connections: 3,
            application_name: "hybridsync".into(),
            pooler: Pooler::Direct,
            listen_url: None,
            idle_in_transaction_timeout: None,
            poll_interval: None,
            gauge_interval: None,
            sync: SyncConfig::default(),
            clock: None,
            encryption_key: None,
            previous_keys: Vec::new(),
            redis: None,
            vector_index: VectorIndex::default(),
            vector_ef: 0,
        }
    }

    /// The data directory.
    pub fn data_dir(&self) -> &std::path::Path {
        &self.inner.data_dir
    }

    pub(crate) fn runtime(&self) -> &HybridRuntime {
        &self.inner.runtime
    }

    fn engine(&self) -> &Engine<SqliteStore, dyn VectorCache> {
        self.runtime().engine()
    }

    fn store(&self) -> &SqliteStore {
        self.engine().store()
    }

    /// Declares a collection, with a vector spec for similarity search. Idempotent for
    /// the same spec; a different spec for an existing name is an error.
    pub async fn create_collection(&self, name: &str, vector: Option<VectorSpec>) -> Result<()> {
        self.declare(name, vector, false).await
    }

    /// Declares a collection whose payloads and embeddings leave this device only
    /// encrypted (see [`HybridStoreBuilder::encryption_key`]). Locally it is like any
    /// other: plaintext rows, the same reads and searches.
    pub async fn create_encrypted_collection(
        &self,
        name: &str,
        vector: Option<VectorSpec>,
    ) -> Result<()> {
        self.declare(name, vector, true).await
    }

    async fn declare(&self, name: &str, vector: Option<VectorSpec>, encrypted: bool) -> Result<()> {
        let spec = CollectionSpec {
            name: CollectionName::new(name)?,
            vector,
            encrypted,
        };
        Ok(self.engine().create_collection(spec).await?)
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
        self.store().device_id()
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
                encrypted: spec.encrypted,
                records: local.records.get(&spec.name).copied().unwrap_or(0),
                indexed: local.indexed.get(&spec.name).copied().unwrap_or(0),
                index_restored: local.restored.contains(&spec.name),
            })
            .collect();
        Ok(Status {
            device_id: self.device_id(),
            data_dir: self
                .store()
                .path()
                .parent()
                .map(PathBuf::from)
                .unwrap_or_default(),
            collections,
            outbox: local.outbox,
            cache: local.cache,
            cloud: self.inner.cloud_url.as_ref().map(CloudUrl::redacted),
            key_ids: self.inner.key_ids.clone(),
            history: self.history(5).await?,
        })
    }

    /// The hot cache's counters (hits, misses, entries, bytes, prefetches), without
    /// touching the store.
    pub fn cache_stats(&self) -> HotCacheStats {
        self.engine().cache_stats()
    }

    /// What predictive warming has done: predictions, prefetches, the reads they
    /// served, accuracy and the memory it holds (`enabled` false when it is off).
    pub fn warming_stats(&self) -> WarmingStats {
        self.engine().warming_stats()
    }

    /// The figures the metrics endpoint exports, as a value.
    pub async fn metrics(&self) -> Result<SyncMetrics> {
        Ok(self.runtime().metrics().await?)
    }

    /// Starts the background drain and health loops (idempotent). Writes nudge the
    /// drain; it also runs every sync interval and picks up entries other processes
    /// wrote to the same data directory.
    pub async fn start_sync(&self) -> Result<()> {
        Ok(self.runtime().start_sync().await?)
    }

    /// Ships everything pending now; returns how many entries are still pending or in
    /// flight when `timeout` passes (0 when all reached the cloud).
    pub async fn flush(&self, timeout: std::time::Duration) -> Result<u64> {
        Ok(self.runtime().flush(timeout).await?)
    }

    /// The drain's state, when a cloud is configured.
    pub fn sync_status(&self) -> Option<SyncStatus> {
        self.runtime().sync_status()
    }

    /// Whether the cloud answers a health check within `timeout`; `None` without a cloud.
    pub async fn cloud_reachable(&self, timeout: std::time::Duration) -> Option<bool> {
        self.runtime().cloud_reachable(timeout).await
    }

    /// Checks that the cloud holds the schema this build expects.
    pub async fn verify_cloud_schema(&self) -> Result<()> {
        Ok(self.runtime().verify_cloud_schema().await?)
    }

    /// Events from the drain (record synced or failed, circuit changes, errors).
    pub fn subscribe(&self) -> Result<tokio::sync::broadcast::Receiver<SyncEvent>> {
        Ok(self.runtime().syncer()?.subscribe())
    }

    /// Registers this device in the cloud under `name` (or renames it).
    pub async fn register_device(&self, name: &str) -> Result<()> {
        Ok(self.runtime().register_device(name).await?)
    }

    /// Every device of this tenant.
    pub async fn devices(&self) -> Result<Vec<DeviceInfo>> {
        Ok(self.runtime().devices().await?)
    }

    /// Removes a device from the cloud's list; false when it was not registered.
    pub async fn deregister_device(&self, id: DeviceId) -> Result<bool> {
        Ok(self.runtime().deregister_device(id).await?)
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
        Ok(self.runtime().replicator()?.seed(&names, &progress).await?)
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
        Ok(self
            .runtime()
            .replicator()?
            .hydrate(&names, &progress)
            .await?)
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
            .runtime()
            .replicator()?
            .sync(&names, &strategy, &progress)
            .await?)
    }

    /// Rotates encrypted collections to the current key: pulls them, rewrites every
    /// live record as a new version at deferred priority (the drain seals each with
    /// the current key, behind the application's own writes) and waits for the push.
    /// Afterwards the previous keys are needed only by devices that have not pulled
    /// since. Needs a cloud and an encryption key.
    pub async fn reencrypt(
        &self,
        progress: impl Fn(f32, &str) + Send + Sync,
    ) -> Result<SyncReport> {
        Ok(self.runtime().replicator()?.reencrypt(&progress).await?)
    }

    /// Checks that this device and the cloud hold the same data (R23), comparing a
    /// Merkle tree of each collection top-down so the work follows the differences;
    /// with `options.repair` it mends what differs and ships the result.
    pub async fn verify(&self, options: VerifyOptions) -> Result<VerifyReport> {
        Ok(self.runtime().replicator()?.verify(&options).await?)
    }

    /// Settles `collection`'s conflicts with a custom resolver (which may merge).
    pub fn set_resolver(
        &self,
        collection: &str,
        resolver: Arc<dyn hybridsync_core::ConflictResolver>,
    ) -> Result<()> {
        let name = CollectionName::new(collection)?;
        self.runtime().replicator()?.set_resolver(name, resolver);
        Ok(())
    }

    /// Starts syncing every collection both ways every `interval` (replacing a running
    /// auto-sync).
    pub async fn start_auto_sync(
        &self,
        interval: std::time::Duration,
        strategy: Strategy,
    ) -> Result<()> {
        Ok(self.runtime().start_auto_sync(interval, strategy).await?)
    }

    /// Stops auto-sync (after its current round); a no-op when it is not running.
    pub async fn stop_auto_sync(&self) {
        self.runtime().stop_auto_sync().await;
    }

    /// The newest `limit` seed, hydrate and sync runs, newest first.
    pub async fn history(&self, limit: usize) -> Result<Vec<HistoryEntry>> {
        Ok(self.store().history(limit).await?)
    }

    /// The `limit` queued entries whose last attempt failed, newest first (pending
    /// entries wait for a retry; failed ones are parked until `retry_failed`).
    pub async fn recent_errors(&self, limit: usize) -> Result<Vec<hybridsync_core::OutboxError>> {
        Ok(self.store().recent_errors(limit).await?)
    }

    /// Deletes shipped outbox entries older than `age`; returns how many.
    pub async fn clear_completed(&self, age: std::time::Duration) -> Result<u64> {
        let now = self.runtime().syncer().map_or_else(
            |_| hybridsync_core::SystemClock.now_ms(),
            |s| s.clock().now_ms(),
        );
        let before = now.saturating_sub(u64::try_from(age.as_millis()).unwrap_or(u64::MAX));
        Ok(self.store().clear_done(before).await?)
    }

    /// Moves every failed outbox entry back to pending; returns how many.
    pub async fn retry_failed(&self) -> Result<u64> {
        Ok(self.store().retry_failed().await?)
    }

    /// Deletes failed outbox entries (their changes will not be shipped); returns how many.
    pub async fn clear_failed(&self) -> Result<u64> {
        Ok(self.store().clear_failed().await?)
    }

    /// Stops the background loops, ships what it can within `deadline`, returns
    /// entries still in flight to pending, closes the cloud connections, saves the
    /// vector indexes and closes the store: once, for every clone of this store.
    /// Returns how many entries are still queued for the cloud.
    pub async fn shutdown(&self, deadline: std::time::Duration) -> Result<u64> {
        self.stop_publishing().await;
        Ok(self.runtime().shutdown(deadline).await?)
    }

    /// Stops the Redis publisher, if one runs, and removes this instance from Redis.
    async fn stop_publishing(&self) {
        let publisher = self
            .inner
            .publisher
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        crate::publish::stop(publisher).await;
    }

    /// What the Redis publisher has done (`None` without one).
    #[cfg(feature = "redis")]
    #[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
    pub fn redis_status(&self) -> Option<hybridsync_telemetry::PublisherStatus> {
        self.inner
            .publisher
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
            .map(Publisher::status)
    }

    /// [`Self::shutdown`] without shipping anything first: saves the vector indexes
    /// (so the next open restores them instead of building them) and closes the
    /// database connections. A snapshot that cannot be written is logged and skipped.
    pub async fn close(&self) {
        self.stop_publishing().await;
        if let Err(e) = self.runtime().shutdown(std::time::Duration::ZERO).await {
            tracing::warn!(error = %e, "closing the store failed");
        }
    }

    /// Saves every vector index to `<data dir>/indexes` with a description of what it
    /// holds; `open` restores an index from there when the store still holds exactly
    /// that, and builds it otherwise. `close` does this; long-running processes may
    /// call it now and then so a restart after a crash is fast too.
    pub async fn save_indexes(&self) -> Result<()> {
        Ok(self.engine().save_indexes().await?)
    }

    fn key(&self, key: &str) -> Result<Key> {
        Ok(Key::with_limits(key, self.store().limits())?)
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

    fn write_request(
        &self,
        key: &str,
        payload: Vec<u8>,
        options: WriteOptions,
    ) -> Result<WriteRequest> {
        Ok(WriteRequest::put(
            self.name.clone(),
            self.store.key(key)?,
            payload,
            options.embedding,
        )
        .with_priority(options.priority))
    }

    /// Writes `payload` under `key`; returns the new version once it is durable locally.
    pub async fn put(&self, key: &str, payload: Vec<u8>, options: WriteOptions) -> Result<Hlc> {
        let request = self.write_request(key, payload, options)?;
        Ok(self.store.engine().put(request).await?.record.version)
    }

    /// Writes many records in one transaction: all or nothing.
    pub async fn put_many(&self, items: Vec<(String, Vec<u8>, WriteOptions)>) -> Result<Vec<Hlc>> {
        let requests = items
            .into_iter()
            .map(|(key, payload, options)| self.write_request(&key, payload, options))
            .collect::<Result<Vec<_>>>()?;
        let receipts = self.store.engine().write(requests).await?;
        Ok(receipts.into_iter().map(|r| r.record.version).collect())
    }

    /// The payload under `key`, if it exists and is not deleted.
    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.get_record(key).await?.map(|r| r.payload.clone()))
    }

    /// The whole record under `key` (payload, embedding, version), if live.
    pub async fn get_record(&self, key: &str) -> Result<Option<Arc<Record>>> {
        Ok(self.store.engine().get(&self.name, key).await?)
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
        let options = SearchOptions {
            rerank_factor: Some(rerank_factor),
        };
        Ok(self
            .store
            .engine()
            .search(&self.name, query, k, options)
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
