//! The hybridsync engine: composes a [`LocalStore`](hybridsync_core::LocalStore), a
//! [`VectorCache`](hybridsync_core::VectorCache) and the
//! [`HotCache`] into the local-first read and write paths, and ships the outbox to a
//! [`CloudSink`](hybridsync_core::CloudSink) in the background ([`Syncer`]): batches, priorities, retries with
//! backoff, a circuit breaker. [`MemorySink`] is an in-memory cloud for tests.
//!
//! Writes go to the store first (record and outbox entry in one transaction), then to
//! the vector index and the hot cache. Reads are served by the hot cache, the vector
//! index and the store; they never touch the network. The engine talks to its layers
//! only through the traits in `hybridsync-core`, so each can be swapped or faked.
#![forbid(unsafe_code)]

mod breaker;
mod local;
mod memory_sink;
mod replicate;
mod snapshot;
mod sync;

pub use breaker::{BreakerConfig, CircuitBreaker, Transition, retry_delay};
pub use local::{Engine, EngineConfig, I8_RERANK_FACTOR, LocalStatus, SearchOptions};
pub use memory_sink::MemorySink;
pub use replicate::{Progress, Replicator, SyncReport, no_progress};
pub use sync::{DrainReport, SyncConfig, SyncHandle, SyncStatus, Syncer};

pub use hybridsync_vector::{HotCache, HotCacheStats};

/// `Result` with the core error: the engine adds no failure modes of its own yet.
pub type Result<T, E = hybridsync_core::Error> = std::result::Result<T, E>;

#[cfg(test)]
mod replicate_tests;
#[cfg(test)]
mod sync_tests;
#[cfg(test)]
mod tests;
