//! A bounded LRU cache of recently read or written records.

use hybridsync_core::MutexExt;
use hybridsync_core::{CollectionName, HotCacheStats, Key, Record, RecordCache};
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// A cached record, marked while it waits for its first read after warming loaded it.
struct Entry {
    record: Arc<Record>,
    prefetched: bool,
    /// Set when eviction passed over this entry once, unread since warming loaded it.
    reprieved: bool,
}

impl Entry {
    fn new(record: Arc<Record>, prefetched: bool) -> Self {
        Self {
            record,
            prefetched,
            reprieved: false,
        }
    }

    /// Whether eviction passes over this entry: warming loaded it for a read that has
    /// not come yet, and it has not been passed over before.
    fn second_chance(&self) -> bool {
        self.prefetched && !self.reprieved
    }
}

struct Inner {
    lru: lru::LruCache<String, Entry>,
    bytes: usize,
}

impl Inner {
    /// Caches `record` at the most recently used end, then evicts until the entries
    /// and the bytes fit.
    fn push(&mut self, key: String, record: Arc<Record>, prefetched: bool, max_bytes: usize) {
        let size = record.approx_size();
        if self.lru.len() == self.lru.cap().get() && !self.lru.contains(&key) {
            self.evict_one();
        }
        // Room was made above, so `push` can only hand back the value it replaced.
        if let Some((_, old)) = self.lru.push(key, Entry::new(record, prefetched)) {
            self.bytes -= old.record.approx_size();
        }
        self.bytes += size;
        while self.bytes > max_bytes && self.evict_one() {}
    }

    /// Evicts the least recently used entry, passing over (once each, back to the most
    /// recently used end) entries warming loaded that no read has used yet: a
    /// prediction gets one more lap of the cache to come true. Returns whether one
    /// was evicted.
    fn evict_one(&mut self) -> bool {
        while let Some((key, mut entry)) = self.lru.pop_lru() {
            if entry.second_chance() {
                entry.reprieved = true;
                self.lru.push(key, entry);
                continue;
            }
            self.bytes -= entry.record.approx_size();
            return true;
        }
        false
    }

    /// The entry the next eviction removes: the least recently used one it does not
    /// pass over, or, when it passes over them all, the least recently used.
    fn victim(&self) -> Option<&Entry> {
        self.lru
            .iter()
            .rev()
            .map(|(_, entry)| entry)
            .find(|entry| !entry.second_chance())
            .or_else(|| self.lru.peek_lru().map(|(_, entry)| entry))
    }
}

/// Holds at most `max_entries` records and about `max_bytes` of them, evicting the
/// least recently used. An entry warming loaded that no read has used yet is passed
/// over once, back to the most recently used end, so a prediction is not evicted by
/// the misses of the interval it was made for. Tombstones are cached too, so a read of
/// a deleted key is a hit.
pub struct HotCache {
    inner: Mutex<Inner>,
    max_bytes: usize,
    hits: AtomicU64,
    misses: AtomicU64,
    prefetched: AtomicU64,
    prefetch_hits: AtomicU64,
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
            prefetched: AtomicU64::new(0),
            prefetch_hits: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock_or_recover()
    }

    /// Runs `f` on the cache key of `collection` and `key`, built in a reused
    /// per-thread buffer: lookups are the hottest path of the library.
    fn with_lookup_key<R>(collection: &CollectionName, key: &str, f: impl FnOnce(&str) -> R) -> R {
        thread_local! {
            static LOOKUP: std::cell::RefCell<String> = const { std::cell::RefCell::new(String::new()) };
        }
        LOOKUP.with(|buffer| {
            let mut buffer = buffer.borrow_mut();
            buffer.clear();
            buffer.push_str(collection.as_str());
            buffer.push('\0');
            buffer.push_str(key);
            f(buffer.as_str())
        })
    }

    fn lookup(&self, collection: &CollectionName, key: &str) -> Option<Arc<Record>> {
        let found = Self::with_lookup_key(collection, key, |key| {
            let mut inner = self.lock();
            let entry = inner.lru.get_mut(key)?;
            if std::mem::take(&mut entry.prefetched) {
                self.prefetch_hits.fetch_add(1, Ordering::Relaxed);
            }
            Some(entry.record.clone())
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
        if record.approx_size() > self.max_bytes {
            return;
        }
        let key = cache_key(&record.collection, &record.key);
        let mut inner = self.lock();
        if let Some(existing) = inner.lru.peek(&key) {
            if existing.record.version > record.version {
                return;
            }
        }
        inner.push(key, record, false, self.max_bytes);
    }

    /// Drops a key.
    fn remove(&self, collection: &CollectionName, key: &Key) {
        let mut inner = self.lock();
        if let Some(old) = inner.lru.pop(&cache_key(collection, key)) {
            inner.bytes -= old.record.approx_size();
        }
    }

    fn contains(&self, collection: &CollectionName, key: &str) -> bool {
        Self::with_lookup_key(collection, key, |key| self.lock().lru.contains(key))
    }

    /// Loads `record` unless its key is cached (in any version: a write or a read put
    /// it there, and it is at least as new) or the least recently used entry, which a
    /// full cache would evict, is one `keep` wants kept.
    fn prefetch(&self, record: Arc<Record>, keep: &dyn Fn(&Record) -> bool) -> bool {
        let size = record.approx_size();
        if size > self.max_bytes {
            return false;
        }
        let key = cache_key(&record.collection, &record.key);
        let mut inner = self.lock();
        if inner.lru.contains(&key) {
            return false;
        }
        let full = inner.lru.len() == inner.lru.cap().get() || inner.bytes + size > self.max_bytes;
        if full && inner.victim().is_some_and(|victim| keep(&victim.record)) {
            return false;
        }
        inner.push(key, record, true, self.max_bytes);
        self.prefetched.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Hits, misses, entries and bytes.
    fn stats(&self) -> HotCacheStats {
        let inner = self.lock();
        HotCacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            entries: inner.lru.len(),
            bytes: inner.bytes,
            prefetched: self.prefetched.load(Ordering::Relaxed),
            prefetch_hits: self.prefetch_hits.load(Ordering::Relaxed),
        }
    }
}
