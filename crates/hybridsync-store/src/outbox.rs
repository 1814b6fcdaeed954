//! Draining the outbox: claiming entries, settling them, and the queue-management
//! operations (requeue, retry failed, clear failed).

use crate::rows::{columns_at, record_from_columns};
use crate::writer::HEAVY_ROWS;
use crate::{Error, Result, SqliteStore};
use hybridsync_core::{CollectionName, OutboxEntry, OutboxOutcome, Priority};

/// Outbox states as stored (0 pending, 1 in flight, 2 done, 3 failed).
const PENDING: i64 = 0;
const FAILED: i64 = 3;

/// The state an entry takes when it leaves flight for `target`: `target`, unless a
/// newer open entry exists for the same record, in which case it is superseded (done):
/// the newer entry ships the record's current state.
const SETTLE_STATE: &str = "CASE WHEN EXISTS (SELECT 1 FROM outbox newer WHERE newer.record_id = outbox.record_id \
     AND newer.state IN (0, 3) AND newer.id <> outbox.id) THEN 2 ELSE ?1 END";

impl SqliteStore {
    pub(crate) async fn requeue(&self) -> Result<u64> {
        let sql = format!("UPDATE outbox SET state = {SETTLE_STATE}, claim = NULL WHERE state = 1");
        self.writer
            .transaction(HEAVY_ROWS, |tx| Ok(tx.execute(&sql, [PENDING])? as u64))
            .await
    }

    pub(crate) async fn claim(
        &self,
        limit: usize,
        now_ms: u64,
        most_urgent_only: Priority,
    ) -> Result<Vec<OutboxEntry>> {
        let token: i64 = rand::random::<i64>().abs().max(1);
        let due_ms = now_ms.min(i64::MAX as u64) as i64;
        let updated_ms = self.hlc.physical_now_ms() as i64;
        // On the blocking pool: the drain ships other batches meanwhile.
        let columns = self
            .writer
            .transaction_in_background(move |tx| {
                tx.prepare_cached(
                    "UPDATE outbox SET state = 1, claim = ?1, updated_ms = ?2 WHERE id IN (
                         SELECT id FROM outbox WHERE state = 0 AND next_attempt_ms <= ?3 AND priority <= ?4
                         ORDER BY priority, id LIMIT ?5)",
                )?
                .execute(rusqlite::params![
                    token,
                    updated_ms,
                    due_ms,
                    most_urgent_only.code(),
                    limit.min(i64::MAX as usize) as i64
                ])?;
                let mut claimed = tx.prepare_cached(
                    "SELECT o.id, o.priority, o.attempts, r.collection,
                            r.key, r.payload, r.embedding, r.hlc, r.origin, r.tombstone, r.hash
                     FROM outbox o JOIN records r ON r.id = o.record_id
                     WHERE o.state = 1 AND o.claim = ?1 ORDER BY o.priority, o.id",
                )?;
                let rows = claimed.query_map([token], |row| {
                    Ok((
                        row.get::<_, i64>(0)?,
                        row.get::<_, i64>(1)?,
                        row.get::<_, i64>(2)?,
                        row.get::<_, String>(3)?,
                        columns_at(row, 4)?,
                    ))
                })?;
                Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
            })
            .await?;
        // Checked after the commit, outside the writer; one name per collection.
        let mut names: Vec<CollectionName> = Vec::new();
        columns
            .into_iter()
            .map(|(id, priority, attempts, collection, columns)| {
                let name = match names.iter().find(|n| n.as_str() == collection) {
                    Some(name) => name.clone(),
                    None => {
                        let name = CollectionName::new(collection).map_err(|e| Error::BadRow {
                            table: "records",
                            detail: e.to_string(),
                        })?;
                        names.push(name.clone());
                        name
                    }
                };
                Ok(OutboxEntry {
                    id,
                    priority: Priority::from_code(priority)?,
                    attempts: attempts.max(0) as u32,
                    record: record_from_columns(&name, columns)?,
                })
            })
            .collect()
    }

    pub(crate) async fn settle(&self, outcomes: Vec<(i64, OutboxOutcome)>) -> Result<()> {
        if outcomes.is_empty() {
            return Ok(());
        }
        let now = self.hlc.physical_now_ms() as i64;
        let leave = format!(
            "UPDATE outbox SET state = {SETTLE_STATE}, claim = NULL, updated_ms = ?2 WHERE id = ?3 AND state = 1"
        );
        let retry = format!(
            "UPDATE outbox SET state = {SETTLE_STATE}, claim = NULL, attempts = attempts + 1, \
             next_attempt_ms = ?2, last_error = ?3, updated_ms = ?4 WHERE id = ?5 AND state = 1"
        );
        self.writer
            .transaction_in_background(move |tx| {
                for (id, outcome) in &outcomes {
                    match outcome {
                        // The common case: shipped, so done.
                        OutboxOutcome::Shipped => tx
                            .prepare_cached(
                                "UPDATE outbox SET state = 2, claim = NULL, updated_ms = ?1 \
                                 WHERE id = ?2 AND state = 1",
                            )?
                            .execute(rusqlite::params![now, id])?,
                        OutboxOutcome::Released => tx
                            .prepare_cached(&leave)?
                            .execute(rusqlite::params![PENDING, now, id])?,
                        OutboxOutcome::Retry {
                            error,
                            next_attempt_ms,
                        } => tx.prepare_cached(&retry)?.execute(rusqlite::params![
                            PENDING,
                            (*next_attempt_ms).min(i64::MAX as u64) as i64,
                            error,
                            now,
                            id
                        ])?,
                        OutboxOutcome::Failed { error } => tx
                            .prepare_cached(&retry)?
                            .execute(rusqlite::params![FAILED, 0i64, error, now, id])?,
                    };
                }
                Ok(())
            })
            .await
    }

    pub(crate) async fn retry_all_failed(&self) -> Result<u64> {
        let sql = format!(
            "UPDATE outbox SET state = 0, attempts = 0, next_attempt_ms = 0, last_error = NULL WHERE state = {FAILED}"
        );
        self.writer
            .transaction(HEAVY_ROWS, |tx| Ok(tx.execute(&sql, [])? as u64))
            .await
    }

    pub(crate) async fn clear_all_failed(&self) -> Result<u64> {
        let cleared = self
            .writer
            .transaction(HEAVY_ROWS, |tx| {
                Ok(tx.execute("DELETE FROM outbox WHERE state = 3", [])? as u64)
            })
            .await?;
        if cleared > 0 {
            tracing::warn!(
                cleared,
                "failed outbox entries cleared by request; those changes will not be shipped"
            );
        }
        Ok(cleared)
    }

    pub(crate) async fn clear_done_before(&self, before_ms: u64) -> Result<u64> {
        let before_ms = before_ms.min(i64::MAX as u64) as i64;
        self.writer
            .transaction(HEAVY_ROWS, |tx| {
                Ok(tx.execute(
                    "DELETE FROM outbox WHERE state = 2 AND updated_ms < ?1",
                    [before_ms],
                )? as u64)
            })
            .await
    }
}
