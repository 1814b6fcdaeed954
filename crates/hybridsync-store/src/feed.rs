//! The pull side of two-way sync: applying pages of remote changes (conflicts settled
//! inside the same transaction) and the per-collection change-feed cursors, which move
//! in the transaction that applies the page they lead past.

use crate::error::sql;
use crate::outbox::{SUPERSEDE, UNSHIPPED, enqueue, with_states};
use crate::records::{high_water, raise_high_water, save_record};
use crate::rows::{columns_at, record_from_columns};
use crate::tree::TreeDelta;
use crate::{Result, SqliteStore};
use hybridsync_core::{
    ApplyOutcome, ChangeCursor, CollectionName, Conflict, ConflictResolver, Hlc, Key, Priority,
    Record, Resolution, ResolutionKind, SettledConflict, WriteReceipt,
};
use std::collections::HashMap;

/// Keys per lookup statement, well below SQLite's bind-variable limit.
const KEYS_PER_LOOKUP: usize = 500;

const SAVE_CURSOR: &str = "INSERT INTO sync_cursors (collection, cursor, updated_ms) VALUES (?1, ?2, ?3) \
     ON CONFLICT (collection) DO UPDATE SET cursor = excluded.cursor, updated_ms = excluded.updated_ms";

const LOAD_CURSOR: &str = "SELECT cursor FROM sync_cursors WHERE collection = ?";

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
                 EXISTS (SELECT 1 FROM outbox o WHERE o.record_id = r.id AND {}) \
                 FROM records r WHERE r.collection = ? AND r.key IN ({marks})",
                with_states(UNSHIPPED)
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

    /// Applies a page of remote changes and moves the collection's cursor to `next`, in
    /// one transaction, settling conflicts with `resolver`.
    pub(crate) async fn apply_remote(
        &self,
        collection: &CollectionName,
        records: Vec<Record>,
        next: &ChangeCursor,
        resolver: &dyn ConflictResolver,
    ) -> hybridsync_core::Result<ApplyOutcome> {
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
                let mut tree = TreeDelta::default();
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
                            let label = save_record(tx, remote, spec.encrypted, &mut tree)?;
                            if supersede {
                                tx.prepare_cached(&SUPERSEDE)?
                                    .execute(rusqlite::params![now, label as i64])?;
                            }
                            outcome.applied += 1;
                            outcome
                                .changed
                                .push(WriteReceipt::new(remote.clone(), label));
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
                            let label = save_record(tx, &record, spec.encrypted, &mut tree)?;
                            enqueue(tx, label, record.version, Priority::High, now)?;
                            outcome.changed.push(WriteReceipt::new(record, label));
                        }
                    }
                }
                tree.save(tx)?;
                raise_high_water(tx, floor)?;
                tx.prepare_cached(SAVE_CURSOR)?.execute(rusqlite::params![
                    collection.as_str(),
                    next.0,
                    now
                ])?;
                Ok(())
            })
            .await?;
        Ok(outcome)
    }

    /// Where this store's pull of `collection` stands in the cloud's change feed.
    pub(crate) async fn cursor(
        &self,
        collection: &CollectionName,
    ) -> hybridsync_core::Result<ChangeCursor> {
        self.require_spec(collection).await?;
        let cursor: Option<Vec<u8>> = sqlx::query_scalar(LOAD_CURSOR)
            .bind(collection.as_str())
            .fetch_optional(&self.readers)
            .await
            .map_err(sql)?;
        Ok(ChangeCursor(cursor.unwrap_or_default()))
    }
}
