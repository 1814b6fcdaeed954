//! Records: transactional writes (each with its outbox entry), versions stamped inside
//! the transaction from the stored high-water mark, point reads, scans, counts and the
//! embeddings the vector index is built and re-ranked from.

use crate::error::sql;
use crate::outbox::enqueue;
use crate::rows::{RecordColumns, blob_to_embedding, embedding_to_blob, record_from_columns};
use crate::tree::{TreeDelta, digests_of};
use crate::{Error, Result, SqliteStore};
use hybridsync_core::{
    CollectionName, ContentHash, Hlc, Key, Priority, Record, RowDigest, StoredVector, WriteReceipt,
    WriteRequest,
};
use sqlx::Row;
use std::collections::{BTreeMap, HashMap};

/// Labels per statement of [`SqliteStore::embeddings_of`], well below SQLite's
/// bind-variable limit.
const LABELS_PER_READ: usize = 500;

/// Inserts or replaces a record's row (keeping its id) with its bucket and leaf digest
/// (`encrypted`: its collection is), records the change to the tree in `tree`, and
/// returns the id, which is also its vector label. Looked up first rather than with
/// `RETURNING`, which costs SQLite an ephemeral table per statement and halves the
/// write rate.
pub(crate) fn save_record(
    tx: &rusqlite::Transaction<'_>,
    record: &Record,
    encrypted: bool,
    tree: &mut TreeDelta,
) -> Result<u64> {
    use rusqlite::OptionalExtension;
    let existing: Option<Placed> = tx
        .prepare_cached("SELECT id, bucket, leaf FROM records WHERE collection = ?1 AND key = ?2")?
        .query_row([record.collection.as_str(), record.key.as_str()], |row| {
            Ok((row.get(0)?, row.get(1)?, row.get(2)?))
        })
        .optional()?;
    save_record_over(tx, record, encrypted, tree, existing)
}

/// A stored row's id, bucket and leaf, as [`save_record_over`] replaces it.
pub(crate) type Placed = (i64, Option<i64>, Option<i64>);

/// [`save_record`] with the key's current row (`existing`) already looked up.
pub(crate) fn save_record_over(
    tx: &rusqlite::Transaction<'_>,
    record: &Record,
    encrypted: bool,
    tree: &mut TreeDelta,
    existing: Option<Placed>,
) -> Result<u64> {
    let embedding = record.embedding.as_deref().map(embedding_to_blob);
    let (bucket, leaf) = digests_of(record, encrypted);
    let params = rusqlite::params![
        record.collection.as_str(),
        record.key.as_str(),
        record.payload,
        embedding,
        record.version.packed(),
        record.version.origin.0,
        record.tombstone,
        record.hash.0,
        bucket,
        leaf as i64,
    ];
    let id = match existing {
        Some((id, old_bucket, old_leaf)) => {
            tx.prepare_cached(
                "UPDATE records SET payload = ?3, embedding = ?4, hlc = ?5, origin = ?6, tombstone = ?7, \
                 hash = ?8, bucket = ?9, leaf = ?10 WHERE collection = ?1 AND key = ?2",
            )?
            .execute(params)?;
            if let (Some(old_bucket), Some(old_leaf)) = (old_bucket, old_leaf) {
                tree.add(&record.collection, old_bucket as u32, old_leaf as u64, -1);
            }
            id
        }
        None => {
            tx.prepare_cached(
                "INSERT INTO records (collection, key, payload, embedding, hlc, origin, tombstone, hash, \
                 bucket, leaf) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )?
            .execute(params)?;
            tx.last_insert_rowid()
        }
    };
    tree.add(&record.collection, bucket, leaf, 1);
    Ok(id as u64)
}

/// Ids of records with a change not yet in the cloud (pending, in flight or failed).
pub(crate) fn unshipped_ids(
    conn: &rusqlite::Connection,
) -> rusqlite::Result<std::collections::HashSet<i64>> {
    static UNSHIPPED: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!(
            "SELECT DISTINCT o.record_id FROM outbox o WHERE {}",
            crate::outbox::with_states(crate::outbox::UNSHIPPED)
        )
    });
    conn.prepare_cached(&UNSHIPPED)?
        .query_map([], |row| row.get(0))?
        .collect()
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
    /// Validates every request, then applies them all in one transaction.
    pub(crate) async fn write(
        &self,
        requests: Vec<WriteRequest>,
    ) -> hybridsync_core::Result<Vec<WriteReceipt>> {
        if requests.is_empty() {
            return Ok(Vec::new());
        }
        let mut encrypted = HashMap::new();
        for request in &requests {
            let spec = self.require_spec(&request.collection).await?;
            request.validate(&spec, &self.limits)?;
            encrypted.insert(request.collection.clone(), spec.encrypted);
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
                let mut tree = TreeDelta::default();
                for (record, priority) in records.iter_mut().zip(&priorities) {
                    record.version = self.stamp_above(floor);
                    floor = record.version.packed();
                    let label = save_record(tx, record, encrypted[&record.collection], &mut tree)?;
                    enqueue(tx, label, record.version, *priority, now)?;
                    labels.push(label);
                }
                tree.save(tx)?;
                raise_high_water(tx, floor)?;
                Ok(labels)
            })
            .await?;
        hybridsync_core::crash_point("after_local_commit");
        Ok(records
            .into_iter()
            .zip(labels)
            .map(|(record, label)| WriteReceipt::new(record, label))
            .collect())
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

    /// The current record for a key, tombstones included: on this thread through the
    /// point readers, through the reader pool if SQLite refuses that path.
    pub(crate) async fn get(
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
                    .map_err(sql)?
            }
        };
        Ok(columns
            .map(|columns| record_from_columns(collection, columns))
            .transpose()?)
    }

    pub(crate) async fn scan_records(
        &self,
        collection: &CollectionName,
        after: Option<&Key>,
        limit: usize,
        tombstones: bool,
    ) -> Result<Vec<Record>> {
        self.require_spec(collection).await?;
        let rows = sqlx::query_as::<_, RecordColumns>(
            "SELECT key, payload, embedding, hlc, origin, tombstone, hash FROM records \
             WHERE collection = ?1 AND key > ?2 AND (?4 OR tombstone = 0) ORDER BY key LIMIT ?3",
        )
        .bind(collection.as_str())
        .bind(after.map_or("", Key::as_str))
        .bind(limit.min(i64::MAX as usize) as i64)
        .bind(tombstones)
        .fetch_all(&self.readers)
        .await?;
        rows.into_iter()
            .map(|columns| record_from_columns(collection, columns))
            .collect()
    }

    /// The records with `keys` as the consistency checker sees them, each with whether
    /// it has a change not yet in the cloud, read through one point reader. The
    /// unshipped entries are read first, once, on their own (few, through the outbox's
    /// state index), rather than probed per row.
    pub(crate) async fn digests(
        &self,
        collection: &CollectionName,
        keys: &[Key],
    ) -> Result<Vec<(RowDigest, bool)>> {
        self.require_spec(collection).await?;
        type Columns = (i64, String, i64, Vec<u8>, bool, Vec<u8>);
        let (unshipped, rows) = self.point.with(|conn| {
            let unshipped = unshipped_ids(conn)?;
            let mut rows: Vec<Columns> = Vec::with_capacity(keys.len());
            for chunk in keys.chunks(500) {
                let sql = format!(
                    "SELECT id, key, hlc, origin, tombstone, hash FROM records \
                     WHERE collection = ? AND key IN ({})",
                    vec!["?"; chunk.len()].join(", ")
                );
                let params =
                    std::iter::once(collection.as_str()).chain(chunk.iter().map(Key::as_str));
                let mut statement = conn.prepare_cached(&sql)?;
                let read = statement.query_map(rusqlite::params_from_iter(params), |row| {
                    Ok((
                        row.get(0)?,
                        row.get(1)?,
                        row.get(2)?,
                        row.get(3)?,
                        row.get(4)?,
                        row.get(5)?,
                    ))
                })?;
                for row in read {
                    rows.push(row?);
                }
            }
            Ok((unshipped, rows))
        })?;
        let mut out = Vec::with_capacity(rows.len());
        for (id, key, hlc, origin, tombstone, hash) in rows {
            let digest = crate::rows::row_digest(key, hlc, &origin, tombstone, &hash)?;
            out.push((digest, unshipped.contains(&id)));
        }
        Ok(out)
    }

    /// Records in a collection, tombstones included.
    pub(crate) async fn count_all(
        &self,
        collection: &CollectionName,
    ) -> hybridsync_core::Result<u64> {
        self.require_spec(collection).await?;
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM records WHERE collection = ?")
            .bind(collection.as_str())
            .fetch_one(&self.readers)
            .await
            .map_err(sql)?;
        Ok(count as u64)
    }

    /// Live records per collection.
    pub(crate) async fn counts(&self) -> hybridsync_core::Result<BTreeMap<CollectionName, u64>> {
        let rows = sqlx::query(
            "SELECT c.name, (SELECT COUNT(*) FROM records r WHERE r.collection = c.name AND r.tombstone = 0) \
             FROM collections c",
        )
        .fetch_all(&self.readers)
        .await
        .map_err(sql)?;
        let mut counts = BTreeMap::new();
        for row in rows {
            let name: String = row.try_get(0).map_err(sql)?;
            let count: i64 = row.try_get(1).map_err(sql)?;
            let name = CollectionName::new(name).map_err(|e| Error::BadRow {
                table: "collections",
                detail: e.to_string(),
            })?;
            counts.insert(name, count as u64);
        }
        Ok(counts)
    }

    /// Live rows with an embedding in `collection`: label, key, hash and, when
    /// `with_embedding`, the vector.
    pub(crate) async fn live_vectors(
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
        // The whole collection, read by a point reader: its mapping of the file serves
        // each page without a copy (the pool's connections map nothing), and rusqlite
        // hands rows over without sqlx's channel. Off the async worker when the runtime
        // has others; the pool answers if the point reader fails.
        type Columns = (i64, String, Vec<u8>, Option<Vec<u8>>);
        let scan = || {
            self.point.with(|conn| {
                let mut statement = conn.prepare_cached(sql)?;
                let rows = statement.query_map([collection.as_str()], |row| {
                    Ok((
                        row.get(0)?,
                        row.get(1)?,
                        row.get(2)?,
                        if with_embedding { row.get(3)? } else { None },
                    ))
                })?;
                rows.collect::<rusqlite::Result<Vec<Columns>>>()
            })
        };
        let fast = if crate::connections::multi_thread() {
            tokio::task::block_in_place(scan)
        } else {
            scan()
        };
        let rows = match fast {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!(error = %e, "vector scan failed; answering through the reader pool");
                let rows = sqlx::query(sql)
                    .bind(collection.as_str())
                    .fetch_all(&self.readers)
                    .await?;
                rows.iter()
                    .map(|row| {
                        Ok((
                            row.try_get(0)?,
                            row.try_get(1)?,
                            row.try_get(2)?,
                            if with_embedding {
                                row.try_get(3)?
                            } else {
                                None
                            },
                        ))
                    })
                    .collect::<std::result::Result<Vec<Columns>, sqlx::Error>>()?
            }
        };
        let bad = |detail: String| Error::BadRow {
            table: "records",
            detail,
        };
        let mut out = Vec::with_capacity(rows.len());
        for (id, key, hash, blob) in rows {
            let key = Key::new(key).map_err(|e| bad(e.to_string()))?;
            let hash = ContentHash::from_slice(&hash)
                .ok_or_else(|| bad(format!("hash of {} bytes", hash.len())))?;
            let embedding = blob.map(|blob| blob_to_embedding(&blob)).transpose()?;
            out.push(StoredVector {
                label: id as u64,
                key,
                hash,
                embedding,
            });
        }
        Ok(out)
    }

    /// The stored embeddings of the records labelled `labels`, in that order: point reads by row id on this thread, a
    /// statement per [`LABELS_PER_READ`] labels, with the reader pool as the fallback (as
    /// for `get`).
    pub(crate) async fn embeddings_of(
        &self,
        collection: &CollectionName,
        labels: &[u64],
    ) -> hybridsync_core::Result<Vec<Option<Vec<f32>>>> {
        type Row = (i64, String, Option<Vec<u8>>);
        self.require_spec(collection).await?;
        let mut found: HashMap<i64, Vec<u8>> = HashMap::with_capacity(labels.len());
        for chunk in labels.chunks(LABELS_PER_READ) {
            // Row-id lookups only, the collection checked here: with `collection = ?`
            // in the WHERE clause SQLite may pick the (collection, key) index and scan
            // the whole collection.
            let statement = format!(
                "SELECT id, collection, embedding FROM records WHERE id IN ({}) AND tombstone = 0",
                vec!["?"; chunk.len()].join(", ")
            );
            let ids: Vec<i64> = chunk
                .iter()
                .map(|&label| label.min(i64::MAX as u64) as i64)
                .collect();
            let fast = self.point.with(|conn| {
                let mut read = conn.prepare_cached(&statement)?;
                let rows = read.query_map(rusqlite::params_from_iter(&ids), |row| {
                    Ok((row.get(0)?, row.get(1)?, row.get(2)?))
                })?;
                rows.collect::<rusqlite::Result<Vec<Row>>>()
            });
            let rows = match fast {
                Ok(rows) => rows,
                Err(e) => {
                    tracing::warn!(error = %e, "embedding read failed; answering through the reader pool");
                    let mut query = sqlx::query_as::<_, Row>(sqlx::AssertSqlSafe(statement));
                    for id in &ids {
                        query = query.bind(id);
                    }
                    query.fetch_all(&self.readers).await.map_err(sql)?
                }
            };
            found.extend(rows.into_iter().filter_map(|(id, name, blob)| {
                (name == collection.as_str()).then_some((id, blob?))
            }));
        }
        let embeddings = labels
            .iter()
            .map(|&label| {
                found
                    .remove(&(label.min(i64::MAX as u64) as i64))
                    .map(|blob| blob_to_embedding(&blob))
                    .transpose()
            })
            .collect::<Result<_>>()?;
        Ok(embeddings)
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
