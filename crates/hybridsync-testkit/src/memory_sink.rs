//! An in-memory [`CloudSink`] for tests of the engine, with fault injection. It keeps
//! the contract of the real sink: monotone upserts by `(hlc, origin)` and a change feed
//! in commit order. It lives here, in the test kit, so no production crate ships it.

use hybridsync_core::MutexExt;
use hybridsync_core::{
    ChangeBatch, ChangeCursor, Clock, CloudSink, CollectionName, CollectionSpec, ContentHash,
    DeviceId, DeviceInfo, Error, Key, LocalTree, NodeDigest, Record, Result, RowDigest,
    SystemClock, sealed_key_id,
};
use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

#[derive(Debug, Default)]
struct State {
    rows: BTreeMap<(CollectionName, Key), (u64, Record)>,
    next_seq: u64,
    devices: BTreeMap<DeviceId, DeviceInfo>,
    collections: BTreeMap<CollectionName, CollectionSpec>,
}

/// A cloud that lives in memory. Faults: [`MemorySink::set_down`] (every call fails,
/// retryably), [`MemorySink::fail_next`] (the next n calls fail retryably) and
/// [`MemorySink::reject_key`] (any batch holding that key is refused permanently).
#[derive(Debug)]
pub struct MemorySink {
    state: Mutex<State>,
    down: AtomicBool,
    fail_next: AtomicU32,
    rejected: Mutex<HashSet<String>>,
    calls: AtomicU64,
    load: Mutex<f64>,
    latency: Mutex<std::time::Duration>,
    /// Counts upserts that changed rows. One sink is shared by every device of a
    /// test, so unlike the real sink it also wakes the writer itself.
    changes: tokio::sync::watch::Sender<u64>,
    /// Stamps last-seen times and bounds clock drift (the real sink uses the server's).
    clock: Arc<dyn Clock>,
}

impl Default for MemorySink {
    fn default() -> Self {
        Self {
            state: Mutex::default(),
            down: AtomicBool::default(),
            fail_next: AtomicU32::default(),
            rejected: Mutex::default(),
            calls: AtomicU64::default(),
            load: Mutex::default(),
            latency: Mutex::default(),
            changes: tokio::sync::watch::Sender::default(),
            clock: Arc::new(SystemClock),
        }
    }
}

fn unavailable(why: &str) -> Error {
    Error::Cloud {
        retryable: true,
        source: why.to_owned().into(),
    }
}

impl MemorySink {
    /// An empty, healthy sink.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty, healthy sink that reads time from `clock`.
    pub fn with_clock(clock: Arc<dyn Clock>) -> Self {
        Self {
            clock,
            ..Self::default()
        }
    }

    fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// Takes the cloud down (or brings it back).
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    /// Fails the next `n` calls with a retryable error.
    pub fn fail_next(&self, n: u32) {
        self.fail_next.store(n, Ordering::SeqCst);
    }

    /// Refuses, permanently, any batch that holds `key`.
    pub fn reject_key(&self, key: &str) {
        self.rejected.lock_or_recover().insert(key.to_owned());
    }

    /// Pretends the pool is this loaded.
    pub fn set_load(&self, load: f64) {
        *self.load.lock_or_recover() = load;
    }

    /// Makes every upsert take at least this long.
    pub fn set_latency(&self, latency: std::time::Duration) {
        *self.latency.lock_or_recover() = latency;
    }

    /// Upsert and health calls made so far.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }

    /// The stored record for a key.
    pub fn get(&self, collection: &CollectionName, key: &Key) -> Option<Record> {
        let state = self.state.lock_or_recover();
        state
            .rows
            .get(&(collection.clone(), key.clone()))
            .map(|(_, r)| r.clone())
    }

    /// Replaces a row as an attacker with write access to the cloud would: stored as
    /// given, whatever its version, and fed to every device as the newest change.
    pub fn overwrite(&self, record: Record) {
        let mut state = self.state.lock_or_recover();
        state.next_seq += 1;
        let seq = state.next_seq;
        state.rows.insert(
            (record.collection.clone(), record.key.clone()),
            (seq, record),
        );
    }

    /// Deletes a stored row behind the devices' backs (no tombstone, no feed entry).
    pub fn delete_row(&self, collection: &CollectionName, key: &Key) {
        let mut state = self.state.lock_or_recover();
        state.rows.remove(&(collection.clone(), key.clone()));
    }

    /// Drops a collection's definition from the catalogue behind the devices' backs (its
    /// rows stay), as a cloud restored from an older backup would have lost it.
    pub fn forget_collection(&self, collection: &CollectionName) {
        self.state.lock_or_recover().collections.remove(collection);
    }

    /// The checker's tree over a collection's rows (computed from them each time; a
    /// sealed live row is told by its payload, as the real sink tells it).
    fn tree(&self, collection: &CollectionName) -> LocalTree {
        let state = self.state.lock_or_recover();
        let rows = state
            .rows
            .values()
            .filter(|(_, r)| r.collection == *collection)
            .map(|(_, r)| {
                (
                    RowDigest::of(r),
                    !r.tombstone && sealed_key_id(&r.payload).is_some(),
                )
            })
            .collect();
        LocalTree::with_sealing(collection, rows)
    }

    /// Every stored record.
    pub fn all(&self) -> Vec<Record> {
        let state = self.state.lock_or_recover();
        state.rows.values().map(|(_, r)| r.clone()).collect()
    }

    fn gate(&self) -> Result<()> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.down.load(Ordering::SeqCst) {
            return Err(unavailable("memory sink is down"));
        }
        let failing = self
            .fail_next
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        if failing.is_ok() {
            return Err(unavailable("memory sink injected failure"));
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl CloudSink for MemorySink {
    async fn tree_nodes(
        &self,
        collection: &CollectionName,
        level: u32,
        parents: &[u32],
        parents_level: u32,
    ) -> Result<BTreeMap<u32, NodeDigest>> {
        self.gate()?;
        Ok(self.tree(collection).nodes(level, parents, parents_level))
    }

    async fn bucket_digests(
        &self,
        collection: &CollectionName,
        level: u32,
        buckets: &[u32],
    ) -> Result<Vec<RowDigest>> {
        self.gate()?;
        let tree = self.tree(collection);
        Ok(tree.rows_in(level, buckets).into_iter().cloned().collect())
    }

    async fn fetch_rows(&self, collection: &CollectionName, keys: &[Key]) -> Result<Vec<Record>> {
        self.gate()?;
        Ok(keys
            .iter()
            .filter_map(|key| self.get(collection, key))
            .collect())
    }

    async fn damaged_keys(&self, collection: &CollectionName) -> Result<Vec<Key>> {
        self.gate()?;
        let state = self.state.lock_or_recover();
        Ok(state
            .rows
            .values()
            .filter(|(_, r)| r.collection == *collection && !ContentHash::matches(r))
            .map(|(_, r)| r.key.clone())
            .collect())
    }

    async fn upsert_batch(&self, records: &[Record]) -> Result<()> {
        self.gate()?;
        let latency = *self.latency.lock_or_recover();
        if !latency.is_zero() {
            tokio::time::sleep(latency).await;
        }
        let rejected = self.rejected.lock_or_recover().clone();
        if let Some(bad) = records.iter().find(|r| rejected.contains(r.key.as_str())) {
            return Err(Error::Cloud {
                retryable: false,
                source: format!("key {} rejected", bad.key).into(),
            });
        }
        // Like the real sink: a stamp far ahead of the server's clock is refused.
        let limit = self.now_ms()
            + hybridsync_core::HlcClock::<hybridsync_core::SystemClock>::DEFAULT_MAX_DRIFT_MS;
        if let Some(ahead) = records.iter().find(|r| r.version.physical_ms > limit) {
            return Err(Error::Cloud {
                retryable: false,
                source: format!("{} is stamped ahead of the server clock", ahead.key).into(),
            });
        }
        let mut state = self.state.lock_or_recover();
        let mut changed = false;
        for record in records {
            let id = (record.collection.clone(), record.key.clone());
            if state
                .rows
                .get(&id)
                .is_some_and(|(_, existing)| existing.version >= record.version)
            {
                continue;
            }
            state.next_seq += 1;
            let seq = state.next_seq;
            state.rows.insert(id, (seq, record.clone()));
            changed = true;
        }
        drop(state);
        if changed {
            self.changes.send_modify(|n| *n += 1);
        }
        Ok(())
    }

    async fn next_change(&self, seen: u64) -> u64 {
        let mut changes = self.changes.subscribe();
        let now = changes.wait_for(|n| *n > seen).await.map(|n| *n);
        match now {
            Ok(n) => n,
            Err(_) => std::future::pending().await,
        }
    }

    async fn pull(
        &self,
        collection: &CollectionName,
        cursor: &ChangeCursor,
        limit: usize,
    ) -> Result<ChangeBatch> {
        self.gate()?;
        let after = cursor
            .0
            .as_slice()
            .try_into()
            .map(u64::from_be_bytes)
            .unwrap_or(0);
        let state = self.state.lock_or_recover();
        let mut changes: Vec<(u64, Record)> = state
            .rows
            .iter()
            .filter(|((c, _), (seq, _))| c == collection && *seq > after)
            .map(|(_, (seq, r))| (*seq, r.clone()))
            .collect();
        changes.sort_by_key(|(seq, _)| *seq);
        changes.truncate(limit);
        let next = changes.last().map_or_else(
            || cursor.clone(),
            |(seq, _)| ChangeCursor(seq.to_be_bytes().to_vec()),
        );
        Ok(ChangeBatch {
            records: changes.into_iter().map(|(_, r)| r).collect(),
            next,
        })
    }

    async fn count(&self, collection: &CollectionName) -> Result<u64> {
        self.gate()?;
        let state = self.state.lock_or_recover();
        Ok(state.rows.keys().filter(|(c, _)| c == collection).count() as u64)
    }

    async fn publish_collections(&self, specs: &[CollectionSpec]) -> Result<Vec<CollectionSpec>> {
        self.gate()?;
        let mut state = self.state.lock_or_recover();
        if let Some(spec) = specs.iter().find(|s| {
            state
                .collections
                .get(&s.name)
                .is_some_and(|known| known != *s)
        }) {
            return Err(Error::Cloud {
                retryable: false,
                source: format!("collection {} exists with another spec", spec.name).into(),
            });
        }
        for spec in specs {
            state.collections.insert(spec.name.clone(), spec.clone());
        }
        Ok(state.collections.values().cloned().collect())
    }

    async fn remote_collections(&self) -> Result<Vec<CollectionSpec>> {
        self.gate()?;
        let state = self.state.lock_or_recover();
        Ok(state.collections.values().cloned().collect())
    }

    async fn health_check(&self) -> Result<()> {
        self.gate()
    }

    async fn register_device(&self, id: DeviceId, name: &str) -> Result<()> {
        hybridsync_core::validate_device_name(name)?;
        self.gate()?;
        let mut state = self.state.lock_or_recover();
        let now = self.now_ms();
        let info = state.devices.entry(id).or_insert(DeviceInfo {
            id,
            name: String::new(),
            registered_ms: now,
            last_seen_ms: now,
        });
        info.name = name.to_owned();
        info.last_seen_ms = now;
        Ok(())
    }

    async fn list_devices(&self) -> Result<Vec<DeviceInfo>> {
        self.gate()?;
        let mut devices: Vec<DeviceInfo> = self
            .state
            .lock_or_recover()
            .devices
            .values()
            .cloned()
            .collect();
        devices.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(devices)
    }

    async fn deregister_device(&self, id: DeviceId) -> Result<bool> {
        self.gate()?;
        Ok(self.state.lock_or_recover().devices.remove(&id).is_some())
    }

    async fn touch_device(&self, id: DeviceId, default_name: &str) -> Result<()> {
        hybridsync_core::validate_device_name(default_name)?;
        self.gate()?;
        let now = self.now_ms();
        self.state
            .lock_or_recover()
            .devices
            .entry(id)
            .or_insert_with(|| DeviceInfo {
                id,
                name: default_name.to_owned(),
                registered_ms: now,
                last_seen_ms: now,
            })
            .last_seen_ms = now;
        Ok(())
    }

    fn load(&self) -> f64 {
        *self.load.lock_or_recover()
    }
}
