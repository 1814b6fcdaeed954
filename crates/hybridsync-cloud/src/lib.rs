//! The cloud sink of hybridsync: PostgreSQL through sqlx, implementing
//! [`hybridsync_core::CloudSink`].
//!
//! - A connection pool with a hard cap (default 3), acquire and statement timeouts, an
//!   idle lifetime, stale-connection checks after a server restart, and a moving
//!   average of its load. Creating a sink never waits on the network.
//! - Batch upserts as one statement per batch (`UNNEST` arrays), idempotent and
//!   monotone: a row is replaced only by a strictly newer `(hlc, origin)`.
//! - A change feed whose cursor cannot skip a row committed out of order.
//! - Tenant isolation by row-level security: a row is visible and writable only when it
//!   belongs to the tenant the transaction selected *and* the login role is a member
//!   of that tenant (`hs_tenant_members`, managed by the administrative role through
//!   [`grant_tenant`] and [`revoke_tenant`]). The tenant is set with a
//!   transaction-local setting so it never leaks to the next user of a pooled
//!   connection.
//! - The consistency checker's side, in SQL (`verify.rs`): tree nodes by `GROUP BY` a
//!   bucket prefix, rows of a few buckets, and a deep recomputation of content hashes.
//! - `sqlx::Error` is mapped here, by SQLSTATE, into [`Error`], which says whether a
//!   failure is worth retrying.
//!
//! It knows nothing of SQLite, vectors or metrics exporters; the engine drives it.
#![forbid(unsafe_code)]

mod catalogue;
mod devices;
mod error;
mod feed;
mod pool;
mod schema;
mod sink;
mod source;
mod upsert;
mod verify;

pub use error::{Error, Result};
pub use pool::{CloudOptions, PostgresSink};
pub use schema::{
    SCHEMA_VERSION, TenantMember, grant_tenant, migrate, revoke_tenant, tenant_members,
};
pub use source::{PostgresSelection, PostgresSource};

/// The README's examples, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

#[cfg(test)]
mod tests;
