//! The local store of hybridsync: SQLite, set up through sqlx (its migrator), written
//! through one rusqlite connection (the `writer` module) and read through both.
//!
//! It owns the database file (records, the collection catalogue, the transactional
//! outbox, device identity and the HLC high-water mark) and implements
//! [`hybridsync_core::LocalStore`]. A write and its outbox entry commit in one
//! transaction, so an acknowledged write is durable and will reach the cloud.
//!
//! It knows nothing of vectors indexes, the cloud or metrics exporters; the engine
//! composes it with those through the traits in `hybridsync-core`.
#![forbid(unsafe_code)]

mod error;
mod open;
mod outbox;
mod point;
mod rows;
mod sync_state;
mod write;
mod writer;

pub use error::{Error, Result};
pub use open::{DB_FILE, Durability, SqliteStore, StoreOptions};

/// The README's examples, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

#[cfg(test)]
mod tests;
