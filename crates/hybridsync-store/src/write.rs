//! The [`LocalStore`] implementation: transactional writes with their outbox entries,
//! point reads, listing and outbox statistics.

use crate::rows::{RecordColumns, blob_to_embedding, embedding_to_blob, record_from_columns};
use crate::{Error, Result, SqliteStore};
use hybridsync_core::{
    CollectionName, CollectionSpec, ContentHash, Hlc, Key, LocalStore, OutboxStats, Priority,
    Record, StoredVector, WriteReceipt, WriteRequest,
};
use sqlx::pool::PoolConnection;
use sqlx::{Row, Sqlite};
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

/// Rows per statement in a write script. Bounded so the statement cache sees only a few
/// distinct texts and every script stays far below SQLite's bind-variable limit.
const ROWS_PER_SCRIPT: usize = 64;

/// A writer connection inside a hand-written `BEGIN … COMMIT` script. If the script
/// fails or the future is dropped mid-way, the connection is detached (closing it rolls
/// the transaction back) rather than returned to the pool with a transaction open.
pub(crate) struct ScriptConnection(Option<PoolConnection<Sqlite>>);

impl ScriptConnection {
    pub(crate) async fn acquire(pool: &sqlx::SqlitePool) -> Result<Self> {
        Ok(Self(Some(pool.acquire().await?)))
    }

    pub(crate) fn get(&mut self) -> &mut sqlx::SqliteConnection {
        self.0.as_mut().expect("connection present until finish")
    }

    pub(crate) fn finish(mut self) {
        drop(self.0.take());
    }
}

impl Drop for ScriptConnection {
    fn drop(&mut self) {
        if let Some(conn) = self.0.take() {
            drop(conn.detach());
        }
    }
}

/// Builds the script for one chunk of `rows` writes. Parameters are positional (`?`)
/// and bound in order of appearance across all statements (see `bind_script`).
///
/// The version of row `i` is `MAX(proposed_i, high_water + 1 + i)`, computed inside the
/// transaction, so versions stay monotone even when several processes write to the
/// same data directory with their own clocks. The outbox entry takes the record's
/// final version; an open entry for the same record coalesces (latest version, most
/// urgent priority).
fn write_script(rows: usize, begin: bool, commit: bool) -> String {
    let list = |sql: &mut String, item: &dyn Fn(usize) -> String| {
        let items: Vec<String> = (0..rows).map(item).collect();
        sql.push_str(&items.join(", "));
    };
    let mut sql = String::new();
    if begin {
        sql.push_str("BEGIN IMMEDIATE;\n");
    }
    sql.push_str("INSERT INTO records (collection, key, payload, embedding, hlc, origin, tombstone, hash) VALUES ");
    list(&mut sql, &|row| {
        format!(
            "(?, ?, ?, ?, MAX(?, (SELECT value FROM meta WHERE key = 'hlc_high_water') + {}), ?, ?, ?)",
            row + 1
        )
    });
    sql.push_str(
        "\nON CONFLICT (collection, key) DO UPDATE SET payload = excluded.payload, embedding = excluded.embedding, \
         hlc = excluded.hlc, origin = excluded.origin, tombstone = excluded.tombstone, hash = excluded.hash\n\
         RETURNING id, collection, key, hlc;\n\
         INSERT INTO outbox (record_id, hlc, origin, priority, state, attempts, next_attempt_ms, created_ms, updated_ms) \
         SELECT r.id, r.hlc, r.origin, v.column4, 0, 0, 0, ?, ? FROM (VALUES ",
    );
    list(&mut sql, &|row| format!("({row}, ?, ?, ?)"));
    let _ = write!(
        sql,
        ") AS v JOIN records r ON r.collection = v.column2 AND r.key = v.column3 WHERE true ORDER BY v.column1\n\
         ON CONFLICT (record_id) WHERE state IN (0, 3) DO UPDATE SET hlc = excluded.hlc, origin = excluded.origin, \
         priority = MIN(outbox.priority, excluded.priority), state = 0, attempts = 0, next_attempt_ms = 0, \
         last_error = NULL, updated_ms = excluded.updated_ms;\n\
         UPDATE meta SET value = MAX(value + {rows}, ?) WHERE key = 'hlc_high_water';\n",
    );
    if commit {
        sql.push_str("COMMIT;\n");
    }
    sql
}

/// Binds a chunk's records (with their proposed versions) and priorities in the order
/// `write_script` mentions them. Borrows the records' bytes rather than copying them.
fn bind_script<'q>(
    sql: String,
    records: &'q [Record],
    priorities: &[Priority],
    now_ms: i64,
) -> sqlx::query::Query<'q, Sqlite, sqlx::sqlite::SqliteArguments> {
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
    for record in records {
        query = query
            .bind(record.collection.as_str())
            .bind(record.key.as_str())
            .bind(record.payload.as_slice())
            .bind(record.embedding.as_deref().map(embedding_to_blob))
            .bind(record.version.packed())
            .bind(record.version.origin.0.as_slice())
            .bind(record.tombstone)
            .bind(record.hash.0.as_slice());
    }
    query = query.bind(now_ms).bind(now_ms);
    for (record, priority) in records.iter().zip(priorities) {
        query = query
            .bind(record.collection.as_str())
            .bind(record.key.as_str())
            .bind(priority.code());
    }
    query.bind(records.last().map_or(0, |r| r.version.packed()))
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

    /// Validates every request, then applies them all in one transaction.
    async fn write_all(&self, requests: Vec<WriteRequest>) -> Result<Vec<WriteReceipt>> {
        if requests.is_empty() {
            return Ok(Vec::new());
        }
        for request in &requests {
            let spec = self.require_spec(&request.collection).await?;
            request.validate(&spec, &self.limits)?;
        }
        let mut requests = coalesce(requests);
        let now = self.hlc.physical_now_ms() as i64;
        let mut conn = ScriptConnection::acquire(&self.writer).await?;
        let count = requests.len();
        let chunks = count.div_ceil(ROWS_PER_SCRIPT);
        let mut receipts = Vec::with_capacity(count);
        for (i, chunk) in requests.chunks_mut(ROWS_PER_SCRIPT).enumerate() {
            // Stamped while holding the only writer connection, so stamps follow commit order.
            let records: Vec<Record> = chunk
                .iter_mut()
                .map(|r| {
                    Record::new(
                        r.collection.clone(),
                        r.key.clone(),
                        std::mem::take(&mut r.payload),
                        r.embedding.take(),
                        self.hlc.now(),
                        r.tombstone,
                    )
                })
                .collect();
            let priorities: Vec<Priority> = chunk.iter().map(|r| r.priority).collect();
            let sql = write_script(chunk.len(), i == 0, i + 1 == chunks);
            let returned = bind_script(sql, &records, &priorities, now)
                .fetch_all(conn.get())
                .await?;
            // Row id and final version per collection and key, looked up by borrowed keys.
            let mut assigned: HashMap<String, HashMap<String, (u64, i64)>> = HashMap::new();
            for row in returned {
                assigned
                    .entry(row.try_get::<String, _>(1)?)
                    .or_default()
                    .insert(
                        row.try_get::<String, _>(2)?,
                        (row.try_get::<i64, _>(0)? as u64, row.try_get(3)?),
                    );
            }
            for mut record in records {
                let (label, packed) = assigned
                    .get(record.collection.as_str())
                    .and_then(|keys| keys.get(record.key.as_str()))
                    .copied()
                    .ok_or_else(|| Error::BadRow {
                        table: "records",
                        detail: format!("no row returned for {}", record.key),
                    })?;
                // The version is final only inside the transaction (see `write_script`);
                // one assigned by another process on the same data dir moves our clock on.
                record.version = Hlc::from_packed(packed, record.version.origin);
                let _ = self.hlc.observe(record.version);
                receipts.push(WriteReceipt { record, label });
            }
        }
        conn.finish();
        hybridsync_core::crash_point("after_local_commit");
        Ok(receipts)
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
        sqlx::query(
            "INSERT INTO collections (name, dim, metric, precision, created_ms) VALUES (?1, ?2, ?3, ?4, ?5) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(spec.name.as_str())
        .bind(dim)
        .bind(metric)
        .bind(precision)
        .bind(self.hlc.physical_now_ms() as i64)
        .execute(&self.writer)
        .await
        .map_err(Error::from)?;
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
                .query_row([collection.as_str(), key.as_str()], |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                        r.get(6)?,
                    ))
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
        let rows = sqlx::query(
            "SELECT state, priority, COUNT(*), MAX(CASE WHEN state = 2 THEN updated_ms END) \
             FROM outbox GROUP BY state, priority",
        )
        .fetch_all(&self.readers)
        .await
        .map_err(Error::from)?;
        let mut stats = OutboxStats::default();
        for row in rows {
            let state: i64 = row.try_get(0).map_err(Error::from)?;
            let priority = Priority::from_code(row.try_get(1).map_err(Error::from)?)?;
            let count = row.try_get::<i64, _>(2).map_err(Error::from)? as u64;
            let shipped: Option<i64> = row.try_get(3).map_err(Error::from)?;
            stats.last_shipped_ms = stats.last_shipped_ms.max(shipped.map(|ms| ms as u64));
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

    fn device_id(&self) -> hybridsync_core::DeviceId {
        self.hlc.device()
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
