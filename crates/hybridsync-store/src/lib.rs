//! The local store of hybridsync: SQLite, set up through sqlx (its migrator), written
//! through one rusqlite connection and read through both (`connections`).
//!
//! Modules follow its concerns: `store` (the struct and its `LocalStore`
//! implementation), `opening`, `connections`, `catalogue`, `records`, `outbox`, `feed`
//! (pulled pages and cursors), `tree` (the consistency checker's tree, kept in every
//! write transaction) and `history`.
//!
//! It owns the database file (records, the collection catalogue, the transactional
//! outbox, device identity and the HLC high-water mark) and implements
//! [`hybridsync_core::LocalStore`]. A write and its outbox entry commit in one
//! transaction, so an acknowledged write is durable and will reach the cloud.
//!
//! It knows nothing of vectors indexes, the cloud or metrics exporters; the engine
//! composes it with those through the traits in `hybridsync-core`.
#![forbid(unsafe_code)]

mod catalogue;
mod connections;
mod error;
mod feed;
mod history;
mod migrations;
mod opening;
mod outbox;
mod records;
mod rows;
mod source;
mod store;
mod tree;

pub use error::{Error, Result};
pub use opening::{DB_FILE, Durability, StoreOptions};
pub use source::{SqliteSelection, SqliteSource};
pub use store::SqliteStore;

/// The README's examples, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

#[cfg(test)]
mod tests;
