//! The store's one writer: every write transaction after open runs on a single
//! rusqlite connection, on the calling thread.
//!
//! Through sqlx's SQLite driver each statement travels to the connection's worker
//! thread and each row travels back; for a write of a few rows that hand-off cost
//! several times the write itself (see `docs/benchmarks.md`). Here the connection sits
//! behind an async mutex, so writers queue without holding a thread, and the holder
//! runs its whole transaction with prepared statements and no await between its first
//! statement and `COMMIT`: a dropped future cannot leave a transaction half done.
//! Large transactions leave the async worker first (`block_in_place`), as the engine
//! does for big vector batches; the drain's claims and settlements run on the blocking
//! pool instead, so the batches it has on the wire keep moving meanwhile.
//!
//! Another process on the same data directory may hold SQLite's write lock. The
//! connection's busy timeout is zero, so `BEGIN IMMEDIATE` fails at once with
//! `SQLITE_BUSY`, and is retried after an async sleep (1 ms doubling to 50 ms) until
//! the store's busy timeout has passed. No thread sleeps on another process's lock.

use super::checkpoint::Checkpoints;
use crate::{Durability, Error, Result};
use rusqlite::{Connection, ErrorCode, OpenFlags, Transaction, TransactionBehavior};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Rows of work from which a transaction leaves the async worker thread.
pub(crate) const HEAVY_ROWS: usize = 64;

/// Prepared statements kept per connection (the write paths use about twenty).
const STATEMENT_CACHE: usize = 64;

/// The longest pause between two attempts to take another process's write lock.
const MAX_BACKOFF: Duration = Duration::from_millis(50);

type Slot = Option<Connection>;

/// The single writer connection; see the module docs.
#[derive(Debug)]
pub(crate) struct Writer {
    conn: Arc<tokio::sync::Mutex<Slot>>,
    busy_timeout: Duration,
    checkpoints: Arc<Checkpoints>,
}

/// One attempt at a transaction: `Err` hands `work` back, untouched, when another
/// process holds the write lock.
#[allow(clippy::type_complexity)]
fn attempt<T, W>(
    slot: &Slot,
    checkpoints: &Checkpoints,
    work: W,
) -> std::result::Result<Result<T>, (rusqlite::Error, W)>
where
    W: FnOnce(&Transaction<'_>) -> Result<T>,
{
    let Some(conn) = slot else {
        return Ok(Err(Error::Closed));
    };
    checkpoints.arm();
    match Transaction::new_unchecked(conn, TransactionBehavior::Immediate) {
        // Dropping `tx` without a commit rolls back.
        Ok(tx) => Ok(work(&tx).and_then(|out| {
            tx.commit()?;
            checkpoints.committed();
            Ok(out)
        })),
        Err(e) if is_busy(&e) => Err((e, work)),
        Err(e) => Ok(Err(e.into())),
    }
}

impl Writer {
    /// Opens the writer on an existing, migrated database.
    /// Checkpoints run in the background from `checkpoint_pages` WAL pages, and inline
    /// from `wal_cap_pages` (see `checkpoint.rs`). Call inside a Tokio runtime.
    pub(crate) fn open(
        path: &Path,
        durability: Durability,
        busy_timeout: Duration,
        checkpoint_pages: u32,
        wal_cap_pages: u32,
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
             PRAGMA temp_store = MEMORY; PRAGMA cache_size = -{}; PRAGMA mmap_size = 0;",
            super::WRITER_CACHE_KIB
        ))?;
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        let checkpoints = Checkpoints::new(&conn, path, checkpoint_pages, wal_cap_pages)?;
        let conn = Arc::new(tokio::sync::Mutex::new(Some(conn)));
        checkpoints.start(Arc::downgrade(&conn));
        Ok(Self {
            conn,
            busy_timeout,
            checkpoints,
        })
    }

    /// Runs `work` in one `BEGIN IMMEDIATE … COMMIT` on this thread; an error from
    /// `work` (or from the commit) rolls everything back. `rows` says how big the work
    /// is: from [`HEAVY_ROWS`] on, this worker's other tasks move to another thread
    /// meanwhile.
    ///
    /// Only `BEGIN IMMEDIATE` waits for another process's write lock: once it holds
    /// the lock, a WAL-mode transaction needs no other lock to finish.
    pub(crate) async fn transaction<T, W>(&self, rows: usize, mut work: W) -> Result<T>
    where
        W: FnOnce(&Transaction<'_>) -> Result<T>,
    {
        let slot = self.conn.lock().await;
        let mut retry = Retry::new(self.busy_timeout);
        loop {
            let attempted = if rows >= HEAVY_ROWS && super::multi_thread() {
                tokio::task::block_in_place(|| attempt(&slot, &self.checkpoints, work))
            } else {
                attempt(&slot, &self.checkpoints, work)
            };
            match attempted {
                Ok(done) => return done,
                Err((refused, handed_back)) => {
                    work = handed_back;
                    retry.wait(refused).await?;
                }
            }
        }
    }

    /// [`Self::transaction`] on the blocking pool, for big work whose caller has other
    /// futures to keep moving meanwhile (the drain's lanes).
    pub(crate) async fn transaction_in_background<T, W>(&self, mut work: W) -> Result<T>
    where
        T: Send + 'static,
        W: FnOnce(&Transaction<'_>) -> Result<T> + Send + 'static,
    {
        let mut slot = self.conn.clone().lock_owned().await;
        let mut retry = Retry::new(self.busy_timeout);
        loop {
            let checkpoints = self.checkpoints.clone();
            let (returned, attempted) = tokio::task::spawn_blocking(move || {
                let attempted = attempt(&slot, &checkpoints, work);
                (slot, attempted)
            })
            .await
            .map_err(|e| match e.try_into_panic() {
                Ok(panic) => std::panic::resume_unwind(panic),
                Err(_) => Error::Closed,
            })?;
            slot = returned;
            match attempted {
                Ok(done) => return done,
                Err((refused, handed_back)) => {
                    work = handed_back;
                    retry.wait(refused).await?;
                }
            }
        }
    }

    /// Closes the connection (SQLite checkpoints the WAL when the last one closes);
    /// later transactions fail with [`Error::Closed`].
    pub(crate) async fn close(&self) {
        let conn = self.conn.lock().await.take();
        self.checkpoints.close();
        drop(conn);
    }

    /// Background checkpoints run so far.
    #[cfg(test)]
    pub(crate) fn background_checkpoints(&self) -> u64 {
        self.checkpoints
            .runs
            .load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Waiting for another process's write lock: async sleeps, 1 ms doubling to
/// [`MAX_BACKOFF`], until the busy timeout has passed.
struct Retry {
    started: Instant,
    timeout: Duration,
    backoff: Duration,
}

impl Retry {
    fn new(timeout: Duration) -> Self {
        Self {
            started: Instant::now(),
            timeout,
            backoff: Duration::from_millis(1),
        }
    }

    async fn wait(&mut self, refused: rusqlite::Error) -> Result<()> {
        if self.started.elapsed() >= self.timeout {
            return Err(refused.into());
        }
        tokio::time::sleep(self.backoff).await;
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        Ok(())
    }
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _)
        if matches!(f.code, ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked))
}
