//! The store's own SQLite connections beside sqlx's pools: the one writer (every write
//! transaction after open) with its background checkpoints, and the point readers (reads by key and by row id on the
//! caller's thread). `docs/architecture.md` says why the store keeps both drivers.

mod checkpoint;
mod point;
mod writer;

pub(crate) use checkpoint::{DEFAULT_CHECKPOINT_PAGES, DEFAULT_WAL_CAP_PAGES};
pub(crate) use point::PointReaders;
pub(crate) use writer::{HEAVY_ROWS, Writer};

/// SQLite's page cache of each reading connection, in KiB (`PRAGMA cache_size`,
/// negative for KiB): each pooled reader's and each point reader's. It fills only as
/// pages are touched; `docs/architecture.md` ("Memory") states what each holds.
pub(crate) const READ_CACHE_KIB: u32 = 16_384;

/// The writer's page cache, in KiB: it fills with every page a write touches, so it
/// is always full after a few thousand records. At 4 MiB instead of 16 it held 4.8 MiB
/// less after 100,000 vector records, and the batched and single write rows moved by
/// less than the runs' noise (a batch of 1,000 records changes about 1 MiB of pages).
pub(crate) const WRITER_CACHE_KIB: u32 = 4_096;

/// The file mapping of each point reader (`PRAGMA mmap_size`): a read of a page that
/// SQLite does not hold is a memory access instead of a `pread` and a copy (a
/// cache-miss read took 5.3 µs with it and 7.7 µs without). The writer and the pooled
/// readers map nothing. The writer copies the pages it changes into its page cache
/// anyway. The pool's once-a-second outbox counts walk an index spread through the
/// file, and the kernel maps up to 64 KiB around each page touched: after 100,000
/// vector records each mapping (the writer's, and every pool connection that had run
/// a count) held about 25 MiB of the file resident, for no write or read throughput
/// measurable above the runs' noise.
pub(crate) const POINT_MMAP_BYTES: u64 = 256 << 20;
