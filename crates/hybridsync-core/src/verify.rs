//! The consistency checker's tree (R23): which bucket a record falls into, its leaf
//! digest, and the node digests both sides compute over the same buckets, so a device
//! and the cloud can find the rows they disagree on by comparing a few nodes.
//!
//! Everything here is defined so the cloud can compute it in SQL (`sha256`,
//! big-endian `int4send`/`int8send`), never by downloading rows:
//!
//! - **bucket** = the first 4 bytes, big-endian, of SHA-256 over `len(collection) |
//!   collection | len(key) | key` (lengths as 4-byte big-endian);
//! - **leaf** = the first 8 bytes, big-endian and signed, of SHA-256 over
//!   `"hybridsync/leaf/v1" | len(collection) | collection | len(key) | key | hlc (8,
//!   big-endian) | origin (16) | tombstone (1) | content hash (32)`. A live row of an
//!   encrypted collection is hashed over different bytes on each side (plaintext on
//!   the device, the sealed row in the cloud), so its leaf carries 32 zero bytes
//!   instead of the hash; the cloud tells such rows by their sealed payload;
//! - a **node** at level `l` (the root is level 0) covers the buckets sharing their top
//!   `4·l` bits (fan-out 16) and carries its row count and the wrapping 64-bit sum of
//!   its leaves: unlike XOR, two equal rows do not cancel.

use crate::{CollectionName, ContentHash, Hlc, Key, Record};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// Bits of the bucket hash one tree level consumes (a fan-out of 16).
pub const LEVEL_BITS: u32 = 4;

/// The deepest level: 16⁶ ≈ 16.7 M leaf buckets (enough for 67 M rows at
/// [`ROWS_PER_LEAF`]).
pub const MAX_DEPTH: u32 = 6;

/// Rows a leaf bucket holds at most on average at the depth [`depth_for`] picks: few,
/// so a difference costs about one row on the wire (and a few more tree nodes).
pub const ROWS_PER_LEAF: u64 = 4;

/// How a row differs between a device and the cloud.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Difference {
    /// On the device only, and not waiting in its outbox.
    MissingRemote,
    /// In the cloud only.
    MissingLocal,
    /// The cloud holds a newer version.
    StaleLocal,
    /// The device holds a newer version the cloud lacks, and it is not queued.
    StaleRemote,
    /// One version, different content, or content that no longer matches its own hash:
    /// damage (a changed byte, a manual `UPDATE`, a bug).
    Damaged,
    /// A change of the device's still in its outbox: reported, never an inconsistency.
    Pending,
}

crate::text::text_enum!(Difference, "difference", MissingRemote => "missing_remote", MissingLocal => "missing_local", StaleLocal => "stale_local", StaleRemote => "stale_remote", Damaged => "damaged", Pending => "pending");

/// What the checker knows of one row: enough to tell two sides' rows apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowDigest {
    pub key: Key,
    pub version: Hlc,
    pub tombstone: bool,
    pub hash: ContentHash,
}

impl RowDigest {
    /// The digest of a record.
    pub fn of(record: &Record) -> Self {
        Self {
            key: record.key.clone(),
            version: record.version,
            tombstone: record.tombstone,
            hash: record.hash,
        }
    }

    /// Bytes this digest takes on the wire (key, version, origin, flag, hash).
    pub fn wire_size(&self) -> usize {
        self.key.as_str().len() + 8 + 16 + 1 + 32
    }
}

/// One node of the tree: the buckets whose top `4·level` bits are `prefix`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NodeDigest {
    pub prefix: u32,
    pub count: u64,
    pub sum: u64,
}

fn length_prefixed(hasher: &mut Sha256, part: &[u8]) {
    hasher.update((part.len() as u32).to_be_bytes());
    hasher.update(part);
}

/// The bucket of `(collection, key)`.
pub fn bucket_of(collection: &CollectionName, key: &Key) -> u32 {
    let mut hasher = Sha256::new();
    length_prefixed(&mut hasher, collection.as_str().as_bytes());
    length_prefixed(&mut hasher, key.as_str().as_bytes());
    let digest = hasher.finalize();
    u32::from_be_bytes(digest[..4].try_into().expect("4 bytes"))
}

/// The leaf digest of a row; `sealed` for a live row of an encrypted collection (its
/// hash is left out: the two sides hash different bytes).
pub fn leaf_of(collection: &CollectionName, row: &RowDigest, sealed: bool) -> u64 {
    let mut hasher = Sha256::new();
    hasher.update(b"hybridsync/leaf/v1");
    length_prefixed(&mut hasher, collection.as_str().as_bytes());
    length_prefixed(&mut hasher, row.key.as_str().as_bytes());
    hasher.update(row.version.packed().to_be_bytes());
    hasher.update(row.version.origin.0);
    hasher.update([u8::from(row.tombstone)]);
    hasher.update(if sealed { [0; 32] } else { row.hash.0 });
    let digest = hasher.finalize();
    u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"))
}

/// Where a record sits in the tree: its bucket and leaf, as both sides store them with
/// the row (`sealed`: a live row of an encrypted collection).
pub fn tree_digests(record: &Record, sealed: bool) -> (u32, u64) {
    (
        bucket_of(&record.collection, &record.key),
        leaf_of(&record.collection, &RowDigest::of(record), sealed),
    )
}

/// The prefix of `bucket` at `level`.
pub fn prefix_at(bucket: u32, level: u32) -> u32 {
    match level {
        0 => 0,
        l => bucket >> (32 - LEVEL_BITS * l.min(MAX_DEPTH)),
    }
}

/// The leaf level for a side holding `rows` rows: about [`ROWS_PER_LEAF`] rows per
/// bucket, at least 1 and at most [`MAX_DEPTH`].
pub fn depth_for(rows: u64) -> u32 {
    let mut depth = 1;
    while depth < MAX_DEPTH && rows > ROWS_PER_LEAF << (LEVEL_BITS * depth) {
        depth += 1;
    }
    depth
}

/// A side's rows of one collection with their buckets and leaves, ready to answer
/// for any node.
#[derive(Debug, Default)]
pub struct LocalTree {
    /// `(bucket, leaf, row)`, sorted by bucket.
    rows: Vec<(u32, u64, RowDigest)>,
}

impl LocalTree {
    /// The tree over a device's `rows` of `collection` (`encrypted`: its live rows'
    /// leaves leave the hash out).
    pub fn new(collection: &CollectionName, rows: Vec<RowDigest>, encrypted: bool) -> Self {
        Self::with_sealing(
            collection,
            rows.into_iter()
                .map(|row| {
                    let sealed = encrypted && !row.tombstone;
                    (row, sealed)
                })
                .collect(),
        )
    }

    /// The tree over rows each marked whether it is a sealed live row (what a cloud
    /// knows of its rows: a sealed payload, not the collection's spec).
    pub fn with_sealing(collection: &CollectionName, rows: Vec<(RowDigest, bool)>) -> Self {
        let mut rows: Vec<(u32, u64, RowDigest)> = rows
            .into_iter()
            .map(|(row, sealed)| {
                (
                    bucket_of(collection, &row.key),
                    leaf_of(collection, &row, sealed),
                    row,
                )
            })
            .collect();
        rows.sort_unstable_by_key(|(bucket, ..)| *bucket);
        Self { rows }
    }

    /// The tree over rows whose buckets and leaves were computed when they were
    /// written (`(bucket, leaf, row)`).
    pub fn from_stored(mut rows: Vec<(u32, u64, RowDigest)>) -> Self {
        rows.sort_unstable_by_key(|(bucket, ..)| *bucket);
        Self { rows }
    }

    /// Rows in the tree.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether it holds no rows.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The nodes at `level` under any of `parents` (prefixes at `parents_level`, above
    /// `level`; every node when `parents` is empty), by prefix. Empty nodes are absent.
    pub fn nodes(
        &self,
        level: u32,
        parents: &[u32],
        parents_level: u32,
    ) -> BTreeMap<u32, NodeDigest> {
        let mut nodes = BTreeMap::new();
        for (bucket, leaf, _) in &self.rows {
            if !parents.is_empty()
                && level > 0
                && parents
                    .binary_search(&prefix_at(*bucket, parents_level))
                    .is_err()
            {
                continue;
            }
            let prefix = prefix_at(*bucket, level);
            let node: &mut NodeDigest = nodes.entry(prefix).or_insert(NodeDigest {
                prefix,
                ..NodeDigest::default()
            });
            node.count += 1;
            node.sum = node.sum.wrapping_add(*leaf);
        }
        nodes
    }

    /// The root: every row.
    pub fn root(&self) -> NodeDigest {
        self.nodes(0, &[], 0).remove(&0).unwrap_or_default()
    }

    /// The rows in the leaf buckets `prefixes` at `level` (sorted).
    pub fn rows_in(&self, level: u32, prefixes: &[u32]) -> Vec<&RowDigest> {
        self.rows
            .iter()
            .filter(|(bucket, ..)| prefixes.binary_search(&prefix_at(*bucket, level)).is_ok())
            .map(|(.., row)| row)
            .collect()
    }
}

/// The prefixes whose nodes differ between two sides (present on one side only, or
/// with another count or sum), sorted.
pub fn differing(
    local: &BTreeMap<u32, NodeDigest>,
    remote: &BTreeMap<u32, NodeDigest>,
) -> Vec<u32> {
    let mut out: Vec<u32> = local
        .keys()
        .chain(remote.keys())
        .copied()
        .filter(|p| local.get(p) != remote.get(p))
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}
