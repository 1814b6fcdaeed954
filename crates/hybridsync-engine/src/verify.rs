//! The consistency checker (R23): proves a device and the cloud hold the same rows, or
//! finds which rows differ and how, and mends them.
//!
//! Both sides answer for the tree of `hybridsync_core::LocalTree` over one collection:
//! the device from the digests and level-1 nodes its writes keep (the rows under a
//! differing level-1 node read once, when the check first goes below it), the cloud in
//! SQL. The check descends only into nodes that differ, two levels at a time where the
//! differences are dense enough that the level between would differ everywhere, and at
//! the differing leaf buckets exchanges `(key, version, tombstone, hash)` of those
//! buckets only. Each differing key is then read again on both sides
//! and reported only if it still differs, so a write landing during a check is not
//! reported (it is a difference of the moment, or pending). Rows with a change still in
//! the outbox are reported apart, never as inconsistent.

use crate::{Engine, Result, Syncer};
use hybridsync_core::{
    CloudSink, CollectionName, CollectionSpec, ContentHash, Difference, Key, LocalStore, LocalTree,
    NodeDigest, Record, RowDigest, Strategy, SyncEvent, VectorCache, WriteRequest, depth_for,
    differing,
};
use hybridsync_telemetry::catalogue;
use std::collections::{BTreeMap, HashSet};
use std::time::Instant;

/// What to check and whether to mend it.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// Collections to check; every collection known on either side when empty.
    pub collections: Vec<CollectionName>,
    /// Mend what differs: push device-newer rows, pull cloud-newer ones, settle damage.
    pub repair: bool,
    /// Also recompute every content hash from the stored bytes on both sides, to find
    /// rows whose bytes changed without a new version.
    pub deep: bool,
    /// Check only this fraction (0–1] of the leaf buckets, chosen at random.
    pub sample: Option<f64>,
    /// Who wins when both sides hold intact but different content at one version
    /// (newest-wins cannot tell them apart and keeps the device's).
    pub strategy: Strategy,
    /// Keys listed per kind of difference (the counts are always complete).
    pub max_keys: usize,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        Self {
            collections: Vec::new(),
            repair: false,
            deep: false,
            sample: None,
            strategy: Strategy::NewestWins,
            max_keys: 20,
        }
    }
}

/// The rows of one kind of difference: how many, and the first keys.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Found {
    pub count: u64,
    pub keys: Vec<String>,
}

/// One collection's check.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct CollectionCheck {
    pub collection: String,
    /// Rows (tombstones included) on each side.
    pub local_rows: u64,
    pub remote_rows: u64,
    /// The leaf level of the tree compared.
    pub depth: u32,
    /// Whether the roots matched at once (nothing to descend into).
    pub roots_matched: bool,
    /// Differences found, by kind (`pending` is not one: see [`Difference::Pending`]).
    pub found: BTreeMap<Difference, Found>,
    /// Tree nodes fetched from the cloud, rows exchanged and their bytes.
    pub nodes_exchanged: u64,
    pub rows_exchanged: u64,
    pub bytes_exchanged: u64,
    /// With `sample`: the fraction of leaf buckets checked, and the differences
    /// extrapolated to all of them with a 95 % interval.
    pub sampled: Option<f64>,
    pub estimated_differences: Option<(f64, f64, f64)>,
    /// Rows mended (with `repair`).
    pub repaired: u64,
    /// Whether mending wrote through the device's outbox (pulls that met pending
    /// changes, damage rewritten as new versions), so the outbox needs a drain.
    #[serde(skip)]
    queued: bool,
}

impl CollectionCheck {
    /// Rows that differ (pending changes excluded).
    pub fn differences(&self) -> u64 {
        self.found
            .iter()
            .filter(|(kind, _)| **kind != Difference::Pending)
            .map(|(_, found)| found.count)
            .sum()
    }
}

/// What a check found, per collection.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct VerifyReport {
    pub collections: Vec<CollectionCheck>,
    pub repaired: u64,
    pub duration_ms: u64,
}

impl VerifyReport {
    /// Rows that differ (pending changes excluded), over every collection.
    pub fn differences(&self) -> u64 {
        self.collections
            .iter()
            .map(CollectionCheck::differences)
            .sum()
    }

    /// Whether both sides hold the same data (pending changes aside).
    pub fn consistent(&self) -> bool {
        self.differences() == 0
    }
}

/// A key's two sides.
type Pair = (Option<RowDigest>, Option<RowDigest>);

/// How `local` and `remote` differ, if they do; `unshipped` says the device has a
/// change of this row not yet in the cloud.
fn classify(
    local: Option<&RowDigest>,
    remote: Option<&RowDigest>,
    unshipped: bool,
    with_hash: bool,
) -> Option<Difference> {
    let same = |l: &RowDigest, r: &RowDigest| {
        l.version == r.version && l.tombstone == r.tombstone && (!with_hash || l.hash == r.hash)
    };
    match (local, remote) {
        (None, None) => None,
        (Some(l), Some(r)) if same(l, r) => None,
        _ if unshipped => Some(Difference::Pending),
        (Some(_), None) => Some(Difference::MissingRemote),
        (None, Some(_)) => Some(Difference::MissingLocal),
        (Some(l), Some(r)) if l.version < r.version => Some(Difference::StaleLocal),
        (Some(l), Some(r)) if l.version > r.version => Some(Difference::StaleRemote),
        (Some(_), Some(_)) => Some(Difference::Damaged),
    }
}

fn intact(record: &Record) -> bool {
    ContentHash::matches(record)
}

/// The device's side of one check: the kept level-1 nodes, and once the check goes
/// deeper, the rows under the level-1 nodes that differ (read once).
struct LocalSide {
    top: BTreeMap<u32, NodeDigest>,
    under: Option<(LocalTree, HashSet<Key>)>,
}

impl LocalSide {
    /// Reads the rows under the level-1 ancestors of `prefixes` at `level`, unless
    /// already read.
    async fn load_under<S: LocalStore + ?Sized>(
        &mut self,
        store: &S,
        name: &CollectionName,
        prefixes: &[u32],
        level: u32,
    ) -> Result<()> {
        if self.under.is_none() {
            let mut top: Vec<u32> = match level {
                0 => (0..1 << hybridsync_core::LEVEL_BITS).collect(),
                l => prefixes
                    .iter()
                    .map(|p| p >> (hybridsync_core::LEVEL_BITS * (l - 1)))
                    .collect(),
            };
            top.dedup();
            self.under = Some(store.tree_under(name, &top).await?);
        }
        Ok(())
    }

    /// The nodes at `level` under `parents` at `parents_level`: the root and level 1
    /// from the kept nodes (the descent asks for level 1 only under the root), deeper
    /// levels from the rows read.
    fn nodes(&self, level: u32, parents: &[u32], parents_level: u32) -> BTreeMap<u32, NodeDigest> {
        match (&self.under, level) {
            (Some((tree, _)), 2..) => tree.nodes(level, parents, parents_level),
            (_, 0) => {
                let root = self
                    .top
                    .values()
                    .fold(NodeDigest::default(), |root, node| NodeDigest {
                        prefix: 0,
                        count: root.count + node.count,
                        sum: root.sum.wrapping_add(node.sum),
                    });
                (root.count > 0).then_some((0, root)).into_iter().collect()
            }
            _ => self.top.clone(),
        }
    }
}

/// Runs consistency checks between one device and the cloud.
pub(crate) struct Verifier<'a, S: ?Sized, V: ?Sized, C: ?Sized> {
    pub(crate) engine: &'a Engine<S, V>,
    pub(crate) syncer: &'a Syncer<S, C>,
}

impl<S: LocalStore + ?Sized, V: VectorCache + ?Sized, C: CloudSink + ?Sized> Verifier<'_, S, V, C> {
    /// Checks `spec`'s collection (and mends it with `repair`).
    pub(crate) async fn check(
        &self,
        spec: &CollectionSpec,
        options: &VerifyOptions,
    ) -> Result<CollectionCheck> {
        let name = &spec.name;
        let with_hash = !spec.encrypted;
        let store = self.engine.store();
        let sink = self.syncer.sink();
        let mut check = CollectionCheck {
            collection: name.to_string(),
            ..CollectionCheck::default()
        };
        // The device's root and level 1 come from the tree its writes keep; the cloud's
        // are computed in SQL, on a task of their own meanwhile.
        let remote_root = self.remote_nodes(name, 0, &[], 0);
        let mut local = LocalSide {
            top: store.tree_top(name).await?,
            under: None,
        };
        let remote_root = remote_root.await??;
        check.nodes_exchanged += remote_root.len() as u64;
        let local_root = local.nodes(0, &[], 0).remove(&0).unwrap_or_default();
        let remote_root = remote_root.get(&0).copied().unwrap_or_default();
        check.local_rows = local_root.count;
        check.remote_rows = remote_root.count;
        check.depth = depth_for(check.local_rows.max(check.remote_rows));
        check.roots_matched = remote_root == local_root;

        // Descend into the nodes that differ. A sample starts at the leaves, in a
        // random share of the nodes one level above them.
        let mut suspects: Vec<u32> = if check.roots_matched {
            Vec::new()
        } else {
            vec![0]
        };
        let mut level = 0;
        let mut estimate = local_root.count.abs_diff(remote_root.count);
        if let Some(fraction) = options.sample {
            let fraction = fraction.clamp(f64::MIN_POSITIVE, 1.0);
            level = check.depth - 1;
            let width = 1u64 << (hybridsync_core::LEVEL_BITS * level);
            let take = ((width as f64 * fraction).ceil() as u64).clamp(1, width);
            let mut all: Vec<u32> = (0..width as u32).collect();
            use rand::seq::SliceRandom;
            all.shuffle(&mut rand::rng());
            all.truncate(take as usize);
            all.sort_unstable();
            suspects = all;
            check.sampled = Some(take as f64 / width as f64);
        }
        while level < check.depth && !suspects.is_empty() {
            // Skip every level below whose nodes (under the suspects) would nearly all
            // differ, as the differences expected outnumber them: its answer would
            // only name all of them again.
            let expected = estimate.max(suspects.len() as u64);
            let mut next = level + 1;
            while next < check.depth
                && expected * 4
                    >= (3 * suspects.len() as u64) << (hybridsync_core::LEVEL_BITS * (next - level))
            {
                next += 1;
            }
            let remote = self.remote_nodes(name, next, &suspects, level);
            if next > 1 {
                local
                    .load_under(store.as_ref(), name, &suspects, level)
                    .await?;
            }
            let local_nodes = local.nodes(next, &suspects, level);
            let remote = remote.await??;
            check.nodes_exchanged += remote.len() as u64;
            suspects = differing(&local_nodes, &remote);
            estimate = suspects
                .iter()
                .map(|p| {
                    let count =
                        |side: &BTreeMap<u32, NodeDigest>| side.get(p).map_or(0, |n| n.count);
                    count(&local_nodes).abs_diff(count(&remote))
                })
                .sum();
            level = next;
        }
        check.bytes_exchanged += check.nodes_exchanged * 20;

        // The differing leaf buckets, row by row.
        let mut pairs: BTreeMap<Key, Pair> = BTreeMap::new();
        let mut unshipped = HashSet::new();
        if !suspects.is_empty() {
            let remote = {
                let (sink, name, suspects) = (sink.clone(), name.clone(), suspects.clone());
                let depth = check.depth;
                tokio::spawn(async move { sink.bucket_digests(&name, depth, &suspects).await })
            };
            local
                .load_under(store.as_ref(), name, &suspects, check.depth)
                .await?;
            let (tree, queued) = local.under.as_ref().expect("loaded");
            for row in tree.rows_in(check.depth, &suspects) {
                if queued.contains(&row.key) {
                    unshipped.insert(row.key.clone());
                }
                pairs.entry(row.key.clone()).or_default().0 = Some(row.clone());
            }
            let remote = remote.await??;
            check.rows_exchanged += remote.len() as u64;
            check.bytes_exchanged += remote.iter().map(RowDigest::wire_size).sum::<usize>() as u64;
            for row in remote {
                let key = row.key.clone();
                pairs.entry(key).or_default().1 = Some(row);
            }
        }
        let mut candidates: Vec<Key> = pairs
            .iter()
            .filter(|(key, (l, r))| {
                classify(l.as_ref(), r.as_ref(), unshipped.contains(*key), with_hash).is_some()
            })
            .map(|(key, _)| key.clone())
            .collect();
        let mut damaged_local = HashSet::new();
        let mut damaged_remote = HashSet::new();
        if options.deep {
            let (local, remote) = tokio::join!(store.damaged_keys(name), sink.damaged_keys(name));
            damaged_local.extend(local?);
            damaged_remote.extend(remote?);
            candidates.extend(damaged_local.iter().chain(&damaged_remote).cloned());
            candidates.sort();
            candidates.dedup();
        }

        // Read every candidate again on both sides: only what still differs counts. The
        // device's side is read before and after the cloud's; a key whose local state
        // moved in between was written during the check and is left for the next one.
        let before = self.local_digests(name, &candidates).await?;
        let remotes = self.remote_rows(name, &candidates).await?;
        let after = self.local_digests(name, &candidates).await?;
        check.rows_exchanged += remotes.len() as u64;
        check.bytes_exchanged += remotes
            .values()
            .map(|r| {
                r.key.as_str().len()
                    + r.payload.len()
                    + r.embedding.as_ref().map_or(0, |e| e.len() * 4)
                    + 57
            })
            .sum::<usize>() as u64;
        let mut locals = BTreeMap::new();
        for key in &candidates {
            if let Some(record) = store.get(name, key).await? {
                locals.insert(key.clone(), record);
            }
        }
        let mut differences: Vec<(Key, Difference)> = Vec::new();
        for key in &candidates {
            let seen = before.get(key);
            if seen != after.get(key)
                || seen.map(|(d, _)| d.version) != locals.get(key).map(|r| r.version)
            {
                continue;
            }
            let (local, remote) = (locals.get(key), remotes.get(key));
            let unshipped = seen.is_some_and(|(_, unshipped)| *unshipped);
            let bad_local = local.is_some_and(|r| !intact(r)) || damaged_local.contains(key);
            let bad_remote = remote.is_some_and(|r| !intact(r)) || damaged_remote.contains(key);
            let kind = if (bad_local || bad_remote) && !unshipped {
                Some(Difference::Damaged)
            } else {
                classify(
                    local.map(RowDigest::of).as_ref(),
                    remote.map(RowDigest::of).as_ref(),
                    unshipped,
                    with_hash,
                )
            };
            if let Some(kind) = kind {
                differences.push((key.clone(), kind));
            }
        }
        for (key, kind) in &differences {
            let found = check.found.entry(*kind).or_default();
            found.count += 1;
            if found.keys.len() < options.max_keys {
                found.keys.push(key.to_string());
            }
            if *kind != Difference::Pending {
                metrics::counter!(catalogue::VERIFY_DIFFERENCES, "kind" => kind.as_str())
                    .increment(1);
                self.syncer.emit(SyncEvent::InconsistencyFound {
                    collection: name.clone(),
                    key: key.clone(),
                    kind: *kind,
                });
            }
        }
        if let Some(share) = check.sampled {
            let seen = check.differences() as f64;
            let estimate = seen / share;
            // A Poisson interval on the count seen, scaled like the estimate.
            let spread = 1.96 * seen.max(1.0).sqrt() / share;
            check.estimated_differences =
                Some((estimate, (estimate - spread).max(seen), estimate + spread));
        }
        if options.repair {
            (check.repaired, check.queued) = self
                .repair(
                    spec,
                    &differences,
                    &locals,
                    &remotes,
                    (&damaged_local, &damaged_remote),
                    options.strategy,
                )
                .await?;
        }
        Ok(check)
    }

    /// The cloud's nodes at `level` under `parents` at `parents_level`, on a task of
    /// their own.
    fn remote_nodes(
        &self,
        name: &CollectionName,
        level: u32,
        parents: &[u32],
        parents_level: u32,
    ) -> tokio::task::JoinHandle<hybridsync_core::Result<BTreeMap<u32, NodeDigest>>> {
        let (sink, name, parents) = (self.syncer.sink().clone(), name.clone(), parents.to_vec());
        tokio::spawn(async move { sink.tree_nodes(&name, level, &parents, parents_level).await })
    }

    /// The device's digests of `keys`, with whether each has a change not yet shipped.
    async fn local_digests(
        &self,
        name: &CollectionName,
        keys: &[Key],
    ) -> Result<BTreeMap<Key, (RowDigest, bool)>> {
        let rows = self.engine.store().digests(name, keys).await?;
        Ok(rows
            .into_iter()
            .map(|(d, u)| (d.key.clone(), (d, u)))
            .collect())
    }

    /// The cloud's rows of `keys`, as stored.
    async fn remote_rows(
        &self,
        name: &CollectionName,
        keys: &[Key],
    ) -> Result<BTreeMap<Key, Record>> {
        let mut remotes = BTreeMap::new();
        for chunk in keys.chunks(1_000) {
            for record in self.syncer.sink().fetch_rows(name, chunk).await? {
                remotes.insert(record.key.clone(), record);
            }
        }
        Ok(remotes)
    }

    /// Mends `differences`: device-newer rows are pushed, cloud-newer rows applied like
    /// a pull (through the conflict rules, cursor unmoved), damage settled by the side
    /// that is intact, else by `strategy`, as a new version that reaches every device.
    #[allow(clippy::too_many_arguments)]
    async fn repair(
        &self,
        spec: &CollectionSpec,
        differences: &[(Key, Difference)],
        locals: &BTreeMap<Key, Record>,
        remotes: &BTreeMap<Key, Record>,
        (damaged_local, damaged_remote): (&HashSet<Key>, &HashSet<Key>),
        strategy: Strategy,
    ) -> Result<(u64, bool)> {
        let name = &spec.name;
        let mut push = Vec::new();
        let mut pull = Vec::new();
        let mut rewrite = Vec::new();
        for (key, kind) in differences {
            let (local, remote) = (locals.get(key), remotes.get(key));
            match kind {
                Difference::Pending => {}
                Difference::MissingRemote | Difference::StaleRemote => push.extend(local.cloned()),
                Difference::MissingLocal | Difference::StaleLocal => pull.extend(remote.cloned()),
                Difference::Damaged => {
                    let local_ok = local.is_some_and(intact) && !damaged_local.contains(key);
                    let remote_ok = remote.is_some_and(intact) && !damaged_remote.contains(key);
                    let keep_local = match (local_ok, remote_ok) {
                        (true, false) => true,
                        (false, true) => false,
                        _ => !matches!(strategy, Strategy::RemoteWins),
                    };
                    let source = if keep_local { local } else { remote };
                    match source {
                        // A sealed cloud row is opened first; its plaintext is written.
                        Some(record) if !keep_local => {
                            let opened = self.syncer.sealing().open(
                                self.syncer.sink().tenant(),
                                spec,
                                vec![record.clone()],
                            )?;
                            rewrite.extend(opened);
                        }
                        Some(record) => rewrite.push(record.clone()),
                        None => {}
                    }
                }
            }
        }
        let repaired = (push.len() + pull.len() + rewrite.len()) as u64;
        let queued = !pull.is_empty() || !rewrite.is_empty();
        if !push.is_empty() {
            self.syncer.upload(push.clone()).await?;
        }
        if !pull.is_empty() {
            let opened = self
                .syncer
                .sealing()
                .open(self.syncer.sink().tenant(), spec, pull)?;
            let cursor = self.engine.store().cursor(name).await?;
            self.engine
                .apply_remote(name, opened, &cursor, &strategy)
                .await?;
        }
        if !rewrite.is_empty() {
            // As new versions: the mended content reaches every device.
            let writes = rewrite
                .into_iter()
                .map(|r| {
                    if r.tombstone {
                        WriteRequest::delete(r.collection, r.key)
                    } else {
                        WriteRequest::put(r.collection, r.key, r.payload, r.embedding)
                    }
                })
                .collect();
            self.engine.write(writes).await?;
        }
        for (key, kind) in differences {
            if *kind != Difference::Pending {
                self.syncer.emit(SyncEvent::Repaired {
                    collection: name.clone(),
                    key: key.clone(),
                    kind: *kind,
                });
            }
        }
        metrics::counter!(catalogue::VERIFY_REPAIRED).increment(repaired);
        Ok((repaired, queued))
    }
}

/// Runs [`Verifier::check`] over the chosen collections.
pub(crate) async fn verify<S, V, C>(
    engine: &Engine<S, V>,
    syncer: &Syncer<S, C>,
    specs: &[CollectionSpec],
    options: &VerifyOptions,
) -> Result<VerifyReport>
where
    S: LocalStore + ?Sized,
    V: VectorCache + ?Sized,
    C: CloudSink + ?Sized,
{
    let started = Instant::now();
    let verifier = Verifier { engine, syncer };
    let mut report = VerifyReport::default();
    for spec in specs {
        let check = verifier.check(spec, options).await?;
        report.repaired += check.repaired;
        report.collections.push(check);
    }
    // Pushed rows went straight to the cloud; what mending queued is drained now.
    if report.collections.iter().any(|check| check.queued) {
        syncer.flush(std::time::Duration::from_secs(60)).await?;
    }
    metrics::counter!(catalogue::VERIFY_RUNS).increment(1);
    report.duration_ms = started.elapsed().as_millis() as u64;
    Ok(report)
}
