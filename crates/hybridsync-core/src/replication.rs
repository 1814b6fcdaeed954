//! What pulling remote changes into a local store produces, and the local record of
//! past sync operations.

use crate::{Hlc, Key, ResolutionKind, SyncOperation, WriteReceipt};

/// A conflict met while applying remote changes, and how it was settled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettledConflict {
    pub key: Key,
    pub local: Hlc,
    pub remote: Hlc,
    pub resolution: ResolutionKind,
}

/// What applying one page of remote changes did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ApplyOutcome {
    /// Local records that changed (remote rows applied, conflict results written), for
    /// the vector index and the caches.
    pub changed: Vec<WriteReceipt>,
    /// Remote rows that became the local state.
    pub applied: usize,
    /// Remote rows this store already had or had something newer than (including the
    /// echoes of its own writes).
    pub skipped: usize,
    pub conflicts: Vec<SettledConflict>,
    /// Remote rows refused, with the reason (a version stamp too far in the future).
    pub refused: Vec<(Key, String)>,
}

/// One seed, hydrate or sync as the local history keeps it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HistoryEntry {
    /// When it started (ms since the epoch).
    pub started_ms: u64,
    pub operation: SyncOperation,
    pub pushed: u64,
    pub pulled: u64,
    pub conflicts: u64,
    pub duration_ms: u64,
    /// `None` when it completed; the error otherwise.
    pub error: Option<String>,
}
