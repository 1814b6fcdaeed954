//! The store's own SQLite connections beside sqlx's pools: the one writer (every write
//! transaction after open) with its background checkpoints, and the point readers (reads by key and by row id on the
//! caller's thread). `docs/architecture.md` says why the store keeps both drivers.

mod checkpoint;
mod point;
mod writer;

pub(crate) use checkpoint::{DEFAULT_CHECKPOINT_PAGES, DEFAULT_WAL_CAP_PAGES};
pub(crate) use point::PointReaders;
pub(crate) use writer::{HEAVY_ROWS, Writer};
