//! usearch HNSW indexes, one per vector collection.

use crate::{Error, Result, VectorOptions};
use hybridsync_core::{CollectionName, Key, Metric, Precision, VectorCache, VectorHit, VectorSpec};
use hybridsync_core::{MutexExt, RwLockExt};
use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, RwLock};
use usearch::ffi::{IndexOptions, MetricKind, ScalarKind};

/// One collection's index and its label → key map.
struct CollectionIndex {
    /// Searches share the lock; adds and removes take it exclusively. usearch allows
    /// concurrent adds, but not beside growth and exact scans, and our writes are
    /// serialised by the store anyway.
    index: RwLock<usearch::Index>,
    /// Slots written since creation (usearch does not reuse a removed vector's slot
    /// until compaction), to grow capacity before it runs out.
    used: Mutex<usize>,
    keys: RwLock<HashMap<u64, Key>>,
    slots: Slots,
}

/// usearch serves at most as many concurrent calls as it reserved thread contexts for;
/// one more fails. This bounds the callers instead.
struct Slots {
    free: Mutex<usize>,
    freed: Condvar,
}

struct SlotGuard<'a>(&'a Slots);

impl Slots {
    fn new(n: usize) -> Self {
        Self {
            free: Mutex::new(n),
            freed: Condvar::new(),
        }
    }

    fn acquire(&self) -> SlotGuard<'_> {
        let mut free = self.free.lock_or_recover();
        while *free == 0 {
            free = self.freed.wait(free).unwrap_or_else(|e| e.into_inner());
        }
        *free -= 1;
        SlotGuard(self)
    }
}

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        *self.0.free.lock_or_recover() += 1;
        self.0.freed.notify_one();
    }
}

impl std::fmt::Debug for CollectionIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CollectionIndex")
            .field("len", &self.keys.read().map_or(0, |k| k.len()))
            .finish()
    }
}

fn usearch_error(e: impl std::fmt::Display) -> Error {
    Error::Usearch(e.to_string())
}

/// The usearch file calls want a UTF-8 path.
fn path_str(path: &std::path::Path) -> Result<&str> {
    path.to_str()
        .ok_or_else(|| Error::Snapshot(format!("path {} is not UTF-8", path.display())))
}

/// Concurrent calls one index serves.
const THREAD_SLOTS: usize = 16;

fn reserve(index: &usearch::Index, capacity: usize) -> Result<()> {
    index
        .reserve_capacity_and_threads(capacity.max(64), THREAD_SLOTS)
        .map_err(usearch_error)
}

fn index_options(spec: &VectorSpec, options: &VectorOptions) -> IndexOptions {
    IndexOptions {
        dimensions: spec.dim,
        metric: match spec.metric {
            Metric::L2 => MetricKind::L2sq,
            Metric::Cosine => MetricKind::Cos,
            Metric::Ip => MetricKind::IP,
        },
        quantization: match spec.precision {
            Precision::F32 => ScalarKind::F32,
            Precision::F16 => ScalarKind::F16,
            Precision::I8 => ScalarKind::I8,
        },
        connectivity: 0,
        expansion_add: 0,
        expansion_search: options.expansion_search,
        multi: false,
    }
}

fn new_index(
    spec: &VectorSpec,
    options: &VectorOptions,
    capacity: usize,
) -> Result<usearch::Index> {
    let index = usearch::Index::new(&index_options(spec, options)).map_err(usearch_error)?;
    reserve(&index, capacity)?;
    Ok(index)
}

/// Loads an index file written by `save`, checked against `spec` and `keys`.
fn load_index(
    spec: &VectorSpec,
    options: &VectorOptions,
    path: &std::path::Path,
    keys: &[(u64, Key)],
) -> Result<usearch::Index> {
    let expected = index_options(spec, options);
    let index = usearch::Index::new(&expected).map_err(usearch_error)?;
    index.load(path_str(path)?).map_err(usearch_error)?;
    let shape = (index.dimensions(), index.metric_kind(), index.scalar_kind());
    if shape != (expected.dimensions, expected.metric, expected.quantization) || index.multi() {
        return Err(Error::Snapshot(format!(
            "{} holds a {}-d {:?} {:?} index, the collection wants {}-d {:?} {:?}",
            path.display(),
            shape.0,
            shape.1,
            shape.2,
            expected.dimensions,
            expected.metric,
            expected.quantization
        )));
    }
    if index.size() != keys.len() || keys.iter().any(|(label, _)| !index.contains(*label)) {
        return Err(Error::Snapshot(format!(
            "{} holds {} vectors, not the {} the store has",
            path.display(),
            index.size(),
            keys.len()
        )));
    }
    if options.expansion_search > 0 {
        index.change_expansion_search(options.expansion_search);
    }
    // Room to grow, and the thread contexts a loaded index does not keep.
    reserve(
        &index,
        index.capacity().max(index.size()) + index.size() / 4,
    )?;
    Ok(index)
}

/// usearch HNSW indexes keyed by collection. Implements [`VectorCache`].
#[derive(Debug, Default)]
pub struct UsearchCache {
    options: VectorOptions,
    collections: RwLock<HashMap<CollectionName, Arc<CollectionIndex>>>,
}

impl UsearchCache {
    /// An empty cache with `options`.
    pub fn new(options: VectorOptions) -> Self {
        Self {
            options,
            collections: RwLock::new(HashMap::new()),
        }
    }

    fn install(
        &self,
        collection: &CollectionName,
        index: usearch::Index,
        used: usize,
        keys: impl Iterator<Item = (u64, Key)>,
    ) {
        let entry = CollectionIndex {
            index: RwLock::new(index),
            keys: RwLock::new(keys.collect()),
            used: Mutex::new(used),
            slots: Slots::new(THREAD_SLOTS),
        };
        self.collections
            .write_or_recover()
            .insert(collection.clone(), Arc::new(entry));
    }

    fn get(&self, collection: &CollectionName) -> Result<Arc<CollectionIndex>> {
        self.collections
            .read_or_recover()
            .get(collection)
            .cloned()
            .ok_or_else(|| Error::NoIndex(collection.to_string()))
    }

    /// Exact search over the same index, bypassing the graph: the ground truth that
    /// recall is measured against.
    pub fn exact_search(
        &self,
        collection: &CollectionName,
        query: &[f32],
        k: usize,
    ) -> Result<Vec<VectorHit>> {
        let entry = self.get(collection)?;
        let _slot = entry.slots.acquire();
        let matches = entry.index.read_or_recover().exact_search(query, k);
        hits(&entry, matches.map_err(usearch_error)?)
    }
}

fn hits(entry: &CollectionIndex, matches: usearch::ffi::Matches) -> Result<Vec<VectorHit>> {
    let keys = entry.keys.read_or_recover();
    Ok(matches
        .keys
        .iter()
        .zip(&matches.distances)
        .filter_map(|(label, distance)| {
            keys.get(label).map(|key| VectorHit {
                key: key.clone(),
                label: *label,
                distance: *distance,
            })
        })
        .collect())
}

/// Adds `rows` (labels not in the index) on up to `threads` threads. The caller holds
/// the index exclusively and has reserved room for them.
fn add_parallel(
    index: &usearch::Index,
    rows: &[(u64, Key, Vec<f32>)],
    threads: usize,
) -> Result<()> {
    let threads = threads.clamp(1, THREAD_SLOTS);
    let chunk = rows.len().div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        let workers: Vec<_> = rows
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    part.iter()
                        .try_for_each(|(label, _, v)| index.add(*label, v))
                })
            })
            .collect();
        workers
            .into_iter()
            .try_for_each(|w| w.join().expect("index add thread panicked"))
    })
    .map_err(usearch_error)
}

impl VectorCache for UsearchCache {
    fn build(
        &self,
        collection: &CollectionName,
        spec: &VectorSpec,
        rows: Vec<(u64, Key, Vec<f32>)>,
    ) -> hybridsync_core::Result<()> {
        let index = new_index(spec, &self.options, rows.len())?;
        add_parallel(&index, &rows, self.options.build_threads)?;
        let used = rows.len();
        let keys = rows.into_iter().map(|(label, key, _)| (label, key));
        self.install(collection, index, used, keys);
        Ok(())
    }

    fn save(
        &self,
        collection: &CollectionName,
        path: &std::path::Path,
    ) -> hybridsync_core::Result<()> {
        let entry = self.get(collection)?;
        let temp = path.with_extension("tmp");
        entry
            .index
            .read_or_recover()
            .save(path_str(&temp)?)
            .map_err(usearch_error)?;
        std::fs::rename(&temp, path)
            .map_err(|e| Error::Snapshot(format!("{}: {e}", path.display())))?;
        Ok(())
    }

    fn restore(
        &self,
        collection: &CollectionName,
        spec: &VectorSpec,
        path: &std::path::Path,
        keys: Vec<(u64, Key)>,
    ) -> hybridsync_core::Result<()> {
        let index = load_index(spec, &self.options, path, &keys)?;
        // Slots written, removed ones included (a loaded file may keep them).
        let used = index.capacity().max(index.size());
        self.install(collection, index, used, keys.into_iter());
        Ok(())
    }

    fn upsert(
        &self,
        collection: &CollectionName,
        label: u64,
        key: &Key,
        embedding: &[f32],
    ) -> hybridsync_core::Result<()> {
        let entry = self.get(collection)?;
        let index = entry.index.write_or_recover();
        let mut used = entry.used.lock_or_recover();
        if *used + 1 >= index.capacity() {
            reserve(&index, (*used + 1) * 2)?;
        }
        if index.contains(label) {
            index.remove(label).map_err(usearch_error)?;
        }
        index.add(label, embedding).map_err(usearch_error)?;
        *used += 1;
        entry.keys.write_or_recover().insert(label, key.clone());
        Ok(())
    }

    fn upsert_many(
        &self,
        collection: &CollectionName,
        items: &[(u64, Key, Vec<f32>)],
    ) -> hybridsync_core::Result<()> {
        if !crate::in_parallel(items) {
            return items
                .iter()
                .try_for_each(|(label, key, v)| self.upsert(collection, *label, key, v));
        }
        let entry = self.get(collection)?;
        for chunk in items.chunks(crate::PARALLEL_ADD_CHUNK) {
            let index = entry.index.write_or_recover();
            let mut used = entry.used.lock_or_recover();
            if *used + chunk.len() >= index.capacity() {
                reserve(&index, (*used + chunk.len()) * 2)?;
            }
            for (label, ..) in chunk {
                if index.contains(*label) {
                    index.remove(*label).map_err(usearch_error)?;
                }
            }
            add_parallel(&index, chunk, self.options.build_threads)?;
            *used += chunk.len();
            entry
                .keys
                .write_or_recover()
                .extend(chunk.iter().map(|(label, key, _)| (*label, key.clone())));
        }
        Ok(())
    }

    fn remove(&self, collection: &CollectionName, label: u64) -> hybridsync_core::Result<()> {
        let entry = self.get(collection)?;
        let index = entry.index.write_or_recover();
        if index.contains(label) {
            index.remove(label).map_err(usearch_error)?;
        }
        entry.keys.write_or_recover().remove(&label);
        Ok(())
    }

    fn search(
        &self,
        collection: &CollectionName,
        query: &[f32],
        k: usize,
    ) -> hybridsync_core::Result<Vec<VectorHit>> {
        let entry = self.get(collection)?;
        let _slot = entry.slots.acquire();
        let index = entry.index.read_or_recover();
        let matches = if index.size() <= self.options.exact_below {
            index.exact_search(query, k)
        } else {
            index.search(query, k)
        };
        Ok(hits(&entry, matches.map_err(usearch_error)?)?)
    }

    fn len(&self, collection: &CollectionName) -> usize {
        self.get(collection)
            .map_or(0, |e| e.index.read_or_recover().size())
    }

    fn format(&self) -> &'static str {
        "usearch"
    }
}
