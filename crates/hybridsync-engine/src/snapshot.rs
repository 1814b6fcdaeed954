//! Saved vector indexes. Building a large HNSW index is the slow part of opening a
//! store, so `close` saves each index beside a small description of what it holds,
//! and `open` restores it instead when the store still holds exactly that.
//!
//! What an index holds is summed up by a [`Ledger`]: for every indexed label, a digest
//! of the label and the record's content hash, kept in step with the index by the same
//! code that updates it. The store's side is computed from its rows (labels and hashes
//! only, no embeddings) at open. Any write the index did not see (a crash after a
//! commit, another process on the same directory) changes the store's side, and the
//! index is rebuilt.

use hybridsync_core::{ContentHash, StoredVector, VectorSpec};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The first line of a description; a new format gets a new line.
const FORMAT: &str = "hybridsync index snapshot 1";

/// The labels and content digests of what one index holds.
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    digests: HashMap<u64, u64>,
    sum: u64,
}

fn mix(mut x: u64) -> u64 {
    // splitmix64's finaliser: every input bit moves every output bit.
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn digest(label: u64, hash: &ContentHash) -> u64 {
    let mut head = [0u8; 8];
    head.copy_from_slice(&hash.0[..8]);
    mix(u64::from_le_bytes(head) ^ mix(label))
}

impl Ledger {
    pub(crate) fn of(rows: &[StoredVector]) -> Self {
        let mut ledger = Self::default();
        for row in rows {
            ledger.set(row.label, &row.hash);
        }
        ledger
    }

    /// `label` now holds the record with `hash`.
    pub(crate) fn set(&mut self, label: u64, hash: &ContentHash) {
        let new = digest(label, hash);
        if let Some(old) = self.digests.insert(label, new) {
            self.sum = self.sum.wrapping_sub(old);
        }
        self.sum = self.sum.wrapping_add(new);
    }

    /// `label` is no longer indexed.
    pub(crate) fn remove(&mut self, label: u64) {
        if let Some(old) = self.digests.remove(&label) {
            self.sum = self.sum.wrapping_sub(old);
        }
    }

    fn describe(&self, spec: &VectorSpec) -> String {
        format!(
            "{FORMAT}\nspec {spec:?}\nvectors {}\ndigest {:016x}\n",
            self.digests.len(),
            self.sum
        )
    }
}

/// Where one collection's snapshot lives: the index file and its description.
#[derive(Debug, Clone)]
pub(crate) struct SnapshotFiles {
    pub(crate) index: PathBuf,
    description: PathBuf,
}

impl SnapshotFiles {
    pub(crate) fn new(dir: &Path, collection: &str) -> Self {
        Self {
            index: dir.join(format!("{collection}.usearch")),
            description: dir.join(format!("{collection}.snapshot")),
        }
    }

    /// Whether a saved description exists for `spec` (cheap: decides whether reading
    /// the store's labels is worth it).
    pub(crate) fn saved_for(&self, spec: &VectorSpec) -> Option<String> {
        let text = std::fs::read_to_string(&self.description).ok()?;
        text.starts_with(&format!("{FORMAT}\nspec {spec:?}\n"))
            .then_some(text)
    }

    /// Whether `saved` (from [`Self::saved_for`]) describes what `ledger` sums up.
    pub(crate) fn matches(saved: &str, spec: &VectorSpec, ledger: &Ledger) -> bool {
        saved == ledger.describe(spec)
    }

    /// Forgets the description, so a half-written snapshot is never trusted.
    pub(crate) fn invalidate(&self) -> std::io::Result<()> {
        match std::fs::remove_file(&self.description) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// Describes the index file just written (owner-only, replaced atomically).
    pub(crate) fn describe(&self, spec: &VectorSpec, ledger: &Ledger) -> std::io::Result<()> {
        private(&self.index)?;
        let temp = self.description.with_extension("snapshot.tmp");
        std::fs::write(&temp, ledger.describe(spec))?;
        private(&temp)?;
        std::fs::rename(&temp, &self.description)
    }
}

/// Snapshot files hold the user's vectors: owner-only, like the database.
fn private(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// Creates the snapshot directory, owner-only.
pub(crate) fn create_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}
