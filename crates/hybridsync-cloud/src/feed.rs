//! The change feed: rows of a collection after a cursor, ordered by `(txid, seq)` and
//! read only below the oldest running transaction (`pg_snapshot_xmin`), so a late
//! commit can never be skipped; and the decoding of a row into a [`Record`], checked
//! against its content hash.

use crate::{Error, PostgresSink, Result};
use hybridsync_core::{
    ChangeBatch, ChangeCursor, CollectionName, ContentHash, DeviceId, Hlc, Key, Record,
};
use sqlx::Row;

/// One page of the feed. Only rows below the oldest transaction still running are
/// safe to pass: a transaction with a smaller id may still commit a row that sorts
/// before them.
const CHANGES: &str =
    "SELECT key, payload, embedding, hlc, origin, tombstone, hash, txid::text::int8, seq
     FROM hs_records
     WHERE tenant = current_setting('hybridsync.tenant') AND collection = $1
       AND (txid, seq) > ($2::text::xid8, $3)
       AND txid < pg_snapshot_xmin(pg_current_snapshot())
     ORDER BY txid, seq
     LIMIT $4";

const COUNT: &str = "SELECT count(*) FROM hs_records WHERE tenant = current_setting('hybridsync.tenant') AND collection = $1";

impl PostgresSink {
    /// Remote changes after `cursor`, in commit order, never past a transaction still
    /// running.
    pub(crate) async fn pull(
        &self,
        collection: &CollectionName,
        cursor: &ChangeCursor,
        limit: usize,
    ) -> Result<ChangeBatch> {
        let (after_txid, after_seq) = decode_cursor(cursor)?;
        let mut tx = self.begin().await?;
        let rows = sqlx::query(CHANGES)
            .bind(collection.as_str())
            .bind(after_txid.to_string())
            .bind(after_seq)
            .bind(limit.min(i64::MAX as usize) as i64)
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
