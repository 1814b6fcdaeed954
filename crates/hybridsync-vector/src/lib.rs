//! The in-memory side of hybridsync's read path: one HNSW index per vector collection,
//! ours ([`HnswCache`], the default) or usearch's ([`UsearchCache`]), both
//! implementations of [`hybridsync_core::VectorCache`]; and a bounded LRU cache of hot
//! records ([`HotCache`]).
//!
//! This is the only crate with `unsafe` code: usearch's FFI (behind the default
//! `usearch` feature), and our index's SIMD kernels and prefetch hints. It knows
//! nothing of SQLite, the cloud or metrics exporters: it keeps counts, and the engine
//! reports them.
//!
//! The README's example (a doc test) shows it in use.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod graph;
mod hnsw;
mod hot;
#[cfg(feature = "usearch")]
mod index;
mod kernels;

pub use hnsw::{DEFAULT_EF, HnswCache, VectorOptions};
pub use hot::HotCache;
#[cfg(feature = "usearch")]
#[cfg_attr(docsrs, doc(cfg(feature = "usearch")))]
pub use index::UsearchCache;

/// Errors of the vector layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("usearch: {0}")]
    Usearch(String),
    #[error("a {got}-d vector for a {expected}-d index")]
    Dimension { expected: usize, got: usize },
    #[error("no vector index for collection {0}")]
    NoIndex(String),
    /// A saved index that cannot be used (missing, unreadable, or not the store's).
    #[error("index snapshot: {0}")]
    Snapshot(String),
}

impl From<Error> for hybridsync_core::Error {
    fn from(e: Error) -> Self {
        hybridsync_core::Error::Vector(Box::new(e))
    }
}

/// A parallel batch holds an index exclusively for at most this many vectors, so
/// searches interleave with a long batch.
const PARALLEL_ADD_CHUNK: usize = 512;

/// Whether an index adds `items` as one parallel batch: at least 64 of them, no label
/// twice (otherwise one by one, in order).
fn in_parallel(items: &[(u64, hybridsync_core::Key, Vec<f32>)]) -> bool {
    let distinct = items
        .iter()
        .map(|(label, ..)| *label)
        .collect::<std::collections::HashSet<_>>()
        .len();
    items.len() >= 64 && distinct == items.len()
}

/// `Result` with the vector layer's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The README's examples, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

#[cfg(test)]
mod tests;
