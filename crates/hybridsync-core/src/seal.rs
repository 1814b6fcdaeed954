//! Client-side encryption of what leaves the device (R33): the keys, the keyring and
//! the sealed form of a record.
//!
//! An encrypted collection's records reach the cloud sealed: the payload and the
//! embedding are encrypted together with XChaCha20-Poly1305 under the keyring's current
//! key, and the sealed record carries the result as its payload (and no embedding).
//! The associated data binds the ciphertext to its tenant, collection, record key, key
//! id and version, so a ciphertext copied to another row, another tenant or another
//! version fails to open. Tombstones have no content and travel as they are.
//!
//! The sealed payload is `MAGIC (8) | key id (8) | nonce (24) | ciphertext | tag (16)`,
//! where the plaintext is `payload length (u32 LE) | payload | 0 or 1 | [dim (u32 LE)
//! | f32 LE…]`. Nonces are 24 random bytes, so they never need coordinating between
//! devices.
//!
//! Content hashes: a record on a device is hashed over its plaintext (conflicts and
//! the local checks see the plaintext); the sealed record the cloud holds is hashed
//! over what the cloud holds (the sealed payload), so the cloud can check its rows
//! without a key. Opening a sealed record recomputes the plaintext hash; the AEAD tag
//! is what proves the plaintext is the one that was sealed.

use crate::text::decode_hex;
use crate::{CollectionName, Error, Key, Record, Result};
use chacha20poly1305::aead::{AeadInOut, KeyInit};
use chacha20poly1305::{Tag, XChaCha20Poly1305, XNonce};
use sha2::{Digest, Sha256};
use std::fmt;
use std::sync::Arc;

/// The first bytes of every sealed payload: a name and the format version.
const MAGIC: [u8; 8] = *b"hsseal\x00\x01";
const KEY_ID_LEN: usize = 8;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;
const HEADER_LEN: usize = MAGIC.len() + KEY_ID_LEN + NONCE_LEN;

/// A key's public name: the first 8 bytes of a SHA-256 of the key, shown as 16 hex
/// digits. It says which key sealed a row without saying anything about the key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId([u8; KEY_ID_LEN]);

impl KeyId {
    fn of(key: &[u8; 32]) -> Self {
        let digest = Sha256::new()
            .chain_update(b"hybridsync/key-id/v1")
            .chain_update(key)
            .finalize();
        Self(digest[..KEY_ID_LEN].try_into().expect("8 bytes"))
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

impl std::str::FromStr for KeyId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || Error::Parse {
            what: "key id (16 hex digits)",
            value: s.to_owned(),
        };
        let bytes = decode_hex(s).ok_or_else(bad)?;
        Ok(Self(bytes.try_into().map_err(|_| bad())?))
    }
}

/// A 256-bit encryption key. Its bytes never appear in `Debug`, errors or logs (R30):
/// it prints as its [`KeyId`], and they are wiped when the key is dropped.
#[derive(Clone)]
pub struct EncryptionKey {
    id: KeyId,
    cipher: XChaCha20Poly1305,
}

impl EncryptionKey {
    /// A key from its 32 bytes.
    pub fn from_bytes(mut bytes: [u8; 32]) -> Self {
        let key = Self {
            id: KeyId::of(&bytes),
            cipher: XChaCha20Poly1305::new(&bytes.into()),
        };
        zeroize::Zeroize::zeroize(&mut bytes);
        key
    }

    /// A key as a key file holds it: 32 raw bytes, or 64 hex digits (surrounding
    /// whitespace, such as a trailing newline, is ignored). The error never quotes the
    /// file's content.
    pub fn parse(contents: &[u8]) -> Result<Self> {
        if let Ok(bytes) = <[u8; 32]>::try_from(contents) {
            return Ok(Self::from_bytes(bytes));
        }
        let bad = |reason: &'static str| Error::InvalidEncryptionKey { reason };
        let text = std::str::from_utf8(contents)
            .map_err(|_| bad("expected 32 raw bytes or 64 hex digits"))?
            .trim();
        if text.len() != 64 {
            return Err(bad("expected 32 raw bytes or 64 hex digits"));
        }
        let mut bytes: [u8; 32] = decode_hex(text)
            .ok_or_else(|| bad("64 characters, but not all hex digits"))?
            .try_into()
            .map_err(|_| bad("expected 32 raw bytes or 64 hex digits"))?;
        let key = Self::from_bytes(bytes);
        zeroize::Zeroize::zeroize(&mut bytes);
        Ok(key)
    }

    /// A fresh random key, and its 64 hex digits (what `hybridsync keys generate`
    /// writes to a key file).
    pub fn generate() -> (Self, zeroize::Zeroizing<String>) {
        let mut bytes = [0u8; 32];
        rand::fill(&mut bytes);
        let hex = zeroize::Zeroizing::new(bytes.iter().map(|b| format!("{b:02x}")).collect());
        (Self::from_bytes(bytes), hex)
    }

    /// This key's public name.
    pub fn id(&self) -> KeyId {
        self.id
    }
}

impl fmt::Debug for EncryptionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EncryptionKey({})", self.id)
    }
}

/// The keys a device holds: the current one, which seals everything it ships, and
/// earlier ones, which still open rows sealed before a rotation.
#[derive(Clone)]
pub struct Keyring {
    current: Arc<EncryptionKey>,
    previous: Vec<Arc<EncryptionKey>>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("current", &self.current.id)
            .field(
                "previous",
                &self.previous.iter().map(|k| k.id).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Keyring {
    /// A keyring sealing with `current`.
    pub fn new(current: EncryptionKey) -> Self {
        Self {
            current: Arc::new(current),
            previous: Vec::new(),
        }
    }

    /// Also opens rows sealed with `key` (a key rotated out). Adding the current key,
    /// or a key twice, changes nothing.
    pub fn with_previous(mut self, key: EncryptionKey) -> Self {
        if !self.ids().contains(&key.id) {
            self.previous.push(Arc::new(key));
        }
        self
    }

    /// The id of the key that seals.
    pub fn current_id(&self) -> KeyId {
        self.current.id
    }

    /// Every key id this keyring opens, the current one first.
    pub fn ids(&self) -> Vec<KeyId> {
        std::iter::once(&self.current)
            .chain(&self.previous)
            .map(|k| k.id)
            .collect()
    }

    fn key(&self, id: KeyId) -> Option<&EncryptionKey> {
        std::iter::once(&self.current)
            .chain(&self.previous)
            .find(|k| k.id == id)
            .map(|k| &**k)
    }

    /// The sealed form of `record` for `tenant`, under the current key. A tombstone is
    /// returned as it is.
    pub fn seal(&self, tenant: &str, record: &Record) -> Result<Record> {
        if record.tombstone {
            return Ok(record.clone());
        }
        let key = &self.current;
        let embedding_len = record.embedding.as_ref().map_or(0, |e| 4 + e.len() * 4);
        let mut sealed =
            Vec::with_capacity(HEADER_LEN + 4 + record.payload.len() + 1 + embedding_len + TAG_LEN);
        sealed.extend_from_slice(&MAGIC);
        sealed.extend_from_slice(&key.id.0);
        let mut nonce = [0u8; NONCE_LEN];
        rand::fill(&mut nonce);
        sealed.extend_from_slice(&nonce);
        let payload_len = u32::try_from(record.payload.len())
            .map_err(|_| Error::Encode("a payload over 4 GiB cannot be sealed".into()))?;
        sealed.extend_from_slice(&payload_len.to_le_bytes());
        sealed.extend_from_slice(&record.payload);
        match &record.embedding {
            None => sealed.push(0),
            Some(values) => {
                sealed.push(1);
                sealed.extend_from_slice(&(values.len() as u32).to_le_bytes());
                sealed.extend(values.iter().flat_map(|v| v.to_le_bytes()));
            }
        }
        let aad = associated_data(tenant, &record.collection, &record.key, key.id, record);
        let tag = key
            .cipher
            .encrypt_inout_detached(
                &XNonce::from(nonce),
                &aad,
                (&mut sealed[HEADER_LEN..]).into(),
            )
            .map_err(|_| Error::Encode("the record is too large to seal".into()))?;
        sealed.extend_from_slice(&tag);
        Ok(Record::new(
            record.collection.clone(),
            record.key.clone(),
            sealed,
            None,
            record.version,
            false,
        ))
    }

    /// The plaintext of a sealed `record` from `tenant`, with its plaintext hash. A
    /// tombstone without content is returned as it is. Refuses, with a typed error
    /// that names the record, a row that is not sealed, is sealed with a key this
    /// keyring lacks, or fails authentication (tampered, or moved from another row,
    /// tenant or version).
    pub fn open(&self, tenant: &str, record: Record) -> Result<Record> {
        let broken = |reason: &'static str| Error::SealBroken {
            collection: record.collection.to_string(),
            key: record.key.to_string(),
            reason,
        };
        if record.tombstone {
            return if record.payload.is_empty() && record.embedding.is_none() {
                Ok(record)
            } else {
                Err(broken("a tombstone carries content"))
            };
        }
        if record.embedding.is_some() {
            return Err(broken("it carries a plaintext embedding"));
        }
        let Some(id) = sealed_key_id(&record.payload) else {
            return Err(broken("it is not sealed"));
        };
        let key = self.key(id).ok_or_else(|| Error::UnknownEncryptionKey {
            collection: record.collection.to_string(),
            key: record.key.to_string(),
            key_id: id.to_string(),
        })?;
        let aad = associated_data(tenant, &record.collection, &record.key, id, &record);
        let (header, body) = record.payload.split_at(HEADER_LEN);
        let (ciphertext, tag) = body.split_at(body.len() - TAG_LEN);
        let nonce: [u8; NONCE_LEN] = header[MAGIC.len() + KEY_ID_LEN..]
            .try_into()
            .expect("24 bytes");
        let tag = Tag::try_from(tag).expect("16 bytes");
        let mut plain = zeroize::Zeroizing::new(ciphertext.to_vec());
        key.cipher
            .decrypt_inout_detached(
                &XNonce::from(nonce),
                &aad,
                plain.as_mut_slice().into(),
                &tag,
            )
            .map_err(|_| {
                broken(
                    "it fails authentication: tampered, or moved from another row, tenant or version",
                )
            })?;
        let (payload, embedding) =
            decode_plaintext(&plain).ok_or_else(|| broken("its plaintext is malformed"))?;
        Ok(Record::new(
            record.collection,
            record.key,
            payload,
            embedding,
            record.version,
            false,
        ))
    }
}

/// The key id a sealed payload names, if `payload` has the sealed form; what the cloud
/// stores beside each row, so an operator can see a rotation's progress.
pub fn sealed_key_id(payload: &[u8]) -> Option<KeyId> {
    if payload.len() < HEADER_LEN + TAG_LEN || payload[..MAGIC.len()] != MAGIC {
        return None;
    }
    let id = &payload[MAGIC.len()..MAGIC.len() + KEY_ID_LEN];
    Some(KeyId(id.try_into().expect("8 bytes")))
}

/// What the AEAD authenticates besides the plaintext: every part length-prefixed, so
/// no two different rows share it.
fn associated_data(
    tenant: &str,
    collection: &CollectionName,
    key: &Key,
    key_id: KeyId,
    record: &Record,
) -> Vec<u8> {
    let mut aad =
        Vec::with_capacity(96 + tenant.len() + collection.as_str().len() + key.as_str().len());
    aad.extend_from_slice(b"hybridsync/seal/v1");
    for part in [tenant, collection.as_str(), key.as_str()] {
        aad.extend_from_slice(&(part.len() as u64).to_le_bytes());
        aad.extend_from_slice(part.as_bytes());
    }
    aad.extend_from_slice(&key_id.0);
    aad.extend_from_slice(&record.version.packed().to_le_bytes());
    aad.extend_from_slice(&record.version.origin.0);
    aad
}

fn decode_plaintext(plain: &[u8]) -> Option<(Vec<u8>, Option<Vec<f32>>)> {
    let (len, rest) = plain.split_first_chunk::<4>()?;
    let len = u32::from_le_bytes(*len) as usize;
    if rest.len() < len + 1 {
        return None;
    }
    let (payload, rest) = rest.split_at(len);
    let (flag, rest) = rest.split_first()?;
    let embedding = match flag {
        0 if rest.is_empty() => None,
        1 => {
            let (dim, values) = rest.split_first_chunk::<4>()?;
            if values.len() != u32::from_le_bytes(*dim) as usize * 4 {
                return None;
            }
            Some(
                values
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect(),
            )
        }
        _ => return None,
    };
    Some((payload.to_vec(), embedding))
}
