//! The store's one writer: every write transaction after open runs on a single
//! rusqlite connection, on the calling thread.
//!
//! Through sqlx's SQLite driver each statement travels to the connection's worker
//! thread and each row travels back; for a write of a few rows that hand-off cost
//! several times the write itself (see `docs/benchmarks.md`). Here the connection sits
//! behind an async mutex, so writers queue without holding a thread, and the holder
//! runs its whole transaction with prepared statements and no await between its first
//! statement and `COMMIT`: a dropped future cannot leave a transaction half done. Large transactions
//! leave the async worker first (`block_in_place`), as the engine does for big
//! vector batches.
//!
//! Another process on the same data directory may hold SQLite's write lock. The
//! connection's busy timeout is zero, so `BEGIN IMMEDIATE` fails at once with
//! `SQLITE_BUSY`, and is retried after an async sleep (1 ms doubling to 50 ms) until
//! the store's busy timeout has passed. No thread sleeps on another process's lock.

use crate::{Durability, Error, Result};
use rusqlite::{Connection, ErrorCode, OpenFlags, Transaction, TransactionBehavior};
use std::path::Path;
use std::time::{Duration, Instant};

/// Rows of work from which a transaction leaves the async worker thread.
pub(crate) const HEAVY_ROWS: usize = 64;

/// Prepared statements kept per connection (the write paths use about twenty).
const STATEMENT_CACHE: usize = 64;

/// The single writer connection; see the module docs.
#[derive(Debug)]
pub(crate) struct Writer {
    conn: tokio::sync::Mutex<Option<Connection>>,
    busy_timeout: Duration,
}

impl Writer {
    /// Opens the writer on an existing, migrated database.
    pub(crate) fn open(
        path: &Path,
        durability: Durability,
        busy_timeout: Duration,
    ) -> Result<Self> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        let synchronous = match durability {
            Durability::Normal => "NORMAL",
            Durability::Full => "FULL",
        };
        conn.busy_timeout(Duration::ZERO)?;
        conn.execute_batch(&format!(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = {synchronous}; PRAGMA foreign_keys = ON; \
             PRAGMA temp_store = MEMORY; PRAGMA cache_size = -16384; PRAGMA mmap_size = 268435456;"
        ))
        ?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        Ok(Self {
            conn: tokio::sync::Mutex::new(Some(conn)),
            busy_timeout,
        })
    }

    /// Runs `work` in one `BEGIN IMMEDIATE … COMMIT`; an error from `work` (or from
    /// the commit) rolls everything back. `rows` says how big the work is: from
    /// [`HEAVY_ROWS`] on it runs off the async worker.
    ///
    /// Only `BEGIN IMMEDIATE` waits for another process's write lock: once it holds
    /// the lock, a WAL-mode transaction needs no other lock to finish.
    pub(crate) async fn transaction<T>(
        &self,
        rows: usize,
        work: impl FnOnce(&Transaction<'_>) -> Result<T>,
    ) -> Result<T> {
        let guard = self.conn.lock().await;
        let started = Instant::now();
        let mut backoff = Duration::from_millis(1);
        loop {
            // The connection is borrowed only in here: a `&Connection` held across the
            // sleep would make this future `!Send`.
            let refused = {
                let conn = guard.as_ref().ok_or(Error::Closed)?;
                match Transaction::new_unchecked(conn, TransactionBehavior::Immediate) {
                    // Dropping `tx` without a commit rolls back.
                    Ok(tx) => {
                        return off_the_executor(rows, || {
                            let out = work(&tx)?;
                            tx.commit()?;
                            Ok(out)
                        });
                    }
                    Err(e) => e,
                }
            };
            if !(is_busy(&refused) && started.elapsed() < self.busy_timeout) {
                return Err(refused.into());
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(50));
        }
    }

    /// Closes the connection (SQLite checkpoints the WAL when the last one closes);
    /// later transactions fail with [`Error::Closed`].
    pub(crate) async fn close(&self) {
        drop(self.conn.lock().await.take());
    }
}

/// Runs `f` here, or for heavy work in a multi-threaded runtime, with this worker's
/// other tasks handed to another thread meanwhile.
fn off_the_executor<T>(rows: usize, f: impl FnOnce() -> T) -> T {
    let multi_thread = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if rows >= HEAVY_ROWS && multi_thread {
        tokio::task::block_in_place(f)
    } else {
        f()
    }
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _)
        if matches!(f.code, ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked))
}
