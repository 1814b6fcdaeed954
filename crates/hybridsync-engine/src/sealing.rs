//! Where client-side encryption meets the sync paths: records of encrypted collections
//! are sealed on their way to the cloud (drain and seed) and opened on their way back
//! (pull), with the device's [`Keyring`]. Local rows, the hot cache and the vector
//! index only ever see plaintext.

use hybridsync_core::MutexExt;
use hybridsync_core::{CollectionName, CollectionSpec, Error, Keyring, LocalStore, Record};
use std::collections::HashMap;
use std::sync::Mutex;

/// The keyring, if the device has one, and which collections are encrypted (a
/// collection's spec never changes, so each answer is kept once learnt).
#[derive(Debug, Default)]
pub(crate) struct Sealing {
    keyring: Option<Keyring>,
    encrypted: Mutex<HashMap<CollectionName, bool>>,
}

impl Sealing {
    pub(crate) fn new(keyring: Option<Keyring>) -> Self {
        Self {
            keyring,
            encrypted: Mutex::default(),
        }
    }

    pub(crate) fn keyring(&self) -> Option<&Keyring> {
        self.keyring.as_ref()
    }

    /// Whether `collection` is encrypted, asking the store's catalogue on a miss.
    async fn is_encrypted<S: LocalStore + ?Sized>(
        &self,
        store: &S,
        collection: &CollectionName,
    ) -> Result<bool, Error> {
        if let Some(known) = self.encrypted.lock_or_recover().get(collection) {
            return Ok(*known);
        }
        let specs = store.collections().await?;
        let mut known = self.encrypted.lock_or_recover();
        known.extend(specs.iter().map(|s| (s.name.clone(), s.encrypted)));
        known
            .get(collection)
            .copied()
            .ok_or_else(|| Error::UnknownCollection(collection.to_string()))
    }

    /// The cloud form of each record, in order: sealed for `tenant` when its collection
    /// is encrypted, else the record itself (moved, not copied). A record that cannot
    /// be sealed (no key on this device) comes back with the error in its place.
    pub(crate) async fn seal<S: LocalStore + ?Sized>(
        &self,
        store: &S,
        tenant: &str,
        records: Vec<Record>,
    ) -> Vec<Result<Record, (Record, Error)>> {
        let mut out = Vec::with_capacity(records.len());
        for record in records {
            let sealed = match self.is_encrypted(store, &record.collection).await {
                Ok(false) => Ok(record),
                Ok(true) => match &self.keyring {
                    Some(keyring) => keyring.seal(tenant, &record).map_err(|e| (record, e)),
                    None => {
                        let collection = record.collection.to_string();
                        Err((record, Error::NoEncryptionKey { collection }))
                    }
                },
                Err(e) => Err((record, e)),
            };
            out.push(sealed);
        }
        out
    }

    /// The plaintext of a page pulled from `tenant` for `spec`: every record opened
    /// when the collection is encrypted, the page as it is otherwise. All or nothing:
    /// the first record that does not open refuses the page.
    pub(crate) fn open(
        &self,
        tenant: &str,
        spec: &CollectionSpec,
        records: Vec<Record>,
    ) -> Result<Vec<Record>, Error> {
        if !spec.encrypted {
            return Ok(records);
        }
        let keyring = self
            .keyring
            .as_ref()
            .ok_or_else(|| Error::NoEncryptionKey {
                collection: spec.name.to_string(),
            })?;
        records
            .into_iter()
            .map(|record| keyring.open(tenant, record))
            .collect()
    }
}
