//! The outbox: the queue of local changes for the cloud. Entering it (`enqueue`, inside
//! a write's transaction), claiming and settling batches for the drain, and queue
//! management (requeue, retry failed, clear failed, clear done, statistics).
//!
//! States come from [`OutboxState`]: the statements below are written with `{pending}`,
//! `{in_flight}`, `{done}` and `{failed}` and get the enum's codes once, at first use
//! (literals, not bind parameters, so SQLite matches them to the partial indexes).

use crate::connections::HEAVY_ROWS;
use crate::error::sql;
use crate::rows::{columns_at, record_from_columns};
use crate::{Error, Result, SqliteStore};
use hybridsync_core::{
    CollectionName, Hlc, OutboxEntry, OutboxOutcome, OutboxState, OutboxStats, Priority,
};
use sqlx::Row;
use std::collections::BTreeMap;
use std::sync::LazyLock;

/// The state an entry takes when it leaves flight for `?1`: `?1`, unless a newer open
/// entry exists for the same record, in which case it is superseded (done): the newer
/// entry ships the record's current state. Written `{settle}` in the statements below.
const SETTLE: &str = "CASE WHEN EXISTS (SELECT 1 FROM outbox newer WHERE newer.record_id = outbox.record_id \
     AND newer.state IN ({pending}, {failed}) AND newer.id <> outbox.id) THEN {done} ELSE ?1 END";

/// `sql` with `{settle}` and its state placeholders replaced by [`OutboxState`]'s codes.
pub(crate) fn with_states(sql: &str) -> String {
    let sql = sql.replace("{settle}", SETTLE);
    OutboxState::ALL.iter().fold(sql, |sql, state| {
        sql.replace(
            &format!("{{{}}}", state.as_str()),
            &state.code().to_string(),
        )
    })
}

/// A statement written with placeholders, resolved once.
macro_rules! statement {
    ($($text:literal),+ $(,)?) => {
        LazyLock::new(|| with_states(concat!($($text),+)))
    };
}

/// Enters a record in the queue; an open (pending or failed) entry coalesces. The
/// conflict target must match the partial index `outbox_open_per_record`.
static ENQUEUE: LazyLock<String> = statement!(
    "INSERT INTO outbox (record_id, hlc, origin, priority, state, attempts, next_attempt_ms, created_ms, updated_ms) ",
    "VALUES (?1, ?2, ?3, ?4, {pending}, 0, 0, ?5, ?5) ",
    "ON CONFLICT (record_id) WHERE state IN ({pending}, {failed}) DO UPDATE SET hlc = excluded.hlc, origin = excluded.origin, ",
    "priority = MIN(outbox.priority, excluded.priority), state = {pending}, attempts = 0, next_attempt_ms = 0, ",
    "last_error = NULL, updated_ms = excluded.updated_ms"
);
static REQUEUE: LazyLock<String> =
    statement!("UPDATE outbox SET state = {settle}, claim = NULL WHERE state = {in_flight}");
static CLAIM: LazyLock<String> = statement!(
    "UPDATE outbox SET state = {in_flight}, claim = ?1, updated_ms = ?2 WHERE id IN (",
    " SELECT id FROM outbox WHERE state = {pending} AND next_attempt_ms <= ?3 AND priority <= ?4",
    " ORDER BY priority, id LIMIT ?5)"
);
static CLAIMED: LazyLock<String> = statement!(
    "SELECT o.id, o.priority, o.attempts, r.collection,",
    " r.key, r.payload, r.embedding, r.hlc, r.origin, r.tombstone, r.hash",
    " FROM outbox o JOIN records r ON r.id = o.record_id",
    " WHERE o.state = {in_flight} AND o.claim = ?1 ORDER BY o.priority, o.id"
);
static SHIPPED: LazyLock<String> = statement!(
    "UPDATE outbox SET state = {done}, claim = NULL, updated_ms = ?1 WHERE id = ?2 AND state = {in_flight}"
);
static RELEASE: LazyLock<String> = statement!(
    "UPDATE outbox SET state = {settle}, claim = NULL, updated_ms = ?2 WHERE id = ?3 AND state = {in_flight}"
);
static RETRY: LazyLock<String> = statement!(
    "UPDATE outbox SET state = {settle}, claim = NULL, attempts = attempts + 1, ",
    "next_attempt_ms = ?2, last_error = ?3, updated_ms = ?4 WHERE id = ?5 AND state = {in_flight}"
);
static RETRY_FAILED: LazyLock<String> = statement!(
    "UPDATE outbox SET state = {pending}, attempts = 0, next_attempt_ms = 0, last_error = NULL WHERE state = {failed}"
);
static CLEAR_FAILED: LazyLock<String> = statement!("DELETE FROM outbox WHERE state = {failed}");
static CLEAR_DONE: LazyLock<String> =
    statement!("DELETE FROM outbox WHERE state = {done} AND updated_ms < ?1");
/// Superseding a record's open entries: a remote version won over the local change.
pub(crate) static SUPERSEDE: LazyLock<String> = statement!(
    "UPDATE outbox SET state = {done}, claim = NULL, updated_ms = ?1 WHERE record_id = ?2 AND state IN ({pending}, {failed})"
);
/// Whether a record has a change not yet in the cloud (pending, in flight or failed).
pub(crate) const UNSHIPPED: &str = "o.state IN ({pending}, {in_flight}, {failed})";
/// Reads the drain-order index only.
const STATS: &str = "SELECT state, priority, COUNT(*) FROM outbox GROUP BY state, priority";
/// The queued entries with an error, newest failure first.
static RECENT_ERRORS: LazyLock<String> = statement!(
    "SELECT o.updated_ms, r.collection, r.key, o.state, o.attempts, o.last_error ",
    "FROM outbox o JOIN records r ON r.id = o.record_id ",
    "WHERE o.state IN ({pending}, {failed}) AND o.last_error IS NOT NULL ",
    "ORDER BY o.updated_ms DESC LIMIT ?1"
);
/// One seek in the partial index of shipped entries.
static LAST_SHIPPED: LazyLock<String> = statement!(
    "SELECT MAX(updated_ms) FROM outbox INDEXED BY outbox_done_age WHERE state = {done}"
);
/// One range of the drain-order index per state, each already in priority order: with
/// `state IN (…)` SQLite merged the two ranges through a temporary B-tree, a sort of
/// every queued entry each time the soft caps looked (31 MB of sorter memory and a
/// growing heap over a million-row import).
static DEPTHS: LazyLock<String> = statement!(
    "SELECT priority, COUNT(*) FROM outbox WHERE state = {pending} GROUP BY priority \
     UNION ALL SELECT priority, COUNT(*) FROM outbox WHERE state = {in_flight} GROUP BY priority"
);

/// Queues record `id` at `version` for the cloud. An open (pending or failed) entry for
/// the same record coalesces: latest version, most urgent priority, attempts reset.
pub(crate) fn enqueue(
    tx: &rusqlite::Transaction<'_>,
    id: u64,
    version: Hlc,
    priority: Priority,
    now_ms: i64,
) -> Result<()> {
    tx.prepare_cached(&ENQUEUE)?.execute(rusqlite::params![
        id as i64,
        version.packed(),
        version.origin.0,
        priority.code(),
        now_ms
    ])?;
    Ok(())
}

impl SqliteStore {
    /// Returns every in-flight entry to pending (after a crash, or at shutdown).
    pub(crate) async fn requeue_in_flight(&self) -> hybridsync_core::Result<u64> {
        let requeued = self
            .writer
            .transaction(HEAVY_ROWS, |tx| {
                Ok(tx.execute(&REQUEUE, [OutboxState::Pending.code()])? as u64)
            })
            .await?;
        Ok(requeued)
    }

    /// Claims up to `limit` pending entries due at `now_ms`, most urgent first.
    pub(crate) async fn claim_outbox(
        &self,
        limit: usize,
        now_ms: u64,
        most_urgent_only: Priority,
    ) -> hybridsync_core::Result<Vec<OutboxEntry>> {
        let token: i64 = rand::random::<i64>().abs().max(1);
        let due_ms = now_ms.min(i64::MAX as u64) as i64;
        let updated_ms = self.hlc.physical_now_ms() as i64;
        // On the blocking pool: the drain ships other batches meanwhile.
        let columns = self
            .writer
            .transaction_in_background(move |tx| {
                tx.prepare_cached(&CLAIM)?.execute(rusqlite::params![
                    token,
                    updated_ms,
                    due_ms,
                    most_urgent_only.code(),
                    limit.min(i64::MAX as usize) as i64
                ])?;
                let mut claimed = tx.prepare_cached(&CLAIMED)?;
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
        let entries = columns
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
            .collect::<Result<_>>()?;
        Ok(entries)
    }

    /// Settles claimed entries in one transaction.
    pub(crate) async fn settle_outbox(
        &self,
        outcomes: Vec<(i64, OutboxOutcome)>,
    ) -> hybridsync_core::Result<()> {
        if outcomes.is_empty() {
            return Ok(());
        }
        let now = self.hlc.physical_now_ms() as i64;
        self.writer
            .transaction_in_background(move |tx| {
                for (id, outcome) in &outcomes {
                    match outcome {
                        // The common case: shipped, so done.
                        OutboxOutcome::Shipped => tx
                            .prepare_cached(&SHIPPED)?
                            .execute(rusqlite::params![now, id])?,
                        OutboxOutcome::Released => tx
                            .prepare_cached(&RELEASE)?
                            .execute(rusqlite::params![OutboxState::Pending.code(), now, id])?,
                        OutboxOutcome::Retry {
                            error,
                            next_attempt_ms,
                        } => tx.prepare_cached(&RETRY)?.execute(rusqlite::params![
                            OutboxState::Pending.code(),
                            (*next_attempt_ms).min(i64::MAX as u64) as i64,
                            error,
                            now,
                            id
                        ])?,
                        OutboxOutcome::Failed { error } => {
                            tx.prepare_cached(&RETRY)?.execute(rusqlite::params![
                                OutboxState::Failed.code(),
                                0i64,
                                error,
                                now,
                                id
                            ])?
                        }
                    };
                }
                Ok(())
            })
            .await?;
        Ok(())
    }

    /// Moves every failed entry back to pending with its attempts reset.
    pub(crate) async fn retry_failed(&self) -> hybridsync_core::Result<u64> {
        let retried = self
            .writer
            .transaction(HEAVY_ROWS, |tx| Ok(tx.execute(&RETRY_FAILED, [])? as u64))
            .await?;
        Ok(retried)
    }

    /// Deletes failed entries (explicitly dropping them).
    pub(crate) async fn clear_failed(&self) -> hybridsync_core::Result<u64> {
        let cleared = self
            .writer
            .transaction(HEAVY_ROWS, |tx| Ok(tx.execute(&CLEAR_FAILED, [])? as u64))
            .await?;
        if cleared > 0 {
            tracing::warn!(
                cleared,
                "failed outbox entries cleared by request; those changes will not be shipped"
            );
        }
        Ok(cleared)
    }

    /// Deletes shipped entries last updated before `before_ms`.
    pub(crate) async fn clear_done(&self, before_ms: u64) -> hybridsync_core::Result<u64> {
        let before_ms = before_ms.min(i64::MAX as u64) as i64;
        let cleared = self
            .writer
            .transaction(HEAVY_ROWS, |tx| {
                Ok(tx.execute(&CLEAR_DONE, [before_ms])? as u64)
            })
            .await?;
        Ok(cleared)
    }

    /// Outbox depth per state and, for open entries, per priority.
    pub(crate) async fn outbox_stats(&self) -> hybridsync_core::Result<OutboxStats> {
        // Both read indexes only: the drain-order index covers the counts, the partial
        // index of shipped entries answers the newest shipment with one seek.
        let rows = sqlx::query(STATS)
            .fetch_all(&self.readers)
            .await
            .map_err(sql)?;
        let last_shipped: Option<i64> = sqlx::query_scalar(LAST_SHIPPED.as_str())
            .fetch_one(&self.readers)
            .await
            .map_err(sql)?;
        let mut stats = OutboxStats {
            last_shipped_ms: last_shipped.map(|ms| ms.max(0) as u64),
            ..OutboxStats::default()
        };
        for row in rows {
            let state: i64 = row.try_get(0).map_err(sql)?;
            let priority = Priority::from_code(row.try_get(1).map_err(sql)?)?;
            let count = row.try_get::<i64, _>(2).map_err(sql)? as u64;
            let state = OutboxState::from_code(state).map_err(|_| Error::BadRow {
                table: "outbox",
                detail: format!("unknown state {state}"),
            })?;
            match state {
                OutboxState::Pending => stats.pending += count,
                OutboxState::InFlight => stats.in_flight += count,
                OutboxState::Done => stats.done += count,
                OutboxState::Failed => stats.failed += count,
            }
            if matches!(state, OutboxState::Pending | OutboxState::InFlight) {
                *stats.by_priority.entry(priority).or_default() += count;
            }
            *stats
                .by_state
                .entry(state)
                .or_default()
                .entry(priority)
                .or_default() += count;
        }
        Ok(stats)
    }

    /// The queued entries that failed most recently (the drain-order index gives the
    /// queued ones; the shipped history is not read).
    pub(crate) async fn recent_errors(
        &self,
        limit: usize,
    ) -> hybridsync_core::Result<Vec<hybridsync_core::OutboxError>> {
        let rows: Vec<(i64, String, String, i64, i64, String)> =
            sqlx::query_as(RECENT_ERRORS.as_str())
                .bind(i64::try_from(limit).unwrap_or(i64::MAX))
                .fetch_all(&self.readers)
                .await
                .map_err(sql)?;
        rows.into_iter()
            .map(|(at, collection, key, state, attempts, error)| {
                Ok(hybridsync_core::OutboxError {
                    at_ms: at.max(0) as u64,
                    collection,
                    key,
                    state: OutboxState::from_code(state)?,
                    attempts: attempts.clamp(0, i64::from(u32::MAX)) as u32,
                    error,
                })
            })
            .collect()
    }

    /// Entries pending or in flight per priority (what the soft caps need).
    pub(crate) async fn queue_depths(&self) -> hybridsync_core::Result<BTreeMap<Priority, u64>> {
        let rows: Vec<(i64, i64)> = sqlx::query_as(DEPTHS.as_str())
            .fetch_all(&self.readers)
            .await
            .map_err(sql)?;
        let mut depths = BTreeMap::new();
        for (priority, count) in rows {
            *depths.entry(Priority::from_code(priority)?).or_default() += count.max(0) as u64;
        }
        Ok(depths)
    }
}
