//! hybridsync: local-first persistence with background cloud sync.
//!
//! An application writes and reads a local SQLite store at memory speed, searches its
//! embeddings in an in-memory HNSW index, and never waits on the network: every
//! change is durable locally first and queued in a transactional outbox for the cloud.
//!
//! ```no_run
//! # async fn demo() -> hybridsync::Result<()> {
//! use hybridsync::{HybridStore, Metric, Precision, VectorSpec, WriteOptions};
//!
//! #[derive(serde::Serialize, serde::Deserialize)]
//! struct VoiceProfile { name: String, pitch_mean_hz: f32 }
//!
//! let store = HybridStore::builder("./data").open().await?;
//! store.create_collection("voices", Some(VectorSpec::new(192, Metric::Cosine, Precision::F16)?)).await?;
//! let voices = store.collection::<VoiceProfile>("voices")?;
//! let embedding = vec![0.1; 192];
//! voices.put_with("alice", &VoiceProfile { name: "Alice".into(), pitch_mean_hz: 212.0 },
//!     WriteOptions::default().embedding(embedding.clone())).await?;
//! let best = voices.search(&embedding, 1).await?;
//! assert_eq!(best[0].key.as_str(), "alice");
//! # Ok(()) }
//! ```
//!
//! With a cloud URL, [`HybridStore::start_sync`] ships the outbox to PostgreSQL in the
//! background and [`HybridStore::flush`] ships it now; without one, changes wait.
//!
//! # Features
//!
//! | feature | default | what it adds |
//! |---|---|---|
//! | `vector` | yes | HNSW indexes for vector collections, ours or usearch ([`VectorIndex`]; without the feature they are refused) |
//! | `cloud-postgres` | yes | the PostgreSQL sink (without it a cloud URL is refused at open) |
//! | `prometheus` | no | [`install_prometheus`]: `/metrics`, `/healthz` and `/readyz` (a small HTTP server) |
//! | `redis` | no | the Redis publisher ([`HybridStoreBuilder::redis_url`], `[redis] url`) and [`redis_instances`] |
//! | `full` | no | all of the above, for CI and docs |
//!
//! With `default-features = false` this is a local store with the hot-record cache:
//! no usearch, no PostgreSQL driver, no exporter, HTTP server or Redis client.
//!
//! This crate is a thin facade: it wires the layers (`hybridsync-store`,
//! `hybridsync-vector`, `hybridsync-cloud`, `hybridsync-engine`, `hybridsync-telemetry`)
//! into typed handles over the engine's [`Runtime`](hybridsync_engine::Runtime), and
//! contains no sync logic of its own.
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod config;
mod health;
pub mod migrate;
mod publish;
mod store;

pub use config::{
    Config, EncryptionConfig, RedisConfig, SETTINGS, Setting, VectorConfig, WarmingSettings,
};
pub use health::{CloudHealth, Health};
pub use store::{
    Collection, CollectionStatus, HybridStore, HybridStoreBuilder, RawCollection, Status,
    VectorIndex, WriteOptions,
};

#[doc(inline)]
pub use hybridsync_core::{CRASH_POINTS, Clock, HotCacheStats, ManualClock, SystemClock};
#[doc(inline)]
pub use hybridsync_core::{
    CircuitState, Conflict, ConflictResolver, Difference, HistoryEntry, Resolution, Strategy,
    SyncEvent, SyncOperation,
};
#[doc(inline)]
pub use hybridsync_core::{
    CloudUrl, CollectionName, CollectionSpec, DeviceId, DeviceInfo, EncryptionKey, Hlc, Key, KeyId,
    Keyring, Limits, Metric, OutboxError, OutboxState, OutboxStats, Pooler, Precision, Priority,
    Record, VectorHit as SearchHit, VectorSpec,
};
#[doc(inline)]
pub use hybridsync_engine::{
    BreakerConfig, CollectionCheck, Found, MigrationReport, RollbackReport, SyncConfig, SyncReport,
    SyncStatus, VerifyOptions, VerifyReport, WarmingConfig, WarmingStats,
};
#[doc(inline)]
pub use hybridsync_store::Durability;
#[doc(inline)]
pub use hybridsync_telemetry::SyncMetrics;

/// Setting up the cloud side: the schema migration an administrator runs once, and the
/// tenant memberships that bind login roles to tenants.
#[cfg(feature = "cloud-postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "cloud-postgres")))]
pub mod cloud {
    #[doc(inline)]
    pub use hybridsync_cloud::{
        CloudOptions, PostgresSink, SCHEMA_VERSION, TenantMember, grant_tenant, migrate,
        revoke_tenant, tenant_members,
    };
}

#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
#[doc(inline)]
pub use hybridsync_telemetry::{InstanceView, PublisherStatus, redis_instances};

#[cfg(feature = "prometheus")]
#[cfg_attr(docsrs, doc(cfg(feature = "prometheus")))]
#[doc(inline)]
pub use hybridsync_telemetry::{
    DEFAULT_METRICS_ADDR, ProbeAnswer, Probes, install_prometheus, install_prometheus_with,
};

/// Errors of the facade.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Refused input or a failure in a layer, as the layers report it.
    #[error(transparent)]
    Core(#[from] hybridsync_core::Error),
    /// Opening the local store failed (corrupt file, newer schema, permissions, ...).
    #[error(transparent)]
    Store(#[from] hybridsync_store::Error),
    /// The cloud sink refused its configuration or its schema.
    #[cfg(feature = "cloud-postgres")]
    #[error(transparent)]
    Cloud(#[from] hybridsync_cloud::Error),
    /// The engine's own failure modes (a failed index build, changes not pushed yet, a
    /// vector collection without a vector index).
    #[error(transparent)]
    Engine(hybridsync_engine::Error),
    /// The operation needs a cloud and none is configured.
    #[error("no cloud is configured (set cloud_url, HYBRIDSYNC_CLOUD_URL or --cloud-url)")]
    NoCloud,
    /// An encryption key file could not be read or holds no key (the message never
    /// quotes its content).
    #[error("encryption key file {}: {reason}", path.display())]
    KeyFile {
        path: std::path::PathBuf,
        reason: String,
    },
    /// A cloud URL, in a build without the `cloud-postgres` feature.
    #[error(
        "a cloud ({url}) is configured, and this build has no cloud sink (hybridsync's `cloud-postgres` feature)"
    )]
    CloudUnavailable { url: String },
    /// A Redis URL, in a build without the `redis` feature.
    #[error(
        "a Redis publisher ({url}) is configured, and this build has none (hybridsync's `redis` feature)"
    )]
    RedisUnavailable { url: String },
    /// The metrics endpoint could not be installed (the address is taken, say), or a
    /// Redis URL is malformed or Redis did not answer a read.
    #[cfg(any(feature = "prometheus", feature = "redis"))]
    #[error(transparent)]
    Telemetry(#[from] hybridsync_telemetry::Error),
}

impl From<hybridsync_engine::Error> for Error {
    /// Refused input and layer failures keep the shape they have everywhere
    /// ([`Error::Core`]); the engine's own failures are [`Error::Engine`].
    fn from(e: hybridsync_engine::Error) -> Self {
        match e {
            hybridsync_engine::Error::Core(e) => Error::Core(e),
            hybridsync_engine::Error::NoCloud => Error::NoCloud,
            other => Error::Engine(other),
        }
    }
}

impl Error {
    /// The store's error, if this is one, looking through the core wrapper.
    pub fn as_store_error(&self) -> Option<&hybridsync_store::Error> {
        match self {
            Error::Store(e) => Some(e),
            Error::Core(hybridsync_core::Error::Store(e)) => e.downcast_ref(),
            _ => None,
        }
    }

    /// Whether the disk holding the local store is full: the write was rolled back,
    /// everything acknowledged before it is intact, and writing works again once there
    /// is room.
    pub fn is_storage_full(&self) -> bool {
        matches!(
            self.as_store_error(),
            Some(hybridsync_store::Error::StorageFull)
        )
    }
}

/// `Result` with the facade's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The README's examples, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

#[cfg(test)]
mod tests;
