//! Two-way sync state: applying pages of remote changes (with conflict resolution),
//! the per-collection change-feed cursors, the sync history, and scans for seeding.

use crate::rows::{RecordColumns, columns_at, record_from_columns};
use crate::write::{enqueue, high_water, raise_high_water, save_record};
use crate::{Error, Result, SqliteStore};
use hybridsync_core::{
    ApplyOutcome, ChangeCursor, CollectionName, Conflict, ConflictResolver, HistoryEntry, Hlc, Key,
    Priority, Record, Resolution, ResolutionKind, SettledConflict, SyncOperation, WriteReceipt,
};
use sqlx::Row;
use std::collections::HashMap;

/// Keys per lookup statement, well below SQLite's bind-variable limit.
const KEYS_PER_LOOKUP: usize = 500;

/// History entries kept.
const HISTORY_KEPT: i64 = 1_000;

/// A key's local state as the apply sees it.
struct Local {
    record: Record,
    /// The key has a change not yet in the cloud (pending, in flight or failed).
    pending: bool,
}

/// What becomes of one remote row.
enum Action {
    /// Make the remote row the local state as it is; if `supersede`, the pending local
    /// change is dropped (the remote one won).
    Apply { supersede: bool },
    /// Write this content as a new local version that wins everywhere.
    Restamp {
        payload: Vec<u8>,
        embedding: Option<Vec<f32>>,
        tombstone: bool,
    },
    /// Leave the local state as it is.
    Keep,
}

/// What to do with `remote`, and how the conflict was settled if it met a pending local
/// change. A remote row equal to the local version is our own echo, never a conflict.
fn decide(
    local: Option<&Local>,
    remote: &Record,
    resolver: &dyn ConflictResolver,
) -> (Action, Option<ResolutionKind>) {
    let Some(local) = local else {
        return (Action::Apply { supersede: false }, None);
    };
    let newer = remote.version > local.record.version;
    if !local.pending || remote.version == local.record.version {
        let action = if newer {
            Action::Apply { supersede: false }
        } else {
            Action::Keep
        };
        return (action, None);
    }
    let conflict = Conflict {
        local: &local.record,
        remote,
    };
    let resolution = hybridsync_core::resolve(conflict, resolver);
    let kind = ResolutionKind::from(&resolution);
    let action = match resolution {
        Resolution::KeepRemote if newer => Action::Apply { supersede: true },
        Resolution::KeepRemote => Action::Restamp {
            payload: remote.payload.clone(),
            embedding: remote.embedding.clone(),
            tombstone: remote.tombstone,
        },
        Resolution::KeepLocal if !newer => Action::Keep,
        Resolution::KeepLocal => Action::Restamp {
            payload: local.record.payload.clone(),
            embedding: local.record.embedding.clone(),
            tombstone: local.record.tombstone,
        },
        Resolution::Merged { payload, embedding } => Action::Restamp {
            payload,
            embedding,
            tombstone: false,
        },
    };
    (action, Some(kind))
}

fn operation_from(name: &str) -> Result<SyncOperation> {
    name.parse().map_err(|_| Error::BadRow {
        table: "sync_history",
        detail: format!("unknown operation {name:?}"),
    })
}

impl SqliteStore {
    fn local_state(
        tx: &rusqlite::Transaction<'_>,
        collection: &CollectionName,
        keys: &[&Key],
    ) -> Result<HashMap<Key, Local>> {
        let mut found = HashMap::with_capacity(keys.len());
        for chunk in keys.chunks(KEYS_PER_LOOKUP) {
            let marks = vec!["?"; chunk.len()].join(", ");
            let sql = format!(
                "SELECT r.key, r.payload, r.embedding, r.hlc, r.origin, r.tombstone, r.hash, \
                 EXISTS (SELECT 1 FROM outbox o WHERE o.record_id = r.id AND o.state IN (0, 1, 3)) \
                 FROM records r WHERE r.collection = ? AND r.key IN ({marks})"
            );
            let mut lookup = tx.prepare_cached(&sql)?;
            let params =
                std::iter::once(collection.as_str()).chain(chunk.iter().map(|k| k.as_str()));
            let rows = lookup.query_map(rusqlite::params_from_iter(params), |row| {
                Ok((columns_at(row, 0)?, row.get::<_, bool>(7)?))
            })?;
            for row in rows {
                let (columns, pending) = row?;
                let record = record_from_columns(collection, columns)?;
                found.insert(record.key.clone(), Local { record, pending });
            }
        }
        Ok(found)
    }

    pub(crate) async fn apply(
        &self,
        collection: &CollectionName,
        records: Vec<Record>,
        next: &ChangeCursor,
        resolver: &dyn ConflictResolver,
    ) -> Result<ApplyOutcome> {
        let spec = self.require_spec(collection).await?;
        let mut outcome = ApplyOutcome::default();
        let mut accepted = Vec::with_capacity(records.len());
        for record in records {
            let refusal = if record.collection != *collection {
                Some(format!("belongs to collection {}", record.collection))
            } else {
                record
                    .validate(&spec, &self.limits)
                    .and_then(|()| self.hlc.observe(record.version))
                    .err()
                    .map(|e| e.to_string())
            };
            match refusal {
                Some(reason) => outcome.refused.push((record.key.clone(), reason)),
                None => accepted.push(record),
            }
        }
        let now = self.hlc.physical_now_ms() as i64;
        let keys: Vec<&Key> = accepted.iter().map(|r| &r.key).collect();
        let rows = accepted.len();
        self.writer
            .transaction(rows, |tx| {
                let local = Self::local_state(tx, collection, &keys)?;
                let mut floor = high_water(tx)?;
                for remote in &accepted {
                    floor = floor.max(remote.version.packed());
                }
                for remote in &accepted {
                    let existing = local.get(&remote.key);
                    let (action, settled) = decide(existing, remote, resolver);
                    if let (Some(resolution), Some(local)) = (settled, existing) {
                        outcome.conflicts.push(SettledConflict {
                            key: remote.key.clone(),
                            local: local.record.version,
                            remote: remote.version,
                            resolution,
                        });
                    }
                    match action {
                        Action::Keep => outcome.skipped += 1,
                        Action::Apply { supersede } => {
                            let label = save_record(tx, remote)?;
                            if supersede {
                                tx.prepare_cached(
                                    "UPDATE outbox SET state = 2, claim = NULL, updated_ms = ?1 \
                                     WHERE record_id = ?2 AND state IN (0, 3)",
                                )?
                                .execute(rusqlite::params![now, label as i64])?;
                            }
                            outcome.applied += 1;
                            outcome.changed.push(WriteReceipt {
                                record: remote.clone(),
                                label,
                            });
                        }
                        Action::Restamp {
                            payload,
                            embedding,
                            tombstone,
                        } => {
                            let merged = Record::new(
                                collection.clone(),
                                remote.key.clone(),
                                payload,
                                embedding,
                                Hlc::default(),
                                tombstone,
                            );
                            merged.validate(&spec, &self.limits)?;
                            let record = Record {
                                version: self.stamp_above(floor),
                                ..merged
                            };
                            floor = record.version.packed();
                            let label = save_record(tx, &record)?;
                            enqueue(tx, label, record.version, Priority::High, now)?;
                            outcome.changed.push(WriteReceipt { record, label });
                        }
                    }
                }
                raise_high_water(tx, floor)?;
                tx.prepare_cached(
                    "INSERT INTO sync_cursors (collection, cursor, updated_ms) VALUES (?1, ?2, ?3) \
                     ON CONFLICT (collection) DO UPDATE SET cursor = excluded.cursor, updated_ms = excluded.updated_ms",
                )?
                .execute(rusqlite::params![collection.as_str(), next.0, now])?;
                Ok(())
            })
            .await?;
        Ok(outcome)
    }

    pub(crate) async fn load_cursor(&self, collection: &CollectionName) -> Result<ChangeCursor> {
        self.require_spec(collection).await?;
        let cursor: Option<Vec<u8>> =
            sqlx::query_scalar("SELECT cursor FROM sync_cursors WHERE collection = ?")
                .bind(collection.as_str())
                .fetch_optional(&self.readers)
                .await?;
        Ok(ChangeCursor(cursor.unwrap_or_default()))
    }

    /// Up to `limit` records after `after` in key order; tombstones only if asked for.
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

    pub(crate) async fn count_records(&self, collection: &CollectionName) -> Result<u64> {
        self.require_spec(collection).await?;
        let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM records WHERE collection = ?")
            .bind(collection.as_str())
            .fetch_one(&self.readers)
            .await?;
        Ok(count as u64)
    }

    pub(crate) async fn append_history(&self, entry: &HistoryEntry) -> Result<()> {
        let clamp = |v: u64| v.min(i64::MAX as u64) as i64;
        self.writer
            .transaction(1, |tx| {
                tx.prepare_cached(
                    "INSERT INTO sync_history (started_ms, operation, pushed, pulled, conflicts, duration_ms, error) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )?
                .execute(rusqlite::params![
                    clamp(entry.started_ms),
                    entry.operation.as_str(),
                    clamp(entry.pushed),
                    clamp(entry.pulled),
                    clamp(entry.conflicts),
                    clamp(entry.duration_ms),
                    entry.error.as_deref(),
                ])?;
                tx.prepare_cached(
                    "DELETE FROM sync_history WHERE id <= (SELECT MAX(id) FROM sync_history) - ?1",
                )?
                .execute([HISTORY_KEPT])?;
                Ok(())
            })
            .await
    }

    pub(crate) async fn load_history(&self, limit: usize) -> Result<Vec<HistoryEntry>> {
        let rows = sqlx::query(
            "SELECT started_ms, operation, pushed, pulled, conflicts, duration_ms, error \
             FROM sync_history ORDER BY id DESC LIMIT ?",
        )
        .bind(limit.min(i64::MAX as usize) as i64)
        .fetch_all(&self.readers)
        .await?;
        rows.iter()
            .map(|row| {
                let unsigned = |i: usize| row.try_get::<i64, _>(i).map(|v| v.max(0) as u64);
                Ok(HistoryEntry {
                    started_ms: unsigned(0)?,
                    operation: operation_from(&row.try_get::<String, _>(1)?)?,
                    pushed: unsigned(2)?,
                    pulled: unsigned(3)?,
                    conflicts: unsigned(4)?,
                    duration_ms: unsigned(5)?,
                    error: row.try_get(6)?,
                })
            })
            .collect()
    }
}
