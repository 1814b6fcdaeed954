//! WAL checkpoints off the commit path.
//!
//! SQLite's automatic checkpoint runs inside the `COMMIT` that takes the WAL past 1,000
//! pages: that one write copies the WAL into the database file and syncs it, and its
//! latency is the store's p99. Here the writer's WAL hook replaces it:
//! - past [`Checkpoints::background_pages`] the commit only wakes a task, which runs a
//!   `PASSIVE` checkpoint on a connection of its own, on the blocking pool, beside any
//!   writes that come meanwhile; then, once the writer has been idle for [`IDLE`] (or
//!   after [`MAX_WAIT`]), holding the writer's lock, copies the few frames those wrote,
//!   so the next write starts the WAL over (see [`Checkpoints::start`]);
//! - past [`Checkpoints::cap_pages`] (the background fell behind, or never ran) the
//!   commit checkpoints inline, as SQLite would: the WAL cannot grow without bound
//!   while checkpoints can make progress. `journal_size_limit` gives the file back
//!   after a reset.
//!
//! The hook is a plain function (SQLite calls it with no state of ours): it leaves the
//! WAL's size in a thread-local, which the writer reads on the same thread right after
//! its commit.

use hybridsync_core::MutexExt;
use rusqlite::Connection;
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long the writer must have been idle before a background checkpoint starts.
const IDLE: Duration = Duration::from_millis(1);
/// The longest the final step waits for the writer to go idle: under a stream of
/// writes the WAL grows meanwhile.
const MAX_WAIT: Duration = Duration::from_millis(10);

/// WAL pages from which a checkpoint is due (SQLite's own default).
pub(crate) const DEFAULT_CHECKPOINT_PAGES: u32 = 1_000;
/// WAL pages from which the committing writer checkpoints inline.
pub(crate) const DEFAULT_WAL_CAP_PAGES: u32 = 16_384;

thread_local! {
    /// WAL pages after this thread's last commit, and the cap they are held to.
    static WAL: Cell<(u32, u32)> = const { Cell::new((0, u32::MAX)) };
}

/// The writer connection's WAL hook: records the WAL's size, and checkpoints inline
/// past the cap.
fn on_commit(wal: &rusqlite::hooks::Wal, pages: std::ffi::c_int) -> rusqlite::Result<()> {
    let pages = pages.max(0) as u32;
    let (_, cap) = WAL.get();
    WAL.set((pages, cap));
    if pages >= cap {
        // A checkpoint that cannot finish (a reader holds old pages) is not an error
        // of the commit.
        let _ = wal.checkpoint();
    }
    Ok(())
}

/// The background checkpoints of one store.
#[derive(Debug)]
pub(crate) struct Checkpoints {
    background_pages: u32,
    cap_pages: u32,
    /// Microseconds since `epoch` of the last commit.
    last_commit: AtomicU64,
    epoch: Instant,
    due: Arc<tokio::sync::Notify>,
    /// The checkpointing connection; `None` once closed.
    conn: Mutex<Option<Connection>>,
    /// Background checkpoints run (for tests and status).
    pub(crate) runs: AtomicU64,
}

impl Checkpoints {
    /// Installs the hook on `writer` and opens the checkpointing connection on `path`;
    /// the task starts with [`Checkpoints::start`].
    pub(crate) fn new(
        writer: &Connection,
        path: &std::path::Path,
        background_pages: u32,
        cap_pages: u32,
    ) -> crate::Result<Arc<Self>> {
        writer.wal_hook(Some(on_commit));
        let page_size: i64 = writer.query_row("PRAGMA page_size", [], |r| r.get(0))?;
        let page_size = page_size.max(512) as u64;
        // After a reset, the WAL file shrinks back to the cap.
        writer.execute_batch(&format!(
            "PRAGMA journal_size_limit = {}",
            u64::from(cap_pages) * (page_size + 24) + 32
        ))?;
        let conn = Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        Ok(Arc::new(Self {
            background_pages,
            cap_pages,
            last_commit: AtomicU64::new(0),
            epoch: Instant::now(),
            due: Arc::new(tokio::sync::Notify::new()),
            conn: Mutex::new(Some(conn)),
            runs: AtomicU64::new(0),
        }))
    }

    /// Holds this thread's next commit to the cap (call before the transaction).
    pub(crate) fn arm(&self) {
        WAL.set((0, self.cap_pages));
    }

    /// After a commit on this thread: notes the time and wakes the task when the WAL
    /// has reached the background threshold.
    pub(crate) fn committed(&self) {
        let (pages, _) = WAL.get();
        self.last_commit
            .store(self.epoch.elapsed().as_micros() as u64, Ordering::Relaxed);
        if pages >= self.background_pages {
            self.due.notify_one();
        }
    }

    fn idle_for(&self) -> Duration {
        let last = Duration::from_micros(self.last_commit.load(Ordering::Relaxed));
        self.epoch.elapsed().saturating_sub(last)
    }

    /// Spawns the task (inside a Tokio runtime); it ends when the store closes or is
    /// dropped. It holds the store's checkpoints and its writer only while it works.
    ///
    /// A checkpoint beside a stream of writes never catches up with the WAL's end, and
    /// SQLite restarts the WAL from its beginning only after a checkpoint that did. So
    /// each round has two steps: the bulk of the copy beside the writes, then, holding
    /// the writer's lock, the few frames written meanwhile.
    pub(crate) fn start<S: Send + 'static>(
        self: &Arc<Self>,
        writer: std::sync::Weak<tokio::sync::Mutex<S>>,
    ) {
        let due = self.due.clone();
        let this = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                due.notified().await;
                let Some(this) = this.upgrade() else { return };
                let bulk = this.clone();
                if !matches!(
                    tokio::task::spawn_blocking(move || bulk.checkpoint()).await,
                    Ok(true)
                ) {
                    return;
                }
                let Some(writer) = writer.upgrade() else {
                    return;
                };
                this.wait_for_idle().await;
                let held = writer.lock_owned().await;
                let rest = this.clone();
                let done = tokio::task::spawn_blocking(move || {
                    let done = rest.checkpoint();
                    drop(held);
                    done
                })
                .await;
                if !matches!(done, Ok(true)) {
                    return;
                }
                this.runs.fetch_add(1, Ordering::Relaxed);
            }
        });
    }

    /// Until the writer has been idle for [`IDLE`], or [`MAX_WAIT`] has passed.
    async fn wait_for_idle(&self) {
        let started = Instant::now();
        while self.idle_for() < IDLE && started.elapsed() < MAX_WAIT {
            tokio::time::sleep(IDLE).await;
        }
    }

    /// One `PASSIVE` checkpoint; false once the store is closed.
    fn checkpoint(&self) -> bool {
        let conn = self.conn.lock_or_recover();
        let Some(conn) = conn.as_ref() else {
            return false;
        };
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::debug!(error = %e, "background checkpoint failed");
        }
        true
    }

    /// Closes the checkpointing connection and ends the task.
    pub(crate) fn close(&self) {
        drop(self.conn.lock_or_recover().take());
        self.due.notify_one();
    }
}

impl Drop for Checkpoints {
    /// Wakes the task, which finds the store gone and ends.
    fn drop(&mut self) {
        self.due.notify_one();
    }
}
