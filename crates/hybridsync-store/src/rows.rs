//! Conversions between SQLite rows and core types.

use crate::{Error, Result};
use hybridsync_core::{CollectionName, ContentHash, DeviceId, Hlc, Key, Record, RowDigest};

/// Embeddings are stored as little-endian f32 bytes.
pub(crate) fn embedding_to_blob(embedding: &[f32]) -> Vec<u8> {
    embedding.iter().flat_map(|v| v.to_le_bytes()).collect()
}

pub(crate) fn blob_to_embedding(blob: &[u8]) -> Result<Vec<f32>> {
    if blob.len() % 4 != 0 {
        return Err(Error::BadRow {
            table: "records",
            detail: format!("embedding blob of {} bytes", blob.len()),
        });
    }
    Ok(blob
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

pub(crate) fn device_from_blob(blob: &[u8]) -> Result<DeviceId> {
    blob.try_into().map(DeviceId).map_err(|_| Error::BadRow {
        table: "records",
        detail: format!("origin of {} bytes", blob.len()),
    })
}

/// The columns `key, payload, embedding, hlc, origin, tombstone, hash` of a record.
pub(crate) type RecordColumns = (
    String,
    Vec<u8>,
    Option<Vec<u8>>,
    i64,
    Vec<u8>,
    bool,
    Vec<u8>,
);

/// The columns `key, payload, embedding, hlc, origin, tombstone, hash` of a rusqlite
/// row, starting at column `first`.
pub(crate) fn columns_at(row: &rusqlite::Row<'_>, first: usize) -> rusqlite::Result<RecordColumns> {
    Ok((
        row.get(first)?,
        row.get(first + 1)?,
        row.get(first + 2)?,
        row.get(first + 3)?,
        row.get(first + 4)?,
        row.get(first + 5)?,
        row.get(first + 6)?,
    ))
}

/// A checker's digest of a row from its `key, hlc, origin, tombstone, hash` columns.
pub(crate) fn row_digest(
    key: String,
    hlc: i64,
    origin: &[u8],
    tombstone: bool,
    hash: &[u8],
) -> Result<RowDigest> {
    let bad = |detail: String| Error::BadRow {
        table: "records",
        detail,
    };
    Ok(RowDigest {
        key: Key::new(key).map_err(|e| bad(e.to_string()))?,
        version: Hlc::from_packed(hlc, device_from_blob(origin)?),
        tombstone,
        hash: ContentHash::from_slice(hash)
            .ok_or_else(|| bad(format!("hash of {} bytes", hash.len())))?,
    })
}

/// Builds a record from its columns, checking each.
pub(crate) fn record_from_columns(
    collection: &CollectionName,
    (key, payload, embedding, hlc, origin, tombstone, hash): RecordColumns,
) -> Result<Record> {
    let bad = |detail: String| Error::BadRow {
        table: "records",
        detail,
    };
    let key = Key::new(key).map_err(|e| bad(e.to_string()))?;
    let embedding = embedding.as_deref().map(blob_to_embedding).transpose()?;
    let version = Hlc::from_packed(hlc, device_from_blob(&origin)?);
    let hash = ContentHash::from_slice(&hash)
        .ok_or_else(|| bad(format!("hash of {} bytes", hash.len())))?;
    Ok(Record {
        collection: collection.clone(),
        key,
        payload,
        embedding,
        version,
        tombstone,
        hash,
    })
}
