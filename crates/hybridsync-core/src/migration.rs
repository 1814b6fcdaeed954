//! What a migration (a bulk import, R24) is made of, as the layers exchange it: the rows a
//! source yields, the checkpoint each batch commits with, and what the store keeps about
//! a migration so it can be resumed, listed and rolled back. The pipeline that moves
//! rows is the engine's; the sources that read SQLite and PostgreSQL live with the crate
//! that speaks each.

use crate::{Key, Result, WriteReceipt};
use std::sync::Arc;

crate::text::text_enum!(MigrationState, "migration state", Running => "running", Interrupted => "interrupted", Failed => "failed", Done => "done", RolledBack => "rolled_back" | "rolled-back");

/// A migration's state as stored. `Interrupted` is never stored: the store reports a
/// `Running` migration whose process is gone as interrupted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MigrationState {
    /// A process is importing it now.
    Running,
    /// Its process died (killed, crashed, lost power) before the end; resumable.
    Interrupted,
    /// It stopped on an error (too many rejected rows, an unreadable source);
    /// resumable once the cause is fixed.
    Failed,
    /// Every row of the source was read.
    Done,
    /// [`crate::LocalStore::rollback_batch`] undid it.
    RolledBack,
}

/// One value of a row from a SQL source, as SQLite types it.
#[derive(Debug, Clone, PartialEq)]
pub enum SourceValue {
    Null,
    Integer(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

/// A row as its source produced it, parsed later on a worker thread.
#[derive(Debug, Clone, PartialEq)]
pub enum RawRow {
    /// One line of a JSON Lines file, without its newline.
    Line(Vec<u8>),
    /// One JSON object as text (PostgreSQL's `row_to_json`).
    Json(String),
    /// Named columns (SQLite); the names are shared between the rows of a page.
    Columns(Arc<[Arc<str>]>, Vec<SourceValue>),
}

/// A row and where it sits in its source.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceRow {
    /// Where the source resumes after this row: a byte offset, a SQLite row id, the
    /// last PostgreSQL key. Opaque outside the source that made it.
    pub position: String,
    /// Where this row is, for people (a line number, a row id, a key).
    pub locator: String,
    pub raw: RawRow,
}

/// A source of rows to import, read in order and resumable after any row it yielded.
#[async_trait::async_trait]
pub trait MigrationSource: Send + 'static {
    /// What the source is, for `migrate list` and reports. Never holds a secret.
    fn describe(&self) -> String;
    /// What identifies the source's content now (sizes, times, a hash of its head, the
    /// query): a resumed migration whose source's fingerprint changed is refused.
    async fn fingerprint(&mut self) -> Result<String>;
    /// Continues after `position` (a [`SourceRow::position`] this source yielded) on the
    /// next read; the empty position is the start.
    async fn seek(&mut self, position: &str) -> Result<()>;
    /// Up to `max` further rows; an empty vector at the end.
    async fn next_rows(&mut self, max: usize) -> Result<Vec<SourceRow>>;
    /// How far through the source the last read is, and its whole size, in the same
    /// unit (bytes, rows), when the source knows it.
    fn progress(&self) -> Option<(u64, u64)> {
        None
    }
}

/// Rows counted by a migration.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MigrationCounts {
    /// Rows read from the source.
    pub read: u64,
    /// Rows written.
    pub imported: u64,
    /// Rows refused (each is in the rejects file).
    pub rejected: u64,
    /// Rows whose key already held the same content; nothing was written.
    pub skipped: u64,
}

impl MigrationCounts {
    /// Adds `other` to these counts.
    pub fn add(&mut self, other: &MigrationCounts) {
        self.read += other.read;
        self.imported += other.imported;
        self.rejected += other.rejected;
        self.skipped += other.skipped;
    }
}

/// What the store keeps about a migration.
#[derive(Debug, Clone, PartialEq)]
pub struct MigrationInfo {
    /// Unique within the store (`m-<ms>-<random>`).
    pub id: String,
    pub collection: crate::CollectionName,
    /// [`MigrationSource::describe`].
    pub source: String,
    /// The plan to run it again with (what the source is and how rows map), as the
    /// engine wrote it. Never holds a secret.
    pub plan: String,
    /// The source's [`MigrationSource::fingerprint`] when it was last (re)started.
    pub fingerprint: String,
    /// Where the next run continues (the last committed batch's last row).
    pub position: String,
    /// The length of the rejects file at that checkpoint.
    pub rejects_bytes: u64,
    pub state: MigrationState,
    pub counts: MigrationCounts,
    /// Why it failed, when it did.
    pub error: Option<String>,
    pub started_ms: u64,
    pub updated_ms: u64,
}

/// The checkpoint committed with one batch: every row up to `position` was read,
/// `counts` more rows were read and rejected, and the rejects file is `rejects_bytes` long.
#[derive(Debug, Clone, PartialEq)]
pub struct ImportStep {
    pub migration: String,
    pub position: String,
    pub rejects_bytes: u64,
    /// Rows read and rejected in this batch (imported and skipped are counted by the
    /// store as it writes).
    pub counts: MigrationCounts,
}

/// What one imported batch did.
#[derive(Debug, Clone, Default)]
pub struct ImportOutcome {
    /// The records written, as [`crate::LocalStore::write`] returns them.
    pub receipts: Vec<WriteReceipt>,
    /// Rows whose key already held the same content.
    pub skipped: u64,
}

/// What one step of a rollback did.
#[derive(Debug, Clone, Default)]
pub struct RollbackOutcome {
    /// The writes that undid the migration: tombstones of keys it created, the
    /// previous content of keys it overwrote, each a new version with an outbox entry.
    pub receipts: Vec<WriteReceipt>,
    /// Keys changed since the migration wrote them: kept as they are.
    pub kept: Vec<Key>,
    /// Keys still to undo after this step; zero when the rollback is complete.
    pub remaining: u64,
}
