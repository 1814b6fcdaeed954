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
const FORMAT: &str = "hybridsync index snapshot 2";

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

/// A saved description: what it says the index holds, and the index file it names.
#[derive(Debug)]
pub(crate) struct Saved {
    body: String,
    pub(crate) index: PathBuf,
}

/// Where one collection's snapshot lives. The description `<collection>.snapshot` names
/// the index file it describes, and every save writes a new, uniquely named index
/// file (`<collection>-<nonce>.<format>`, the index's
/// [`VectorCache::format`](hybridsync_core::VectorCache::format); names
/// cannot contain `-`) before it replaces
/// the description. So a description and the index it names always belong together,
/// even when two processes on one directory save at the same moment.
#[derive(Debug, Clone)]
pub(crate) struct SnapshotFiles {
    dir: PathBuf,
    collection: String,
    description: PathBuf,
    /// The index's file format: the extension of its files.
    format: &'static str,
}

/// A name no other save (in this process or another) uses.
fn nonce() -> String {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let count = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{}{:x}{count:x}", std::process::id(), rand::random::<u64>())
}

impl SnapshotFiles {
    pub(crate) fn new(dir: &Path, collection: &str, format: &'static str) -> Self {
        Self {
            dir: dir.to_owned(),
            collection: collection.to_owned(),
            description: dir.join(format!("{collection}.snapshot")),
            format,
        }
    }

    /// The saved description for `spec`, if there is one (cheap: decides whether
    /// reading the store's labels is worth it).
    pub(crate) fn saved_for(&self, spec: &VectorSpec) -> Option<Saved> {
        let text = std::fs::read_to_string(&self.description).ok()?;
        if !text.starts_with(&format!("{FORMAT}\nspec {spec:?}\n")) {
            return None;
        }
        let (body, file) = text.strip_suffix('\n')?.rsplit_once("\nfile ")?;
        let prefix = format!("{}-", self.collection);
        let named_here = file.starts_with(&prefix)
            && file.ends_with(&format!(".{}", self.format))
            && !file.contains(['/', '\\']);
        named_here.then(|| Saved {
            body: format!("{body}\n"),
            index: self.dir.join(file),
        })
    }

    /// Whether `saved` describes what `ledger` sums up.
    pub(crate) fn matches(saved: &Saved, spec: &VectorSpec, ledger: &Ledger) -> bool {
        saved.body == ledger.describe(spec)
    }

    /// A fresh path for the next index file.
    pub(crate) fn new_index(&self) -> PathBuf {
        self.dir
            .join(format!("{}-{}.{}", self.collection, nonce(), self.format))
    }

    /// Describes `index`, just written (owner-only, replaced atomically), then removes
    /// this collection's index files the description no longer names.
    pub(crate) fn describe(
        &self,
        spec: &VectorSpec,
        ledger: &Ledger,
        index: &Path,
    ) -> std::io::Result<()> {
        private(index)?;
        let file = index
            .file_name()
            .and_then(|f| f.to_str())
            .ok_or_else(|| std::io::Error::other("index file name is not UTF-8"))?;
        let temp = self
            .dir
            .join(format!("{}-{}.snapshot.tmp", self.collection, nonce()));
        std::fs::write(&temp, format!("{}file {file}\n", ledger.describe(spec)))?;
        private(&temp)?;
        std::fs::rename(&temp, &self.description)?;
        self.prune(index);
        Ok(())
    }

    /// Best effort: index files of this collection other than `keep` (of any format:
    /// an index switched to another leaves none behind), and temporary files an
    /// interrupted save left more than an hour ago.
    fn prune(&self, keep: &Path) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let prefix = format!("{}-", self.collection);
        for entry in entries.flatten() {
            let path = entry.path();
            let Some(name) = path.file_name().and_then(|f| f.to_str()) else {
                continue;
            };
            if !name.starts_with(&prefix) || path == keep {
                continue;
            }
            let stale_temp = name.ends_with(".tmp")
                && entry
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|at| at.elapsed().ok())
                    .is_some_and(|age| age > std::time::Duration::from_secs(3600));
            if !name.ends_with(".tmp") || stale_temp {
                let _ = std::fs::remove_file(&path);
            }
        }
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
