//! Core types and traits of hybridsync: records, validated names, hybrid logical clocks,
//! content hashes, priorities, vector specs, conflicts, events and the three seams the
//! engine talks through ([`LocalStore`], [`VectorCache`], [`CloudSink`]).
//!
//! This crate does no I/O and knows nothing of SQLite, usearch, PostgreSQL or any
//! runtime. Everything here is pure data and pure functions, so every other crate can
//! depend on it and it can be tested exhaustively (see the property tests).
//! Two exceptions: sealing ([`Keyring`]) draws its nonces from the thread's CSPRNG,
//! and, test-only, built with `--cfg hybridsync_crash_points` (which only
//! `cargo xtask` passes), [`crash_point`] reads `HYBRIDSYNC_CRASH_POINT` to abort at a
//! named point in crash drills.
#![forbid(unsafe_code)]

mod codec;
mod conflict;
mod crash;
mod error;
mod event;
mod hash;
mod hlc;
mod limits;
mod migration;
mod name;
mod priority;
mod record;
mod replication;
mod seal;
mod secret;
mod sync;
mod text;
mod traits;
mod vector;
mod verify;

pub use codec::{decode_payload, encode_payload};
pub use conflict::{Conflict, ConflictResolver, Resolution, ResolutionKind, Strategy, resolve};
pub use crash::{CRASH_POINTS, crash_point};
pub use error::{BoxError, Error, Result};
pub use event::{CircuitState, SyncEvent, SyncOperation};
pub use hash::ContentHash;
pub use hlc::{Clock, DeviceId, Hlc, HlcClock, ManualClock, SystemClock};
pub use limits::Limits;
pub use migration::{
    ImportOutcome, ImportStep, MigrationCounts, MigrationInfo, MigrationSource, MigrationState,
    RawRow, RollbackOutcome, SourceRow, SourceValue,
};
pub use name::{CollectionName, Key};
pub use priority::Priority;
pub use record::{CollectionSpec, Record, WriteReceipt, WriteRequest};
pub use replication::{ApplyOutcome, HistoryEntry, SettledConflict};
pub use seal::{EncryptionKey, KeyId, Keyring, sealed_key_id};
pub use secret::{CloudUrl, Pooler};
pub use sync::{MutexExt, RwLockExt};
pub use text::decode_hex;
pub use traits::{
    ChangeBatch, ChangeCursor, CloudSink, DeviceInfo, HotCacheStats, LocalStore, OutboxEntry,
    OutboxError, OutboxOutcome, OutboxState, OutboxStats, PoolStats, RecordCache, StoredVector,
    VectorCache, VectorHit, validate_device_name,
};
pub use vector::{Metric, Precision, VectorSpec};
pub use verify::{
    Difference, LEVEL_BITS, LocalTree, MAX_DEPTH, NodeDigest, ROWS_PER_LEAF, RowDigest, bucket_of,
    depth_for, differing, leaf_of, prefix_at, tree_digests,
};

/// The README's examples, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

#[cfg(test)]
mod seal_tests;
#[cfg(test)]
mod tests;
