//! A hierarchical navigable small world graph (HNSW), our own: flat arrays, distance
//! kernels that read f16 and i8 directly, and the next vectors of a walk prefetched while
//! the current ones are measured.
//!
//! - Vectors are stored as `T` (f32, f16 bits or i8) with one f32 `scale` each. For the
//!   cosine metric the stored vector is the unit vector, rounded, and its scale is the
//!   inverse norm of the rounded vector, so a vector's distance to itself is 0 up to f32
//!   rounding, whatever the rounding of its elements. For i8 the scale also undoes the
//!   quantization.
//! - Links are atomics. A search reads them without locks; a writer of one node's list
//!   holds that node's stripe lock. During a parallel build other inserts may read a
//!   list while it is rewritten and see a mix of old and new neighbours, which are all
//!   real nodes: harmless to a walk.
//! - A removed node stays in the graph as a waypoint and is never returned.

use crate::kernels::{Element, f32_to_f16};
use hybridsync_core::{Metric, MutexExt};
use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering::Acquire, Ordering::Relaxed, Ordering::Release};

/// No node.
const NONE: u32 = u32::MAX;
/// How many neighbours ahead of the one being measured a walk prefetches.
const PREFETCH_AHEAD: usize = 4;
/// Stripe locks guarding link lists during a parallel build.
const STRIPES: usize = 1024;

/// The graph's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Params {
    /// Links per node above level 0 (level 0 keeps twice as many).
    pub m: usize,
    /// Candidates kept while inserting.
    pub ef_construction: usize,
}

impl Default for Params {
    fn default() -> Self {
        Self {
            m: 16,
            ef_construction: 128,
        }
    }
}

/// A distance and a node, ordered by distance.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Near(f32, u32);

impl Eq for Near {}
impl PartialOrd for Near {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Near {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0).then(self.1.cmp(&other.1))
    }
}

/// Visited marks for one walk, reset by bumping an epoch.
#[derive(Debug, Default)]
struct Visited {
    marks: Vec<u16>,
    epoch: u16,
}

impl Visited {
    fn reset(&mut self, n: usize) {
        if self.marks.len() < n {
            self.marks.resize(n, 0);
        }
        self.epoch = self.epoch.wrapping_add(1);
        if self.epoch == 0 {
            self.marks.fill(0);
            self.epoch = 1;
        }
    }

    /// Marks `id`; true if it was not marked yet.
    #[inline]
    fn insert(&mut self, id: u32) -> bool {
        let mark = &mut self.marks[id as usize];
        let fresh = *mark != self.epoch;
        *mark = self.epoch;
        fresh
    }
}

/// One HNSW graph over vectors stored as `T`.
#[derive(Debug)]
pub(crate) struct Graph<T: Element> {
    dim: usize,
    metric: Metric,
    params: Params,
    data: Vec<T>,
    scale: Vec<f32>,
    labels: Vec<u64>,
    levels: Vec<u8>,
    deleted: Vec<bool>,
    /// Per node `1 + 2m` words: the count, then the level-0 neighbours.
    links0: Vec<AtomicU32>,
    /// Per node with levels above 0, its offset in `upper` (else `NONE`).
    upper_at: Vec<u32>,
    /// Per upper level of a node, `1 + m` words.
    upper: Vec<AtomicU32>,
    /// The entry node and the top level.
    head: Mutex<(u32, u8)>,
    by_label: HashMap<u64, u32>,
    stripes: Box<[Mutex<()>]>,
    visited: Mutex<Vec<Visited>>,
    rng: u64,
}

/// Asks the CPU to fetch `items` into cache: a hint, which does nothing elsewhere.
#[inline]
fn prefetch_bytes<V>(items: &[V]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        let base = items.as_ptr().cast::<i8>();
        let mut at = 0;
        while at < size_of_val(items) {
            // SAFETY: a prefetch never faults; the address lies within `items`.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(base.add(at)) };
            at += 64;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = items;
}

/// The level of a new node: geometric with ratio 1/m, from a SplitMix64 stream.
fn draw_level(rng: &mut u64, m: usize) -> u8 {
    *rng = rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *rng;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    let uniform = ((z >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
    let level = (-uniform.ln() / (m as f64).ln()).floor();
    level.min(31.0) as u8
}

impl<T: Element> Graph<T> {
    pub(crate) fn new(dim: usize, metric: Metric, params: Params) -> Self {
        Self {
            dim,
            metric,
            params,
            data: Vec::new(),
            scale: Vec::new(),
            labels: Vec::new(),
            levels: Vec::new(),
            deleted: Vec::new(),
            links0: Vec::new(),
            upper_at: Vec::new(),
            upper: Vec::new(),
            head: Mutex::new((NONE, 0)),
            by_label: HashMap::new(),
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            visited: Mutex::new(Vec::new()),
            rng: 0x005e_ed0f_6a11,
        }
    }

    /// Refuses a vector of another dimension.
    pub(crate) fn check(&self, v: &[f32]) -> crate::Result<()> {
        if v.len() == self.dim {
            Ok(())
        } else {
            Err(crate::Error::Dimension {
                expected: self.dim,
                got: v.len(),
            })
        }
    }

    /// Vectors that can be found.
    pub(crate) fn len(&self) -> usize {
        self.by_label.len()
    }

    /// Nodes, removed ones included.
    pub(crate) fn nodes(&self) -> usize {
        self.labels.len()
    }

    pub(crate) fn contains(&self, label: u64) -> bool {
        self.node_of(label).is_some()
    }

    /// The node that holds `label` now.
    pub(crate) fn node_of(&self, label: u64) -> Option<u32> {
        self.by_label.get(&label).copied()
    }

    /// The label of `node`, unless the node was removed or replaced.
    pub(crate) fn live_label(&self, node: u32) -> Option<u64> {
        let label = *self.labels.get(node as usize)?;
        (self.node_of(label) == Some(node)).then_some(label)
    }

    /// Bytes held by the vectors, links and maps.
    pub(crate) fn memory_bytes(&self) -> usize {
        self.data.capacity() * size_of::<T>()
            + self.scale.capacity() * 4
            + self.labels.capacity() * 8
            + self.levels.capacity()
            + self.deleted.capacity()
            + (self.links0.capacity() + self.upper.capacity() + self.upper_at.capacity()) * 4
            + self.by_label.capacity() * 16
    }

    fn m0(&self) -> usize {
        self.params.m * 2
    }

    fn vector(&self, id: u32) -> &[T] {
        let at = id as usize * self.dim;
        &self.data[at..at + self.dim]
    }

    /// The query form of `v`: the unit vector for cosine, `v` itself otherwise.
    pub(crate) fn prepare(&self, v: &[f32]) -> Vec<f32> {
        match self.metric {
            Metric::Cosine => {
                let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
                if norm > 0.0 {
                    v.iter().map(|x| x / norm).collect()
                } else {
                    v.to_vec()
                }
            }
            Metric::L2 | Metric::Ip => v.to_vec(),
        }
    }

    /// Node `id` as a prepared query.
    fn query_of(&self, id: u32, out: &mut Vec<f32>) {
        let scale = self.scale[id as usize];
        out.clear();
        out.extend(self.vector(id).iter().map(|x| x.to_f32() * scale));
    }

    #[inline]
    fn distance(&self, q: &[f32], id: u32) -> f32 {
        let (s, scale) = (self.vector(id), self.scale[id as usize]);
        match self.metric {
            Metric::Cosine | Metric::Ip => 1.0 - T::dot(q, s) * scale,
            Metric::L2 => T::l2(q, s, scale),
        }
    }

    /// Asks the CPU to fetch node `id`'s vector into cache.
    #[inline]
    fn prefetch(&self, id: u32) {
        let at = id as usize * self.dim;
        prefetch_bytes(&self.data[at..at + self.dim]);
    }

    /// The link list of `id` at `level`: the count word and the neighbours.
    fn list(&self, id: u32, level: usize) -> &[AtomicU32] {
        if level == 0 {
            let width = 1 + self.m0();
            let at = id as usize * width;
            &self.links0[at..at + width]
        } else {
            let width = 1 + self.params.m;
            let at = self.upper_at[id as usize] as usize + (level - 1) * width;
            &self.upper[at..at + width]
        }
    }

    /// Appends a node with no links; returns its id.
    fn push(&mut self, label: u64, v: &[f32]) -> u32 {
        let id = self.labels.len() as u32;
        let level = draw_level(&mut self.rng, self.params.m);
        let (values, scale) = self.encode(v);
        self.data.extend(values);
        self.scale.push(scale);
        self.labels.push(label);
        self.levels.push(level);
        self.deleted.push(false);
        self.links0
            .extend((0..1 + self.m0()).map(|_| AtomicU32::new(0)));
        if level > 0 {
            self.upper_at.push(self.upper.len() as u32);
            let words = usize::from(level) * (1 + self.params.m);
            self.upper.extend((0..words).map(|_| AtomicU32::new(0)));
        } else {
            self.upper_at.push(NONE);
        }
        id
    }

    /// `v` as stored elements and their scale.
    fn encode(&self, v: &[f32]) -> (Vec<T>, f32) {
        let v = self.prepare(v);
        let values: Vec<T> = match T::BYTES {
            4 => v.iter().map(|x| T::read_le(&x.to_le_bytes())).collect(),
            2 => v
                .iter()
                .map(|x| T::read_le(&f32_to_f16(*x).to_le_bytes()))
                .collect(),
            _ => {
                let max = v.iter().fold(0f32, |m, x| m.max(x.abs()));
                let unit = if max > 0.0 { 127.0 / max } else { 0.0 };
                v.iter()
                    .map(|x| T::read_le(&[(x * unit).round() as i8 as u8]))
                    .collect()
            }
        };
        let scale = match self.metric {
            Metric::Cosine => {
                let norm = values
                    .iter()
                    .map(|x| x.to_f32() * x.to_f32())
                    .sum::<f32>()
                    .sqrt();
                if norm > 0.0 { 1.0 / norm } else { 0.0 }
            }
            Metric::L2 | Metric::Ip if T::BYTES == 1 => {
                let max = v.iter().fold(0f32, |m, x| m.max(x.abs()));
                max / 127.0
            }
            Metric::L2 | Metric::Ip => 1.0,
        };
        (values, scale)
    }

    /// Adds or replaces `label`.
    pub(crate) fn insert(&mut self, label: u64, v: &[f32]) {
        self.remove(label);
        let id = self.push(label, v);
        let mut visited = self.visited.lock_or_recover().pop().unwrap_or_default();
        self.link(id, &mut visited);
        self.visited.lock_or_recover().push(visited);
        self.by_label.insert(label, id);
    }

    /// Adds `rows` (labels not in the graph) on up to `threads` threads: the vectors are
    /// stored first, then linked in parallel.
    pub(crate) fn insert_parallel(&mut self, rows: &[(u64, &[f32])], threads: usize) {
        let mut fresh = Vec::with_capacity(rows.len());
        for (label, v) in rows {
            self.remove(*label);
            fresh.push((*label, self.push(*label, v)));
        }
        // The highest levels first, as faiss does: the upper layers take shape before
        // the mass of level-0 nodes hangs from them.
        let mut order: Vec<u32> = fresh.iter().map(|(_, id)| *id).collect();
        order.sort_by_key(|id| Reverse(self.levels[*id as usize]));
        let threads = threads.clamp(1, 64).min(fresh.len().max(1));
        let next = std::sync::atomic::AtomicUsize::new(0);
        let this = &*self;
        std::thread::scope(|scope| {
            for _ in 0..threads {
                scope.spawn(|| {
                    let mut visited = Visited::default();
                    loop {
                        let at = next.fetch_add(1, Relaxed);
                        let Some(id) = order.get(at) else { break };
                        this.link(*id, &mut visited);
                    }
                });
            }
        });
        self.by_label.extend(fresh);
    }

    /// Removes `label`; its node stays as a waypoint. False if it was absent.
    pub(crate) fn remove(&mut self, label: u64) -> bool {
        match self.by_label.remove(&label) {
            Some(id) => {
                self.deleted[id as usize] = true;
                true
            }
            None => false,
        }
    }

    /// Links node `id` into the graph. Safe beside other `link` calls and searches.
    fn link(&self, id: u32, visited: &mut Visited) {
        let level = usize::from(self.levels[id as usize]);
        let mut head = self.head.lock_or_recover();
        let (entry, top) = *head;
        if entry == NONE {
            *head = (id, level as u8);
            return;
        }
        let top = usize::from(top);
        // A node that raises the top level holds the head until it is linked (rare).
        let held = if level > top {
            Some(head)
        } else {
            drop(head);
            None
        };
        let mut q = Vec::with_capacity(self.dim);
        self.query_of(id, &mut q);
        let mut near = Near(self.distance(&q, entry), entry);
        for l in (level + 1..=top).rev() {
            near = self.greedy(&q, near, l);
        }
        let mut scratch = Vec::with_capacity(self.dim);
        for l in (0..=level.min(top)).rev() {
            let found =
                self.search_layer(&q, &[near], self.params.ef_construction, l, visited, false);
            let cap = if l == 0 { self.m0() } else { self.params.m };
            let chosen = self.select(&found, cap, &mut scratch);
            let chosen = self.set_own_links(id, l, chosen, cap, &mut scratch);
            for n in &chosen {
                self.add_link(n.1, id, n.0, l, cap, &mut scratch);
            }
            near = found[0];
        }
        if let Some(mut head) = held {
            *head = (id, level as u8);
        }
    }

    /// Sets the links of a node being linked, keeping any that inserts beside it added
    /// since they found it at a level above (pruned to `cap`). Returns the new ones.
    fn set_own_links(
        &self,
        id: u32,
        level: usize,
        chosen: Vec<Near>,
        cap: usize,
        scratch: &mut Vec<f32>,
    ) -> Vec<Near> {
        let _guard = self.stripes[id as usize % STRIPES].lock_or_recover();
        let list = self.list(id, level);
        let count = list[0].load(Relaxed) as usize;
        if count == 0 {
            self.write_list(id, level, &chosen);
            return chosen;
        }
        let mut q = Vec::with_capacity(self.dim);
        self.query_of(id, &mut q);
        let mut all = chosen.clone();
        for a in &list[1..=count] {
            let n = a.load(Relaxed);
            if !all.iter().any(|c| c.1 == n) {
                all.push(Near(self.distance(&q, n), n));
            }
        }
        all.sort_unstable();
        let kept = if all.len() > cap {
            self.select(&all, cap, scratch)
        } else {
            all
        };
        self.write_list(id, level, &kept);
        chosen
    }

    fn write_list(&self, id: u32, level: usize, nodes: &[Near]) {
        let list = self.list(id, level);
        for (slot, n) in list[1..].iter().zip(nodes) {
            slot.store(n.1, Relaxed);
        }
        list[0].store(nodes.len() as u32, Release);
    }

    fn neighbours(&self, id: u32, level: usize) -> impl Iterator<Item = u32> + '_ {
        let list = self.list(id, level);
        let count = (list[0].load(Acquire) as usize).min(list.len() - 1);
        list[1..=count].iter().map(|a| a.load(Relaxed))
    }

    /// Adds `new` to the links of `id`, pruning by the heuristic when full.
    fn add_link(
        &self,
        id: u32,
        new: u32,
        d: f32,
        level: usize,
        cap: usize,
        scratch: &mut Vec<f32>,
    ) {
        let _guard = self.stripes[id as usize % STRIPES].lock_or_recover();
        let list = self.list(id, level);
        let count = list[0].load(Relaxed) as usize;
        if count < cap {
            list[1 + count].store(new, Relaxed);
            list[0].store(count as u32 + 1, Release);
            return;
        }
        let mut q = Vec::with_capacity(self.dim);
        self.query_of(id, &mut q);
        let mut candidates: Vec<Near> = list[1..=count]
            .iter()
            .map(|a| {
                let n = a.load(Relaxed);
                Near(self.distance(&q, n), n)
            })
            .collect();
        candidates.push(Near(d, new));
        candidates.sort_unstable();
        let kept = self.select(&candidates, cap, scratch);
        self.write_list(id, level, &kept);
    }

    /// HNSW's neighbour heuristic: nearest first, skipping a candidate nearer to one
    /// already kept than to the base. `sorted` is nearest first.
    fn select(&self, sorted: &[Near], m: usize, scratch: &mut Vec<f32>) -> Vec<Near> {
        if sorted.len() <= m {
            return sorted.to_vec();
        }
        let mut kept: Vec<Near> = Vec::with_capacity(m);
        for c in sorted {
            if kept.len() == m {
                break;
            }
            self.query_of(c.1, scratch);
            if kept.iter().all(|k| self.distance(scratch, k.1) >= c.0) {
                kept.push(*c);
            }
        }
        kept
    }

    /// Greedy descent at one level from `near`.
    fn greedy(&self, q: &[f32], mut near: Near, level: usize) -> Near {
        loop {
            let mut moved = false;
            for n in self.neighbours(near.1, level) {
                let d = self.distance(q, n);
                if d < near.0 {
                    near = Near(d, n);
                    moved = true;
                }
            }
            if !moved {
                return near;
            }
        }
    }

    /// The `ef` nearest nodes found from `entries` at `level`, nearest first; with
    /// `live_only`, removed nodes are walked through but not returned.
    fn search_layer(
        &self,
        q: &[f32],
        entries: &[Near],
        ef: usize,
        level: usize,
        visited: &mut Visited,
        live_only: bool,
    ) -> Vec<Near> {
        visited.reset(self.nodes());
        let mut candidates: BinaryHeap<Reverse<Near>> = BinaryHeap::with_capacity(ef * 4);
        let mut found: BinaryHeap<Near> = BinaryHeap::with_capacity(ef + 1);
        for e in entries {
            visited.insert(e.1);
            candidates.push(Reverse(*e));
            if !live_only || !self.deleted[e.1 as usize] {
                found.push(*e);
            }
        }
        let mut fresh = Vec::with_capacity(self.m0());
        while let Some(Reverse(c)) = candidates.pop() {
            if found.len() >= ef && found.peek().is_some_and(|worst| c.0 > worst.0) {
                break;
            }
            if let Some(Reverse(next)) = candidates.peek() {
                prefetch_bytes(&self.list(next.1, level)[..1]);
            }
            fresh.clear();
            fresh.extend(self.neighbours(c.1, level).filter(|n| visited.insert(*n)));
            // Prefetched a few ahead of the one measured: asked for all at once, the
            // later vectors' lines were evicted or dropped before their turn came
            // (measured on 100k f16 vectors, median over six paired rounds: ef 24
            // 50.2 → 39.7 µs, ef 32 67.0 → 49.4 µs).
            for n in fresh.iter().take(PREFETCH_AHEAD) {
                self.prefetch(*n);
            }
            for (i, n) in fresh.iter().enumerate() {
                if let Some(next) = fresh.get(i + PREFETCH_AHEAD) {
                    self.prefetch(*next);
                }
                let d = self.distance(q, *n);
                let bound = found.peek().map_or(f32::INFINITY, |w| w.0);
                if found.len() < ef || d < bound {
                    candidates.push(Reverse(Near(d, *n)));
                    if !live_only || !self.deleted[*n as usize] {
                        found.push(Near(d, *n));
                        if found.len() > ef {
                            found.pop();
                        }
                    }
                }
            }
        }
        found.into_sorted_vec()
    }

    /// The `k` nearest live labels to `query` with a walk of breadth `ef`, nearest
    /// first, as (distance, label).
    pub(crate) fn search(&self, query: &[f32], k: usize, ef: usize) -> Vec<(f32, u64)> {
        let (entry, top) = *self.head.lock_or_recover();
        if entry == NONE || k == 0 {
            return Vec::new();
        }
        let q = self.prepare(query);
        let mut near = Near(self.distance(&q, entry), entry);
        for l in (1..=usize::from(top)).rev() {
            near = self.greedy(&q, near, l);
        }
        let mut visited = self.visited.lock_or_recover().pop().unwrap_or_default();
        let found = self.search_layer(&q, &[near], ef.max(k), 0, &mut visited, true);
        self.visited.lock_or_recover().push(visited);
        found
            .into_iter()
            .take(k)
            .map(|n| (n.0, self.labels[n.1 as usize]))
            .collect()
    }

    /// The `k` nearest live labels by an exact scan, in storage order.
    pub(crate) fn exact(&self, query: &[f32], k: usize) -> Vec<(f32, u64)> {
        let q = self.prepare(query);
        let mut found: BinaryHeap<Near> = BinaryHeap::with_capacity(k + 1);
        for id in 0..self.nodes() as u32 {
            if self.deleted[id as usize] || k == 0 {
                continue;
            }
            let d = self.distance(&q, id);
            if found.len() < k {
                found.push(Near(d, id));
            } else if found.peek().is_some_and(|worst| d < worst.0) {
                found.pop();
                found.push(Near(d, id));
            }
        }
        found
            .into_sorted_vec()
            .into_iter()
            .map(|n| (n.0, self.labels[n.1 as usize]))
            .collect()
    }
}

/// The index file: a magic word and version, the shape, then the arrays, little-endian.
const MAGIC: &[u8; 8] = b"HSHNSW\0\x01";

/// Reads little-endian fields from a file's bytes, failing on a short file.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err("the file ends early".into());
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn len(&mut self, max: usize) -> Result<usize, String> {
        let n = usize::try_from(self.u64()?).map_err(|_| "a length overflows".to_string())?;
        if n > max {
            return Err(format!("a length of {n} is beyond the file"));
        }
        Ok(n)
    }
    fn array<V>(
        &mut self,
        n: usize,
        bytes: usize,
        read: impl Fn(&[u8]) -> V,
    ) -> Result<Vec<V>, String> {
        let raw = self.take(n.checked_mul(bytes).ok_or("a length overflows")?)?;
        Ok(raw.chunks_exact(bytes).map(read).collect())
    }
}

fn metric_code(metric: Metric) -> u32 {
    match metric {
        Metric::L2 => 0,
        Metric::Cosine => 1,
        Metric::Ip => 2,
    }
}

impl<T: Element> Graph<T> {
    /// The graph as the bytes of an index file.
    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        let n = self.nodes();
        let mut out =
            Vec::with_capacity(64 + self.data.len() * T::BYTES + n * (26 + 4 * (1 + self.m0())));
        out.extend_from_slice(MAGIC);
        let (entry, top) = *self.head.lock_or_recover();
        for word in [
            self.dim as u32,
            metric_code(self.metric),
            T::BYTES as u32,
            self.params.m as u32,
            self.params.ef_construction as u32,
            entry,
            u32::from(top),
        ] {
            out.extend_from_slice(&word.to_le_bytes());
        }
        out.extend_from_slice(&(n as u64).to_le_bytes());
        out.extend_from_slice(&(self.upper.len() as u64).to_le_bytes());
        self.labels
            .iter()
            .for_each(|l| out.extend_from_slice(&l.to_le_bytes()));
        out.extend_from_slice(&self.levels);
        out.extend(self.deleted.iter().map(|d| u8::from(*d)));
        self.scale
            .iter()
            .for_each(|s| out.extend_from_slice(&s.to_le_bytes()));
        self.data.iter().for_each(|x| x.write_le(&mut out));
        for word in self.links0.iter().chain(&self.upper) {
            out.extend_from_slice(&word.load(Relaxed).to_le_bytes());
        }
        self.upper_at
            .iter()
            .for_each(|a| out.extend_from_slice(&a.to_le_bytes()));
        out
    }

    /// A graph from an index file's bytes, checked to be whole and of this shape: every
    /// link names a node, every count fits its list.
    pub(crate) fn from_bytes(bytes: &[u8], dim: usize, metric: Metric) -> Result<Self, String> {
        let mut r = Reader(bytes);
        if r.take(MAGIC.len())? != MAGIC {
            return Err("not a hybridsync index file (or another version)".into());
        }
        let (file_dim, file_metric, width, m, ef_construction, entry, top) = (
            r.u32()?,
            r.u32()?,
            r.u32()?,
            r.u32()?,
            r.u32()?,
            r.u32()?,
            r.u32()?,
        );
        let shape =
            |d: u32, metric: u32, w: u32| format!("{d}-d, metric {metric}, {w}-byte elements");
        if (file_dim as usize, file_metric, width as usize) != (dim, metric_code(metric), T::BYTES)
        {
            return Err(format!(
                "it holds a {} index, the collection wants {}",
                shape(file_dim, file_metric, width),
                shape(dim as u32, metric_code(metric), T::BYTES as u32)
            ));
        }
        if !(2..=256).contains(&m) || top > 31 {
            return Err(format!(
                "its shape is out of range (m {m}, top level {top})"
            ));
        }
        let mut graph = Self::new(
            dim,
            metric,
            Params {
                m: m as usize,
                ef_construction: ef_construction as usize,
            },
        );
        let n = r.len(bytes.len())?;
        let upper_len = r.len(bytes.len() / 4)?;
        graph.labels = r.array(n, 8, |b| u64::from_le_bytes(b.try_into().expect("8 bytes")))?;
        graph.levels = r.array(n, 1, |b| b[0])?;
        graph.deleted = r.array(n, 1, |b| b[0] != 0)?;
        graph.scale = r.array(n, 4, |b| f32::from_le_bytes(b.try_into().expect("4 bytes")))?;
        graph.data = r.array(n * dim, T::BYTES, T::read_le)?;
        let word = |b: &[u8]| u32::from_le_bytes(b.try_into().expect("4 bytes"));
        let links0 = r.array(n * (1 + graph.m0()), 4, word)?;
        let upper = r.array(upper_len, 4, word)?;
        graph.upper_at = r.array(n, 4, word)?;
        if !r.0.is_empty() {
            return Err(format!("{} bytes follow the index", r.0.len()));
        }
        // Each node's upper lists lie inside `upper`, and no two nodes share them.
        let mut next_upper = 0usize;
        for (id, (&level, &at)) in graph.levels.iter().zip(&graph.upper_at).enumerate() {
            let words = usize::from(level) * (1 + graph.params.m);
            if level > 31
                || (level == 0) != (at == NONE)
                || (level > 0 && at as usize != next_upper)
            {
                return Err(format!("node {id}'s levels do not match its links"));
            }
            next_upper += words;
        }
        if next_upper != upper_len {
            return Err("the upper links do not add up".into());
        }
        let check = |lists: &[u32], width: usize| {
            lists.chunks_exact(width).all(|list| {
                let count = list[0] as usize;
                count < width && list[1..=count].iter().all(|id| (*id as usize) < n)
            })
        };
        if !check(&links0, 1 + graph.m0()) || !check(&upper, 1 + graph.params.m) {
            return Err("a link names no node, or a count overflows its list".into());
        }
        // A walk at level l only follows links to nodes that have level l.
        let width = 1 + graph.params.m;
        for (&level, &at) in graph.levels.iter().zip(&graph.upper_at) {
            for l in 1..=usize::from(level) {
                let list = &upper[at as usize + (l - 1) * width..][..width];
                if list[1..=list[0] as usize]
                    .iter()
                    .any(|id| usize::from(graph.levels[*id as usize]) < l)
                {
                    return Err(format!("a level-{l} link names a node below that level"));
                }
            }
        }
        if (n == 0) != (entry == NONE)
            || (n > 0 && (entry as usize >= n || u32::from(graph.levels[entry as usize]) != top))
        {
            return Err("the entry node is not in the graph".into());
        }
        graph.links0 = links0.into_iter().map(AtomicU32::new).collect();
        graph.upper = upper.into_iter().map(AtomicU32::new).collect();
        *graph.head.get_mut().unwrap_or_else(|e| e.into_inner()) = (entry, top as u8);
        for (id, label) in graph.labels.iter().enumerate() {
            if !graph.deleted[id] && graph.by_label.insert(*label, id as u32).is_some() {
                return Err(format!("label {label} is live twice"));
            }
        }
        graph.rng ^= n as u64;
        Ok(graph)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hybridsync_testkit::workload::Clustered;

    fn recall<T: Element>(graph: &Graph<T>, queries: &[Vec<f32>], ef: usize) -> f64 {
        let mut hits = 0;
        for q in queries {
            let exact: Vec<u64> = graph.exact(q, 10).into_iter().map(|h| h.1).collect();
            hits += graph
                .search(q, 10, ef)
                .iter()
                .filter(|h| exact.contains(&h.1))
                .count();
        }
        hits as f64 / (queries.len() * 10) as f64
    }

    fn built<T: Element>(metric: Metric, n: usize, threads: usize) -> (Graph<T>, Vec<Vec<f32>>) {
        let mut voices = Clustered::new(7, n / 20, 48, 0.15);
        let vectors = voices.samples(n);
        let mut graph = Graph::<T>::new(48, metric, Params::default());
        let rows: Vec<(u64, &[f32])> = vectors
            .iter()
            .enumerate()
            .map(|(i, v)| (i as u64 * 3, v.as_slice()))
            .collect();
        graph.insert_parallel(&rows, threads);
        (graph, voices.samples(50))
    }

    #[test]
    fn a_walk_finds_what_an_exact_scan_finds() {
        for metric in [Metric::Cosine, Metric::L2, Metric::Ip] {
            let (graph, queries) = built::<u16>(metric, 3_000, 2);
            let r = recall(&graph, &queries, 64);
            assert!(r >= 0.97, "{metric:?} f16: recall {r}");
        }
        let (graph, queries) = built::<f32>(Metric::Cosine, 3_000, 1);
        assert!(recall(&graph, &queries, 64) >= 0.97);
        let (graph, queries) = built::<i8>(Metric::Cosine, 3_000, 2);
        assert!(recall(&graph, &queries, 64) >= 0.9);
    }

    #[test]
    fn a_vector_is_its_own_nearest_at_distance_zero() {
        let (graph, _) = built::<u16>(Metric::Cosine, 2_000, 2);
        let mut voices = Clustered::new(7, 100, 48, 0.15);
        for (i, v) in voices.samples(200).iter().enumerate() {
            let hit = graph.search(v, 1, 32)[0];
            assert_eq!(hit.1, i as u64 * 3, "{hit:?} exact {:?}", graph.exact(v, 2));
            assert!(hit.0.abs() < 1e-6, "{}", hit.0);
        }
    }

    #[test]
    fn removed_and_replaced_vectors_are_never_returned() {
        let (mut graph, queries) = built::<u16>(Metric::Cosine, 2_000, 2);
        for label in (0..6_000).step_by(6) {
            assert!(graph.remove(label));
        }
        assert!(!graph.remove(0));
        assert_eq!(graph.len(), 1_000);
        let moved = vec![0.5; 48];
        graph.insert(3, &moved);
        assert_eq!(graph.len(), 1_000);
        assert_eq!(graph.search(&moved, 1, 32)[0].1, 3);
        for q in &queries {
            for (_, label) in graph.search(q, 10, 64) {
                assert!(label % 6 != 0, "removed label {label} returned");
            }
        }
        assert!(recall(&graph, &queries, 64) >= 0.95);
    }

    #[test]
    fn a_graph_survives_its_file_and_a_damaged_file_is_refused() {
        let (mut graph, queries) = built::<u16>(Metric::Cosine, 2_000, 2);
        graph.remove(3);
        let bytes = graph.to_bytes();
        let back = Graph::<u16>::from_bytes(&bytes, 48, Metric::Cosine).unwrap();
        assert_eq!(back.len(), graph.len());
        for q in &queries {
            assert_eq!(back.search(q, 10, 64), graph.search(q, 10, 64));
        }
        assert!(
            Graph::<u16>::from_bytes(&bytes, 32, Metric::Cosine)
                .unwrap_err()
                .contains("48-d")
        );
        assert!(Graph::<f32>::from_bytes(&bytes, 48, Metric::Cosine).is_err());
        assert!(Graph::<u16>::from_bytes(&bytes, 48, Metric::L2).is_err());
        assert!(Graph::<u16>::from_bytes(&bytes[..bytes.len() - 1], 48, Metric::Cosine).is_err());
        // A link to a node that does not exist.
        let mut bad = bytes.clone();
        let links0 =
            bytes.len() - graph.upper_at.len() * 4 - graph.upper.len() * 4 - graph.links0.len() * 4;
        bad[links0 + 4..links0 + 8].copy_from_slice(&u32::MAX.to_le_bytes());
        bad[links0..links0 + 4].copy_from_slice(&1u32.to_le_bytes());
        assert!(
            Graph::<u16>::from_bytes(&bad, 48, Metric::Cosine)
                .unwrap_err()
                .contains("names no node")
        );
        // An upper-level link to a node without that level (a walk would read a list
        // the node does not have).
        let mut bad = bytes.clone();
        let upper = bytes.len() - graph.upper_at.len() * 4 - graph.upper.len() * 4;
        let low = graph.levels.iter().position(|l| *l == 0).unwrap() as u32;
        let high = graph.levels.iter().position(|l| *l > 0).unwrap();
        let at = upper + graph.upper_at[high] as usize * 4;
        bad[at..at + 4].copy_from_slice(&1u32.to_le_bytes());
        bad[at + 4..at + 8].copy_from_slice(&low.to_le_bytes());
        assert!(
            Graph::<u16>::from_bytes(&bad, 48, Metric::Cosine)
                .unwrap_err()
                .contains("below that level")
        );
        let mut bad = bytes;
        bad[0] ^= 1;
        assert!(Graph::<u16>::from_bytes(&bad, 48, Metric::Cosine).is_err());
    }

    #[test]
    fn an_empty_graph_finds_nothing_and_saves() {
        let graph = Graph::<f32>::new(4, Metric::L2, Params::default());
        assert!(graph.search(&[1.0; 4], 3, 16).is_empty());
        let back = Graph::<f32>::from_bytes(&graph.to_bytes(), 4, Metric::L2).unwrap();
        assert_eq!(back.len(), 0);
        let mut one = back;
        one.insert(9, &[1.0, 0.0, 0.0, 0.0]);
        assert_eq!(one.search(&[1.0; 4], 3, 16).len(), 1);
    }
}
