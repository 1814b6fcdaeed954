//! Draining the outbox: claiming entries, settling them, and the queue-management
//! operations (requeue, retry failed, clear failed).

use crate::rows::record_from_row;
use crate::write::ScriptConnection;
use crate::{Error, Result, SqliteStore};
use hybridsync_core::{CollectionName, OutboxEntry, OutboxOutcome, Priority};
use sqlx::Row;

/// Outbox states as stored.
const PENDING: i64 = 0;
const DONE: i64 = 2;
const FAILED: i64 = 3;

/// The state an entry takes when it leaves flight for `target`: `target`, unless a
/// newer open entry exists for the same record, in which case it is superseded (done):
/// the newer entry ships the record's current state.
const SETTLE_STATE: &str = "CASE WHEN EXISTS (SELECT 1 FROM outbox newer WHERE newer.record_id = outbox.record_id \
     AND newer.state IN (0, 3) AND newer.id <> outbox.id) THEN 2 ELSE ? END";

impl SqliteStore {
    pub(crate) async fn requeue(&self) -> Result<u64> {
        let sql = format!("UPDATE outbox SET state = {SETTLE_STATE}, claim = NULL WHERE state = 1");
        Ok(sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(PENDING)
            .execute(&self.writer)
            .await?
            .rows_affected())
    }

    pub(crate) async fn claim(
        &self,
        limit: usize,
        now_ms: u64,
        most_urgent_only: Priority,
    ) -> Result<Vec<OutboxEntry>> {
        let token: i64 = rand::random::<i64>().abs().max(1);
        let now_ms = now_ms.min(i64::MAX as u64) as i64;
        let mut conn = ScriptConnection::acquire(&self.writer).await?;
        let rows = sqlx::query(
            "BEGIN IMMEDIATE;
             UPDATE outbox SET state = 1, claim = ?, updated_ms = ? WHERE id IN (
                 SELECT id FROM outbox WHERE state = 0 AND next_attempt_ms <= ? AND priority <= ?
                 ORDER BY priority, id LIMIT ?);
             SELECT o.id, o.priority, o.attempts, r.collection,
                    r.key, r.payload, r.embedding, r.hlc, r.origin, r.tombstone, r.hash
             FROM outbox o JOIN records r ON r.id = o.record_id
             WHERE o.state = 1 AND o.claim = ? ORDER BY o.priority, o.id;
             COMMIT;",
        )
        .bind(token)
        .bind(now_ms)
        .bind(now_ms)
        .bind(most_urgent_only.code())
        .bind(limit.min(i64::MAX as usize) as i64)
        .bind(token)
        .fetch_all(conn.get())
        .await?;
        conn.finish();
        rows.iter()
            .map(|row| {
                let collection =
                    CollectionName::new(row.try_get::<String, _>(3)?).map_err(|e| {
                        Error::BadRow {
                            table: "records",
                            detail: e.to_string(),
                        }
                    })?;
                Ok(OutboxEntry {
                    id: row.try_get(0)?,
                    priority: Priority::from_code(row.try_get(1)?)?,
                    attempts: row.try_get::<i64, _>(2)? as u32,
                    record: record_from_row(&collection, row, 4)?,
                })
            })
            .collect()
    }

    pub(crate) async fn settle(&self, outcomes: Vec<(i64, OutboxOutcome)>) -> Result<()> {
        if outcomes.is_empty() {
            return Ok(());
        }
        let now = self.hlc.physical_now_ms() as i64;
        let (shipped, unshipped): (Vec<_>, Vec<_>) = outcomes
            .into_iter()
            .partition(|(_, outcome)| matches!(outcome, OutboxOutcome::Shipped));
        // Shipped entries (the common case) settle in one statement; the rest one by one.
        let mut sql = String::from(
            "BEGIN IMMEDIATE;\n\
             UPDATE outbox SET state = ?, claim = NULL, updated_ms = ? \
             WHERE id IN (SELECT value FROM json_each(?)) AND state = 1;\n",
        );
        for (_, outcome) in &unshipped {
            if matches!(outcome, OutboxOutcome::Released) {
                sql.push_str(&format!(
                    "UPDATE outbox SET state = {SETTLE_STATE}, claim = NULL, updated_ms = ? WHERE id = ? AND state = 1;\n"
                ));
            } else {
                sql.push_str(&format!(
                    "UPDATE outbox SET state = {SETTLE_STATE}, claim = NULL, attempts = attempts + 1, \
                     next_attempt_ms = ?, last_error = ?, updated_ms = ? WHERE id = ? AND state = 1;\n"
                ));
            }
        }
        sql.push_str("COMMIT;");
        let ids: Vec<String> = shipped.iter().map(|(id, _)| id.to_string()).collect();
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(DONE)
            .bind(now)
            .bind(format!("[{}]", ids.join(",")));
        for (id, outcome) in unshipped {
            query = match outcome {
                OutboxOutcome::Retry {
                    error,
                    next_attempt_ms,
                } => query
                    .bind(PENDING)
                    .bind(next_attempt_ms.min(i64::MAX as u64) as i64)
                    .bind(error)
                    .bind(now)
                    .bind(id),
                OutboxOutcome::Failed { error } => {
                    query.bind(FAILED).bind(0i64).bind(error).bind(now).bind(id)
                }
                OutboxOutcome::Released => query.bind(PENDING).bind(now).bind(id),
                OutboxOutcome::Shipped => unreachable!("partitioned out"),
            };
        }
        let mut conn = ScriptConnection::acquire(&self.writer).await?;
        query.execute(conn.get()).await?;
        conn.finish();
        Ok(())
    }

    pub(crate) async fn retry_all_failed(&self) -> Result<u64> {
        let sql = format!(
            "UPDATE outbox SET state = 0, attempts = 0, next_attempt_ms = 0, last_error = NULL WHERE state = {FAILED}"
        );
        Ok(sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&self.writer)
            .await?
            .rows_affected())
    }

    pub(crate) async fn clear_all_failed(&self) -> Result<u64> {
        let cleared = sqlx::query("DELETE FROM outbox WHERE state = 3")
            .execute(&self.writer)
            .await?
            .rows_affected();
        if cleared > 0 {
            tracing::warn!(
                cleared,
                "failed outbox entries cleared by request; those changes will not be shipped"
            );
        }
        Ok(cleared)
    }
}
