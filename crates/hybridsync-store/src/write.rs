//! The [`LocalStore`] implementation: transactional writes with their outbox entries,
//! point reads, listing and outbox statistics.

use crate::rows::{RecordColumns, blob_to_embedding, embedding_to_blob, record_from_columns};
use crate::{Error, Result, SqliteStore};
use hybridsync_core::{
    CollectionName, CollectionSpec, ContentHash, Hlc, Key, LocalStore, OutboxStats, Priority,
    Record, StoredVector, WriteReceipt, WriteRequest,
};
use sqlx::Row;
use std::collections::{BTreeMap, HashMap};

/// Labels per statement of [`SqliteStore::stored_embeddings`], well below SQLite's
/// bind-variable limit.
const LABELS_PER_READ: usize = 500;

/// Inserts or replaces a record's row (keeping its id) and returns the id, which is
/// also its vector label. Looked up first rather than with `RETURNING`, which costs
/// SQLite an ephemeral table per statement and halves the write rate.
pub(crate) fn save_record(tx: &rusqlite::Transaction<'_>, record: &Record) -> Result<u64> {
    use rusqlite::OptionalExtension;
    let existing: Option<i64> = tx
        .prepare_cached("SELECT id FROM records WHERE collection = ?1 AND key = ?2")?
        .query_row([record.collection.as_str(), record.key.as_str()], |row| {
            row.get(0)
        })
        .optional()?;
    let embedding = record.embedding.as_deref().map(embedding_to_blob);
    let params = rusqlite::params![
        record.collection.as_str(),
        record.key.as_str(),
        record.payload,
        embedding,
        record.version.packed(),
        record.version.origin.0,
        record.tombstone,
        record.hash.0,
    ];
    let id = match existing {
        Some(id) => {
            tx.prepare_cached(
                "UPDATE records SET payload = ?3, embedding = ?4, hlc = ?5, origin = ?6, tombstone = ?7, \
                 hash = ?8 WHERE collection = ?1 AND key = ?2",
            )?
            .execute(params)?;
            id
        }
        None => {
            tx.prepare_cached(
                "INSERT INTO records (collection, key, payload, embedding, hlc, origin, tombstone, hash) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?
            .execute(params)?;
            tx.last_insert_rowid()
        }
    };
    Ok(id as u64)
}

/// Queues record `id` at `version` for the cloud. An open (pending or failed) entry for
/// the same record coalesces: latest version, most urgent priority, attempts reset.
pub(crate) fn enqueue(
    tx: &rusqlite::Transaction<'_>,
    id: u64,
    version: Hlc,
    priority: Priority,
    now_ms: i64,
) -> Result<()> {
    tx.prepare_cached(
        "INSERT INTO outbox (record_id, hlc, origin, priority, state, attempts, next_attempt_ms, created_ms, updated_ms) \
         VALUES (?1, ?2, ?3, ?4, 0, 0, 0, ?5, ?5) \
         ON CONFLICT (record_id) WHERE state IN (0, 3) DO UPDATE SET hlc = excluded.hlc, origin = excluded.origin, \
         priority = MIN(outbox.priority, excluded.priority), state = 0, attempts = 0, next_attempt_ms = 0, \
         last_error = NULL, updated_ms = excluded.updated_ms",
    )?
    .execute(rusqlite::params![
        id as i64,
        version.packed(),
        version.origin.0,
        priority.code(),
        now_ms
    ])?;
    Ok(())
}

/// The HLC high-water mark as stored: at or above every version in the file, whichever
/// process wrote it.
pub(crate) fn high_water(tx: &rusqlite::Transaction<'_>) -> Result<i64> {
    Ok(tx
        .prepare_cached("SELECT value FROM meta WHERE key = 'hlc_high_water'")?
        .query_row([], |row| row.get(0))?)
}

/// Raises the stored high-water mark to `packed` (never lowers it).
pub(crate) fn raise_high_water(tx: &rusqlite::Transaction<'_>, packed: i64) -> Result<()> {
    tx.prepare_cached("UPDATE meta SET value = MAX(value, ?1) WHERE key = 'hlc_high_water'")?
        .execute([packed])?;
    Ok(())
}

impl SqliteStore {
    /// Live rows with an embedding in `collection`: label, key, hash and, when
    /// `with_embedding`, the vector.
    async fn live_vectors(
        &self,
        collection: &CollectionName,
        with_embedding: bool,
    ) -> Result<Vec<StoredVector>> {
        self.require_spec(collection).await?;
        let sql = if with_embedding {
            "SELECT id, key, hash, embedding FROM records WHERE collection = ?1 AND tombstone = 0 AND embedding IS NOT NULL"
        } else {
            "SELECT id, key, hash FROM records WHERE collection = ?1 AND tombstone = 0 AND embedding IS NOT NULL"
        };
        let rows = sqlx::query(sql)
            .bind(collection.as_str())
            .fetch_all(&self.readers)
            .await?;
        let bad = |detail: String| Error::BadRow {
            table: "records",
            detail,
        };
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let id: i64 = row.try_get(0)?;
            let key: String = row.try_get(1)?;
            let key = Key::new(key).map_err(|e| bad(e.to_string()))?;
            let hash: Vec<u8> = row.try_get(2)?;
            let hash = ContentHash::from_slice(&hash)
                .ok_or_else(|| bad(format!("hash of {} bytes", hash.len())))?;
            let embedding = if with_embedding {
                let blob: Vec<u8> = row.try_get(3)?;
                Some(blob_to_embedding(&blob)?)
            } else {
                None
            };
            out.push(StoredVector {
                label: id as u64,
                key,
                hash,
                embedding,
            });
        }
        Ok(out)
    }

    /// See [`LocalStore::embeddings_of`]: point reads by row id on this thread, a
    /// statement per [`LABELS_PER_READ`] labels, with the reader pool as the fallback (as
    /// for `get`).
    async fn stored_embeddings(
        &self,
        collection: &CollectionName,
        labels: &[u64],
    ) -> Result<Vec<Option<Vec<f32>>>> {
        type Row = (i64, String, Option<Vec<u8>>);
        self.require_spec(collection).await?;
        let mut found: HashMap<i64, Vec<u8>> = HashMap::with_capacity(labels.len());
        for chunk in labels.chunks(LABELS_PER_READ) {
            // Row-id lookups only, the collection checked here: with `collection = ?`
            // in the WHERE clause SQLite may pick the (collection, key) index and scan
            // the whole collection.
            let sql = format!(
                "SELECT id, collection, embedding FROM records WHERE id IN ({}) AND tombstone = 0",
                vec!["?"; chunk.len()].join(", ")
            );
            let ids: Vec<i64> = chunk
                .iter()
                .map(|&label| label.min(i64::MAX as u64) as i64)
                .collect();
            let fast = self.point.with(|conn| {
                let mut read = conn.prepare_cached(&sql)?;
                let rows = read.query_map(rusqlite::params_from_iter(&ids), |row| {
                    Ok((row.get(0)?, row.get(1)?, row.get(2)?))
                })?;
                rows.collect::<rusqlite::Result<Vec<Row>>>()
            });
            let rows = match fast {
                Ok(rows) => rows,
                Err(e) => {
                    tracing::warn!(error = %e, "embedding read failed; answering through the reader pool");
                    let mut query = sqlx::query_as::<_, Row>(sqlx::AssertSqlSafe(sql));
                    for id in &ids {
                        query = query.bind(id);
                    }
                    query.fetch_all(&self.readers).await?
                }
            };
            found.extend(rows.into_iter().filter_map(|(id, name, blob)| {
                (name == collection.as_str()).then_some((id, blob?))
            }));
        }
        labels
            .iter()
            .map(|&label| {
                found
                    .remove(&(label.min(i64::MAX as u64) as i64))
                    .map(|blob| blob_to_embedding(&blob))
                    .transpose()
            })
            .collect()
    }

    fn spec(&self, collection: &CollectionName) -> Option<CollectionSpec> {
        self.catalogue
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(collection)
            .cloned()
    }

    /// The spec of a known collection, rereading the catalogue once in case another
    /// process created it since we loaded it.
    pub(crate) async fn require_spec(&self, collection: &CollectionName) -> Result<CollectionSpec> {
        if let Some(spec) = self.spec(collection) {
            return Ok(spec);
        }
        self.reload_catalogue().await?;
        self.spec(collection)
            .ok_or_else(|| hybridsync_core::Error::UnknownCollection(collection.to_string()).into())
    }

    /// A version above `floor` (the stored high-water mark, or the last version
    /// issued in this transaction), from our clock when it is ahead, else `floor + 1`;
    /// our clock moves past it either way. Called inside a write transaction, so
    /// versions follow commit order even with several processes on one data directory.
    pub(crate) fn stamp_above(&self, floor: i64) -> Hlc {
        let version = self.hlc.now();
        if version.packed() > floor {
            return version;
        }
        let raised = Hlc::from_packed(floor + 1, self.hlc.device());
        let _ = self.hlc.observe(raised);
        raised
    }

    /// Validates every request, then applies them all in one transaction.
    async fn write_all(&self, requests: Vec<WriteRequest>) -> Result<Vec<WriteReceipt>> {
        if requests.is_empty() {
            return Ok(Vec::new());
        }
        for request in &requests {
            let spec = self.require_spec(&request.collection).await?;
            request.validate(&spec, &self.limits)?;
        }
        let requests = coalesce(requests);
        let priorities: Vec<Priority> = requests.iter().map(|r| r.priority).collect();
        // Hashed before the writer is taken; versions are assigned inside the transaction.
        let mut records: Vec<Record> = requests
            .into_iter()
            .map(|r| {
                Record::new(
                    r.collection,
                    r.key,
                    r.payload,
                    r.embedding,
                    Hlc::default(),
                    r.tombstone,
                )
            })
            .collect();
        let now = self.hlc.physical_now_ms() as i64;
        let labels = self
            .writer
            .transaction(records.len(), |tx| {
                let mut floor = high_water(tx)?;
                let mut labels = Vec::with_capacity(records.len());
                for (record, priority) in records.iter_mut().zip(&priorities) {
                    record.version = self.stamp_above(floor);
                    floor = record.version.packed();
                    let label = save_record(tx, record)?;
                    enqueue(tx, label, record.version, *priority, now)?;
                    labels.push(label);
                }
                raise_high_water(tx, floor)?;
                Ok(labels)
            })
            .await?;
        hybridsync_core::crash_point("after_local_commit");
        Ok(records
            .into_iter()
            .zip(labels)
            .map(|(record, label)| WriteReceipt { record, label })
            .collect())
    }
}

/// Several writes to one key in a batch coalesce into the last one, keeping the most
/// urgent priority: the latest state wins and each key gets exactly one version.
fn coalesce(mut requests: Vec<WriteRequest>) -> Vec<WriteRequest> {
    // Index of the last write to each key, and the most urgent priority among its writes.
    let mut keep: Vec<Option<Priority>> = vec![None; requests.len()];
    {
        let mut last: HashMap<(&str, &str), usize> = HashMap::with_capacity(requests.len());
        for (i, r) in requests.iter().enumerate() {
            let key = (r.collection.as_str(), r.key.as_str());
            let priority = match last.insert(key, i) {
                Some(before) => keep[before]
                    .take()
                    .map_or(r.priority, |p| p.min(r.priority)),
                None => r.priority,
            };
            keep[i] = Some(priority);
        }
        if last.len() == requests.len() {
            return requests;
        }
    }
    let mut keep = keep.into_iter();
    requests.retain_mut(|r| match keep.next().flatten() {
        Some(priority) => {
            r.priority = priority;
            true
        }
        None => false,
    });
    requests
}

fn collection_of(
    spec: &CollectionSpec,
) -> (Option<i64>, Option<&'static str>, Option<&'static str>) {
    match &spec.vector {
        None => (None, None, None),
        Some(v) => (
            Some(v.dim as i64),
            Some(v.metric.as_str()),
            Some(v.precision.as_str()),
        ),
    }
}

#[async_trait::async_trait]
impl LocalStore for SqliteStore {
    async fn collections(&self) -> hybridsync_core::Result<Vec<CollectionSpec>> {
        self.reload_catalogue().await?;
        let mut specs: Vec<CollectionSpec> = self
            .catalogue
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        specs.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(specs)
    }

    async fn create_collection(&self, spec: &CollectionSpec) -> hybridsync_core::Result<()> {
        let (dim, metric, precision) = collection_of(spec);
        let created_ms = self.hlc.physical_now_ms() as i64;
        self.writer
            .transaction(1, |tx| {
                tx.prepare_cached(
                    "INSERT INTO collections (name, dim, metric, precision, created_ms) VALUES (?1, ?2, ?3, ?4, ?5) \
                     ON CONFLICT (name) DO NOTHING",
                )?
                .execute(rusqlite::params![spec.name.as_str(), dim, metric, precision, created_ms])?;
                Ok(())
            })
            .await?;
        self.reload_catalogue().await?;
        match self.spec(&spec.name) {
            Some(existing) if existing == *spec => Ok(()),
            _ => Err(hybridsync_core::Error::CollectionSpecMismatch {
                name: spec.name.to_string(),
            }),
        }
    }

    async fn write(
        &self,
        requests: Vec<WriteRequest>,
    ) -> hybridsync_core::Result<Vec<WriteReceipt>> {
        Ok(self.write_all(requests).await?)
    }

    async fn get(
        &self,
        collection: &CollectionName,
        key: &Key,
    ) -> hybridsync_core::Result<Option<Record>> {
        self.require_spec(collection).await?;
        const POINT: &str = "SELECT key, payload, embedding, hlc, origin, tombstone, hash \
                             FROM records WHERE collection = ?1 AND key = ?2";
        // On this thread: see the `point` module.
        let fast = self.point.with(|conn| {
            use rusqlite::OptionalExtension;
            conn.prepare_cached(POINT)?
                .query_row([collection.as_str(), key.as_str()], |row| {
                    crate::rows::columns_at(row, 0)
                })
                .optional()
        });
        let columns = match fast {
            Ok(columns) => columns,
            // A rare SQLite refusal on the fast path (busy or a locking-protocol retry
            // limit while another process opens, crashes or checkpoints): the pooled
            // readers answer instead, so a read never fails for it.
            Err(e) => {
                tracing::warn!(error = %e, "point read failed; answering through the reader pool");
                sqlx::query_as::<_, RecordColumns>(POINT)
                    .bind(collection.as_str())
                    .bind(key.as_str())
                    .fetch_optional(&self.readers)
                    .await
                    .map_err(Error::from)?
            }
        };
        Ok(columns
            .map(|columns| record_from_columns(collection, columns))
            .transpose()?)
    }

    async fn list(
        &self,
        collection: &CollectionName,
        after: Option<&Key>,
        limit: usize,
    ) -> hybridsync_core::Result<Vec<Record>> {
        Ok(self.scan_records(collection, after, limit, false).await?)
    }

    async fn embeddings(
        &self,
        collection: &CollectionName,
    ) -> hybridsync_core::Result<Vec<StoredVector>> {
        Ok(self.live_vectors(collection, true).await?)
    }

    async fn vector_labels(
        &self,
        collection: &CollectionName,
    ) -> hybridsync_core::Result<Vec<StoredVector>> {
        Ok(self.live_vectors(collection, false).await?)
    }

    async fn embeddings_of(
        &self,
        collection: &CollectionName,
        labels: &[u64],
    ) -> hybridsync_core::Result<Vec<Option<Vec<f32>>>> {
        Ok(self.stored_embeddings(collection, labels).await?)
    }

    async fn counts(&self) -> hybridsync_core::Result<BTreeMap<CollectionName, u64>> {
        let rows = sqlx::query(
            "SELECT c.name, (SELECT COUNT(*) FROM records r WHERE r.collection = c.name AND r.tombstone = 0) \
             FROM collections c",
        )
        .fetch_all(&self.readers)
        .await
        .map_err(Error::from)?;
        let mut counts = BTreeMap::new();
        for row in rows {
            let name: String = row.try_get(0).map_err(Error::from)?;
            let count: i64 = row.try_get(1).map_err(Error::from)?;
            let name = CollectionName::new(name).map_err(|e| Error::BadRow {
                table: "collections",
                detail: e.to_string(),
            })?;
            counts.insert(name, count as u64);
        }
        Ok(counts)
    }

    async fn outbox_stats(&self) -> hybridsync_core::Result<OutboxStats> {
        // Both read indexes only: the drain-order index covers the counts, the partial
        // index of shipped entries answers the newest shipment with one seek.
        let rows =
            sqlx::query("SELECT state, priority, COUNT(*) FROM outbox GROUP BY state, priority")
                .fetch_all(&self.readers)
                .await
                .map_err(Error::from)?;
        let last_shipped: Option<i64> = sqlx::query_scalar(
            "SELECT MAX(updated_ms) FROM outbox INDEXED BY outbox_done_age WHERE state = 2",
        )
        .fetch_one(&self.readers)
        .await
        .map_err(Error::from)?;
        let mut stats = OutboxStats {
            last_shipped_ms: last_shipped.map(|ms| ms.max(0) as u64),
            ..OutboxStats::default()
        };
        for row in rows {
            let state: i64 = row.try_get(0).map_err(Error::from)?;
            let priority = Priority::from_code(row.try_get(1).map_err(Error::from)?)?;
            let count = row.try_get::<i64, _>(2).map_err(Error::from)? as u64;
            match state {
                0 => stats.pending += count,
                1 => stats.in_flight += count,
                2 => stats.done += count,
                3 => stats.failed += count,
                other => {
                    return Err(Error::BadRow {
                        table: "outbox",
                        detail: format!("unknown state {other}"),
                    }
                    .into());
                }
            }
            if state <= 1 {
                *stats.by_priority.entry(priority).or_default() += count;
            }
        }
        Ok(stats)
    }

    async fn queue_depths(&self) -> hybridsync_core::Result<BTreeMap<Priority, u64>> {
        let rows: Vec<(i64, i64)> = sqlx::query_as(
            "SELECT priority, COUNT(*) FROM outbox WHERE state IN (0, 1) GROUP BY priority",
        )
        .fetch_all(&self.readers)
        .await
        .map_err(Error::from)?;
        let mut depths = BTreeMap::new();
        for (priority, count) in rows {
            *depths.entry(Priority::from_code(priority)?).or_default() += count.max(0) as u64;
        }
        Ok(depths)
    }

    fn device_id(&self) -> hybridsync_core::DeviceId {
        self.hlc.device()
    }

    fn limits(&self) -> &hybridsync_core::Limits {
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
    ) -> hybridsync_core::Result<Vec<hybridsync_core::OutboxEntry>> {
        Ok(self.claim(limit, now_ms, most_urgent_only).await?)
    }

    async fn settle_outbox(
        &self,
        outcomes: Vec<(i64, hybridsync_core::OutboxOutcome)>,
    ) -> hybridsync_core::Result<()> {
        Ok(self.settle(outcomes).await?)
    }

    async fn requeue_in_flight(&self) -> hybridsync_core::Result<u64> {
        Ok(self.requeue().await?)
    }

    async fn retry_failed(&self) -> hybridsync_core::Result<u64> {
        Ok(self.retry_all_failed().await?)
    }

    async fn clear_failed(&self) -> hybridsync_core::Result<u64> {
        Ok(self.clear_all_failed().await?)
    }

    async fn clear_done(&self, before_ms: u64) -> hybridsync_core::Result<u64> {
        Ok(self.clear_done_before(before_ms).await?)
    }

    async fn scan(
        &self,
        collection: &CollectionName,
        after: Option<&Key>,
        limit: usize,
    ) -> hybridsync_core::Result<Vec<Record>> {
        Ok(self.scan_records(collection, after, limit, true).await?)
    }

    async fn count_all(&self, collection: &CollectionName) -> hybridsync_core::Result<u64> {
        Ok(self.count_records(collection).await?)
    }

    async fn cursor(
        &self,
        collection: &CollectionName,
    ) -> hybridsync_core::Result<hybridsync_core::ChangeCursor> {
        Ok(self.load_cursor(collection).await?)
    }

    async fn apply_remote(
        &self,
        collection: &CollectionName,
        records: Vec<Record>,
        next: &hybridsync_core::ChangeCursor,
        resolver: &dyn hybridsync_core::ConflictResolver,
    ) -> hybridsync_core::Result<hybridsync_core::ApplyOutcome> {
        Ok(self.apply(collection, records, next, resolver).await?)
    }

    async fn record_history(
        &self,
        entry: &hybridsync_core::HistoryEntry,
    ) -> hybridsync_core::Result<()> {
        Ok(self.append_history(entry).await?)
    }

    async fn history(
        &self,
        limit: usize,
    ) -> hybridsync_core::Result<Vec<hybridsync_core::HistoryEntry>> {
        Ok(self.load_history(limit).await?)
    }
}
