//! A bounded LRU cache of recently read or written records.

use hybridsync_core::MutexExt;
use hybridsync_core::{CollectionName, HotCacheStats, Key, Record, RecordCache};
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

struct Inner {
    lru: lru::LruCache<String, Arc<Record>>,
    bytes: usize,
}

/// Holds at most `max_entries` records and about `max_bytes` of them, evicting the
/// least recently used. Tombstones are cached too, so a read of a deleted key is a hit.
pub struct HotCache {
    inner: Mutex<Inner>,
    max_bytes: usize,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl std::fmt::Debug for HotCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HotCache")
            .field("stats", &self.stats())
            .finish()
    }
}

/// The cache key: collection and key joined by NUL, which neither may contain.
fn cache_key(collection: &CollectionName, key: &Key) -> String {
    let mut s = String::with_capacity(collection.as_str().len() + 1 + key.as_str().len());
    s.push_str(collection.as_str());
    s.push('\0');
    s.push_str(key.as_str());
    s
}

impl HotCache {
    /// A cache bounded by entries and bytes.
    pub fn new(max_entries: usize, max_bytes: usize) -> Self {
        let cap = NonZeroUsize::new(max_entries.max(1)).expect("at least one entry");
        Self {
            inner: Mutex::new(Inner {
                lru: lru::LruCache::new(cap),
                bytes: 0,
            }),
            max_bytes,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock_or_recover()
    }

    /// The lookup key is built in a reused per-thread buffer: this is the hottest path
    /// of the library.
    fn lookup(&self, collection: &CollectionName, key: &str) -> Option<Arc<Record>> {
        thread_local! {
            static LOOKUP: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
        }
        let found = LOOKUP.with(|buffer| {
            let mut buffer = buffer.borrow_mut();
            buffer.clear();
            buffer.push_str(collection.as_str());
            buffer.push('\0');
            buffer.push_str(key);
            self.lock().lru.get(buffer.as_str()).cloned()
        });
        if found.is_some() {
            self.hits.fetch_add(1, Ordering::Relaxed);
        } else {
            self.misses.fetch_add(1, Ordering::Relaxed);
        }
        found
    }
}

impl RecordCache for HotCache {
    /// The cached record, counting a hit or a miss.
    fn get(&self, collection: &CollectionName, key: &str) -> Option<Arc<Record>> {
        self.lookup(collection, key)
    }

    /// Caches `record` unless a newer version of it is already cached, so a slow
    /// reader cannot put back a state that a write has replaced.
    fn insert(&self, record: Arc<Record>) {
        let size = record.approx_size();
        if size > self.max_bytes {
            return;
        }
        let key = cache_key(&record.collection, &record.key);
        let mut inner = self.lock();
        if let Some(existing) = inner.lru.peek(&key) {
            if existing.version > record.version {
                return;
            }
        }
        // `push` hands back either the replaced value or the entry it evicted.
        if let Some((_, old)) = inner.lru.push(key, record) {
            inner.bytes -= old.approx_size();
        }
        inner.bytes += size;
        while inner.bytes > self.max_bytes {
            match inner.lru.pop_lru() {
                Some((_, evicted)) => inner.bytes -= evicted.approx_size(),
                None => break,
            }
        }
    }

    /// Drops a key.
    fn remove(&self, collection: &CollectionName, key: &Key) {
        let mut inner = self.lock();
        if let Some(old) = inner.lru.pop(&cache_key(collection, key)) {
            inner.bytes -= old.approx_size();
        }
    }

    /// Hits, misses, entries and bytes.
    fn stats(&self) -> HotCacheStats {
        let inner = self.lock();
        HotCacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            entries: inner.lru.len(),
            bytes: inner.bytes,
        }
    }
}
