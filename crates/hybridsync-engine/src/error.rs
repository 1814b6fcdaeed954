//! The engine's errors: the layers' own (through [`hybridsync_core::Error`]) and the
//! engine's failure modes.

use std::path::PathBuf;

/// Errors of the engine.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Refused input, or a failure a layer reported through its trait.
    #[error(transparent)]
    Core(#[from] hybridsync_core::Error),
    /// A background task of the engine (an index build, a snapshot save) panicked or
    /// was cancelled.
    #[error("engine task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// An index snapshot could not be written under `path`; the next open builds the
    /// index instead.
    #[error("index snapshot in {}: {source}", path.display())]
    Snapshot {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A vector collection, in an engine built without a vector index.
    #[error(
        "collection {collection} has a vector spec, and this engine has no vector index (hybridsync's `vector` feature)"
    )]
    NoVectorIndex { collection: String },
    /// A sync's push ended with local changes still queued (they stay in the outbox
    /// and ship later).
    #[error("{left} local changes could not be pushed yet")]
    NotPushed { left: u64 },
    /// The operation needs a cloud and the runtime has none.
    #[error("no cloud is configured")]
    NoCloud,
    /// A migration's process is still importing it.
    #[error("migration {id} is running in another process; wait for it or stop that process")]
    MigrationRunning { id: String },
    /// A migration that already ended cannot be resumed (or rolled back twice).
    #[error("migration {id} is {state}; nothing to continue")]
    MigrationFinished {
        id: String,
        state: hybridsync_core::MigrationState,
    },
    /// The source of an unfinished migration is not what it was when it started.
    #[error(
        "the source of migration {id} changed since it started (was {was:?}, now {now:?}); rerun with --restart to import it from the beginning (rows already present are skipped)"
    )]
    SourceChanged {
        id: String,
        was: String,
        now: String,
    },
    /// More rows were rejected than `max_errors` allows; the run stopped at a checkpoint.
    #[error(
        "migration {id} stopped: {rejected} rows rejected, more than the limit of {limit} (see {}); fix the source and run `hybridsync migrate resume {id}`",
        rejects.display()
    )]
    TooManyRejects {
        id: String,
        rejected: u64,
        limit: u64,
        rejects: PathBuf,
    },
    /// The rejects file could not be written.
    #[error("rejects file {}: {source}", path.display())]
    Rejects {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// Whether trying again later may succeed: the cloud was unavailable, or changes
    /// are still queued. Refused input and permanent refusals are not retryable.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Core(hybridsync_core::Error::Cloud { retryable, .. }) => *retryable,
            Error::NotPushed { .. } => true,
            _ => false,
        }
    }
}

/// `Result` with the engine's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
