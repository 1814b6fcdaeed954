//! The consistency checker's side in the cloud (R23), computed in SQL as the sink's
//! own role under row-level security: node digests of the tree `hybridsync_core`
//! defines (`GROUP BY` a bucket prefix), the rows of a few leaf buckets, rows by key,
//! and, for a deep check, the keys of rows whose content no longer matches their hash.
//! No row is downloaded to compute a digest.

use crate::{Error, PostgresSink, Result};
use hybridsync_core::{
    CollectionName, ContentHash, DeviceId, Hlc, Key, NodeDigest, Record, RowDigest,
};
use sqlx::Row;
use std::collections::BTreeMap;

/// Each row of collection `$1` with its bucket and leaf as core's `verify.rs` defines
/// them; `$2` says whether leaves carry the content hash (not for encrypted
/// collections, whose two sides hash different bytes).
const LEAVES: &str = "WITH r AS (
    SELECT ('x' || lpad(encode(substring(sha256(
                int4send(octet_length(convert_to(collection, 'UTF8'))) || convert_to(collection, 'UTF8')
                || int4send(octet_length(convert_to(key, 'UTF8'))) || convert_to(key, 'UTF8')
           ) FROM 1 FOR 4), 'hex'), 16, '0'))::bit(64)::int8 AS bucket,
           ('x' || encode(substring(sha256(
                'hybridsync/leaf/v1'::bytea
                || int4send(octet_length(convert_to(collection, 'UTF8'))) || convert_to(collection, 'UTF8')
                || int4send(octet_length(convert_to(key, 'UTF8'))) || convert_to(key, 'UTF8')
                || int8send(hlc) || origin
                || CASE WHEN tombstone THEN '\\x01'::bytea ELSE '\\x00'::bytea END
                || CASE WHEN $2 THEN hash ELSE decode(repeat('00', 32), 'hex') END
           ) FROM 1 FOR 8), 'hex'))::bit(64)::int8 AS leaf,
           key, hlc, origin, tombstone, hash
    FROM hs_records
    WHERE tenant = current_setting('hybridsync.tenant') AND collection = $1)";

/// The nodes at one level: `$3` shifts a bucket to its prefix at that level, `$4`
/// lists the parents' prefixes (NULL: every node; a hashed semi-join, so thousands of
/// differing parents cost one lookup per row) and `$5` shifts a bucket to its
/// parent's prefix. The sum of leaves wraps at 64 bits and returns as a signed integer.
const NODES: &str = "SELECT prefix, n,
           (CASE WHEN s >= 9223372036854775808 THEN s - 18446744073709551616 ELSE s END)::int8
    FROM (SELECT bucket >> $3 AS prefix, count(*) AS n,
                 ((sum(leaf) % 18446744073709551616) + 18446744073709551616) % 18446744073709551616 AS s
          FROM r WHERE $4::int8[] IS NULL OR (bucket >> $5) IN (SELECT unnest($4::int8[]))
          GROUP BY 1) AS nodes";

/// The rows of the leaf buckets `$4` (prefixes at the level `$3` shifts to).
const BUCKET_ROWS: &str = "SELECT key, hlc, origin, tombstone, hash FROM r WHERE (bucket >> $3) IN (SELECT unnest($4::int8[]))";

/// Rows by key, as stored.
const ROWS_BY_KEY: &str =
    "SELECT key, payload, embedding, hlc, origin, tombstone, hash FROM hs_records
    WHERE tenant = current_setting('hybridsync.tenant') AND collection = $1 AND key = ANY($2)";

/// Rows whose stored hash is not the hash of their content (`hs_content_hash`, the
/// canonical encoding of core's `hash.rs`, in SQL).
const DAMAGED: &str = "SELECT key FROM hs_records
    WHERE tenant = current_setting('hybridsync.tenant') AND collection = $1
      AND hash <> hs_content_hash(collection, key, tombstone, payload, embedding)
    ORDER BY key";

/// A check reads whole collections: its statements may run past the sink's usual
/// statement timeout (transaction-local, like the tenant setting).
const LONG_STATEMENTS: &str = "SELECT set_config('statement_timeout', '600000', true)";

fn shift(level: u32) -> i32 {
    32 - (hybridsync_core::LEVEL_BITS * level.min(hybridsync_core::MAX_DEPTH)) as i32
}

impl PostgresSink {
    /// The nodes at `level` under `parents` (every node when empty), by prefix.
    pub(crate) async fn tree_nodes(
        &self,
        collection: &CollectionName,
        level: u32,
        parents: &[u32],
        with_hash: bool,
    ) -> Result<BTreeMap<u32, NodeDigest>> {
        let parents: Option<Vec<i64>> = (level > 0 && !parents.is_empty())
            .then(|| parents.iter().map(|p| i64::from(*p)).collect());
        let mut tx = self.begin().await?;
        sqlx::query(LONG_STATEMENTS).execute(&mut *tx).await?;
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!("{LEAVES} {NODES}")))
            .bind(collection.as_str())
            .bind(with_hash)
            .bind(shift(level))
            .bind(parents)
            .bind(shift(level.saturating_sub(1)))
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        rows.iter()
            .map(|row| {
                let prefix: i64 = row.try_get(0)?;
                let count: i64 = row.try_get(1)?;
                let sum: i64 = row.try_get(2)?;
                let prefix = prefix as u32;
                Ok((
                    prefix,
                    NodeDigest {
                        prefix,
                        count: count as u64,
                        sum: sum as u64,
                    },
                ))
            })
            .collect()
    }

    /// The rows of the leaf buckets `buckets` at `level`.
    pub(crate) async fn bucket_digests(
        &self,
        collection: &CollectionName,
        level: u32,
        buckets: &[u32],
    ) -> Result<Vec<RowDigest>> {
        let buckets: Vec<i64> = buckets.iter().map(|p| i64::from(*p)).collect();
        let mut tx = self.begin().await?;
        sqlx::query(LONG_STATEMENTS).execute(&mut *tx).await?;
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!("{LEAVES} {BUCKET_ROWS}")))
            .bind(collection.as_str())
            .bind(true)
            .bind(shift(level))
            .bind(buckets)
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        rows.iter()
            .map(|row| digest_from_row(collection, row))
            .collect()
    }

    /// The rows with `keys`, as stored (their hashes not checked: the checker tells
    /// damage from a difference itself).
    pub(crate) async fn fetch_rows(
        &self,
        collection: &CollectionName,
        keys: &[Key],
    ) -> Result<Vec<Record>> {
        let keys: Vec<&str> = keys.iter().map(Key::as_str).collect();
        let mut tx = self.begin().await?;
        let rows = sqlx::query(ROWS_BY_KEY)
            .bind(collection.as_str())
            .bind(keys)
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        rows.iter()
            .map(|row| crate::feed::record_from_row(collection, row, false))
            .collect()
    }

    /// Keys of rows whose content does not match their stored hash.
    pub(crate) async fn damaged_keys(&self, collection: &CollectionName) -> Result<Vec<Key>> {
        let mut tx = self.begin().await?;
        sqlx::query(LONG_STATEMENTS).execute(&mut *tx).await?;
        let keys: Vec<String> = sqlx::query_scalar(DAMAGED)
            .bind(collection.as_str())
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        keys.into_iter()
            .map(|k| Key::new(k).map_err(|e| Error::BadRow(e.to_string())))
            .collect()
    }
}

fn digest_from_row(collection: &CollectionName, row: &sqlx::postgres::PgRow) -> Result<RowDigest> {
    let bad = |what: &str| Error::BadRow(format!("{collection}: {what}"));
    let key = Key::new(row.try_get::<String, _>(0)?).map_err(|e| Error::BadRow(e.to_string()))?;
    let origin: Vec<u8> = row.try_get(2)?;
    let origin = DeviceId(
        origin
            .try_into()
            .map_err(|_| bad("origin is not 16 bytes"))?,
    );
    let hash: Vec<u8> = row.try_get(4)?;
    Ok(RowDigest {
        key,
        version: Hlc::from_packed(row.try_get(1)?, origin),
        tombstone: row.try_get(3)?,
        hash: ContentHash::from_slice(&hash).ok_or_else(|| bad("hash is not 32 bytes"))?,
    })
}
