//! Content hashes over the canonical encoding of a record's state.

use std::fmt;

use sha2::{Digest, Sha256};

/// SHA-256 over the canonical encoding of a record's content (collection, key,
/// tombstone flag, payload and embedding). It is the one hash used everywhere: the
/// store, the cloud and the consistency checker.
///
/// The version is deliberately not hashed: two sides holding the same content agree
/// on the hash even if they reached it through different histories.
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct ContentHash(pub [u8; 32]);

impl ContentHash {
    /// Hashes the canonical encoding: every field length-prefixed (u64 little-endian),
    /// embeddings as little-endian f32 with a presence byte.
    pub fn compute(
        collection: &str,
        key: &str,
        tombstone: bool,
        payload: &[u8],
        embedding: Option<&[f32]>,
    ) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(b"hybridsync/v1");
        for part in [collection.as_bytes(), key.as_bytes(), payload] {
            hasher.update((part.len() as u64).to_le_bytes());
            hasher.update(part);
        }
        hasher.update([u8::from(tombstone)]);
        match embedding {
            None => hasher.update([0u8]),
            Some(values) => {
                hasher.update([1u8]);
                hasher.update((values.len() as u64).to_le_bytes());
                for v in values {
                    hasher.update(v.to_le_bytes());
                }
            }
        }
        Self(hasher.finalize().into())
    }

    /// Whether `record`'s stored hash is the hash of its content (false: its bytes
    /// changed without a new version).
    pub fn matches(record: &crate::Record) -> bool {
        record.hash
            == Self::compute(
                record.collection.as_str(),
                record.key.as_str(),
                record.tombstone,
                &record.payload,
                record.embedding.as_deref(),
            )
    }

    /// Reads a hash from 32 bytes, if the slice has exactly that length.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(Self)
    }
}

impl fmt::Display for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ContentHash({self})")
    }
}
