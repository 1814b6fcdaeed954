//! The change feed: rows of a collection after a cursor, ordered by `(txid, seq)` and
//! read only below the oldest transaction still writing this tenant's rows (the
//! writer horizon), so a late commit can never be skipped; and the decoding of a row
//! into a [`Record`], checked against its content hash.
//!
//! The horizon. Every transaction that writes `hs_records` first takes a shared
//! advisory lock keyed by its tenant (or key 0, for every tenant), before it has a
//! transaction id (the schema's trigger sees to it; version 6). A pull first reads the
//! holders of its tenant's key and of key 0 that have an id, and takes the oldest of
//! those ids, or the first id not yet completed when none (`HORIZON`); then, in a
//! later statement of the same `READ COMMITTED` transaction (so with a later
//! snapshot), it reads the rows below that horizon (`CHANGES`). Why nothing is skipped:
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

/// The writer horizon (see the module docs): the oldest transaction id among the
/// holders of this tenant's writer key or key 0, or the first id not yet completed.
/// `backend_xid` is a 32-bit id; a running one lies within 2^31 below the snapshot's
/// `xmax`, which places it in the 64-bit sequence. The lock's first key, 1213421891,
/// is the schema's (`hs_enter_writer`).
const HORIZON: &str =
    "WITH next AS (SELECT pg_snapshot_xmax(pg_current_snapshot())::text::int8 AS id),
     writers AS (
         SELECT a.backend_xid::text::int8 AS xid
         FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
         WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
           AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
           AND l.classid = 1213421891
           AND l.objid IN (0, hs_writer_key(current_setting('hybridsync.tenant')))
           AND a.backend_xid IS NOT NULL)
     SELECT least(next.id, min(next.id - (next.id - w.xid) % 4294967296))
     FROM next LEFT JOIN writers w ON true GROUP BY next.id";

/// A pull's transaction: each statement takes its own snapshot, whatever the server's
/// default isolation, so `CHANGES` sees every commit that ended before `HORIZON` ran.
const BEGIN_READ_COMMITTED: &str = "BEGIN ISOLATION LEVEL READ COMMITTED";

/// One page of the feed, below the horizon: a transaction with a smaller id may still
/// commit a row that sorts before rows above it. The order names the table's columns
/// (`r.txid`): a bare `txid` would name the output column `txid::text::int8`, which no
/// index provides, and every page would sort every row after the cursor (a hydrate of
/// n rows cost O(n²)); ordered by the columns, the feed index hands out one page.
pub(crate) const CHANGES: &str =
    "SELECT r.key, r.payload, r.embedding, r.hlc, r.origin, r.tombstone, r.hash,
            r.txid::text::int8, r.seq
     FROM hs_records r
     WHERE r.tenant = current_setting('hybridsync.tenant') AND r.collection = $1
       AND (r.txid, r.seq) > ($2::text::xid8, $3)
       AND r.txid < $5::text::xid8
     ORDER BY r.txid, r.seq
     LIMIT $4";

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
        let (mut tx, _) = self.begin_with(Some(BEGIN_READ_COMMITTED)).await?;
        let horizon: i64 = sqlx::query_scalar(HORIZON)
            .persistent(self.persistent)
            .fetch_one(self.counted(&mut *tx))
            .await?;
        let rows = sqlx::query(CHANGES)
            .persistent(self.persistent)
            .bind(collection.as_str())
            .bind(after_txid.to_string())
            .bind(after_seq)
            .bind(limit.min(i64::MAX as usize) as i64)
            .bind(horizon.to_string())
            .fetch_all(self.counted(&mut *tx))
            .await?;
        self.commit(tx).await?;
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
