//! A migration source reading another SQLite database: a table in row-id order (the
//! position is the row id, so a resumed run seeks straight to it) or the rows of a
//! `SELECT` (the position is the number of rows read, so the query must order its
//! rows). The file is opened read-only and query-only; one thread steps one statement
//! and hands pages over a small channel, so memory stays bounded by a few pages.

use hybridsync_core::{MigrationSource, RawRow, SourceRow, SourceValue};
use std::path::PathBuf;
use std::sync::Arc;

/// Rows per page handed from the reading thread.
const PAGE_ROWS: usize = 1000;

/// What to read from a SQLite database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SqliteSelection {
    /// Every row of a table (a rowid table), in row-id order.
    Table(String),
    /// The rows of one `SELECT`, which should order them (`ORDER BY`) so a resumed run
    /// sees the same rows in the same order.
    Query(String),
}

/// Reads rows from another SQLite database (see the module docs).
#[derive(Debug)]
pub struct SqliteSource {
    path: PathBuf,
    selection: SqliteSelection,
    /// Where reading starts: a row id (table) or a count of rows to skip (query).
    start: i64,
    pages: Option<tokio::sync::mpsc::Receiver<hybridsync_core::Result<Vec<SourceRow>>>>,
    read: Arc<std::sync::atomic::AtomicU64>,
    total: Option<u64>,
}

fn refused(e: impl std::fmt::Display) -> hybridsync_core::Error {
    hybridsync_core::Error::Source {
        retryable: false,
        reason: e.to_string(),
    }
}

fn from_sqlite(e: rusqlite::Error) -> hybridsync_core::Error {
    let busy = matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    );
    hybridsync_core::Error::Source {
        retryable: busy,
        reason: format!("sqlite: {e}"),
    }
}

/// A SQL identifier, quoted.
fn quoted(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

impl SqliteSource {
    /// A source over the database at `path`; nothing is opened until the first read.
    pub fn new(path: impl Into<PathBuf>, selection: SqliteSelection) -> Self {
        Self {
            path: path.into(),
            selection,
            start: 0,
            pages: None,
            read: Arc::default(),
            total: None,
        }
    }

    fn open(&self) -> hybridsync_core::Result<rusqlite::Connection> {
        if !self.path.is_file() {
            return Err(refused(format!(
                "no SQLite database at {}",
                self.path.display()
            )));
        }
        let conn = rusqlite::Connection::open_with_flags(
            &self.path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(from_sqlite)?;
        conn.execute_batch("PRAGMA query_only = 1")
            .map_err(from_sqlite)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(from_sqlite)?;
        Ok(conn)
    }

    fn sql(&self) -> String {
        match &self.selection {
            SqliteSelection::Table(table) => format!(
                "SELECT rowid, * FROM {} WHERE rowid > ?1 ORDER BY rowid",
                quoted(table)
            ),
            SqliteSelection::Query(query) => format!("SELECT * FROM ({query})"),
        }
    }

    /// Starts the reading thread at the current start.
    fn start(&mut self) -> hybridsync_core::Result<()> {
        let conn = self.open()?;
        let sql = self.sql();
        // Prepared here so a bad table or query fails the call, not the thread.
        conn.prepare(&sql).map_err(from_sqlite)?;
        if let SqliteSelection::Table(table) = &self.selection {
            let total: i64 = conn
                .query_row(
                    &format!("SELECT COUNT(*) FROM {}", quoted(table)),
                    [],
                    |r| r.get(0),
                )
                .map_err(from_sqlite)?;
            self.total = Some(total as u64);
        }
        let (send, receive) = tokio::sync::mpsc::channel(2);
        let (table, start, read) = (
            matches!(self.selection, SqliteSelection::Table(_)),
            self.start,
            self.read.clone(),
        );
        std::thread::Builder::new()
            .name("hybridsync-sqlite-source".into())
            .spawn(move || {
                let stepped = step(&conn, &sql, table, start, &read, &send);
                if let Err(e) = stepped {
                    let _ = send.blocking_send(Err(e));
                }
            })
            .map_err(refused)?;
        self.pages = Some(receive);
        Ok(())
    }
}

/// Steps the statement, sending pages until the end or until the receiver is gone.
fn step(
    conn: &rusqlite::Connection,
    sql: &str,
    table: bool,
    start: i64,
    read: &std::sync::atomic::AtomicU64,
    send: &tokio::sync::mpsc::Sender<hybridsync_core::Result<Vec<SourceRow>>>,
) -> hybridsync_core::Result<()> {
    let mut statement = conn.prepare(sql).map_err(from_sqlite)?;
    let skip = usize::from(table);
    let names: Arc<[Arc<str>]> = statement
        .column_names()
        .into_iter()
        .skip(skip)
        .map(Arc::from)
        .collect();
    let width = names.len();
    let mut rows = if table {
        statement.query([start])
    } else {
        statement.query([])
    }
    .map_err(from_sqlite)?;
    let mut ordinal = if table { 0 } else { start };
    let mut page = Vec::with_capacity(PAGE_ROWS);
    while let Some(row) = rows.next().map_err(from_sqlite)? {
        let (position, locator) = if table {
            let rowid: i64 = row.get(0).map_err(from_sqlite)?;
            (rowid.to_string(), format!("rowid {rowid}"))
        } else {
            ordinal += 1;
            if ordinal <= start {
                continue;
            }
            (ordinal.to_string(), format!("row {ordinal}"))
        };
        let mut values = Vec::with_capacity(width);
        for i in skip..skip + width {
            use rusqlite::types::ValueRef;
            values.push(match row.get_ref(i).map_err(from_sqlite)? {
                ValueRef::Null => SourceValue::Null,
                ValueRef::Integer(v) => SourceValue::Integer(v),
                ValueRef::Real(v) => SourceValue::Real(v),
                ValueRef::Text(v) => SourceValue::Text(String::from_utf8_lossy(v).into_owned()),
                ValueRef::Blob(v) => SourceValue::Blob(v.to_vec()),
            });
        }
        page.push(SourceRow {
            position,
            locator,
            raw: RawRow::Columns(names.clone(), values),
        });
        if page.len() == PAGE_ROWS {
            read.fetch_add(PAGE_ROWS as u64, std::sync::atomic::Ordering::Relaxed);
            let full = std::mem::replace(&mut page, Vec::with_capacity(PAGE_ROWS));
            if send.blocking_send(Ok(full)).is_err() {
                return Ok(());
            }
        }
    }
    read.fetch_add(page.len() as u64, std::sync::atomic::Ordering::Relaxed);
    if !page.is_empty() && send.blocking_send(Ok(page)).is_err() {
        return Ok(());
    }
    Ok(())
}

/// A file's size and modification time, if it exists.
fn stamp(path: &std::path::Path) -> String {
    match std::fs::metadata(path) {
        Ok(meta) => {
            let mtime = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos());
            format!("{}@{mtime}", meta.len())
        }
        Err(_) => "-".into(),
    }
}

#[async_trait::async_trait]
impl MigrationSource for SqliteSource {
    fn describe(&self) -> String {
        match &self.selection {
            SqliteSelection::Table(table) => {
                format!("sqlite {} table {table}", self.path.display())
            }
            SqliteSelection::Query(query) => {
                format!("sqlite {} query {query}", self.path.display())
            }
        }
    }

    async fn fingerprint(&mut self) -> hybridsync_core::Result<String> {
        let mut wal = self.path.clone().into_os_string();
        wal.push("-wal");
        let selection = match &self.selection {
            SqliteSelection::Table(table) => format!("table {table}"),
            SqliteSelection::Query(query) => format!("query {query}"),
        };
        Ok(format!(
            "sqlite size@mtime {} wal {} {selection}",
            stamp(&self.path),
            stamp(std::path::Path::new(&wal))
        ))
    }

    async fn seek(&mut self, position: &str) -> hybridsync_core::Result<()> {
        self.start = if position.is_empty() {
            0
        } else {
            position
                .parse()
                .map_err(|_| refused(format!("not a SQLite source position: {position:?}")))?
        };
        self.pages = None;
        Ok(())
    }

    async fn next_rows(&mut self, _max: usize) -> hybridsync_core::Result<Vec<SourceRow>> {
        if self.pages.is_none() {
            self.start()?;
        }
        let pages = self.pages.as_mut().expect("started above");
        match pages.recv().await {
            Some(page) => page,
            None => Ok(Vec::new()),
        }
    }

    fn progress(&self) -> Option<(u64, u64)> {
        let total = self.total?;
        let done = self.read.load(std::sync::atomic::Ordering::Relaxed);
        // A table's count is of every row; a resumed run started part-way.
        Some((done.min(total), total))
    }
}
