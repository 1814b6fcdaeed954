//! Point reads on the calling thread.
//!
//! A read of one record by its key takes a few microseconds inside SQLite. Through
//! sqlx's SQLite driver the same read costs several times that: the statement travels
//! to the connection's worker thread and the row travels back. Point reads (the cache
//! misses of `get`) therefore use a small pool of read-only connections of their own,
//! queried directly on the caller's thread. In WAL mode a reader never waits for the
//! writer, so the call does not block the async runtime for longer than the read.

use crate::{Error, Result};
use hybridsync_core::MutexExt;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Idle read-only connections, opened on demand and kept up to `keep`.
#[derive(Debug)]
pub(crate) struct PointReaders {
    path: PathBuf,
    busy_timeout: Duration,
    keep: usize,
    idle: Mutex<Vec<rusqlite::Connection>>,
    closed: AtomicBool,
}

impl PointReaders {
    pub(crate) fn new(path: PathBuf, busy_timeout: Duration, keep: usize) -> Self {
        Self {
            path,
            busy_timeout,
            keep: keep.max(1),
            idle: Mutex::new(Vec::new()),
            closed: AtomicBool::new(false),
        }
    }

    fn open(&self) -> rusqlite::Result<rusqlite::Connection> {
        let conn = rusqlite::Connection::open_with_flags(
            &self.path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(self.busy_timeout)?;
        conn.execute_batch(&format!(
            "PRAGMA query_only = ON; PRAGMA cache_size = -{}; PRAGMA mmap_size = {};",
            super::READ_CACHE_KIB,
            super::MMAP_BYTES
        ))?;
        Ok(conn)
    }

    /// Runs `read` on an idle connection (or a new one), then keeps the connection.
    pub(crate) fn with<T>(
        &self,
        read: impl FnOnce(&rusqlite::Connection) -> rusqlite::Result<T>,
    ) -> Result<T> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(Error::PointRead("the store is closed".into()));
        }
        let idle = self.idle.lock_or_recover().pop();
        let conn = match idle {
            Some(conn) => conn,
            None => self.open().map_err(point_error)?,
        };
        let out = read(&conn).map_err(point_error)?;
        let mut idle = self.idle.lock_or_recover();
        if idle.len() < self.keep && !self.closed.load(Ordering::SeqCst) {
            idle.push(conn);
        }
        Ok(out)
    }

    /// Drops every idle connection; later reads fail.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.idle.lock_or_recover().clear();
    }
}

fn point_error(e: rusqlite::Error) -> Error {
    Error::PointRead(e.to_string())
}
