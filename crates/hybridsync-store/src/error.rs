//! The store's error type.

use std::path::PathBuf;

/// Errors of the local store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Input refused by the data model (names, sizes, dimensions, ...); nothing was written.
    #[error(transparent)]
    Invalid(#[from] hybridsync_core::Error),
    /// The file is not a healthy SQLite database. It is left untouched.
    #[error("database {path} is corrupted or truncated: {detail}")]
    Corrupt { path: PathBuf, detail: String },
    /// The database was written by a newer hybridsync; refusing to touch it.
    #[error(
        "database {path} has schema version {found}, newer than the {supported} this build knows"
    )]
    SchemaTooNew {
        path: PathBuf,
        found: i64,
        supported: i64,
    },
    #[error("cannot prepare data directory {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("sqlite: {0}")]
    Sqlite(#[source] sqlx::Error),
    /// A write transaction failed (see the `writer` module); it was rolled back.
    #[error("sqlite write: {0}")]
    Write(#[source] rusqlite::Error),
    /// The disk (or quota) holding the store is full. The write was rolled back:
    /// nothing of it is stored, everything acknowledged before it is intact, and writes
    /// work again once there is room.
    #[error(
        "the disk holding the local store is full; nothing was written (free some space and retry)"
    )]
    StorageFull,
    /// The store was closed.
    #[error("the store is closed")]
    Closed,
    /// A point read failed (see the `point` module).
    #[error("sqlite point read: {0}")]
    PointRead(String),
    #[error("schema migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A row that this build cannot interpret (e.g. an unknown priority code).
    #[error("unreadable row in {table}: {detail}")]
    BadRow { table: &'static str, detail: String },
}

/// SQLite's primary result code for a full disk.
const SQLITE_FULL: i32 = 13;

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        let full = matches!(&e, sqlx::Error::Database(db)
            if db.code().and_then(|c| c.parse::<i32>().ok()).is_some_and(|c| c & 0xff == SQLITE_FULL));
        if full {
            Error::StorageFull
        } else {
            Error::Sqlite(e)
        }
    }
}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        if e.sqlite_error_code() == Some(rusqlite::ErrorCode::DiskFull) {
            Error::StorageFull
        } else {
            Error::Write(e)
        }
    }
}

impl Error {
    /// The store's error inside a core error, or the core error as refused input:
    /// the inverse of the conversion at the trait boundary.
    pub(crate) fn from_core(e: hybridsync_core::Error) -> Self {
        match e {
            hybridsync_core::Error::Store(inner) => match inner.downcast::<Error>() {
                Ok(store) => *store,
                Err(other) => Error::Invalid(hybridsync_core::Error::Store(other)),
            },
            other => Error::Invalid(other),
        }
    }
}

/// A sqlx failure as the trait seams report it.
pub(crate) fn sql(e: sqlx::Error) -> hybridsync_core::Error {
    Error::Sqlite(e).into()
}

impl From<Error> for hybridsync_core::Error {
    fn from(e: Error) -> Self {
        match e {
            Error::Invalid(inner) => inner,
            other => hybridsync_core::Error::Store(Box::new(other)),
        }
    }
}

/// `Result` with the store's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
