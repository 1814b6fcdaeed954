//! Migrations (bulk imports): the catalogue of migrations with their checkpoints, the
//! batch write that commits rows and checkpoint together, and the rollback that undoes
//! a migration's writes as new versions.

use crate::outbox::enqueue;
use crate::records::{high_water, raise_high_water, save_record, save_record_over};
use crate::rows::blob_to_embedding;
use crate::tree::TreeDelta;
use crate::{Error, Result, SqliteStore};
use hybridsync_core::{
    CollectionName, ImportOutcome, ImportStep, Key, MigrationCounts, MigrationInfo, MigrationState,
    Priority, Record, RollbackOutcome, WriteReceipt,
};
use rusqlite::OptionalExtension;

const COLUMNS: &str = "id, collection, source, plan, fingerprint, position, rejects_bytes, state, \
                       pid, read, imported, rejected, skipped, error, started_ms, updated_ms";

/// This process, as a migration's owner.
fn our_pid() -> i64 {
    i64::from(std::process::id())
}

/// Whether process `pid` still exists (a running migration whose owner is gone was
/// interrupted).
fn alive(pid: i64) -> bool {
    if pid == our_pid() {
        return true;
    }
    match u32::try_from(pid).ok().and_then(|p| i32::try_from(p).ok()) {
        Some(pid) => rustix::process::Pid::from_raw(pid)
            .is_some_and(|pid| rustix::process::test_kill_process(pid).is_ok()),
        None => false,
    }
}

/// A migration's row; a running migration whose process is gone is reported as
/// interrupted.
fn info_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<MigrationInfo> {
    let unreadable = |column, e: hybridsync_core::Error| {
        rusqlite::Error::FromSqlConversionFailure(column, rusqlite::types::Type::Text, Box::new(e))
    };
    let collection = CollectionName::new(row.get::<_, String>(1)?).map_err(|e| unreadable(1, e))?;
    let mut state: MigrationState = row
        .get::<_, String>(7)?
        .parse()
        .map_err(|e| unreadable(7, e))?;
    if state == MigrationState::Running && !alive(row.get(8)?) {
        state = MigrationState::Interrupted;
    }
    Ok(MigrationInfo {
        id: row.get(0)?,
        collection,
        source: row.get(2)?,
        plan: row.get(3)?,
        fingerprint: row.get(4)?,
        position: row.get(5)?,
        rejects_bytes: row.get::<_, i64>(6)? as u64,
        state,
        counts: MigrationCounts {
            read: row.get::<_, i64>(9)? as u64,
            imported: row.get::<_, i64>(10)? as u64,
            rejected: row.get::<_, i64>(11)? as u64,
            skipped: row.get::<_, i64>(12)? as u64,
        },
        error: row.get(13)?,
        started_ms: row.get::<_, i64>(14)? as u64,
        updated_ms: row.get::<_, i64>(15)? as u64,
    })
}

impl SqliteStore {
    pub(crate) async fn begin_migration(
        &self,
        info: &MigrationInfo,
    ) -> hybridsync_core::Result<()> {
        self.require_spec(&info.collection).await?;
        let info = info.clone();
        self.writer
            .transaction(1, move |tx| {
                tx.prepare_cached(
                    "INSERT INTO migrations (id, collection, source, plan, fingerprint, position, \
                     rejects_bytes, state, pid, read, imported, rejected, skipped, error, started_ms, \
                     updated_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'running', ?8, ?9, ?10, ?11, ?12, \
                     NULL, ?13, ?14) \
                     ON CONFLICT (id) DO UPDATE SET fingerprint = excluded.fingerprint, \
                     position = excluded.position, rejects_bytes = excluded.rejects_bytes, \
                     state = 'running', pid = excluded.pid, read = excluded.read, \
                     imported = excluded.imported, rejected = excluded.rejected, \
                     skipped = excluded.skipped, error = NULL, updated_ms = excluded.updated_ms",
                )?
                .execute(rusqlite::params![
                    info.id,
                    info.collection.as_str(),
                    info.source,
                    info.plan,
                    info.fingerprint,
                    info.position,
                    info.rejects_bytes as i64,
                    our_pid(),
                    info.counts.read as i64,
                    info.counts.imported as i64,
                    info.counts.rejected as i64,
                    info.counts.skipped as i64,
                    info.started_ms as i64,
                    info.updated_ms as i64,
                ])?;
                Ok(())
            })
            .await?;
        Ok(())
    }

    pub(crate) async fn migration(
        &self,
        id: &str,
    ) -> hybridsync_core::Result<Option<MigrationInfo>> {
        let sql = format!("SELECT {COLUMNS} FROM migrations WHERE id = ?1");
        Ok(self.point.with(|conn| {
            conn.prepare_cached(&sql)?
                .query_row([id], info_from_row)
                .optional()
        })?)
    }

    pub(crate) async fn migrations(&self) -> hybridsync_core::Result<Vec<MigrationInfo>> {
        let sql = format!("SELECT {COLUMNS} FROM migrations ORDER BY seq");
        Ok(self.point.with(|conn| {
            conn.prepare_cached(&sql)?
                .query_map([], info_from_row)?
                .collect::<rusqlite::Result<Vec<_>>>()
        })?)
    }

    pub(crate) async fn end_migration(
        &self,
        id: &str,
        state: MigrationState,
        error: Option<&str>,
    ) -> hybridsync_core::Result<()> {
        let (owned, error) = (id.to_owned(), error.map(str::to_owned));
        let now = self.hlc.physical_now_ms() as i64;
        let changed = self
            .writer
            .transaction(1, move |tx| {
                Ok(tx
                    .prepare_cached(
                        "UPDATE migrations SET state = ?2, error = ?3, updated_ms = ?4 WHERE id = ?1",
                    )?
                    .execute(rusqlite::params![owned, state.as_str(), error, now])?)
            })
            .await?;
        if changed == 0 {
            return Err(hybridsync_core::Error::UnknownMigration(id.to_owned()));
        }
        Ok(())
    }

    pub(crate) async fn import_batch(
        &self,
        records: Vec<Record>,
        priority: Priority,
        step: &ImportStep,
    ) -> hybridsync_core::Result<ImportOutcome> {
        let mut encrypted = std::collections::HashMap::new();
        for record in &records {
            let spec = self.require_spec(&record.collection).await?;
            record.validate(&spec, &self.limits)?;
            encrypted.insert(record.collection.clone(), spec.encrypted);
        }
        let now = self.hlc.physical_now_ms() as i64;
        let step = step.clone();
        let rows = records.len();
        let outcome = self
            .writer
            .transaction(rows, move |tx| {
                let seq: i64 = tx
                    .prepare_cached("SELECT seq FROM migrations WHERE id = ?1")?
                    .query_row([&step.migration], |row| row.get(0))
                    .optional()?
                    .ok_or_else(|| {
                        Error::Invalid(hybridsync_core::Error::UnknownMigration(
                            step.migration.clone(),
                        ))
                    })?;
                let mut floor = high_water(tx)?;
                let mut tree = TreeDelta::default();
                let mut outcome = ImportOutcome::default();
                let half = rows / 2;
                for (i, mut record) in records.into_iter().enumerate() {
                    if i == half {
                        hybridsync_core::crash_point("migrate_mid_batch");
                    }
                    let previous = previous(tx, &record.collection, &record.key)?;
                    if let Some(previous) = &previous
                        && !previous.tombstone
                        && !record.tombstone
                        && previous.hash == record.hash.0
                    {
                        outcome.skipped += 1;
                        continue;
                    }
                    record.version = self.stamp_above(floor);
                    floor = record.version.packed();
                    let placed = previous.as_ref().map(|p| (p.id, p.bucket, p.leaf));
                    let label = save_record_over(
                        tx,
                        &record,
                        encrypted[&record.collection],
                        &mut tree,
                        placed,
                    )?;
                    enqueue(tx, label, record.version, priority, now)?;
                    note_write(tx, seq, label, &record, previous.as_ref())?;
                    outcome.receipts.push(WriteReceipt::new(record, label));
                }
                tree.save(tx)?;
                raise_high_water(tx, floor)?;
                tx.prepare_cached(
                    "UPDATE migrations SET position = ?2, rejects_bytes = ?3, read = read + ?4, \
                     imported = imported + ?5, rejected = rejected + ?6, skipped = skipped + ?7, \
                     updated_ms = ?8 WHERE seq = ?1",
                )?
                .execute(rusqlite::params![
                    seq,
                    step.position,
                    step.rejects_bytes as i64,
                    step.counts.read as i64,
                    outcome.receipts.len() as i64,
                    step.counts.rejected as i64,
                    outcome.skipped as i64,
                    now,
                ])?;
                hybridsync_core::crash_point("migrate_before_commit");
                Ok(outcome)
            })
            .await?;
        hybridsync_core::crash_point("migrate_after_commit");
        Ok(outcome)
    }

    pub(crate) async fn rollback_batch(
        &self,
        id: &str,
        limit: usize,
        priority: Priority,
    ) -> hybridsync_core::Result<RollbackOutcome> {
        let info = self
            .migration(id)
            .await?
            .ok_or_else(|| hybridsync_core::Error::UnknownMigration(id.to_owned()))?;
        let spec = self.require_spec(&info.collection).await?;
        let now = self.hlc.physical_now_ms() as i64;
        let id = id.to_owned();
        let outcome = self
            .writer
            .transaction(limit, move |tx| {
                let seq: i64 = tx
                    .prepare_cached("SELECT seq FROM migrations WHERE id = ?1")?
                    .query_row([&id], |row| row.get(0))?;
                let undo: Vec<Undo> = tx
                    .prepare_cached(
                        "SELECT w.record_id, r.key, r.hlc = w.written_hlc AND r.origin = w.written_origin, \
                         w.prev_hlc IS NOT NULL, w.prev_payload, w.prev_embedding, w.prev_tombstone \
                         FROM migration_writes w JOIN records r ON r.id = w.record_id \
                         WHERE w.migration = ?1 AND w.undone = 0 ORDER BY w.record_id LIMIT ?2",
                    )?
                    .query_map(rusqlite::params![seq, limit as i64], Undo::from_row)?
                    .collect::<rusqlite::Result<_>>()?;
                let mut floor = high_water(tx)?;
                let mut tree = TreeDelta::default();
                let mut outcome = RollbackOutcome::default();
                for undo in undo {
                    tx.prepare_cached(
                        "UPDATE migration_writes SET undone = 1 WHERE migration = ?1 AND record_id = ?2",
                    )?
                    .execute([seq, undo.record_id])?;
                    let key = Key::new(undo.key)?;
                    if !undo.unchanged {
                        outcome.kept.push(key);
                        continue;
                    }
                    let (payload, embedding, tombstone) = if undo.existed {
                        (
                            undo.payload.unwrap_or_default(),
                            undo.embedding.as_deref().map(blob_to_embedding).transpose()?,
                            undo.tombstone.unwrap_or(false),
                        )
                    } else {
                        (Vec::new(), None, true)
                    };
                    let (payload, embedding) = if tombstone { (Vec::new(), None) } else { (payload, embedding) };
                    let version = self.stamp_above(floor);
                    floor = version.packed();
                    let record = Record::new(spec.name.clone(), key, payload, embedding, version, tombstone);
                    let label = save_record(tx, &record, spec.encrypted, &mut tree)?;
                    enqueue(tx, label, record.version, priority, now)?;
                    outcome.receipts.push(WriteReceipt::new(record, label));
                }
                tree.save(tx)?;
                raise_high_water(tx, floor)?;
                let remaining: i64 = tx
                    .prepare_cached(
                        "SELECT COUNT(*) FROM migration_writes WHERE migration = ?1 AND undone = 0",
                    )?
                    .query_row([seq], |row| row.get(0))?;
                outcome.remaining = remaining as u64;
                if remaining == 0 {
                    tx.prepare_cached(
                        "UPDATE migrations SET state = 'rolled_back', updated_ms = ?2 WHERE seq = ?1",
                    )?
                    .execute(rusqlite::params![seq, now])?;
                }
                Ok(outcome)
            })
            .await?;
        Ok(outcome)
    }
}

/// One write of a migration to undo: the key, whether it still holds what the
/// migration wrote, and what it held before (`existed`: it held anything).
struct Undo {
    record_id: i64,
    key: String,
    unchanged: bool,
    existed: bool,
    payload: Option<Vec<u8>>,
    embedding: Option<Vec<u8>>,
    tombstone: Option<bool>,
}

impl Undo {
    fn from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Ok(Self {
            record_id: row.get(0)?,
            key: row.get(1)?,
            unchanged: row.get(2)?,
            existed: row.get(3)?,
            payload: row.get(4)?,
            embedding: row.get(5)?,
            tombstone: row.get(6)?,
        })
    }
}

/// What a key held before a migration wrote it (and where its row sits).
struct Previous {
    id: i64,
    bucket: Option<i64>,
    leaf: Option<i64>,
    hlc: i64,
    tombstone: bool,
    hash: Vec<u8>,
    payload: Vec<u8>,
    embedding: Option<Vec<u8>>,
}

fn previous(
    tx: &rusqlite::Transaction<'_>,
    collection: &CollectionName,
    key: &Key,
) -> Result<Option<Previous>> {
    Ok(tx
        .prepare_cached(
            "SELECT id, bucket, leaf, hlc, tombstone, hash, payload, embedding FROM records \
             WHERE collection = ?1 AND key = ?2",
        )?
        .query_row([collection.as_str(), key.as_str()], |row| {
            Ok(Previous {
                id: row.get(0)?,
                bucket: row.get(1)?,
                leaf: row.get(2)?,
                hlc: row.get(3)?,
                tombstone: row.get(4)?,
                hash: row.get(5)?,
                payload: row.get(6)?,
                embedding: row.get(7)?,
            })
        })
        .optional()?)
}

/// Notes that migration `seq` wrote `record` (row `label`) over `previous`. A key
/// written twice by one migration keeps what it held before the first write.
fn note_write(
    tx: &rusqlite::Transaction<'_>,
    seq: i64,
    label: u64,
    record: &Record,
    previous: Option<&Previous>,
) -> Result<()> {
    tx.prepare_cached(
        "INSERT INTO migration_writes (migration, record_id, written_hlc, written_origin, prev_hlc, \
         prev_payload, prev_embedding, prev_tombstone) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) \
         ON CONFLICT (migration, record_id) DO UPDATE SET written_hlc = excluded.written_hlc, \
         written_origin = excluded.written_origin",
    )?
    .execute(rusqlite::params![
        seq,
        label as i64,
        record.version.packed(),
        record.version.origin.0,
        previous.map(|p| p.hlc),
        previous.map(|p| &p.payload),
        previous.and_then(|p| p.embedding.as_ref()),
        previous.map(|p| p.tombstone),
    ])?;
    Ok(())
}
