//! The consistency checker's side in the cloud (R23), computed in SQL as the sink's
//! own role under row-level security: node digests of the tree `hybridsync_core`
//! defines (`GROUP BY` a bucket prefix over the bucket and leaf every row carries), the
//! rows of a few leaf buckets, rows by key, and, for a deep check, the keys of rows
//! whose content no longer matches their hash (or whose digests no longer match the
//! row), recomputed in SQL. No row is downloaded to compute a digest.

use crate::{Error, PostgresSink, Result};
use hybridsync_core::{
    CollectionName, ContentHash, DeviceId, Hlc, Key, NodeDigest, Record, RowDigest,
};
use sqlx::Row;
use std::collections::BTreeMap;

/// The rows of collection `$1` with their stored bucket and leaf (kept by the upsert).
const ROWS: &str = "SELECT bucket, leaf, key, hlc, origin, tombstone, hash FROM hs_records
    WHERE tenant = current_setting('hybridsync.tenant') AND collection = $1";

/// The rows of collection `$1` in the bucket ranges `[$2[i], $3[i]]`: one index range
/// scan of `hs_records_tree` per range, so a few differing nodes cost the rows under
/// them and nothing more. The bounds come computed: under row-level security a
/// condition with a function that is not leakproof (a shift) cannot be an index
/// condition, and each range would scan the whole collection.
const ROWS_UNDER: &str = "SELECT r.bucket, r.leaf, r.key, r.hlc, r.origin, r.tombstone, r.hash
    FROM unnest($2::int8[], $3::int8[]) AS p(low, high)
    JOIN hs_records r ON r.tenant = current_setting('hybridsync.tenant') AND r.collection = $1
     AND r.bucket BETWEEN p.low AND p.high";

/// The root: every row's count and leaf sum, without grouping (the planner's estimate
/// of the groups would make it hash-aggregate one group).
const ROOT: &str = "SELECT 0::int8, count(*), sum(leaf) FROM r";

/// The nodes at one level: the bucket shifted right by `$4` is the node's prefix.
const NODES: &str = "SELECT bucket >> $4, count(*), sum(leaf) FROM r GROUP BY 1";

/// Wraps a `sum(leaf)` (a numeric) to the signed 64-bit value of its low 64 bits.
const WRAP: &str = "SELECT prefix, n, (CASE WHEN w >= 9223372036854775808
        THEN w - 18446744073709551616 ELSE w END)::int8
    FROM (SELECT prefix, n, ((s % 18446744073709551616) + 18446744073709551616)
        % 18446744073709551616 AS w FROM nodes) AS wrapped";

/// Rows by key, as stored.
const ROWS_BY_KEY: &str =
    "SELECT key, payload, embedding, hlc, origin, tombstone, hash FROM hs_records
    WHERE tenant = current_setting('hybridsync.tenant') AND collection = $1 AND key = ANY($2)";

/// An 8-byte little-endian length, as core's `hash.rs` frames each part.
fn le64(expr: &str) -> String {
    (1..=8)
        .rev()
        .map(|i| format!("substring(int8send(({expr})::int8) FROM {i} FOR 1)"))
        .collect::<Vec<_>>()
        .join(" || ")
}

/// Rows whose stored hash is not the hash of their content, recomputed in SQL with the
/// canonical encoding of core's `hash.rs` ("hybridsync/v1", then collection, key and
/// payload each after its length as 8 little-endian bytes, the tombstone flag, and the
/// embedding after a presence byte and its length in floats), or whose stored bucket
/// or leaf is not the one their row defines (a writer that lied or a bug).
static DAMAGED: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let c = "convert_to(collection, 'UTF8')";
    let k = "convert_to(key, 'UTF8')";
    format!(
        "SELECT key FROM hs_records
         WHERE tenant = current_setting('hybridsync.tenant') AND collection = $1
           AND (hash <> sha256('hybridsync/v1'::bytea
                    || {lc} || {c} || {lk} || {k} || {lp} || payload
                    || CASE WHEN tombstone THEN '\\x01'::bytea ELSE '\\x00'::bytea END
                    || CASE WHEN embedding IS NULL THEN '\\x00'::bytea
                            ELSE '\\x01'::bytea || {le} || embedding END)
             OR bucket IS DISTINCT FROM ('x' || lpad(encode(substring(sha256(
                    int4send(octet_length({c})) || {c} || int4send(octet_length({k})) || {k}
                ) FROM 1 FOR 4), 'hex'), 16, '0'))::bit(64)::int8
             OR leaf IS DISTINCT FROM ('x' || encode(substring(sha256('hybridsync/leaf/v1'::bytea
                    || int4send(octet_length({c})) || {c} || int4send(octet_length({k})) || {k}
                    || int8send(hlc) || origin
                    || CASE WHEN tombstone THEN '\\x01'::bytea ELSE '\\x00'::bytea END
                    || CASE WHEN tombstone OR key_id IS NULL THEN hash ELSE decode(repeat('00', 32), 'hex') END
                ) FROM 1 FOR 8), 'hex'))::bit(64)::int8)
         ORDER BY key",
        lc = le64(&format!("octet_length({c})")),
        lk = le64(&format!("octet_length({k})")),
        lp = le64("octet_length(payload)"),
        le = le64("octet_length(embedding) / 4"),
    )
});

/// A check reads whole collections: its statements may run past the sink's usual
/// statement timeout, and without JIT compilation (the planner's estimates for a whole
/// collection would compile each query for longer than a check of few rows takes).
/// Transaction-local, like the tenant setting.
const LONG_STATEMENTS: &str =
    "SELECT set_config('statement_timeout', '600000', true), set_config('jit', 'off', true)";

fn shift(level: u32) -> i32 {
    32 - (hybridsync_core::LEVEL_BITS * level.min(hybridsync_core::MAX_DEPTH)) as i32
}

/// The rows a tree query reads: every row, or those under `parents` at `parents_level`
/// (as bucket ranges: lows and highs).
fn rows_cte(
    parents: &[u32],
    parents_level: u32,
) -> (&'static str, Option<Vec<i64>>, Option<Vec<i64>>) {
    // Every node of the level (or the root): one plain scan beats as many ranges.
    let width =
        1usize << (hybridsync_core::LEVEL_BITS * parents_level.min(hybridsync_core::MAX_DEPTH));
    if parents.is_empty() || parents_level == 0 || parents.len() >= width {
        return (ROWS, None, None);
    }
    let free = shift(parents_level);
    let lows: Vec<i64> = parents.iter().map(|p| i64::from(*p) << free).collect();
    let highs = lows.iter().map(|low| low + (1i64 << free) - 1).collect();
    (ROWS_UNDER, Some(lows), Some(highs))
}

impl PostgresSink {
    /// The nodes at `level` under `parents` at `parents_level` (every node when empty),
    /// by prefix.
    pub(crate) async fn tree_nodes(
        &self,
        collection: &CollectionName,
        level: u32,
        parents: &[u32],
        parents_level: u32,
    ) -> Result<BTreeMap<u32, NodeDigest>> {
        let (rows, lows, highs) = rows_cte(parents, parents_level);
        let nodes = if level == 0 { ROOT } else { NODES };
        let sql = format!("WITH r AS ({rows}), nodes (prefix, n, s) AS ({nodes}) {WRAP}");
        let mut tx = self.begin().await?;
        sqlx::query(LONG_STATEMENTS)
            .persistent(self.persistent)
            .execute(self.counted(&mut *tx))
            .await?;
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .persistent(self.persistent)
            .bind(collection.as_str())
            .bind(lows)
            .bind(highs)
            .bind(shift(level))
            .fetch_all(self.counted(&mut *tx))
            .await?;
        self.commit(tx).await?;
        rows.iter()
            .filter(|row| row.try_get::<i64, _>(1).is_ok_and(|n| n > 0))
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
        if buckets.is_empty() {
            return Ok(Vec::new());
        }
        let (rows, lows, highs) = rows_cte(buckets, level.max(1));
        let sql = format!("SELECT key, hlc, origin, tombstone, hash FROM ({rows}) AS r");
        let mut tx = self.begin().await?;
        sqlx::query(LONG_STATEMENTS)
            .persistent(self.persistent)
            .execute(self.counted(&mut *tx))
            .await?;
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .persistent(self.persistent)
            .bind(collection.as_str())
            .bind(lows)
            .bind(highs)
            .fetch_all(self.counted(&mut *tx))
            .await?;
        self.commit(tx).await?;
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
            .persistent(self.persistent)
            .bind(collection.as_str())
            .bind(keys)
            .fetch_all(self.counted(&mut *tx))
            .await?;
        self.commit(tx).await?;
        rows.iter()
            .map(|row| crate::feed::record_from_row(collection, row, false))
            .collect()
    }

    /// Keys of rows whose content does not match their stored hash.
    pub(crate) async fn damaged_keys(&self, collection: &CollectionName) -> Result<Vec<Key>> {
        let mut tx = self.begin().await?;
        sqlx::query(LONG_STATEMENTS)
            .persistent(self.persistent)
            .execute(self.counted(&mut *tx))
            .await?;
        let keys: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(DAMAGED.as_str()))
            .persistent(self.persistent)
            .bind(collection.as_str())
            .fetch_all(self.counted(&mut *tx))
            .await?;
        self.commit(tx).await?;
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
