//! The hybridsync engine: composes a [`LocalStore`](hybridsync_core::LocalStore), a
//! [`VectorCache`](hybridsync_core::VectorCache) and a
//! [`RecordCache`](hybridsync_core::RecordCache) into the local-first read and write
//! paths ([`Engine`]), ships the outbox to a [`CloudSink`](hybridsync_core::CloudSink)
//! in the background ([`Syncer`]: batches, priorities, retries with backoff, a circuit
//! breaker), runs seed, hydrate and sync ([`Replicator`]), imports bulk data from a
//! [`MigrationSource`](hybridsync_core::MigrationSource) resumably
//! ([`Engine::migrate`], [`JsonLinesSource`]), warms the hot cache ahead of predicted
//! reads ([`WarmingConfig`]), and owns their lifecycle ([`Runtime`]).
//!
//! Writes go to the store first (record and outbox entry in one transaction), then to
//! the vector index and the hot cache. Reads are served by the hot cache, the vector
//! index and the store; they never touch the network. The engine talks to its layers
//! only through the traits in `hybridsync-core`, so each can be swapped or faked (the
//! in-memory cloud of the tests lives in `hybridsync-testkit`). It knows no database,
//! index or exporter; it records metrics through the `metrics` facade only.
#![forbid(unsafe_code)]

mod breaker;
mod error;
mod jsonl;
mod local;
mod migrate;
mod replicate;
mod retry;
mod runtime;
mod sealing;
mod snapshot;
mod sync;
mod verify;
mod warming;

pub use breaker::{BreakerConfig, CircuitBreaker, Transition};
pub use error::{Error, Result};
pub use jsonl::JsonLinesSource;
pub use local::{Engine, EngineConfig, I8_RERANK_FACTOR, LocalStatus, SearchOptions};
pub use migrate::{
    Mapping, MigrateProgress, MigrationJob, MigrationReport, RollbackReport, RunOptions,
    SourceCheck, TARGET_COMMIT, rejects_path,
};
pub use replicate::{Progress, Replicator, SyncReport, no_progress};
pub use retry::retry_delay;
pub use runtime::{Runtime, RuntimeConfig};
pub use sync::{DrainReport, SyncConfig, SyncHandle, SyncStatus, Syncer, default_device_name};
pub use verify::{CollectionCheck, Found, VerifyOptions, VerifyReport};
pub use warming::{Prediction, Warmer, WarmingConfig, WarmingStats};

/// The README's examples, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

#[cfg(test)]
mod replicate_tests;
#[cfg(test)]
mod seal_tests;
#[cfg(test)]
mod sync_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod verify_tests;
