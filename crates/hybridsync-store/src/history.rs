//! The sync history: one row per seed, hydrate or sync run (the newest 1,000 kept).

use crate::error::sql;
use crate::{Error, Result, SqliteStore};
use hybridsync_core::{HistoryEntry, SyncOperation};
use sqlx::Row;

/// History entries kept.
const HISTORY_KEPT: i64 = 1_000;

const APPEND: &str = "INSERT INTO sync_history (started_ms, operation, pushed, pulled, conflicts, duration_ms, error) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)";

const TRIM: &str = "DELETE FROM sync_history WHERE id <= (SELECT MAX(id) FROM sync_history) - ?1";

const NEWEST: &str = "SELECT started_ms, operation, pushed, pulled, conflicts, duration_ms, error \
     FROM sync_history ORDER BY id DESC LIMIT ?";

fn operation_from(name: &str) -> Result<SyncOperation> {
    name.parse().map_err(|_| Error::BadRow {
        table: "sync_history",
        detail: format!("unknown operation {name:?}"),
    })
}

impl SqliteStore {
    /// Appends to the sync history, keeping the newest entries.
    pub(crate) async fn record_history(&self, entry: &HistoryEntry) -> hybridsync_core::Result<()> {
        let clamp = |v: u64| v.min(i64::MAX as u64) as i64;
        self.writer
            .transaction(1, |tx| {
                tx.prepare_cached(APPEND)?.execute(rusqlite::params![
                    clamp(entry.started_ms),
                    entry.operation.as_str(),
                    clamp(entry.pushed),
                    clamp(entry.pulled),
                    clamp(entry.conflicts),
                    clamp(entry.duration_ms),
                    entry.error.as_deref(),
                ])?;
                tx.prepare_cached(TRIM)?.execute([HISTORY_KEPT])?;
                Ok(())
            })
            .await?;
        Ok(())
    }
    /// The newest `limit` history entries, newest first.
    pub(crate) async fn history(&self, limit: usize) -> hybridsync_core::Result<Vec<HistoryEntry>> {
        let rows = sqlx::query(NEWEST)
            .bind(limit.min(i64::MAX as usize) as i64)
            .fetch_all(&self.readers)
            .await
            .map_err(sql)?;
        let entries = rows
            .iter()
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
            .collect::<Result<_>>()?;
        Ok(entries)
    }
}
