//! The error type shared by every layer's trait methods.

/// A boxed error from a backend (SQLite, usearch, PostgreSQL, ...).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Errors of the data model and of the traits in this crate.
///
/// Validation variants carry the offending value (never a secret) so the caller can
/// say exactly what was refused. Backend variants keep the source for `downcast`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("invalid collection name {name:?}: {reason}")]
    InvalidCollectionName { name: String, reason: &'static str },
    #[error("invalid key ({len} bytes): {reason}")]
    InvalidKey { len: usize, reason: &'static str },
    #[error("payload of {size} bytes exceeds the limit of {limit} bytes")]
    PayloadTooLarge { size: usize, limit: usize },
    #[error("collection {collection} expects {expected}-dimensional embeddings, got {got}")]
    DimensionMismatch {
        collection: String,
        expected: usize,
        got: usize,
    },
    #[error("embedding for collection {collection} has a non-finite component at index {index}")]
    NonFiniteEmbedding { collection: String, index: usize },
    #[error(
        "collection {collection} compares by cosine, and a zero vector has no direction (an all-zero embedding or query is refused)"
    )]
    ZeroVector { collection: String },
    #[error("collection {collection} has no vector spec, so it takes no embeddings")]
    EmbeddingNotAllowed { collection: String },
    #[error("invalid vector spec: {reason}")]
    InvalidVectorSpec { reason: String },
    #[error("unknown collection {0}")]
    UnknownCollection(String),
    #[error("collection {name} already exists with a different spec")]
    CollectionSpecMismatch { name: String },
    #[error("cannot decode payload as {type_name}: {reason}")]
    Decode {
        type_name: &'static str,
        reason: String,
    },
    #[error("cannot encode payload: {0}")]
    Encode(String),
    #[error("invalid {what} {value:?}")]
    Parse { what: &'static str, value: String },
    #[error(
        "version stamp {stamp_ms} ms is {ahead_ms} ms ahead of the local clock (limit {max_drift_ms} ms)"
    )]
    ClockDrift {
        stamp_ms: u64,
        ahead_ms: u64,
        max_drift_ms: u64,
    },
    #[error(
        "collection {collection} is encrypted and this device has no encryption key ([encryption] key_file, HYBRIDSYNC_ENCRYPTION_KEY_FILE or the builder's encryption_key); its changes stay local until one is set"
    )]
    NoEncryptionKey { collection: String },
    #[error(
        "{collection}/{key} is sealed with key {key_id}, which this device does not hold (add it as a previous key)"
    )]
    UnknownEncryptionKey {
        collection: String,
        key: String,
        key_id: String,
    },
    #[error("sealed record {collection}/{key} refused: {reason}")]
    SealBroken {
        collection: String,
        key: String,
        reason: &'static str,
    },
    #[error("invalid encryption key: {reason}")]
    InvalidEncryptionKey { reason: &'static str },
    #[error("local store: {0}")]
    Store(#[source] BoxError),
    #[error("vector cache: {0}")]
    Vector(#[source] BoxError),
    #[error("cloud ({}): {source}", if *.retryable { "retryable" } else { "permanent" })]
    Cloud {
        retryable: bool,
        #[source]
        source: BoxError,
    },
    /// A migration's source could not be read (`retryable`: a dropped connection, not a
    /// missing table or a bad query).
    #[error("migration source: {reason}")]
    Source { retryable: bool, reason: String },
    #[error("unknown migration {0}")]
    UnknownMigration(String),
}

/// `Result` with this crate's [`Error`] as the default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;
