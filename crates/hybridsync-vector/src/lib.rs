//! The in-memory side of hybridsync's read path: one usearch HNSW index per vector
//! collection ([`UsearchCache`], an implementation of [`hybridsync_core::VectorCache`])
//! and a bounded LRU cache of hot records ([`HotCache`]).
//!
//! This is the only crate that touches FFI (usearch, behind the default `usearch`
//! feature; without it the crate is the hot cache alone). It knows nothing of SQLite,
//! the cloud or metrics exporters: it keeps counts, and the engine reports them.
//!
//! ```
//! use hybridsync_core::{CollectionName, Key, Metric, Precision, RecordCache, VectorCache, VectorSpec};
//! use hybridsync_vector::{HotCache, UsearchCache, VectorOptions};
//!
//! let voices = CollectionName::new("voices")?;
//! let index = UsearchCache::new(VectorOptions::default());
//! let spec = VectorSpec::new(3, Metric::Cosine, Precision::F32)?;
//! index.build(&voices, &spec, vec![
//!     (1, Key::new("alice")?, vec![1.0, 0.0, 0.0]),
//!     (2, Key::new("bob")?, vec![0.0, 1.0, 0.0]),
//! ])?;
//! let hits = index.search(&voices, &[0.9, 0.1, 0.0], 1)?;
//! assert_eq!(hits[0].key.as_str(), "alice");
//!
//! let hot = HotCache::new(1_000, 1 << 20);
//! assert!(hot.get(&voices, "alice").is_none());
//! assert_eq!(hot.stats().misses, 1);
//! # Ok::<(), hybridsync_core::Error>(())
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]

mod hot;
#[cfg(feature = "usearch")]
mod index;

pub use hot::HotCache;
#[cfg(feature = "usearch")]
#[cfg_attr(docsrs, doc(cfg(feature = "usearch")))]
pub use index::{UsearchCache, VectorOptions};

/// Errors of the vector layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("usearch: {0}")]
    Usearch(String),
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

/// `Result` with the vector layer's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests;
