//! [`HnswCache`]: one HNSW graph of our own ([`crate::graph`]) per vector collection.

use crate::graph::{Graph, Params};
use crate::{Error, Result};
use hybridsync_core::RwLockExt;
use hybridsync_core::{CollectionName, Key, Limits, Precision, VectorCache, VectorHit, VectorSpec};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// Tuning for the indexes.
#[derive(Debug, Clone, Copy)]
pub struct VectorOptions {
    /// At or below this many vectors a search scans exactly instead of walking the graph:
    /// it is as fast there and always exact.
    pub exact_below: usize,
    /// Breadth of a search's walk (`ef`; 0 = the index's default, [`DEFAULT_EF`] for
    /// [`HnswCache`]). Wider finds more of the true nearest, slower.
    pub expansion_search: usize,
    /// Threads used to build an index at open, and to add a large batch.
    pub build_threads: usize,
}

impl Default for VectorOptions {
    fn default() -> Self {
        Self {
            exact_below: 2_000,
            expansion_search: 0,
            build_threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
        }
    }
}

/// The walk's breadth unless [`VectorOptions::expansion_search`] sets one: recall@10 of
/// 0.995–0.998 on the bench's 100k clustered 192-D voiceprints. 24 gave 0.992–0.996
/// over 1,000 queries and 16 gave 0.975–0.986 (`docs/benchmarks.md`); 32 keeps a margin
/// above 0.99 on data less clustered than the bench's. `[vector] ef` sets another.
pub const DEFAULT_EF: usize = 32;

/// A graph of the collection's precision.
#[derive(Debug)]
enum AnyGraph {
    F32(Graph<f32>),
    F16(Graph<u16>),
    I8(Graph<i8>),
}

/// Runs `$body` with `$g` bound to the graph inside `$any`, whatever its element type.
macro_rules! each {
    ($any:expr, $g:ident => $body:expr) => {
        match $any {
            AnyGraph::F32($g) => $body,
            AnyGraph::F16($g) => $body,
            AnyGraph::I8($g) => $body,
        }
    };
}

impl AnyGraph {
    fn new(spec: &VectorSpec) -> Self {
        let (dim, metric, params) = (spec.dim, spec.metric, Params::default());
        match spec.precision {
            Precision::F32 => Self::F32(Graph::new(dim, metric, params)),
            Precision::F16 => Self::F16(Graph::new(dim, metric, params)),
            Precision::I8 => Self::I8(Graph::new(dim, metric, params)),
        }
    }

    fn from_bytes(spec: &VectorSpec, bytes: &[u8]) -> std::result::Result<Self, String> {
        let (dim, metric) = (spec.dim, spec.metric);
        Ok(match spec.precision {
            Precision::F32 => Self::F32(Graph::from_bytes(bytes, dim, metric)?),
            Precision::F16 => Self::F16(Graph::from_bytes(bytes, dim, metric)?),
            Precision::I8 => Self::I8(Graph::from_bytes(bytes, dim, metric)?),
        })
    }
}

/// The key of every graph node, in node order, in one buffer: the key's text and an
/// end offset (14 bytes for a 6-byte key) where a map from label to key took about
/// eighty (its table, and an allocation per key). Nodes are never reused, so this only grows with the graph; a replaced or
/// removed node keeps its text, as the graph keeps its vector.
#[derive(Debug, Default)]
struct Names {
    text: String,
    /// Where each node's key ends in `text`.
    ends: Vec<usize>,
}

impl Names {
    fn push(&mut self, key: &str) {
        self.text.push_str(key);
        self.ends.push(self.text.len());
    }

    fn len(&self) -> usize {
        self.ends.len()
    }

    /// Node `node`'s key. It was a valid key when stored, under the store's limits,
    /// which may be wider than the defaults; so only the length bound is lifted here.
    fn key(&self, node: u32) -> Option<Key> {
        let node = node as usize;
        let end = *self.ends.get(node)?;
        let start = node.checked_sub(1).map_or(0, |before| self.ends[before]);
        let limits = Limits {
            max_key_bytes: usize::MAX,
            ..Limits::default()
        };
        Key::with_limits(&self.text[start..end], &limits).ok()
    }

    fn memory_bytes(&self) -> usize {
        self.text.capacity() + self.ends.capacity() * size_of::<usize>()
    }
}

/// One collection: its graph and the key of each node.
#[derive(Debug)]
struct Collection {
    graph: AnyGraph,
    names: Names,
}

impl Collection {
    fn new(graph: AnyGraph) -> Self {
        Self {
            graph,
            names: Names::default(),
        }
    }

    fn hits(&self, found: Vec<(f32, u64)>) -> Vec<VectorHit> {
        found
            .into_iter()
            .filter_map(|(distance, label)| {
                let node = each!(&self.graph, g => g.node_of(label))?;
                Some(VectorHit {
                    key: self.names.key(node)?,
                    label,
                    distance,
                })
            })
            .collect()
    }

    /// Adds or replaces one vector.
    fn insert(&mut self, label: u64, key: &Key, v: &[f32]) {
        each!(&mut self.graph, g => g.insert(label, v));
        self.names.push(key.as_str());
        self.check_names();
    }

    /// Adds or replaces `items` in parallel: the graph appends a node per item, in order.
    fn add(&mut self, items: &[(u64, Key, Vec<f32>)], threads: usize) {
        let rows: Vec<(u64, &[f32])> = items.iter().map(|(l, _, v)| (*l, v.as_slice())).collect();
        each!(&mut self.graph, g => g.insert_parallel(&rows, threads));
        for (_, key, _) in items {
            self.names.push(key.as_str());
        }
        self.check_names();
    }

    fn check_names(&self) {
        debug_assert_eq!(
            self.names.len(),
            each!(&self.graph, g => g.nodes()),
            "one name per graph node"
        );
    }
}

/// HNSW indexes of our own, keyed by collection. Implements [`VectorCache`]; the
/// default index.
///
/// Against usearch on the same graph parameters it searches faster at equal recall:
/// the next vectors of a walk are prefetched while the current ones are measured, and
/// f16 and i8 are read by AVX2 kernels directly (`docs/benchmarks.md`).
#[derive(Debug, Default)]
pub struct HnswCache {
    options: VectorOptions,
    collections: RwLock<HashMap<CollectionName, Arc<RwLock<Collection>>>>,
}

impl HnswCache {
    /// An empty cache with `options`.
    pub fn new(options: VectorOptions) -> Self {
        Self {
            options,
            collections: RwLock::new(HashMap::new()),
        }
    }

    fn get(&self, collection: &CollectionName) -> Result<Arc<RwLock<Collection>>> {
        self.collections
            .read_or_recover()
            .get(collection)
            .cloned()
            .ok_or_else(|| Error::NoIndex(collection.to_string()))
    }

    fn install(&self, collection: &CollectionName, entry: Collection) {
        self.collections
            .write_or_recover()
            .insert(collection.clone(), Arc::new(RwLock::new(entry)));
    }

    fn ef(&self) -> usize {
        match self.options.expansion_search {
            0 => DEFAULT_EF,
            ef => ef,
        }
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
        let entry = entry.read_or_recover();
        let found = each!(&entry.graph, g => { g.check(query)?; g.exact(query, k) });
        Ok(entry.hits(found))
    }

    /// The `k` nearest to `query` by a walk of breadth `ef` (at least `k`), whatever
    /// [`VectorOptions::expansion_search`] says: for a search that wants more recall,
    /// or less, than the rest.
    pub fn search_with_ef(
        &self,
        collection: &CollectionName,
        query: &[f32],
        k: usize,
        ef: usize,
    ) -> Result<Vec<VectorHit>> {
        let entry = self.get(collection)?;
        let entry = entry.read_or_recover();
        let exact_below = self.options.exact_below;
        let found = each!(&entry.graph, g => {
            g.check(query)?;
            if g.len() <= exact_below { g.exact(query, k) } else { g.search(query, k, ef) }
        });
        Ok(entry.hits(found))
    }

    /// Bytes the collection's index holds (vectors, links, maps and keys).
    pub fn memory_bytes(&self, collection: &CollectionName) -> usize {
        self.get(collection).map_or(0, |e| {
            let e = e.read_or_recover();
            each!(&e.graph, g => g.memory_bytes()) + e.names.memory_bytes()
        })
    }
}

impl VectorCache for HnswCache {
    fn build(
        &self,
        collection: &CollectionName,
        spec: &VectorSpec,
        rows: Vec<(u64, Key, Vec<f32>)>,
    ) -> hybridsync_core::Result<()> {
        let mut entry = Collection::new(AnyGraph::new(spec));
        for (_, _, v) in &rows {
            each!(&entry.graph, g => g.check(v))?;
        }
        if crate::in_parallel(&rows) {
            entry.add(&rows, self.options.build_threads);
        } else {
            for (label, key, v) in &rows {
                entry.insert(*label, key, v);
            }
        }
        self.install(collection, entry);
        Ok(())
    }

    fn save(
        &self,
        collection: &CollectionName,
        path: &std::path::Path,
    ) -> hybridsync_core::Result<()> {
        let entry = self.get(collection)?;
        let bytes = each!(&entry.read_or_recover().graph, g => g.to_bytes());
        let temp = path.with_extension("tmp");
        let fail = |e: std::io::Error| Error::Snapshot(format!("{}: {e}", path.display()));
        std::fs::write(&temp, bytes).map_err(fail)?;
        std::fs::rename(&temp, path).map_err(fail)?;
        Ok(())
    }

    fn restore(
        &self,
        collection: &CollectionName,
        spec: &VectorSpec,
        path: &std::path::Path,
        keys: Vec<(u64, Key)>,
    ) -> hybridsync_core::Result<()> {
        let fail = |why: String| Error::Snapshot(format!("{}: {why}", path.display()));
        let bytes = std::fs::read(path).map_err(|e| fail(e.to_string()))?;
        let graph = AnyGraph::from_bytes(spec, &bytes).map_err(fail)?;
        let (len, all_in) =
            each!(&graph, g => (g.len(), keys.iter().all(|(label, _)| g.contains(*label))));
        if len != keys.len() || !all_in {
            return Err(fail(format!(
                "it holds {len} vectors, not the {} the store has",
                keys.len()
            ))
            .into());
        }
        let mut entry = Collection::new(graph);
        let mut by_label: HashMap<u64, Key> = keys.into_iter().collect();
        for node in 0..each!(&entry.graph, g => g.nodes()) as u32 {
            // A replaced or removed node is never a hit: it keeps an empty name.
            let live = each!(&entry.graph, g => g.live_label(node));
            let key = live.and_then(|label| by_label.remove(&label));
            entry.names.push(key.as_ref().map_or("", Key::as_str));
        }
        entry.check_names();
        self.install(collection, entry);
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
        let mut entry = entry.write_or_recover();
        each!(&entry.graph, g => g.check(embedding))?;
        entry.insert(label, key, embedding);
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
            let mut entry = entry.write_or_recover();
            for (_, _, v) in chunk {
                each!(&entry.graph, g => g.check(v))?;
            }
            entry.add(chunk, self.options.build_threads);
        }
        Ok(())
    }

    fn remove(&self, collection: &CollectionName, label: u64) -> hybridsync_core::Result<()> {
        let entry = self.get(collection)?;
        let mut entry = entry.write_or_recover();
        each!(&mut entry.graph, g => g.remove(label));
        Ok(())
    }

    fn search(
        &self,
        collection: &CollectionName,
        query: &[f32],
        k: usize,
    ) -> hybridsync_core::Result<Vec<VectorHit>> {
        Ok(self.search_with_ef(collection, query, k, self.ef())?)
    }

    fn len(&self, collection: &CollectionName) -> usize {
        self.get(collection)
            .map_or(0, |e| each!(&e.read_or_recover().graph, g => g.len()))
    }

    fn format(&self) -> &'static str {
        "hnsw"
    }
}
