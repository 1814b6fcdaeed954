//! Records and the requests that create them.

use crate::{CollectionName, ContentHash, Hlc, Key, Priority, VectorSpec};

/// A collection's definition: its name, for vector collections its vector spec, and
/// whether what it sends to the cloud is encrypted on the device first.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CollectionSpec {
    pub name: CollectionName,
    pub vector: Option<VectorSpec>,
    /// Payloads and embeddings leave the device only sealed (see [`crate::Keyring`]).
    #[serde(default)]
    pub encrypted: bool,
}

impl CollectionSpec {
    /// A plaintext collection without vectors.
    pub fn new(name: CollectionName) -> Self {
        Self {
            name,
            vector: None,
            encrypted: false,
        }
    }

    /// With a vector spec.
    pub fn with_vector(mut self, vector: VectorSpec) -> Self {
        self.vector = Some(vector);
        self
    }

    /// Encrypted before it leaves the device.
    pub fn encrypted(mut self) -> Self {
        self.encrypted = true;
        self
    }
}

/// One record's current state: payload bytes (bincode for typed collections), an
/// optional embedding, its version and whether it is a delete marker (tombstone).
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub collection: CollectionName,
    pub key: Key,
    pub payload: Vec<u8>,
    pub embedding: Option<Vec<f32>>,
    pub version: Hlc,
    pub tombstone: bool,
    pub hash: ContentHash,
}

impl Record {
    /// Builds a record and computes its content hash.
    pub fn new(
        collection: CollectionName,
        key: Key,
        payload: Vec<u8>,
        embedding: Option<Vec<f32>>,
        version: Hlc,
        tombstone: bool,
    ) -> Self {
        let hash = ContentHash::compute(
            collection.as_str(),
            key.as_str(),
            tombstone,
            &payload,
            embedding.as_deref(),
        );
        Self {
            collection,
            key,
            payload,
            embedding,
            version,
            tombstone,
            hash,
        }
    }

    /// Approximate heap size, for byte-bounded caches.
    pub fn approx_size(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.collection.as_str().len()
            + self.key.as_str().len()
            + self.payload.len()
            + self.embedding.as_ref().map_or(0, |e| e.len() * 4)
    }
}

/// A local write: a put (payload, optional embedding) or a delete (tombstone).
#[derive(Debug, Clone, PartialEq)]
pub struct WriteRequest {
    pub collection: CollectionName,
    pub key: Key,
    pub payload: Vec<u8>,
    pub embedding: Option<Vec<f32>>,
    pub tombstone: bool,
    pub priority: Priority,
}

impl WriteRequest {
    /// A put of `payload` (and an embedding for vector collections).
    pub fn put(
        collection: CollectionName,
        key: Key,
        payload: Vec<u8>,
        embedding: Option<Vec<f32>>,
    ) -> Self {
        Self {
            collection,
            key,
            payload,
            embedding,
            tombstone: false,
            priority: Priority::Normal,
        }
    }

    /// A delete: a tombstone with an empty payload.
    pub fn delete(collection: CollectionName, key: Key) -> Self {
        Self {
            collection,
            key,
            payload: Vec::new(),
            embedding: None,
            tombstone: true,
            priority: Priority::Normal,
        }
    }

    /// Sets the sync priority.
    pub fn with_priority(mut self, priority: Priority) -> Self {
        self.priority = priority;
        self
    }
}

/// What the store returns for an acknowledged (durable) write.
#[derive(Debug, Clone, PartialEq)]
pub struct WriteReceipt {
    /// The record as stored, with its new version; shared with the hot cache, which
    /// keeps it without a copy.
    pub record: std::sync::Arc<Record>,
    /// The record's stable vector label (its row id), the same for every version.
    pub label: u64,
}

impl WriteReceipt {
    /// The receipt of `record`, stored under `label`.
    pub fn new(record: Record, label: u64) -> Self {
        Self {
            record: std::sync::Arc::new(record),
            label,
        }
    }
}

impl WriteRequest {
    /// Validates the request against its collection's spec and `limits`:
    /// payload size, embedding presence, dimension and finiteness.
    pub fn validate(&self, spec: &CollectionSpec, limits: &crate::Limits) -> crate::Result<()> {
        validate_content(
            spec,
            limits,
            &self.key,
            &self.payload,
            self.embedding.as_deref(),
        )
    }
}

impl Record {
    /// Checks a record from elsewhere (the cloud) against this store's spec and limits,
    /// exactly as a local write is checked.
    pub fn validate(&self, spec: &CollectionSpec, limits: &crate::Limits) -> crate::Result<()> {
        validate_content(
            spec,
            limits,
            &self.key,
            &self.payload,
            self.embedding.as_deref(),
        )
    }
}

fn validate_content(
    spec: &CollectionSpec,
    limits: &crate::Limits,
    key: &Key,
    payload: &[u8],
    embedding: Option<&[f32]>,
) -> crate::Result<()> {
    limits.check_payload(payload)?;
    if key.as_str().len() > limits.max_key_bytes {
        return Err(crate::Error::InvalidKey {
            len: key.as_str().len(),
            reason: "longer than the key limit",
        });
    }
    match (&spec.vector, embedding) {
        (_, None) => Ok(()),
        (None, Some(_)) => Err(crate::Error::EmbeddingNotAllowed {
            collection: spec.name.to_string(),
        }),
        (Some(vector), Some(embedding)) => vector.validate(spec.name.as_str(), embedding),
    }
}
