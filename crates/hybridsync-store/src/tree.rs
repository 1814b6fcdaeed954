//! The device's side of the consistency checker's tree (`hybridsync_core::verify`),
//! kept up to date in every write transaction: the root and level 1 come from
//! `tree_nodes` (16 rows per collection), so a check of identical sides reads nothing
//! else; the deeper levels, wanted only under level-1 nodes that differ, come from one
//! pass over the rows with the buckets and leaves they stored, without hashing.
//!
//! Each row stores its bucket and leaf digest; [`TreeDelta`] gathers what a
//! transaction adds to and takes from each level-1 node and saves it with one upsert
//! per node touched, before the transaction commits.

use crate::rows::{RecordColumns, columns_at, record_from_columns};
use crate::{Error, Result, SqliteStore};
use hybridsync_core::{
    CollectionName, ContentHash, DeviceId, Key, LEVEL_BITS, LocalTree, NodeDigest, Record,
    RowDigest, bucket_of, leaf_of, prefix_at,
};
use std::collections::{BTreeMap, HashMap, HashSet};

const _: () = assert!(
    KEPT_LEVEL == 1,
    "TreeDelta keeps one array of level-1 nodes"
);

/// The level whose nodes `tree_nodes` keeps.
const KEPT_LEVEL: u32 = 1;

/// The bucket and leaf digest stored with `record` (`encrypted`: its collection is).
pub(crate) fn digests_of(record: &Record, encrypted: bool) -> (u32, u64) {
    hybridsync_core::tree_digests(record, encrypted && !record.tombstone)
}

/// One level-1 node's change: rows, and the leaves' high and low 32-bit halves.
#[derive(Debug, Default, Clone, Copy)]
struct NodeChange {
    rows: i64,
    high: i64,
    low: i64,
}

/// What one transaction changes in the kept nodes, per collection (a batch rarely
/// spans more than one or two, so a short list beats a map).
#[derive(Debug, Default)]
pub(crate) struct TreeDelta {
    collections: Vec<(CollectionName, [NodeChange; 1 << LEVEL_BITS])>,
}

const SAVE: &str = "INSERT INTO tree_nodes (collection, prefix, rows, sum_high, sum_low) \
     VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (collection, prefix) DO UPDATE SET \
     rows = rows + excluded.rows, sum_high = sum_high + excluded.sum_high, \
     sum_low = sum_low + excluded.sum_low";

impl TreeDelta {
    /// Adds (`sign` 1) or takes away (`sign` -1) one row's leaf.
    pub(crate) fn add(&mut self, collection: &CollectionName, bucket: u32, leaf: u64, sign: i64) {
        let at = match self.collections.iter().position(|(c, _)| c == collection) {
            Some(at) => at,
            None => {
                self.collections
                    .push((collection.clone(), Default::default()));
                self.collections.len() - 1
            }
        };
        let change = &mut self.collections[at].1[prefix_at(bucket, KEPT_LEVEL) as usize];
        change.rows += sign;
        change.high += sign * (leaf >> 32) as i64;
        change.low += sign * (leaf & 0xffff_ffff) as i64;
    }

    /// Saves the changes in `tx`.
    pub(crate) fn save(self, tx: &rusqlite::Transaction<'_>) -> Result<()> {
        let mut save = tx.prepare_cached(SAVE)?;
        for (collection, changes) in self.collections {
            for (prefix, change) in changes.iter().enumerate() {
                if change.rows == 0 && change.high == 0 && change.low == 0 {
                    continue;
                }
                save.execute(rusqlite::params![
                    collection.as_str(),
                    prefix as i64,
                    change.rows,
                    change.high,
                    change.low
                ])?;
            }
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
const UNDER: &str = "SELECT id, key, hlc, origin, tombstone, hash, bucket, leaf FROM records \
     WHERE collection = ?1";

impl SqliteStore {
    /// Gives rows written before the tree their digests, if any wait (see [`backfill`]).
    pub(crate) async fn backfill_tree(&self) -> Result<()> {
        self.writer
            .transaction(usize::MAX, |tx| {
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
            .await
    }

    /// The kept level-1 nodes of `collection`, by prefix.
    pub(crate) async fn tree_top(
        &self,
        collection: &CollectionName,
    ) -> hybridsync_core::Result<BTreeMap<u32, NodeDigest>> {
        self.require_spec(collection).await?;
        let kept: Vec<(u32, i64, i64, i64)> = self.point.with(|conn| {
            conn.prepare_cached(KEPT)?
                .query_map([collection.as_str()], |row| {
                    Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
                })?
                .collect()
        })?;
        Ok(kept
            .into_iter()
            .map(|(prefix, rows, high, low)| (prefix, node(prefix, rows, high, low)))
            .collect())
    }

    /// The rows under the level-1 nodes `prefixes` with their stored buckets and
    /// leaves, and which of them have a change not yet in the cloud: one pass over the
    /// collection through a point reader (no index orders rows by bucket).
    pub(crate) async fn tree_under(
        &self,
        collection: &CollectionName,
        prefixes: &[u32],
    ) -> hybridsync_core::Result<(LocalTree, HashSet<Key>)> {
        self.require_spec(collection).await?;
        let mut wanted = [false; 1 << LEVEL_BITS];
        for prefix in prefixes {
            wanted[*prefix as usize & ((1 << LEVEL_BITS) - 1)] = true;
        }
        // Blobs are read in place (no copy per row), and a row outside `prefixes` is
        // dropped after reading its bucket only.
        let bad = |detail: String| Error::BadRow {
            table: "records",
            detail,
        };
        let (stored, queued) = self.point.with(|conn| {
            let unshipped = crate::records::unshipped_ids(conn)?;
            let mut select = conn.prepare_cached(UNDER)?;
            let mut read = select.query([collection.as_str()])?;
            let mut stored = Vec::new();
            let mut queued = HashSet::new();
            while let Some(row) = read.next()? {
                let bucket = row.get::<_, Option<i64>>(6)?.unwrap_or_default() as u32;
                if !wanted[prefix_at(bucket, 1) as usize] {
                    continue;
                }
                let leaf = row.get::<_, Option<i64>>(7)?.unwrap_or_default() as u64;
                let origin: [u8; 16] = row.get(3)?;
                let hash: [u8; 32] = row.get(5)?;
                let key: String = row.get(1)?;
                let Ok(key) = Key::new(key) else {
                    return Ok(Err(bad("a key that is not valid".into())));
                };
                if unshipped.contains(&row.get::<_, i64>(0)?) {
                    queued.insert(key.clone());
                }
                let digest = RowDigest {
                    key,
                    version: hybridsync_core::Hlc::from_packed(row.get(2)?, DeviceId(origin)),
                    tombstone: row.get(4)?,
                    hash: ContentHash(hash),
                };
                stored.push((bucket, leaf, digest));
            }
            Ok(Ok((stored, queued)))
        })??;
        Ok((LocalTree::from_stored(stored), queued))
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
