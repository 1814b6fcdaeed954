//! The seams between the engine and its layers. The engine is generic over these, so
//! each layer can be tested alone and swapped.

use crate::{
    ApplyOutcome, CollectionName, CollectionSpec, ConflictResolver, HistoryEntry, Key, Priority,
    Record, Result, WriteReceipt, WriteRequest,
};
use std::collections::BTreeMap;

/// An outbox entry's state. Entries move pending → in-flight → done or failed; in-flight
/// entries return to pending when the store is reopened.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum OutboxState {
    Pending = 0,
    InFlight = 1,
    Done = 2,
    Failed = 3,
}

impl OutboxState {
    /// The integer a store keeps for this state.
    pub const fn code(self) -> i64 {
        self as i64
    }

    /// The state stored as `code`.
    pub fn from_code(code: i64) -> crate::Result<Self> {
        Self::ALL
            .into_iter()
            .find(|s| s.code() == code)
            .ok_or_else(|| crate::Error::Parse {
                what: "outbox state",
                value: code.to_string(),
            })
    }
}

crate::text::text_enum!(OutboxState, "outbox state", Pending => "pending", InFlight => "in_flight" | "in-flight", Done => "done", Failed => "failed");

/// Outbox depth per state and, for pending entries, per priority.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OutboxStats {
    pub pending: u64,
    pub in_flight: u64,
    pub failed: u64,
    pub done: u64,
    /// Pending and in-flight entries per priority class.
    pub by_priority: BTreeMap<Priority, u64>,
    /// When an entry last reached the cloud (ms since the epoch), by any process.
    pub last_shipped_ms: Option<u64>,
    /// Every entry per state and priority (shipped history included).
    #[serde(default)]
    pub by_state: BTreeMap<OutboxState, BTreeMap<Priority, u64>>,
}

/// A queued outbox entry whose last attempt failed: what `status --watch` lists as the
/// last errors.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct OutboxError {
    /// When the attempt failed (ms since the epoch).
    pub at_ms: u64,
    pub collection: String,
    pub key: String,
    /// Pending (to be retried) or failed (parked).
    pub state: OutboxState,
    pub attempts: u32,
    pub error: String,
}

/// A claimed outbox entry with the record's current state, ready to ship.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxEntry {
    pub id: i64,
    pub record: Record,
    pub priority: Priority,
    /// Failed attempts so far.
    pub attempts: u32,
}

/// What became of a claimed entry.
#[derive(Debug, Clone, PartialEq)]
pub enum OutboxOutcome {
    /// The cloud holds this state (or a newer one): done.
    Shipped,
    /// Try again no earlier than `next_attempt_ms`.
    Retry { error: String, next_attempt_ms: u64 },
    /// Parked as failed: kept, visible, retryable by hand.
    Failed { error: String },
    /// Claimed but never tried: back to pending as it was.
    Released,
}

/// The durable local store. Every acknowledged write is durable and has an outbox entry.
#[async_trait::async_trait]
pub trait LocalStore: Send + Sync + 'static {
    /// Every collection the store knows.
    async fn collections(&self) -> Result<Vec<CollectionSpec>>;
    /// Declares a collection; declaring the same spec again is a no-op, a different
    /// spec for an existing name is an error.
    async fn create_collection(&self, spec: &CollectionSpec) -> Result<()>;
    /// Applies the writes (puts and deletes) and their outbox entries in one
    /// transaction, stamping each with a fresh version. All or nothing.
    async fn write(&self, requests: Vec<WriteRequest>) -> Result<Vec<WriteReceipt>>;
    /// The current record for a key, tombstones included.
    async fn get(&self, collection: &CollectionName, key: &Key) -> Result<Option<Record>>;
    /// Up to `limit` live records with keys after `after`, in key order.
    async fn list(
        &self,
        collection: &CollectionName,
        after: Option<&Key>,
        limit: usize,
    ) -> Result<Vec<Record>>;
    /// Every live embedding of a collection with its label and content hash, for
    /// building the index.
    async fn embeddings(&self, collection: &CollectionName) -> Result<Vec<StoredVector>>;
    /// The same rows without their embeddings (`embedding` is `None`): what checking a
    /// saved index against the store needs.
    async fn vector_labels(&self, collection: &CollectionName) -> Result<Vec<StoredVector>>;
    /// The stored embeddings of the records labelled `labels` (their vector labels),
    /// in that order: `None` for a label that is not a live record of `collection` with
    /// an embedding. Read from the store alone (an exact re-rank's candidates).
    async fn embeddings_of(
        &self,
        collection: &CollectionName,
        labels: &[u64],
    ) -> Result<Vec<Option<Vec<f32>>>>;
    /// Live records per collection.
    async fn counts(&self) -> Result<BTreeMap<CollectionName, u64>>;
    /// Outbox depth.
    async fn outbox_stats(&self) -> Result<OutboxStats>;
    /// Entries pending or in flight per priority: the part of [`Self::outbox_stats`]
    /// the per-class soft caps need, without counting the shipped history.
    async fn queue_depths(&self) -> Result<BTreeMap<Priority, u64>>;
    /// This store's persistent device id.
    fn device_id(&self) -> crate::DeviceId;
    /// The key and payload limits this store enforces.
    fn limits(&self) -> &crate::Limits;
    /// Closes the store's connections (checkpointing what it must). Later calls fail
    /// or do nothing; the engine's runtime calls it once, last.
    async fn close(&self) {}
    /// Claims up to `limit` pending entries due at `now_ms` whose priority is at least
    /// `most_urgent_only` (e.g. `High` claims critical and high), most urgent first,
    /// marking them in flight. Each comes with its record's current state.
    async fn claim_outbox(
        &self,
        limit: usize,
        now_ms: u64,
        most_urgent_only: Priority,
    ) -> Result<Vec<OutboxEntry>>;
    /// Settles claimed entries in one transaction. An entry that would return to
    /// pending or failed while a newer open entry exists for its record is superseded
    /// instead (the newer one ships the record's current state).
    async fn settle_outbox(&self, outcomes: Vec<(i64, OutboxOutcome)>) -> Result<()>;
    /// Returns every in-flight entry to pending (after a crash, or at shutdown).
    async fn requeue_in_flight(&self) -> Result<u64>;
    /// Moves every failed entry back to pending with its attempts reset.
    async fn retry_failed(&self) -> Result<u64>;
    /// Deletes failed entries (explicitly dropping them); returns how many.
    async fn clear_failed(&self) -> Result<u64>;
    /// Deletes shipped (done) outbox entries last updated before `before_ms` (ms since
    /// the epoch); returns how many.
    async fn clear_done(&self, before_ms: u64) -> Result<u64>;

    /// Up to `limit` records after `after` in key order, tombstones included (what a
    /// seed pushes).
    async fn scan(
        &self,
        collection: &CollectionName,
        after: Option<&Key>,
        limit: usize,
    ) -> Result<Vec<Record>>;
    /// Records in a collection, tombstones included.
    async fn count_all(&self, collection: &CollectionName) -> Result<u64>;
    /// Where this store's pull of `collection` stands in the cloud's change feed.
    async fn cursor(&self, collection: &CollectionName) -> Result<ChangeCursor>;
    /// Applies a page of remote changes and moves the collection's cursor to `next`, in
    /// one transaction. A remote row replaces the local one only if it is newer; a
    /// remote row meeting a pending local change is a conflict, settled with
    /// [`crate::resolve`] and `resolver`, and a result that must win everywhere is
    /// written as a new local version (queued for the cloud). Applied remote rows are
    /// never queued for the cloud (no echo).
    async fn apply_remote(
        &self,
        collection: &CollectionName,
        records: Vec<Record>,
        next: &ChangeCursor,
        resolver: &dyn ConflictResolver,
    ) -> Result<ApplyOutcome>;
    /// The records with `keys` (tombstones included) as the consistency checker sees
    /// them, each with whether the device has a change of it not yet in the cloud
    /// (pending, in flight or failed).
    async fn digests(
        &self,
        collection: &CollectionName,
        keys: &[Key],
    ) -> Result<Vec<(crate::RowDigest, bool)>>;
    /// The device's level-1 nodes of the checker's tree (kept up to date by every
    /// write, so nothing is hashed at check time), by prefix; the root is their sum.
    async fn tree_top(
        &self,
        collection: &CollectionName,
    ) -> Result<BTreeMap<u32, crate::NodeDigest>>;
    /// The device's rows under the level-1 nodes `prefixes`, with the buckets and
    /// leaves stored when they were written, and the keys among them with a change not
    /// yet in the cloud: the deeper levels of the tree, read in one pass.
    async fn tree_under(
        &self,
        collection: &CollectionName,
        prefixes: &[u32],
    ) -> Result<(crate::LocalTree, std::collections::HashSet<Key>)>;
    /// Keys of the rows whose content no longer matches their stored hash, or whose
    /// stored tree digests no longer match the row (the checker's deep mode).
    async fn damaged_keys(&self, collection: &CollectionName) -> Result<Vec<Key>>;
    /// Appends to the sync history (the newest 1,000 entries are kept).
    async fn record_history(&self, entry: &HistoryEntry) -> Result<()>;
    /// The newest `limit` history entries, newest first.
    async fn history(&self, limit: usize) -> Result<Vec<HistoryEntry>>;
    /// The `limit` queued entries (pending or failed) that failed most recently, newest
    /// first.
    async fn recent_errors(&self, limit: usize) -> Result<Vec<OutboxError>>;
    /// Records a new migration, or starts an existing one again under the same id
    /// (state running, this process as its owner).
    async fn begin_migration(&self, info: &crate::MigrationInfo) -> Result<()>;
    /// A migration by id.
    async fn migration(&self, id: &str) -> Result<Option<crate::MigrationInfo>>;
    /// Every migration, oldest first.
    async fn migrations(&self) -> Result<Vec<crate::MigrationInfo>>;
    /// Marks a migration done or failed (`error`: why).
    async fn end_migration(
        &self,
        id: &str,
        state: crate::MigrationState,
        error: Option<&str>,
    ) -> Result<()>;
    /// Writes a batch of a migration in one transaction with its checkpoint: each
    /// record whose key already holds the same live content is skipped; every other is
    /// written as [`LocalStore::write`] does (a new version, an outbox entry at
    /// `priority`, the tree) and noted with what it replaced, so
    /// [`LocalStore::rollback_batch`] can undo it. The records come from
    /// [`Record::new`] (their hashes are trusted; their versions are assigned here) and
    /// are validated against their collection again.
    async fn import_batch(
        &self,
        records: Vec<Record>,
        priority: Priority,
        step: &crate::ImportStep,
    ) -> Result<crate::ImportOutcome>;
    /// Undoes up to `limit` more of a migration's writes in one transaction: a key it
    /// created becomes a tombstone, a key it overwrote gets its previous content back,
    /// each as a new version at `priority`; a key changed since is kept and listed.
    /// The migration is marked rolled back with the last step.
    async fn rollback_batch(
        &self,
        id: &str,
        limit: usize,
        priority: Priority,
    ) -> Result<crate::RollbackOutcome>;
}

/// Counters of a [`RecordCache`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HotCacheStats {
    pub hits: u64,
    pub misses: u64,
    pub entries: usize,
    pub bytes: usize,
    /// Records loaded ahead of a read by predictive warming.
    pub prefetched: u64,
    /// Hits on a record warming loaded, counted at the first read after the load.
    pub prefetch_hits: u64,
}

/// A bounded in-memory cache of recently read or written records, in front of the
/// store on the read path. Tombstones are cached too, so a read of a deleted key is a
/// hit. Synchronous and short: this is the hottest path of the library.
pub trait RecordCache: Send + Sync + std::fmt::Debug + 'static {
    /// The cached record, counting a hit, or a miss when it is absent.
    fn get(&self, collection: &CollectionName, key: &str) -> Option<std::sync::Arc<Record>>;
    /// Caches `record` unless a newer version of it is already cached.
    fn insert(&self, record: std::sync::Arc<Record>);
    /// Drops a key.
    fn remove(&self, collection: &CollectionName, key: &Key);
    /// Whether a key is cached, without counting a hit or a miss or refreshing it.
    fn contains(&self, collection: &CollectionName, key: &str) -> bool;
    /// Caches `record` ahead of a read (predictive warming), unless the key is already
    /// cached, or the cache is full and the entry it would evict is one `keep` says is
    /// hotter. Returns whether it was loaded; its first read is counted as a
    /// prefetch hit. A cache may keep an unread prefetched entry past one eviction.
    fn prefetch(&self, record: std::sync::Arc<Record>, keep: &dyn Fn(&Record) -> bool) -> bool;
    /// Hits, misses, entries and bytes.
    fn stats(&self) -> HotCacheStats;
}

/// A live vector as the store holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredVector {
    /// The record's stable vector label.
    pub label: u64,
    pub key: Key,
    /// The record's content hash (changes with any change to the record).
    pub hash: crate::ContentHash,
    pub embedding: Option<Vec<f32>>,
}

/// One search result.
#[derive(Debug, Clone, PartialEq)]
pub struct VectorHit {
    pub key: Key,
    /// The record's label in the index (its stable row id in the store).
    pub label: u64,
    pub distance: f32,
}

/// The in-memory vector index, one per vector collection. Synchronous: calls are short
/// and CPU-bound; callers run large ones off the async executor.
pub trait VectorCache: Send + Sync + 'static {
    /// Creates (or replaces) the index of a collection from `(label, key, embedding)`.
    fn build(
        &self,
        collection: &CollectionName,
        spec: &crate::VectorSpec,
        rows: Vec<(u64, Key, Vec<f32>)>,
    ) -> Result<()>;
    /// Inserts or replaces one vector.
    fn upsert(
        &self,
        collection: &CollectionName,
        label: u64,
        key: &Key,
        embedding: &[f32],
    ) -> Result<()>;
    /// Inserts or replaces many vectors, as [`Self::upsert`] of each in order (an
    /// index may add them in parallel).
    fn upsert_many(
        &self,
        collection: &CollectionName,
        items: &[(u64, Key, Vec<f32>)],
    ) -> Result<()> {
        items
            .iter()
            .try_for_each(|(label, key, v)| self.upsert(collection, *label, key, v))
    }
    /// Removes a vector; absent labels are ignored.
    fn remove(&self, collection: &CollectionName, label: u64) -> Result<()>;
    /// The `k` nearest keys to `query`, nearest first.
    fn search(
        &self,
        collection: &CollectionName,
        query: &[f32],
        k: usize,
    ) -> Result<Vec<VectorHit>>;
    /// Number of vectors indexed for a collection.
    fn len(&self, collection: &CollectionName) -> usize;
    /// The name of this index's file format, the extension of the files [`Self::save`]
    /// writes (lowercase letters): a snapshot of another format is not offered to
    /// [`Self::restore`].
    fn format(&self) -> &'static str;
    /// Writes a collection's index to `path` (replacing the file atomically).
    fn save(&self, collection: &CollectionName, path: &std::path::Path) -> Result<()>;
    /// Creates (or replaces) a collection's index from a file [`Self::save`] wrote,
    /// labelled by `keys`. Fails, changing nothing, unless the file holds an index of
    /// `spec`'s shape with exactly those labels.
    fn restore(
        &self,
        collection: &CollectionName,
        spec: &crate::VectorSpec,
        path: &std::path::Path,
        keys: Vec<(u64, Key)>,
    ) -> Result<()>;
}

/// A position in a cloud change feed (opaque to the engine).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChangeCursor(pub Vec<u8>);

/// A page of remote changes and the cursor after them.
#[derive(Debug, Clone, Default)]
pub struct ChangeBatch {
    pub records: Vec<Record>,
    pub next: ChangeCursor,
}

/// A device known to the cloud.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DeviceInfo {
    pub id: crate::DeviceId,
    pub name: String,
    pub registered_ms: u64,
    pub last_seen_ms: u64,
}

/// Checks a device name: 1–64 characters, no control characters.
pub fn validate_device_name(name: &str) -> Result<()> {
    let chars = name.chars().count();
    if chars == 0 || chars > 64 || name.chars().any(char::is_control) || name.trim() != name {
        return Err(crate::Error::Parse {
            what: "device name (1-64 printable characters)",
            value: name.to_owned(),
        });
    }
    Ok(())
}

/// A cloud destination for local changes and a source of remote ones.
#[async_trait::async_trait]
pub trait CloudSink: Send + Sync + 'static {
    /// Upserts records, keeping only the newest version of each key (idempotent and monotone).
    async fn upsert_batch(&self, records: &[Record]) -> Result<()>;
    /// Remote changes of a collection after `cursor`, at most `limit`.
    async fn pull(
        &self,
        collection: &CollectionName,
        cursor: &ChangeCursor,
        limit: usize,
    ) -> Result<ChangeBatch>;
    /// Records (tombstones included) the cloud holds for a collection.
    async fn count(&self, collection: &CollectionName) -> Result<u64>;
    /// Publishes collection definitions. A name the cloud already knows with another
    /// spec is refused (permanent error) and nothing is published. Returns every
    /// definition the cloud then knows for this tenant, as [`Self::remote_collections`]
    /// would, read in the same transaction.
    async fn publish_collections(&self, specs: &[CollectionSpec]) -> Result<Vec<CollectionSpec>>;
    /// Every collection definition the cloud knows for this tenant.
    async fn remote_collections(&self) -> Result<Vec<CollectionSpec>>;
    /// A cheap round trip that proves the cloud is reachable.
    async fn health_check(&self) -> Result<()>;
    /// The tenant this sink reads and writes; sealed records are bound to it. A sink
    /// without tenants has the empty one.
    fn tenant(&self) -> &str {
        ""
    }
    /// Checks that the cloud holds the schema this build expects (a sink without a
    /// schema has nothing to check).
    async fn verify_schema(&self) -> Result<()> {
        Ok(())
    }
    /// The consistency checker's nodes at `level` (the root is level 0) under the
    /// prefixes `parents` at `parents_level`, above `level` (every node when empty), by
    /// prefix: row counts and wrapping sums of leaf digests as [`crate::LocalTree`]
    /// defines them (a sealed live row's leaf without its hash), computed where the
    /// rows are.
    async fn tree_nodes(
        &self,
        collection: &CollectionName,
        level: u32,
        parents: &[u32],
        parents_level: u32,
    ) -> Result<BTreeMap<u32, crate::NodeDigest>>;
    /// The rows of the leaf buckets `buckets` (prefixes at `level`), as digests.
    async fn bucket_digests(
        &self,
        collection: &CollectionName,
        level: u32,
        buckets: &[u32],
    ) -> Result<Vec<crate::RowDigest>>;
    /// The rows with `keys`, as stored: their hashes unchecked, so the checker can tell
    /// a damaged row from a different one.
    async fn fetch_rows(&self, collection: &CollectionName, keys: &[Key]) -> Result<Vec<Record>>;
    /// Keys of the rows whose content no longer matches their stored hash, recomputed
    /// where the rows are (the checker's deep mode).
    async fn damaged_keys(&self, collection: &CollectionName) -> Result<Vec<Key>>;
    /// Closes the sink's connections; the engine's runtime calls it once, at shutdown.
    async fn close(&self) {}
    /// Registers (or renames) a device of this tenant; marks it seen now.
    async fn register_device(&self, id: crate::DeviceId, name: &str) -> Result<()>;
    /// Every device of this tenant, by name.
    async fn list_devices(&self) -> Result<Vec<DeviceInfo>>;
    /// Removes a device; false when it was not registered.
    async fn deregister_device(&self, id: crate::DeviceId) -> Result<bool>;
    /// Marks a device seen now. A device the tenant does not know yet is registered
    /// under `default_name` (first contact); a registered device keeps its name.
    async fn touch_device(&self, id: crate::DeviceId, default_name: &str) -> Result<()>;
    /// Waits until other writers have changed this tenant's data since the change
    /// counter read `seen`, and returns the new count. A nudge for auto-sync, not a
    /// guarantee: it may wake without news and may miss some (auto-sync still runs on
    /// its interval). A sink without a change signal never returns.
    async fn next_change(&self, seen: u64) -> u64 {
        let _ = seen;
        std::future::pending().await
    }
    /// Mean share of the connection cap in use recently (0.0–1.0); above the engine's
    /// gate only critical and high entries drain.
    fn load(&self) -> f64 {
        0.0
    }
    /// Share of the connection cap busy right now (0.0–1.0). The engine gates on the
    /// recent mean only while this is high too: the mean is sampled when the pool is
    /// used, so once the gate holds everything back it would never fall again.
    fn busy_now(&self) -> f64 {
        self.load()
    }
    /// Connections open now and the cap, for status and metrics.
    fn pool_size(&self) -> (u32, u32) {
        (0, 0)
    }
    /// What the sink's pool and statements have cost since it was made, for metrics.
    fn pool_stats(&self) -> PoolStats {
        PoolStats::default()
    }
}

/// Counters of a cloud sink's connection pool and of the statements it sent, since
/// the sink was made.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PoolStats {
    /// Connections taken from the pool (each with its transaction's `BEGIN`).
    pub acquires: u64,
    /// Takes that failed: pool timeouts, refused or broken connections.
    pub acquire_errors: u64,
    /// Seconds spent waiting for those connections (and their `BEGIN`), in all.
    pub acquire_wait_secs: f64,
    /// Statements sent to the server, `BEGIN` and `COMMIT` included.
    pub queries: u64,
}
