//! The device's side of the consistency checker's tree (`hybridsync_core::verify`),
//! kept up to date in every write transaction, so a check reads what it needs and no
//! more: the root and level 1 from `tree_nodes` (16 rows per collection), a deeper node
//! from a range scan of the `records_tree` index under its parent, and a leaf bucket's
//! rows from the same index.
//!
//! Each row stores its bucket and leaf digest; [`TreeDelta`] gathers what a
//! transaction adds to and takes from each level-1 node and saves it with one upsert
//! per node touched, before the transaction commits.

use crate::rows::{RecordColumns, columns_at, record_from_columns};
use crate::{Error, Result, SqliteStore};
use hybridsync_core::{
    CollectionName, ContentHash, Key, LEVEL_BITS, NodeDigest, Record, RowDigest, bucket_of,
    leaf_of, prefix_at,
};
use std::collections::{BTreeMap, HashMap, HashSet};

/// The level whose nodes `tree_nodes` keeps.
const KEPT_LEVEL: u32 = 1;

/// The bucket and leaf digest stored with `record` (`encrypted`: its collection is).
pub(crate) fn digests_of(record: &Record, encrypted: bool) -> (u32, u64) {
    let sealed = encrypted && !record.tombstone;
    (
        bucket_of(&record.collection, &record.key),
        leaf_of(&record.collection, &RowDigest::of(record), sealed),
    )
}

/// One level-1 node's change: rows, and the leaves' high and low 32-bit halves.
#[derive(Debug, Default, Clone, Copy)]
struct NodeChange {
    rows: i64,
    high: i64,
    low: i64,
}

/// What one transaction changes in the kept nodes.
#[derive(Debug, Default)]
pub(crate) struct TreeDelta {
    nodes: HashMap<(CollectionName, u32), NodeChange>,
}

const SAVE: &str = "INSERT INTO tree_nodes (collection, prefix, rows, sum_high, sum_low) \
     VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (collection, prefix) DO UPDATE SET \
     rows = rows + excluded.rows, sum_high = sum_high + excluded.sum_high, \
     sum_low = sum_low + excluded.sum_low";

impl TreeDelta {
    /// Adds (`sign` 1) or takes away (`sign` -1) one row's leaf.
    pub(crate) fn add(&mut self, collection: &CollectionName, bucket: u32, leaf: u64, sign: i64) {
        let change = self
            .nodes
            .entry((collection.clone(), prefix_at(bucket, KEPT_LEVEL)))
            .or_default();
        change.rows += sign;
        change.high += sign * (leaf >> 32) as i64;
        change.low += sign * (leaf & 0xffff_ffff) as i64;
    }

    /// Saves the changes in `tx`.
    pub(crate) fn save(self, tx: &rusqlite::Transaction<'_>) -> Result<()> {
        let mut save = tx.prepare_cached(SAVE)?;
        for ((collection, prefix), change) in self.nodes {
            save.execute(rusqlite::params![
                collection.as_str(),
                prefix,
                change.rows,
                change.high,
                change.low
            ])?;
        }
        Ok(())
    }
}

/// The node digest of stored halves.
fn node(prefix: u32, rows: i64, high: i64, low: i64) -> NodeDigest {
    NodeDigest {
        prefix,
        count: rows as u64,
        sum: ((high as u64) << 32).wrapping_add(low as u64),
    }
}

/// The bucket range under `prefix` at `level`.
fn range(prefix: u32, level: u32) -> (i64, i64) {
    if level == 0 {
        return (0, i64::from(u32::MAX));
    }
    let shift = 32 - LEVEL_BITS * level;
    let low = i64::from(prefix) << shift;
    (low, low + (1i64 << shift) - 1)
}

/// Gives rows written before the tree existed their digests, and rebuilds the kept
/// nodes from every row, in one transaction.
pub(crate) fn backfill(tx: &rusqlite::Transaction<'_>) -> Result<()> {
    let encrypted: HashMap<String, bool> = tx
        .prepare("SELECT name, encrypted FROM collections")?
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let mut rows = tx.prepare(
        "SELECT id, collection, key, hlc, origin, tombstone, hash FROM records ORDER BY id",
    )?;
    let mut update = tx.prepare("UPDATE records SET bucket = ?2, leaf = ?3 WHERE id = ?1")?;
    let mut delta = TreeDelta::default();
    let mut read = rows.query([])?;
    while let Some(row) = read.next()? {
        let id: i64 = row.get(0)?;
        let collection: String = row.get(1)?;
        let (origin, hash): (Vec<u8>, Vec<u8>) = (row.get(4)?, row.get(6)?);
        let digest =
            crate::rows::row_digest(row.get(2)?, row.get(3)?, &origin, row.get(5)?, &hash)?;
        let name = CollectionName::new(collection.clone()).map_err(|e| Error::BadRow {
            table: "records",
            detail: e.to_string(),
        })?;
        let sealed = encrypted.get(&collection).copied().unwrap_or(false) && !digest.tombstone;
        let bucket = bucket_of(&name, &digest.key);
        let leaf = leaf_of(&name, &digest, sealed);
        update.execute(rusqlite::params![id, bucket, leaf as i64])?;
        delta.add(&name, bucket, leaf, 1);
    }
    tx.execute("DELETE FROM tree_nodes", [])?;
    delta.save(tx)?;
    tx.execute("DELETE FROM meta WHERE key = 'tree_backfill'", [])?;
    Ok(())
}

const KEPT: &str = "SELECT prefix, rows, sum_high, sum_low FROM tree_nodes \
     WHERE collection = ?1 AND rows > 0";
const LEAVES: &str = "SELECT bucket, leaf FROM records INDEXED BY records_tree \
     WHERE collection = ?1 AND bucket BETWEEN ?2 AND ?3";
const BUCKET_ROWS: &str = "SELECT id, key, hlc, origin, tombstone, hash FROM records \
     INDEXED BY records_tree WHERE collection = ?1 AND bucket BETWEEN ?2 AND ?3";

impl SqliteStore {
    /// Whether rows still wait for their digests (see [`backfill`]).
    pub(crate) fn backfill_tree(&self) -> impl Future<Output = Result<()>> + '_ {
        self.writer.transaction(usize::MAX, |tx| {
            let pending: bool = tx.query_row(
                "SELECT EXISTS (SELECT 1 FROM meta WHERE key = 'tree_backfill')",
                [],
                |row| row.get(0),
            )?;
            if pending {
                backfill(tx)?;
            }
            Ok(())
        })
    }

    /// The nodes at `level` under `parents` (prefixes at `parents_level`; every node
    /// when empty), by prefix.
    pub(crate) async fn tree_nodes(
        &self,
        collection: &CollectionName,
        level: u32,
        parents: &[u32],
        parents_level: u32,
    ) -> hybridsync_core::Result<BTreeMap<u32, NodeDigest>> {
        self.require_spec(collection).await?;
        let under = |bucket_prefix: u32, at: u32| {
            parents.is_empty()
                || parents
                    .binary_search(&(bucket_prefix >> (LEVEL_BITS * (at - parents_level))))
                    .is_ok()
        };
        let mut nodes = BTreeMap::new();
        if level <= KEPT_LEVEL {
            let kept: Vec<(u32, i64, i64, i64)> = self.point.with(|conn| {
                conn.prepare_cached(KEPT)?
                    .query_map([collection.as_str()], |row| {
                        Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
                    })?
                    .collect()
            })?;
            for (prefix, rows, high, low) in kept {
                if level == KEPT_LEVEL && !under(prefix, KEPT_LEVEL) {
                    continue;
                }
                let at = prefix >> (LEVEL_BITS * (KEPT_LEVEL - level));
                let entry: &mut NodeDigest = nodes.entry(at).or_insert(NodeDigest {
                    prefix: at,
                    ..NodeDigest::default()
                });
                let part = node(prefix, rows, high, low);
                entry.count += part.count;
                entry.sum = entry.sum.wrapping_add(part.sum);
            }
            return Ok(nodes);
        }
        let ranges: Vec<(i64, i64)> = if parents.is_empty() {
            vec![range(0, 0)]
        } else {
            parents.iter().map(|p| range(*p, parents_level)).collect()
        };
        self.point.with(|conn| {
            let mut leaves = conn.prepare_cached(LEAVES)?;
            for (low, high) in ranges {
                let mut rows = leaves.query(rusqlite::params![collection.as_str(), low, high])?;
                while let Some(row) = rows.next()? {
                    let bucket: i64 = row.get(0)?;
                    let leaf: i64 = row.get(1)?;
                    let prefix = prefix_at(bucket as u32, level);
                    let entry: &mut NodeDigest = nodes.entry(prefix).or_insert(NodeDigest {
                        prefix,
                        ..NodeDigest::default()
                    });
                    entry.count += 1;
                    entry.sum = entry.sum.wrapping_add(leaf as u64);
                }
            }
            Ok(())
        })?;
        Ok(nodes)
    }

    /// The rows in the leaf buckets `buckets` at `level`, each with whether the device
    /// has a change of it not yet in the cloud.
    pub(crate) async fn bucket_digests(
        &self,
        collection: &CollectionName,
        level: u32,
        buckets: &[u32],
    ) -> hybridsync_core::Result<Vec<(RowDigest, bool)>> {
        self.require_spec(collection).await?;
        type Columns = (i64, String, i64, Vec<u8>, bool, Vec<u8>);
        let (unshipped, rows): (HashSet<i64>, Vec<Columns>) = self.point.with(|conn| {
            let unshipped = crate::records::unshipped_ids(conn)?;
            let mut select = conn.prepare_cached(BUCKET_ROWS)?;
            let mut out = Vec::new();
            for bucket in buckets {
                let (low, high) = range(*bucket, level);
                let rows =
                    select.query_map(rusqlite::params![collection.as_str(), low, high], |row| {
                        Ok((
                            row.get(0)?,
                            row.get(1)?,
                            row.get(2)?,
                            row.get(3)?,
                            row.get(4)?,
                            row.get(5)?,
                        ))
                    })?;
                for row in rows {
                    out.push(row?);
                }
            }
            Ok((unshipped, out))
        })?;
        Ok(rows
            .into_iter()
            .map(|(id, key, hlc, origin, tombstone, hash)| {
                Ok((
                    crate::rows::row_digest(key, hlc, &origin, tombstone, &hash)?,
                    unshipped.contains(&id),
                ))
            })
            .collect::<Result<_>>()?)
    }

    /// Keys of rows whose content no longer matches their stored hash, or whose stored
    /// bucket or leaf is not the one their row defines (a bug, or an edit behind the
    /// store's back), read in pages through a point reader.
    pub(crate) async fn damaged_keys(
        &self,
        collection: &CollectionName,
    ) -> hybridsync_core::Result<Vec<Key>> {
        const PAGE: &str = "SELECT key, payload, embedding, hlc, origin, tombstone, hash, bucket, leaf \
             FROM records WHERE collection = ?1 AND key > ?2 ORDER BY key LIMIT 1000";
        let spec = self.require_spec(collection).await?;
        let mut damaged = Vec::new();
        let mut after = String::new();
        loop {
            let page: Vec<(RecordColumns, Option<i64>, Option<i64>)> = self.point.with(|conn| {
                conn.prepare_cached(PAGE)?
                    .query_map(rusqlite::params![collection.as_str(), after], |row| {
                        Ok((columns_at(row, 0)?, row.get(7)?, row.get(8)?))
                    })?
                    .collect()
            })?;
            let Some((last, ..)) = page.last() else { break };
            after = last.0.clone();
            let full = page.len() == 1_000;
            for (columns, bucket, leaf) in page {
                let record = record_from_columns(collection, columns)?;
                let stored = (bucket.map(|b| b as u32), leaf.map(|l| l as u64));
                let (b, l) = digests_of(&record, spec.encrypted);
                if !ContentHash::matches(&record) || stored != (Some(b), Some(l)) {
                    damaged.push(record.key);
                }
            }
            if !full {
                break;
            }
        }
        Ok(damaged)
    }
}
