//! Two-way sync between devices, proven against the in-memory sink and the real
//! PostgreSQL sink by one shared suite (`replicate_suite!`).

use crate::sync_tests::{
    TestCloud, cloud_rows, fast_config, memory_cloud, notes, pg_cloud, pgbouncer_cloud,
};
use crate::{Engine, EngineConfig, Replicator, Syncer, no_progress};
use hybridsync_core::{
    Clock, CloudSink, CollectionSpec, Conflict, ConflictResolver, Key, LocalStore, ManualClock,
    Record, Resolution, Strategy, SyncEvent, SystemClock, WriteRequest,
};
use hybridsync_store::{SqliteStore, StoreOptions};
use hybridsync_vector::UsearchCache;
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::sync::Arc;

type DeviceEngine = Engine<SqliteStore, UsearchCache>;

/// One device: its own data dir, engine, drain and replicator over a shared cloud.
pub(crate) struct Device<C: CloudSink> {
    _dir: tempfile::TempDir,
    pub(crate) engine: Arc<DeviceEngine>,
    pub(crate) repl: Arc<Replicator<SqliteStore, UsearchCache, C>>,
}

async fn device<C: CloudSink>(
    sink: Arc<C>,
    clock: Arc<dyn Clock>,
    spec: Option<CollectionSpec>,
) -> Device<C> {
    keyed_device(sink, clock, spec, None).await
}

/// A device holding `keyring` for encrypted collections.
pub(crate) async fn keyed_device<C: CloudSink>(
    sink: Arc<C>,
    clock: Arc<dyn Clock>,
    spec: Option<CollectionSpec>,
    keyring: Option<hybridsync_core::Keyring>,
) -> Device<C> {
    let dir = tempfile::tempdir().unwrap();
    let (engine, repl) = open_device(dir.path(), sink, clock, keyring).await;
    if let Some(spec) = spec {
        engine.create_collection(spec).await.unwrap();
    }
    Device {
        _dir: dir,
        engine,
        repl,
    }
}

/// The engine and replicator of a device whose store is in `dir` (a new one, or another
/// handle on a device's directory, as another process would open it).
async fn open_device<C: CloudSink>(
    dir: &std::path::Path,
    sink: Arc<C>,
    clock: Arc<dyn Clock>,
    keyring: Option<hybridsync_core::Keyring>,
) -> (
    Arc<DeviceEngine>,
    Arc<Replicator<SqliteStore, UsearchCache, C>>,
) {
    let mut options = StoreOptions::new(dir);
    options.clock = clock;
    let store = Arc::new(SqliteStore::open(options).await.unwrap());
    let engine = Arc::new(
        Engine::open(
            store.clone(),
            Some(Arc::new(UsearchCache::default())),
            Arc::new(hybridsync_vector::HotCache::new(10_000, 64 << 20)),
            EngineConfig::default(),
        )
        .await
        .unwrap(),
    );
    let syncer = Arc::new(
        Syncer::new(store, sink, fast_config(), engine.write_nudge()).with_keyring(keyring),
    );
    let repl = Arc::new(Replicator::new(engine.clone(), syncer));
    (engine, repl)
}

fn notes_spec() -> Option<CollectionSpec> {
    Some(CollectionSpec {
        name: notes(),
        vector: None,
        encrypted: false,
    })
}

async fn notes_device<C: CloudSink>(sink: Arc<C>) -> Device<C> {
    device(sink, Arc::new(SystemClock), notes_spec()).await
}

impl<C: CloudSink> Device<C> {
    async fn put(&self, key: &str, value: &str) -> Record {
        let request = WriteRequest::put(notes(), Key::new(key).unwrap(), value.into(), None);
        Record::clone(&self.engine.put(request).await.unwrap().record)
    }

    async fn delete(&self, key: &str) -> Record {
        let priority = hybridsync_core::Priority::Normal;
        let receipt = self
            .engine
            .delete(notes(), Key::new(key).unwrap(), priority)
            .await
            .unwrap();
        Record::clone(&receipt.record)
    }

    pub(crate) async fn sync(&self, resolver: &dyn ConflictResolver) -> crate::SyncReport {
        self.repl.sync(&[], resolver, &no_progress).await.unwrap()
    }

    /// Every record, tombstones included, by key.
    async fn state(&self) -> BTreeMap<String, Record> {
        let records = self
            .engine
            .store()
            .scan(&notes(), None, usize::MAX)
            .await
            .unwrap();
        records
            .into_iter()
            .map(|r| (r.key.to_string(), r))
            .collect()
    }

    async fn value(&self, key: &str) -> Option<String> {
        self.engine
            .get(&notes(), key)
            .await
            .unwrap()
            .map(|r| String::from_utf8(r.payload.clone()).unwrap())
    }
}

/// Three devices write and delete overlapping keys and sync in a random order; after a
/// final round every device and the cloud hold the same rows, each at the newest
/// version written anywhere.
async fn devices_converge_under_random_interleavings<T: TestCloud>(cloud: T) {
    let devices = [
        notes_device(cloud.sink()).await,
        notes_device(cloud.sink()).await,
        notes_device(cloud.sink()).await,
    ];
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut newest: BTreeMap<String, Record> = BTreeMap::new();
    for i in 0..150 {
        let d = &devices[rng.random_range(0..3)];
        let key = format!("k{}", rng.random_range(0..20));
        let record = if rng.random_bool(0.2) {
            d.delete(&key).await
        } else {
            d.put(&key, &format!("v{i}")).await
        };
        if newest.get(&key).is_none_or(|n| record.version > n.version) {
            newest.insert(key, record);
        }
        if rng.random_bool(0.3) {
            devices[rng.random_range(0..3)]
                .sync(&Strategy::NewestWins)
                .await;
        }
    }
    for d in devices.iter().chain(devices.iter()) {
        d.sync(&Strategy::NewestWins).await;
    }
    let cloud_state = cloud_rows(&*cloud.sink()).await;
    assert_eq!(
        cloud_state, newest,
        "the cloud holds the newest version of every key"
    );
    for (i, d) in devices.iter().enumerate() {
        assert_eq!(d.state().await, newest, "device {i} differs");
        let outbox = d.engine.store().outbox_stats().await.unwrap();
        assert_eq!((outbox.pending, outbox.in_flight, outbox.failed), (0, 0, 0));
    }
}

/// Concatenates both payloads in a fixed order: a merge every device agrees on.
#[derive(Debug)]
struct Concat;

impl ConflictResolver for Concat {
    fn resolve(&self, conflict: Conflict<'_>) -> Resolution {
        let mut parts = [
            conflict.local.payload.clone(),
            conflict.remote.payload.clone(),
        ];
        parts.sort();
        Resolution::Merged {
            payload: parts.join(&b'|'),
            embedding: None,
        }
    }
}

/// B writes a key (older), A writes it (newer) and pushes; B's sync meets the conflict.
/// Each strategy's result must end up on both devices and in the cloud.
async fn each_strategy_settles_a_scripted_conflict<T: TestCloud>(cloud: T) {
    let (a, b) = (
        notes_device(cloud.sink()).await,
        notes_device(cloud.sink()).await,
    );
    let cases: [(&str, &dyn ConflictResolver, &str); 4] = [
        ("newest", &Strategy::NewestWins, "from-a"),
        ("local", &Strategy::LocalWins, "from-b"),
        ("remote", &Strategy::RemoteWins, "from-a"),
        ("merge", &Concat, "from-a|from-b"),
    ];
    let mut events = b.repl.syncer().subscribe();
    for (key, resolver, expected) in cases {
        b.put(key, "from-b").await;
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        a.put(key, "from-a").await;
        a.sync(&Strategy::NewestWins).await;
        let report = b.sync(resolver).await;
        assert_eq!(report.conflicts_detected, 1, "{key}: one conflict");
        a.sync(&Strategy::NewestWins).await;
        assert_eq!(a.value(key).await.as_deref(), Some(expected), "{key} on A");
        assert_eq!(b.value(key).await.as_deref(), Some(expected), "{key} on B");
        let cloud_row = cloud_rows(&*cloud.sink()).await.remove(key).unwrap();
        assert_eq!(cloud_row.payload, expected.as_bytes(), "{key} in the cloud");
    }
    let mut conflicts = 0;
    while let Ok(event) = events.try_recv() {
        conflicts += usize::from(matches!(event, SyncEvent::ConflictDetected { .. }));
    }
    assert_eq!(conflicts, 4, "one conflict event per case");
}

/// A delete on A and an older update on B: whichever syncs first, and even when B
/// insists on keeping its local version, the key stays deleted everywhere.
async fn a_delete_is_never_resurrected_by_an_older_write<T: TestCloud>(cloud: T) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    for (round, a_first) in [(0, true), (1, false)] {
        let clock_a = Arc::new(ManualClock::new(now - 10_000 + 1_000));
        let clock_b = Arc::new(ManualClock::new(now - 10_000));
        let a = device(cloud.sink(), clock_a, notes_spec()).await;
        let b = device(cloud.sink(), clock_b, notes_spec()).await;
        let key = format!("gone-{round}");
        let stale = b.put(&key, "stale update").await;
        let deleted = a.delete(&key).await;
        assert!(deleted.version > stale.version);
        let order: [&Device<T::Sink>; 3] = if a_first { [&a, &b, &a] } else { [&b, &a, &b] };
        for d in order {
            d.sync(&Strategy::LocalWins).await;
        }
        for d in [&a, &b] {
            let record = d.state().await.remove(&key).unwrap();
            assert!(record.tombstone, "round {round}: {key} came back");
            assert_eq!(record.version, deleted.version);
        }
        assert!(cloud_rows(&*cloud.sink()).await[&key].tombstone);
    }
}

/// A device whose clock runs an hour behind refuses the others' stamps (too far ahead
/// of it) with an event, and the cloud refuses stamps from a clock an hour ahead.
async fn stamps_beyond_the_drift_limit_are_refused<T: TestCloud>(cloud: T) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let a = notes_device(cloud.sink()).await;
    a.put("k", "from a").await;
    a.sync(&Strategy::NewestWins).await;

    let behind = device(
        cloud.sink(),
        Arc::new(ManualClock::new(now - 3_600_000)),
        notes_spec(),
    )
    .await;
    let mut events = behind.repl.syncer().subscribe();
    let report = behind.sync(&Strategy::NewestWins).await;
    assert_eq!((report.refused, report.pulled), (1, 0));
    assert_eq!(behind.value("k").await, None);
    let refused = std::iter::from_fn(|| events.try_recv().ok()).find_map(|e| match e {
        SyncEvent::RecordFailed { error, .. } => Some(error),
        _ => None,
    });
    assert!(refused.unwrap().contains("ahead of the local clock"));

    let ahead = device(
        cloud.sink(),
        Arc::new(ManualClock::new(now + 3_600_000)),
        notes_spec(),
    )
    .await;
    ahead.put("k", "from the future").await;
    let report = ahead.sync(&Strategy::NewestWins).await;
    assert_eq!(
        report.failed, 1,
        "the push is refused for good and reported"
    );
    let outbox = ahead.engine.store().outbox_stats().await.unwrap();
    assert_eq!(
        outbox.failed, 1,
        "parked as failed, kept locally: {outbox:?}"
    );
    assert_eq!(cloud_rows(&*cloud.sink()).await["k"].payload, b"from a");
}

/// A fresh device learns the collection from the cloud and restores every record;
/// an interrupted hydrate resumes from its cursor without gaps or duplicates.
async fn hydrate_restores_a_new_device_and_resumes<T: TestCloud>(cloud: T) {
    use hybridsync_core::{Metric, Precision, VectorSpec};
    let spec = CollectionSpec {
        name: notes(),
        vector: Some(VectorSpec::new(16, Metric::Cosine, Precision::F32).unwrap()),
        encrypted: false,
    };
    let origin = device(cloud.sink(), Arc::new(SystemClock), Some(spec.clone())).await;
    let mut data = hybridsync_testkit::workload::Clustered::new(3, 40, 16, 0.05);
    let vectors = data.samples(2_500);
    let requests: Vec<WriteRequest> = vectors
        .iter()
        .enumerate()
        .map(|(i, v)| {
            WriteRequest::put(
                notes(),
                Key::new(format!("s{i}")).unwrap(),
                vec![i as u8],
                Some(v.clone()),
            )
        })
        .collect();
    origin.engine.write(requests).await.unwrap();
    origin
        .engine
        .delete(
            notes(),
            Key::new("s7").unwrap(),
            hybridsync_core::Priority::Normal,
        )
        .await
        .unwrap();
    let seeded = origin.repl.seed(&[], &no_progress).await.unwrap();
    assert_eq!(seeded.pushed, 2_500);

    let fresh = device(cloud.sink(), Arc::new(SystemClock), None).await;
    // Interrupt: apply the first page only, as a hydrate killed after one batch would.
    let first = cloud
        .sink()
        .pull(&notes(), &Default::default(), 700)
        .await
        .unwrap();
    fresh.engine.create_collection(spec.clone()).await.unwrap();
    fresh
        .engine
        .apply_remote(&notes(), first.records, &first.next, &Strategy::NewestWins)
        .await
        .unwrap();
    let percents = std::sync::Mutex::new(Vec::new());
    let report = fresh
        .repl
        .hydrate(&[], &|p, _| percents.lock().unwrap().push(p))
        .await
        .unwrap();
    assert_eq!(report.pulled, 2_500 - 700, "resumed after the first page");
    assert_eq!(fresh.engine.collections().await.unwrap(), vec![spec]);
    assert_eq!(fresh.state().await, origin.state().await);
    assert!(percents.lock().unwrap().last() == Some(&100.0));
    let fresh_outbox = fresh.engine.store().outbox_stats().await.unwrap();
    assert_eq!(
        fresh_outbox.pending, 0,
        "pulled rows are not queued back (no echo)"
    );
    // Each query is a stored vector, so its own key should be the top hit on both
    // devices. HNSW is approximate, and these clusters are tight: now and then a walk
    // misses a vector on one device or the other (about 1 query in 300 in our runs),
    // so count, allowing one miss each. A missing or mislabelled vector fails this.
    let options = crate::SearchOptions {
        rerank_factor: Some(4),
    };
    let (mut queries, mut fresh_found, mut origin_found) = (0, 0, 0);
    for (i, query) in vectors.iter().enumerate().step_by(97) {
        let own = Key::new(format!("s{i}")).unwrap();
        let top = |hits: Vec<hybridsync_core::VectorHit>| hits.first().map(|h| h.key.clone());
        let ours = fresh.engine.search(&notes(), query, 5, options).await;
        let theirs = origin.engine.search(&notes(), query, 5, options).await;
        queries += 1;
        fresh_found += usize::from(top(ours.unwrap()).as_ref() == Some(&own));
        origin_found += usize::from(top(theirs.unwrap()).as_ref() == Some(&own));
    }
    assert!(
        fresh_found + 1 >= queries && origin_found + 1 >= queries,
        "own vector first on the new device for {fresh_found} of {queries} queries, on the origin for {origin_found}"
    );
}

/// Auto-sync on an hour's interval still picks up another device's write at once: the
/// cloud's change signal nudges it. (The first writes may land before the listener is
/// up, so A keeps writing until B has one.)
async fn auto_sync_is_nudged_by_another_devices_write<T: TestCloud>(cloud: T) {
    let a = notes_device(cloud.own_sink()).await;
    let b = notes_device(cloud.own_sink()).await;
    let auto = b
        .repl
        .start(std::time::Duration::from_secs(3600), Strategy::NewestWins);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut round = 0;
    let seen = loop {
        round += 1;
        let value = format!("v{round}");
        a.put("k", &value).await;
        assert_eq!(a.repl.syncer().flush(LONG).await.unwrap(), 0);
        let written = tokio::time::Instant::now();
        while written.elapsed() < std::time::Duration::from_secs(1) {
            if b.value("k").await.as_deref() == Some(value.as_str()) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        if b.value("k").await.as_deref() == Some(value.as_str()) {
            break round;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "B never saw A's writes without its interval"
        );
    };
    assert!(seen <= 5, "B needed {seen} writes to notice");
    auto.shutdown().await;
}

/// A sync pulls the collections the cloud confirmed at an earlier round before its
/// catalogue step, and in the same round still learns and pulls a collection another
/// device created since: one round brings both.
async fn one_sync_brings_known_and_newly_created_collections<T: TestCloud>(cloud: T) {
    let a = notes_device(cloud.own_sink()).await;
    let b = notes_device(cloud.own_sink()).await;
    a.put("k", "v1").await;
    a.sync(&Strategy::NewestWins).await;
    b.sync(&Strategy::NewestWins).await;
    assert_eq!(b.value("k").await.as_deref(), Some("v1"));

    let tasks = hybridsync_core::CollectionName::new("tasks").unwrap();
    a.engine
        .create_collection(CollectionSpec {
            name: tasks.clone(),
            vector: None,
            encrypted: false,
        })
        .await
        .unwrap();
    let todo = WriteRequest::put(tasks.clone(), Key::new("t1").unwrap(), "todo".into(), None);
    a.engine.put(todo).await.unwrap();
    a.put("k", "v2").await;
    a.sync(&Strategy::NewestWins).await;

    let report = b.sync(&Strategy::NewestWins).await;
    assert_eq!(report.collections, 2);
    assert_eq!(report.pulled, 2, "{report:?}");
    assert_eq!(b.value("k").await.as_deref(), Some("v2"));
    let task = b.engine.get(&tasks, "t1").await.unwrap().unwrap();
    assert_eq!(task.payload, b"todo");
}

/// Once the cloud has confirmed every local definition, a round reads the catalogue
/// and publishes nothing. A definition the cloud has lost since (a restore from an
/// older backup, a row deleted by hand) is noticed by that read and published again by
/// the next round; the records keep flowing meanwhile.
async fn a_definition_the_cloud_lost_is_published_again<T: TestCloud>(cloud: T) {
    let a = notes_device(cloud.own_sink()).await;
    let defined = async || {
        let remote = cloud.sink().remote_collections().await.unwrap();
        remote.iter().any(|s| s.name == notes())
    };
    a.put("k", "v1").await;
    a.sync(&Strategy::NewestWins).await;
    assert!(defined().await);

    cloud.forget_collection(&notes());
    a.put("k", "v2").await;
    let report = a.sync(&Strategy::NewestWins).await;
    assert_eq!(report.pushed, 1, "{report:?}");
    assert!(
        !defined().await,
        "a confirmed round published its catalogue again"
    );

    a.sync(&Strategy::NewestWins).await;
    assert!(
        defined().await,
        "the lost definition was not published again"
    );
    let b = device(cloud.own_sink(), Arc::new(SystemClock), None).await;
    let report = b.sync(&Strategy::NewestWins).await;
    assert_eq!(report.collections, 1, "{report:?}");
    assert_eq!(b.value("k").await.as_deref(), Some("v2"));
}

/// A round pulls from where the store's cursor stands, not from where this replicator
/// last left it: here a second handle on B's directory (another process) pulled in
/// between, and B's next round examines only the row written after that.
async fn a_round_resumes_from_the_stored_cursor<T: TestCloud>(cloud: T) {
    let a = notes_device(cloud.own_sink()).await;
    let b = notes_device(cloud.own_sink()).await;
    a.put("k1", "v1").await;
    a.sync(&Strategy::NewestWins).await;
    assert_eq!(b.sync(&Strategy::NewestWins).await.processed, 1);

    a.put("k2", "v2").await;
    a.put("k3", "v3").await;
    a.sync(&Strategy::NewestWins).await;
    let (_, other) =
        open_device(b._dir.path(), cloud.own_sink(), Arc::new(SystemClock), None).await;
    let report = other
        .sync(&[], &Strategy::NewestWins, &no_progress)
        .await
        .unwrap();
    assert_eq!(report.processed, 2, "{report:?}");

    a.put("k4", "v4").await;
    a.sync(&Strategy::NewestWins).await;
    let report = b.sync(&Strategy::NewestWins).await;
    assert_eq!(
        (report.processed, report.pulled),
        (1, 1),
        "B pulled again what the other handle had pulled: {report:?}"
    );
    for (key, value) in [("k1", "v1"), ("k2", "v2"), ("k3", "v3"), ("k4", "v4")] {
        assert_eq!(b.value(key).await.as_deref(), Some(value), "{key}");
    }
}

/// A round that names a collection this device does not know is refused before it
/// pulls anything, even once the cloud has confirmed the others.
async fn a_round_naming_an_unknown_collection_changes_nothing<T: TestCloud>(cloud: T) {
    let a = notes_device(cloud.own_sink()).await;
    let b = notes_device(cloud.own_sink()).await;
    a.put("k", "v1").await;
    a.sync(&Strategy::NewestWins).await;
    b.sync(&Strategy::NewestWins).await;
    a.put("k", "v2").await;
    a.sync(&Strategy::NewestWins).await;

    let unknown = hybridsync_core::CollectionName::new("unknown").unwrap();
    for named in [vec![unknown.clone()], vec![notes(), unknown.clone()]] {
        let refused = b
            .repl
            .sync(&named, &Strategy::NewestWins, &no_progress)
            .await;
        assert!(
            matches!(
                refused,
                Err(crate::Error::Core(hybridsync_core::Error::UnknownCollection(ref name))) if name == "unknown"
            ),
            "{refused:?}"
        );
        assert_eq!(b.value("k").await.as_deref(), Some("v1"), "{named:?}");
    }
    b.sync(&Strategy::NewestWins).await;
    assert_eq!(b.value("k").await.as_deref(), Some("v2"));
}

const LONG: std::time::Duration = std::time::Duration::from_secs(30);

macro_rules! replicate_suite {
    ($module:ident, $cloud:expr) => {
        mod $module {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn devices_converge_under_random_interleavings() {
                super::devices_converge_under_random_interleavings($cloud).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn each_strategy_settles_a_scripted_conflict() {
                super::each_strategy_settles_a_scripted_conflict($cloud).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_delete_is_never_resurrected_by_an_older_write() {
                super::a_delete_is_never_resurrected_by_an_older_write($cloud).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn stamps_beyond_the_drift_limit_are_refused() {
                super::stamps_beyond_the_drift_limit_are_refused($cloud).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn hydrate_restores_a_new_device_and_resumes() {
                super::hydrate_restores_a_new_device_and_resumes($cloud).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn one_sync_brings_known_and_newly_created_collections() {
                super::one_sync_brings_known_and_newly_created_collections($cloud).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_definition_the_cloud_lost_is_published_again() {
                super::a_definition_the_cloud_lost_is_published_again($cloud).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_round_resumes_from_the_stored_cursor() {
                super::a_round_resumes_from_the_stored_cursor($cloud).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_round_naming_an_unknown_collection_changes_nothing() {
                super::a_round_naming_an_unknown_collection_changes_nothing($cloud).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn auto_sync_is_nudged_by_another_devices_write() {
                super::auto_sync_is_nudged_by_another_devices_write($cloud).await;
            }
        }
    };
}

replicate_suite!(memory, memory_cloud());
replicate_suite!(postgres, pg_cloud().await);
replicate_suite!(pgbouncer, pgbouncer_cloud().await);
