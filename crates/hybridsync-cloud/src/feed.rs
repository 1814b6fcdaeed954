//! The change feed: rows of a collection after a cursor, ordered by `(txid, seq)` and
//! read only below the oldest transaction still writing this tenant's rows (the
//! writer horizon), so a late commit can never be skipped; and the decoding of a row
//! into a [`Record`], checked against its content hash.
//!
//! The horizon. Every transaction that writes `hs_records` first takes a shared
//! advisory lock keyed by its tenant (or key 0, for every tenant), before it has a
//! transaction id (the schema's trigger sees to it; version 6). A pull first reads the
//! holders of its tenant's key and of key 0 that have an id, and takes the oldest of
//! those ids, or the first id not yet completed when none; then, in a later statement
//! (so, under `READ COMMITTED`, with a later snapshot), it reads the rows below that
//! horizon. Both statements are the schema's `hs_feed_page` (version 8), a `VOLATILE`
//! PL/pgSQL function, whose statements each take a snapshot of their own; the pull
//! sends it as one statement. Why nothing is skipped:
//! a row below the horizon was written by a transaction whose id is older than the
//! horizon statement's snapshot, so it announced itself before that snapshot; it was
//! not among the holders, so it had ended before the holders were read, which is
//! before the rows are read: the rows' snapshot sees it committed (or it aborted).
//! Any transaction that takes an id after the holders were read gets one at or above
//! the horizon. Transactions that never write `hs_records` (an unrelated batch job, a
//! `psql` left open) hold no key and hold nothing back.

use crate::{Error, PostgresSink, Result};
use hybridsync_core::{
    ChangeBatch, ChangeCursor, CollectionName, ContentHash, DeviceId, Hlc, Key, Record,
};
use sqlx::Row;
use std::sync::atomic::Ordering;

/// One page of the feed, below the writer horizon, in one statement: the schema's
/// `hs_feed_page` (version 8) scopes itself to the tenant, reads the horizon (the
/// oldest transaction id among the holders of this tenant's writer key or key 0, or
/// the first id not yet completed), then, in a later statement with a later snapshot,
/// the rows after the cursor below it, in `(txid, seq)` order from the feed index.
const FEED_PAGE: &str = "SELECT * FROM hs_feed_page($1, $2, $3, $4, $5)";

/// `hs_feed_page`'s refusal to run under an isolation level other than `READ
/// COMMITTED`, where its two statements would share one snapshot.
const NEEDS_READ_COMMITTED: &str = "HS001";

/// A pull's transaction, where the feed page cannot be a transaction of its own (behind
/// PgBouncer, whose sessions take the statement timeout from each transaction; or on a
/// server whose default isolation is not `READ COMMITTED`).
const BEGIN_READ_COMMITTED: &str = "BEGIN ISOLATION LEVEL READ COMMITTED";

const COUNT: &str = "SELECT count(*) FROM hs_records WHERE tenant = current_setting('hybridsync.tenant') AND collection = $1";

impl PostgresSink {
    /// Remote changes after `cursor`, in commit order, never past a transaction still
    /// writing this tenant's rows.
    pub(crate) async fn pull(
        &self,
        collection: &CollectionName,
        cursor: &ChangeCursor,
        limit: usize,
    ) -> Result<ChangeBatch> {
        let (after_txid, after_seq) = decode_cursor(cursor)?;
        let after_txid = i64::try_from(after_txid).map_err(|_| {
            Error::Config(format!("change cursor txid {after_txid} is out of range"))
        })?;
        let page = || {
            sqlx::query(FEED_PAGE)
                .persistent(self.persistent)
                .bind(&self.tenant)
                .bind(collection.as_str())
                .bind(after_txid)
                .bind(after_seq)
                .bind(limit.min(i64::MAX as usize) as i64)
        };
        let mut rows = None;
        // Direct, the page is a statement (and a round trip) of its own.
        if self.persistent && !self.feed_in_transaction.load(Ordering::Relaxed) {
            let mut conn = self.connection().await?;
            match page().fetch_all(self.counted(&mut *conn)).await {
                Ok(found) => rows = Some(found),
                Err(sqlx::Error::Database(e))
                    if e.code().as_deref() == Some(NEEDS_READ_COMMITTED) =>
                {
                    tracing::info!(
                        "the server's default isolation is not READ COMMITTED; the feed is read in transactions that ask for it"
                    );
                    self.feed_in_transaction.store(true, Ordering::Relaxed);
                }
                Err(e) => return Err(e.into()),
            }
        }
        let rows = match rows {
            Some(rows) => rows,
            None => {
                let mut tx = self.begin_with(Some(BEGIN_READ_COMMITTED)).await?;
                let rows = page().fetch_all(self.counted(&mut *tx)).await?;
                self.commit(tx).await?;
                rows
            }
        };
        let mut next = cursor.clone();
        let mut records = Vec::with_capacity(rows.len());
        for row in rows {
            records.push(record_from_row(collection, &row, true)?);
            next = encode_cursor(row.try_get::<i64, _>(7)? as u64, row.try_get(8)?);
        }
        Ok(ChangeBatch { records, next })
    }

    /// Rows (tombstones included) of a collection.
    pub(crate) async fn count(&self, collection: &CollectionName) -> Result<u64> {
        let mut tx = self.begin().await?;
        let count: i64 = sqlx::query_scalar(COUNT)
            .persistent(self.persistent)
            .bind(collection.as_str())
            .fetch_one(self.counted(&mut *tx))
            .await?;
        self.commit(tx).await?;
        Ok(count as u64)
    }
}

/// A feed position: the transaction id and sequence number of the last row passed.
pub(crate) fn encode_cursor(txid: u64, seq: i64) -> ChangeCursor {
    let mut bytes = txid.to_be_bytes().to_vec();
    bytes.extend_from_slice(&seq.to_be_bytes());
    ChangeCursor(bytes)
}

fn decode_cursor(cursor: &ChangeCursor) -> Result<(u64, i64)> {
    match cursor.0.len() {
        0 => Ok((0, 0)),
        16 => {
            let (txid, seq) = cursor.0.split_at(8);
            Ok((
                u64::from_be_bytes(txid.try_into().expect("8 bytes")),
                i64::from_be_bytes(seq.try_into().expect("8 bytes")),
            ))
        }
        n => Err(Error::Config(format!(
            "a change cursor is 0 or 16 bytes, not {n}"
        ))),
    }
}

/// A row as a record; with `check_hash`, a row whose hash is not the hash of its
/// content is refused.
pub(crate) fn record_from_row(
    collection: &CollectionName,
    row: &sqlx::postgres::PgRow,
    check_hash: bool,
) -> Result<Record> {
    let bad = |what: &str| Error::BadRow(format!("{collection}: {what}"));
    let key = Key::new(row.try_get::<String, _>(0)?).map_err(|e| Error::BadRow(e.to_string()))?;
    let embedding: Option<Vec<u8>> = row.try_get(2)?;
    let embedding = match embedding {
        Some(bytes) if bytes.len() % 4 == 0 => Some(
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        ),
        Some(_) => return Err(bad("embedding is not a whole number of f32")),
        None => None,
    };
    let origin: Vec<u8> = row.try_get(4)?;
    let origin = DeviceId(
        origin
            .try_into()
            .map_err(|_| bad("origin is not 16 bytes"))?,
    );
    let hash: Vec<u8> = row.try_get(6)?;
    let record = Record {
        collection: collection.clone(),
        key,
        payload: row.try_get(1)?,
        embedding,
        version: Hlc::from_packed(row.try_get(3)?, origin),
        tombstone: row.try_get(5)?,
        hash: ContentHash::from_slice(&hash).ok_or_else(|| bad("hash is not 32 bytes"))?,
    };
    if check_hash && !ContentHash::matches(&record) {
        return Err(bad("content hash does not match the content"));
    }
    Ok(record)
}
