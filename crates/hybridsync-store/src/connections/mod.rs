//! The store's own SQLite connections beside sqlx's pools: the one writer (every write
//! transaction after open) with its background checkpoints, and the point readers (reads by key and by row id on the
//! caller's thread). `docs/architecture.md` says why the store keeps both drivers.

mod checkpoint;
mod point;
mod writer;

pub(crate) use checkpoint::{DEFAULT_CHECKPOINT_PAGES, DEFAULT_WAL_CAP_PAGES};
pub(crate) use point::PointReaders;
pub(crate) use writer::{HEAVY_ROWS, Writer};

/// SQLite's page cache of each point reader and of the set-up connection, in KiB
/// (`PRAGMA cache_size`, negative for KiB). It fills only as pages are touched;
/// `docs/architecture.md` ("Memory") states what each holds.
pub(crate) const READ_CACHE_KIB: u32 = 16_384;

/// The page cache of each pooled reader, in KiB. The pool serves scans and counts,
/// whose pages pass once, or come back a second later from the kernel's page cache.
/// After 100,000 vector records written in batches, the pool's connections held the
/// pages of the once-a-second queue counts (the drain-order index) and the record
/// counts: 7.1 MB at 16 MiB each, 5.9 MB at 2 MiB, 1.4 MB at 256 KiB (heaptrack).
pub(crate) const POOL_CACHE_KIB: u32 = 512;

/// The writer's page cache, in KiB: it fills with every page a write touches, so it
/// is always full after a few thousand records. At 4 MiB instead of 16 it held 4.8 MiB
/// less after 100,000 vector records, and the batched and single write rows moved by
/// less than the runs' noise (a batch of 1,000 records changes about 1 MiB of pages).
pub(crate) const WRITER_CACHE_KIB: u32 = 4_096;

/// The file mapping of each point reader and of the set-up connection (`PRAGMA
/// mmap_size`): a read of a page SQLite does not hold is a memory access instead of a
/// `pread` and a copy. A cache-miss read took 5.3 µs with it and 7.7 µs without; the
/// quick check at open and the vector scans (a snapshot's check, an index build) read
/// the whole file, and reopening a store of 100,000 vectors from its snapshot took
/// 290-365 ms with the set-up connection mapped and 915 ms without. The writer and the
/// pooled readers map nothing. The writer copies the pages it changes into its page cache anyway. The pool's
/// once-a-second outbox counts walk an index spread through the file, and the kernel
/// maps up to 64 KiB around each page touched: after 100,000 vector records each
/// mapping (the writer's, and every pool connection that had run a count) held about
/// 25 MiB of the file resident, for no write throughput measurable above the runs'
/// noise.
pub(crate) const MMAP_BYTES: u64 = 256 << 20;

/// Whether the current runtime has other workers, so work that holds this thread for
/// long may leave it (`block_in_place`); a current-thread runtime has none.
pub(crate) fn multi_thread() -> bool {
    tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
}
