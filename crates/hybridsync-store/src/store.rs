//! [`SqliteStore`] and its [`LocalStore`] implementation, in one place. Each operation
//! is implemented under its trait name in the module of its concern (`catalogue`,
//! `records`, `outbox`, `feed`, `history`), returning the core error; the trait
//! implementation below only forwards to it. (`list` and `scan` are one scan with or
//! without tombstones, `embeddings` and `vector_labels` one read with or without the
//! vectors.)

use crate::connections::{PointReaders, Writer};
use hybridsync_core::{
    ApplyOutcome, ChangeCursor, Clock, CollectionName, CollectionSpec, ConflictResolver, DeviceId,
    HistoryEntry, HlcClock, ImportOutcome, ImportStep, Key, Limits, LocalStore, LocalTree,
    MigrationInfo, MigrationState, NodeDigest, OutboxEntry, OutboxOutcome, OutboxStats, Priority,
    Record, Result, RollbackOutcome, RowDigest, StoredVector, WriteReceipt, WriteRequest,
};
use sqlx::SqlitePool;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

/// The SQLite-backed local store. Cheap to share behind an `Arc`; all methods take `&self`.
#[derive(Debug)]
pub struct SqliteStore {
    pub(crate) path: PathBuf,
    /// Every write after open: SQLite has one writer at a time, so queueing here is
    /// cheaper than retrying on `SQLITE_BUSY` (see `connections`).
    pub(crate) writer: Writer,
    /// sqlx's pool of query-only connections: scans, counts, the catalogue.
    pub(crate) readers: SqlitePool,
    /// Reads by key and by row id on the caller's thread.
    pub(crate) point: PointReaders,
    pub(crate) hlc: HlcClock<Arc<dyn Clock>>,
    pub(crate) limits: Limits,
    pub(crate) catalogue: RwLock<HashMap<CollectionName, CollectionSpec>>,
}

impl SqliteStore {
    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `sql` (several statements) in one write transaction.
    #[cfg(test)]
    pub(crate) async fn execute_for_tests(&self, sql: &str) -> crate::Result<()> {
        self.writer
            .transaction(1, |tx| Ok(tx.execute_batch(sql)?))
            .await
    }
}

#[async_trait::async_trait]
impl LocalStore for SqliteStore {
    async fn collections(&self) -> Result<Vec<CollectionSpec>> {
        SqliteStore::collections(self).await
    }

    async fn create_collection(&self, spec: &CollectionSpec) -> Result<()> {
        SqliteStore::create_collection(self, spec).await
    }

    async fn write(&self, requests: Vec<WriteRequest>) -> Result<Vec<WriteReceipt>> {
        SqliteStore::write(self, requests).await
    }

    async fn get(&self, collection: &CollectionName, key: &Key) -> Result<Option<Record>> {
        SqliteStore::get(self, collection, key).await
    }

    async fn list(
        &self,
        collection: &CollectionName,
        after: Option<&Key>,
        limit: usize,
    ) -> Result<Vec<Record>> {
        Ok(self.scan_records(collection, after, limit, false).await?)
    }

    async fn embeddings(&self, collection: &CollectionName) -> Result<Vec<StoredVector>> {
        Ok(self.live_vectors(collection, true).await?)
    }

    async fn vector_labels(&self, collection: &CollectionName) -> Result<Vec<StoredVector>> {
        Ok(self.live_vectors(collection, false).await?)
    }

    async fn embeddings_of(
        &self,
        collection: &CollectionName,
        labels: &[u64],
    ) -> Result<Vec<Option<Vec<f32>>>> {
        SqliteStore::embeddings_of(self, collection, labels).await
    }

    async fn counts(&self) -> Result<BTreeMap<CollectionName, u64>> {
        SqliteStore::counts(self).await
    }

    async fn outbox_stats(&self) -> Result<OutboxStats> {
        SqliteStore::outbox_stats(self).await
    }

    async fn queue_depths(&self) -> Result<BTreeMap<Priority, u64>> {
        SqliteStore::queue_depths(self).await
    }

    fn device_id(&self) -> DeviceId {
        self.hlc.device()
    }

    fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Closes every connection, checkpointing the WAL.
    async fn close(&self) {
        self.point.close();
        self.readers.close().await;
        self.writer.close().await;
    }

    async fn claim_outbox(
        &self,
        limit: usize,
        now_ms: u64,
        most_urgent_only: Priority,
    ) -> Result<Vec<OutboxEntry>> {
        SqliteStore::claim_outbox(self, limit, now_ms, most_urgent_only).await
    }

    async fn settle_outbox(&self, outcomes: Vec<(i64, OutboxOutcome)>) -> Result<()> {
        SqliteStore::settle_outbox(self, outcomes).await
    }

    async fn requeue_in_flight(&self) -> Result<u64> {
        SqliteStore::requeue_in_flight(self).await
    }

    async fn retry_failed(&self) -> Result<u64> {
        SqliteStore::retry_failed(self).await
    }

    async fn clear_failed(&self) -> Result<u64> {
        SqliteStore::clear_failed(self).await
    }

    async fn clear_done(&self, before_ms: u64) -> Result<u64> {
        SqliteStore::clear_done(self, before_ms).await
    }

    async fn scan(
        &self,
        collection: &CollectionName,
        after: Option<&Key>,
        limit: usize,
    ) -> Result<Vec<Record>> {
        Ok(self.scan_records(collection, after, limit, true).await?)
    }

    async fn count_all(&self, collection: &CollectionName) -> Result<u64> {
        SqliteStore::count_all(self, collection).await
    }

    async fn cursor(&self, collection: &CollectionName) -> Result<ChangeCursor> {
        SqliteStore::cursor(self, collection).await
    }

    async fn apply_remote(
        &self,
        collection: &CollectionName,
        records: Vec<Record>,
        next: &ChangeCursor,
        resolver: &dyn ConflictResolver,
    ) -> Result<ApplyOutcome> {
        SqliteStore::apply_remote(self, collection, records, next, resolver).await
    }

    async fn digests(
        &self,
        collection: &CollectionName,
        keys: &[Key],
    ) -> Result<Vec<(RowDigest, bool)>> {
        Ok(SqliteStore::digests(self, collection, keys).await?)
    }

    async fn tree_top(&self, collection: &CollectionName) -> Result<BTreeMap<u32, NodeDigest>> {
        SqliteStore::tree_top(self, collection).await
    }

    async fn tree_under(
        &self,
        collection: &CollectionName,
        prefixes: &[u32],
    ) -> Result<(LocalTree, HashSet<Key>)> {
        SqliteStore::tree_under(self, collection, prefixes).await
    }

    async fn damaged_keys(&self, collection: &CollectionName) -> Result<Vec<Key>> {
        SqliteStore::damaged_keys(self, collection).await
    }

    async fn record_history(&self, entry: &HistoryEntry) -> Result<()> {
        SqliteStore::record_history(self, entry).await
    }

    async fn history(&self, limit: usize) -> Result<Vec<HistoryEntry>> {
        SqliteStore::history(self, limit).await
    }

    async fn recent_errors(&self, limit: usize) -> Result<Vec<hybridsync_core::OutboxError>> {
        SqliteStore::recent_errors(self, limit).await
    }

    async fn begin_migration(&self, info: &MigrationInfo) -> Result<()> {
        SqliteStore::begin_migration(self, info).await
    }

    async fn migration(&self, id: &str) -> Result<Option<MigrationInfo>> {
        SqliteStore::migration(self, id).await
    }

    async fn migrations(&self) -> Result<Vec<MigrationInfo>> {
        SqliteStore::migrations(self).await
    }

    async fn end_migration(
        &self,
        id: &str,
        state: MigrationState,
        error: Option<&str>,
    ) -> Result<()> {
        SqliteStore::end_migration(self, id, state, error).await
    }

    async fn import_batch(
        &self,
        records: Vec<Record>,
        priority: Priority,
        step: &ImportStep,
    ) -> Result<ImportOutcome> {
        SqliteStore::import_batch(self, records, priority, step).await
    }

    async fn rollback_batch(
        &self,
        id: &str,
        limit: usize,
        priority: Priority,
    ) -> Result<RollbackOutcome> {
        SqliteStore::rollback_batch(self, id, limit, priority).await
    }
}
