//! Engine tests over the real SQLite store and usearch cache.

use super::*;
use hybridsync_core::{
    CollectionName, CollectionSpec, Key, LocalStore, Metric, Precision, Priority, VectorSpec,
    WriteRequest,
};
use hybridsync_store::{SqliteStore, StoreOptions};
use hybridsync_testkit::workload::Clustered;
use hybridsync_vector::UsearchCache;
use std::sync::Arc;

pub(crate) type TestEngine = Engine<SqliteStore, UsearchCache>;

fn name(s: &str) -> CollectionName {
    CollectionName::new(s).unwrap()
}

fn key(s: &str) -> Key {
    Key::new(s).unwrap()
}

const DIM: usize = 16;

fn voices() -> CollectionSpec {
    CollectionSpec {
        name: name("voices"),
        vector: Some(VectorSpec::new(DIM, Metric::Cosine, Precision::F16).unwrap()),
        encrypted: false,
    }
}

/// An engine over a real store and index in `dir`, with `spec` declared. Shared by
/// the engine's test modules.
pub(crate) async fn open_engine(dir: &std::path::Path, spec: CollectionSpec) -> TestEngine {
    open_engine_with(dir, spec, EngineConfig::default()).await
}

/// [`open_engine`] with an engine configuration (a snapshot directory, say).
async fn open_engine_with(
    dir: &std::path::Path,
    spec: CollectionSpec,
    config: EngineConfig,
) -> TestEngine {
    let store = Arc::new(SqliteStore::open(StoreOptions::new(dir)).await.unwrap());
    let engine = Engine::open(
        store,
        Some(Arc::new(UsearchCache::default())),
        Arc::new(hybridsync_vector::HotCache::new(10_000, 64 << 20)),
        config,
    )
    .await
    .unwrap();
    engine.create_collection(spec).await.unwrap();
    engine
}

async fn engine(dir: &std::path::Path) -> TestEngine {
    open_engine(dir, voices()).await
}

fn enrol(speaker: usize, embedding: Vec<f32>) -> WriteRequest {
    WriteRequest::put(
        name("voices"),
        key(&format!("speaker-{speaker}")),
        format!("profile {speaker}").into_bytes(),
        Some(embedding),
    )
    .with_priority(Priority::High)
}

/// Enrols speaker `i` with `vectors[i]`, all in one write.
async fn enrol_all(engine: &TestEngine, vectors: &[Vec<f32>]) {
    let batch = vectors
        .iter()
        .enumerate()
        .map(|(i, v)| enrol(i, v.clone()))
        .collect();
    engine.write(batch).await.unwrap();
}

#[tokio::test]
async fn writes_are_readable_from_cache_and_after_restart_from_the_store() {
    let tmp = tempfile::tempdir().unwrap();
    let mut data = Clustered::new(3, 50, DIM, 0.05);
    {
        let engine = engine(tmp.path()).await;
        let batch = (0..50).map(|i| enrol(i, data.sample(i))).collect();
        let receipts = engine.write(batch).await.unwrap();
        let record = engine
            .get(&name("voices"), "speaker-7")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(record.payload, b"profile 7");
        assert!(
            Arc::ptr_eq(&record, &receipts[7].record),
            "the cache keeps the written record itself, not a copy"
        );
        let status = engine.status().await.unwrap();
        assert_eq!(
            status.cache.hits, 1,
            "a just-written record is served from the cache"
        );
        assert_eq!(status.records[&name("voices")], 50);
        assert_eq!(status.indexed[&name("voices")], 50);
        assert_eq!(status.outbox.by_priority[&Priority::High], 50);
        engine.store().close().await;
    }
    let engine = engine(tmp.path()).await;
    assert_eq!(
        engine.status().await.unwrap().indexed[&name("voices")],
        50,
        "index rebuilt from the store at open"
    );
    assert!(
        engine
            .get(&name("voices"), "speaker-7")
            .await
            .unwrap()
            .is_some()
    );
    assert!(
        engine
            .get(&name("voices"), "speaker-7")
            .await
            .unwrap()
            .is_some()
    );
    let cache = engine.status().await.unwrap().cache;
    assert_eq!(
        (cache.misses, cache.hits),
        (1, 1),
        "first read misses, second hits"
    );
    // Authentication by similarity: a fresh sample of speaker 12 finds speaker 12.
    let hits = engine
        .search(
            &name("voices"),
            &data.sample(12),
            3,
            SearchOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(hits[0].key.as_str(), "speaker-12");
}

#[tokio::test]
async fn deletes_leave_the_index_and_reads_see_the_latest_write() {
    let tmp = tempfile::tempdir().unwrap();
    let engine = engine(tmp.path()).await;
    let mut data = Clustered::new(4, 5, DIM, 0.05);
    engine
        .write((0..5).map(|i| enrol(i, data.sample(i))).collect())
        .await
        .unwrap();
    let probe = data.sample(2);
    assert_eq!(
        engine
            .search(&name("voices"), &probe, 1, SearchOptions::default())
            .await
            .unwrap()[0]
            .key
            .as_str(),
        "speaker-2"
    );

    engine
        .delete(name("voices"), key("speaker-2"), Priority::Normal)
        .await
        .unwrap();
    assert!(
        engine
            .get(&name("voices"), "speaker-2")
            .await
            .unwrap()
            .is_none()
    );
    let hits = engine
        .search(&name("voices"), &probe, 5, SearchOptions::default())
        .await
        .unwrap();
    assert!(
        hits.iter().all(|h| h.key.as_str() != "speaker-2"),
        "{hits:?}"
    );
    assert_eq!(engine.status().await.unwrap().indexed[&name("voices")], 4);

    let mut update = enrol(3, data.sample(3));
    update.payload = b"re-enrolled".to_vec();
    engine.put(update).await.unwrap();
    assert_eq!(
        engine
            .get(&name("voices"), "speaker-3")
            .await
            .unwrap()
            .unwrap()
            .payload,
        b"re-enrolled"
    );
}

#[tokio::test]
async fn rerank_returns_exact_distances_sorted() {
    let tmp = tempfile::tempdir().unwrap();
    let engine = engine(tmp.path()).await;
    let mut data = Clustered::new(5, 20, DIM, 0.2);
    let vectors = data.samples(200);
    enrol_all(&engine, &vectors).await;
    let query = data.sample(9);
    let hits = engine
        .search(
            &name("voices"),
            &query,
            5,
            SearchOptions {
                rerank_factor: Some(4),
            },
        )
        .await
        .unwrap();
    assert_eq!(hits.len(), 5);
    for hit in &hits {
        let i: usize = hit
            .key
            .as_str()
            .trim_start_matches("speaker-")
            .parse()
            .unwrap();
        assert_eq!(
            hit.distance,
            Metric::Cosine.distance(&query, &vectors[i]),
            "exact f32 distance"
        );
    }
    assert!(hits.windows(2).all(|w| w[0].distance <= w[1].distance));
}

/// An i8 collection re-ranks by default: every hit carries its exact f32 distance and
/// the answer is the exact top k; asked for no re-rank, the index's quantised
/// distances come back as they are.
#[tokio::test]
async fn an_i8_collection_re_ranks_by_default() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = CollectionSpec {
        name: name("voices"),
        vector: Some(VectorSpec::new(DIM, Metric::Cosine, Precision::I8).unwrap()),
        encrypted: false,
    };
    let engine = open_engine(tmp.path(), spec).await;
    let mut data = Clustered::new(7, 40, DIM, 0.15);
    let vectors = data.samples(800);
    enrol_all(&engine, &vectors).await;
    let index_of =
        |key: &Key| -> usize { key.as_str().trim_start_matches("speaker-").parse().unwrap() };
    let (mut quantised, mut exact_hits) = (0, 0);
    for q in 0..20 {
        let query = data.sample(1_000 + q);
        let mut truth: Vec<(f32, usize)> = vectors
            .iter()
            .enumerate()
            .map(|(i, v)| (Metric::Cosine.distance(&query, v), i))
            .collect();
        truth.sort_by(|a, b| a.0.total_cmp(&b.0));
        let truth: Vec<usize> = truth[..5].iter().map(|(_, i)| *i).collect();
        let hits = engine
            .search(&name("voices"), &query, 5, SearchOptions::default())
            .await
            .unwrap();
        assert_eq!(hits.len(), 5);
        for hit in &hits {
            let exact = Metric::Cosine.distance(&query, &vectors[index_of(&hit.key)]);
            assert_eq!(hit.distance, exact, "re-ranked hits carry exact distances");
        }
        exact_hits += hits
            .iter()
            .filter(|h| truth.contains(&index_of(&h.key)))
            .count();
        let raw = engine
            .search(
                &name("voices"),
                &query,
                5,
                SearchOptions {
                    rerank_factor: Some(0),
                },
            )
            .await
            .unwrap();
        quantised += raw
            .iter()
            .filter(|h| h.distance != Metric::Cosine.distance(&query, &vectors[index_of(&h.key)]))
            .count();
    }
    assert!(
        exact_hits >= 95,
        "re-ranked top 5 found {exact_hits} of 100"
    );
    assert!(
        quantised > 0,
        "without a re-rank the distances are the index's own"
    );
}

#[tokio::test]
async fn bad_queries_and_unknown_collections_are_typed_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let engine = engine(tmp.path()).await;
    let search = |q: Vec<f32>| {
        let engine = &engine;
        async move {
            engine
                .search(&name("voices"), &q, 3, SearchOptions::default())
                .await
        }
    };
    assert!(matches!(
        search(vec![1.0; DIM - 1]).await,
        Err(crate::Error::Core(
            hybridsync_core::Error::DimensionMismatch { .. }
        ))
    ));
    let mut nan = vec![1.0; DIM];
    nan[3] = f32::NAN;
    assert!(matches!(
        search(nan).await,
        Err(crate::Error::Core(
            hybridsync_core::Error::NonFiniteEmbedding { index: 3, .. }
        ))
    ));
    assert!(matches!(
        engine.get(&name("nowhere"), "k").await,
        Err(crate::Error::Core(
            hybridsync_core::Error::UnknownCollection(_)
        ))
    ));
    let wrong_dim = WriteRequest::put(name("voices"), key("x"), vec![], Some(vec![0.5; DIM + 1]));
    assert!(matches!(
        engine.put(wrong_dim).await,
        Err(crate::Error::Core(
            hybridsync_core::Error::DimensionMismatch { .. }
        ))
    ));
    assert_eq!(
        engine.status().await.unwrap().indexed[&name("voices")],
        0,
        "nothing indexed"
    );
}

/// Declaring a known collection again returns early (sync does it every round), so the
/// early return must take only the very same spec: a different one is still refused,
/// and changes nothing.
#[tokio::test]
async fn a_collection_declared_again_keeps_its_spec_and_a_different_spec_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let engine = engine(tmp.path()).await;
    engine.put(enrol(0, vec![0.5; DIM])).await.unwrap();
    engine.create_collection(voices()).await.unwrap();
    let vector = |dim, metric, precision| Some(VectorSpec::new(dim, metric, precision).unwrap());
    let others = [
        (None, false),
        (vector(DIM + 1, Metric::Cosine, Precision::F16), false),
        (vector(DIM, Metric::L2, Precision::F16), false),
        (vector(DIM, Metric::Cosine, Precision::I8), false),
        (vector(DIM, Metric::Cosine, Precision::F16), true),
    ];
    for (vector, encrypted) in others {
        let other = CollectionSpec {
            vector,
            encrypted,
            ..voices()
        };
        assert!(
            matches!(
                engine.create_collection(other.clone()).await,
                Err(crate::Error::Core(
                    hybridsync_core::Error::CollectionSpecMismatch { .. }
                ))
            ),
            "{other:?} was taken over the declared spec"
        );
    }
    assert_eq!(engine.collections().await.unwrap(), vec![voices()]);
    let hits = engine
        .search(&name("voices"), &[0.5; DIM], 1, SearchOptions::default())
        .await
        .unwrap();
    assert_eq!(hits[0].key.as_str(), "speaker-0");
}

#[tokio::test]
async fn a_collection_created_by_another_handle_is_picked_up() {
    let tmp = tempfile::tempdir().unwrap();
    let engine = engine(tmp.path()).await;
    let other = SqliteStore::open(StoreOptions::new(tmp.path()))
        .await
        .unwrap();
    let faces = CollectionSpec {
        name: name("faces"),
        vector: Some(VectorSpec::new(4, Metric::L2, Precision::F32).unwrap()),
        encrypted: false,
    };
    other.create_collection(&faces).await.unwrap();
    other
        .write(vec![WriteRequest::put(
            name("faces"),
            key("f1"),
            vec![1],
            Some(vec![0.0, 0.0, 0.0, 1.0]),
        )])
        .await
        .unwrap();
    engine
        .put(WriteRequest::put(
            name("faces"),
            key("f2"),
            vec![2],
            Some(vec![0.0, 0.0, 1.0, 0.0]),
        ))
        .await
        .unwrap();
    let hits = engine
        .search(
            &name("faces"),
            &[0.0, 0.0, 0.0, 1.0],
            2,
            SearchOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(
        hits.iter().map(|h| h.key.as_str()).collect::<Vec<_>>(),
        ["f1", "f2"]
    );
}

#[test]
fn a_snapshot_description_names_its_own_index_file_and_nothing_else() {
    use crate::snapshot::{Ledger, SnapshotFiles};
    let tmp = tempfile::tempdir().unwrap();
    let spec = voices().vector.unwrap();
    let files = SnapshotFiles::new(tmp.path(), "voices", "usearch");
    let ledger = Ledger::default();
    let first = files.new_index();
    let second = files.new_index();
    assert_ne!(first, second, "every save writes a file of its own");
    for index in [&first, &second] {
        std::fs::write(index, b"index").unwrap();
    }
    files.describe(&spec, &ledger, &second).unwrap();
    let saved = files.saved_for(&spec).unwrap();
    assert_eq!(saved.index, second);
    assert!(SnapshotFiles::matches(&saved, &spec, &ledger));
    assert!(!first.exists(), "the file no longer named is pruned");
    // An index of another format: its files are not offered, and a save prunes them.
    let hnsw = SnapshotFiles::new(tmp.path(), "voices", "hnsw");
    assert!(
        hnsw.saved_for(&spec).is_none(),
        "a usearch file is not offered to hnsw"
    );
    let third = hnsw.new_index();
    assert!(third.to_str().unwrap().ends_with(".hnsw"));
    std::fs::write(&third, b"index").unwrap();
    hnsw.describe(&spec, &ledger, &third).unwrap();
    assert_eq!(hnsw.saved_for(&spec).unwrap().index, third);
    assert!(!second.exists(), "the other format's file is pruned");
    assert!(files.saved_for(&spec).is_none());
    files.describe(&spec, &ledger, &second).unwrap_err();
    std::fs::write(&second, b"index").unwrap();
    files.describe(&spec, &ledger, &second).unwrap();

    // A description for another spec, or naming a file outside this collection's own,
    // is not trusted.
    let other = VectorSpec::new(DIM, Metric::L2, Precision::F16).unwrap();
    assert!(files.saved_for(&other).is_none());
    let text = std::fs::read_to_string(tmp.path().join("voices.snapshot")).unwrap();
    let name = second.file_name().unwrap().to_str().unwrap();
    for forged in ["../voices-1.usearch", "notes-1.usearch", "voices-1.tmp"] {
        std::fs::write(
            tmp.path().join("voices.snapshot"),
            text.replace(name, forged),
        )
        .unwrap();
        assert!(files.saved_for(&spec).is_none(), "{forged}");
    }
}

/// The runtime shuts down in its fixed order, once: what was written reaches the cloud
/// within the deadline, the index snapshot is saved, the store is closed, and a second
/// shutdown does nothing and gives the same answer.
#[tokio::test]
async fn the_runtime_shuts_down_once_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    let snapshots = tmp.path().join("indexes");
    let config = EngineConfig {
        snapshot_dir: Some(snapshots.clone()),
        ..EngineConfig::default()
    };
    let engine = Arc::new(open_engine_with(tmp.path(), voices(), config).await);
    let sink = Arc::new(hybridsync_testkit::MemorySink::new());
    let config = RuntimeConfig {
        sync: crate::sync_tests::fast_config(),
        ..RuntimeConfig::default()
    };
    let runtime = Runtime::new(engine.clone(), Some(sink.clone()), config);
    runtime.start_sync().await.unwrap();
    enrol_all(&engine, &Clustered::new(3, 4, DIM, 0.05).samples(20)).await;
    assert_eq!(
        runtime
            .shutdown(std::time::Duration::from_secs(5))
            .await
            .unwrap(),
        0,
        "everything shipped within the deadline"
    );
    assert_eq!(
        hybridsync_core::CloudSink::count(&*sink, &name("voices"))
            .await
            .unwrap(),
        20
    );
    assert!(
        std::fs::read_dir(&snapshots).unwrap().count() > 0,
        "the index snapshot was saved"
    );
    assert!(
        engine
            .put(WriteRequest::delete(name("voices"), key("speaker-1")))
            .await
            .is_err(),
        "the store is closed after shutdown"
    );
    let calls = sink.calls();
    assert_eq!(
        runtime
            .shutdown(std::time::Duration::from_secs(5))
            .await
            .unwrap(),
        0
    );
    assert_eq!(sink.calls(), calls, "a second shutdown does nothing");
    assert!(runtime.start_sync().await.is_ok());
}

/// Twelve keys read round-robin, each every 600 ms, through a cache of four: plain LRU
/// never hits (each key is evicted before its turn comes again). Warming rounds every
/// 100 ms learn the cycle and load each key just before its turn.
async fn periodic_reads(warming: bool) -> (crate::WarmingStats, hybridsync_core::HotCacheStats) {
    let tmp = tempfile::tempdir().unwrap();
    let store = Arc::new(
        SqliteStore::open(StoreOptions::new(tmp.path()))
            .await
            .unwrap(),
    );
    let config = EngineConfig {
        warming: crate::WarmingConfig {
            enabled: warming,
            interval: std::time::Duration::from_millis(100),
            ..crate::WarmingConfig::default()
        },
        ..EngineConfig::default()
    };
    let engine: TestEngine = Engine::open(
        store,
        None,
        Arc::new(hybridsync_vector::HotCache::new(4, 64 << 20)),
        config,
    )
    .await
    .unwrap();
    let notes = CollectionSpec {
        name: name("notes"),
        vector: None,
        encrypted: false,
    };
    engine.create_collection(notes).await.unwrap();
    let keys: Vec<String> = (0..12).map(|i| format!("user-{i}")).collect();
    let writes = keys
        .iter()
        .map(|k| WriteRequest::put(name("notes"), key(k), k.as_bytes().to_vec(), None))
        .collect();
    engine.write(writes).await.unwrap();
    // Pushes the written keys out of the cache.
    for k in &keys {
        engine.get(&name("notes"), k).await.unwrap();
    }
    let started = tokio::time::Instant::now();
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(50));
    // A late tick delays the rest rather than bursting to catch up: the gaps stay
    // regular on a loaded machine.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut before = None;
    for (i, k) in keys.iter().cycle().take(12 * 9).enumerate() {
        tick.tick().await;
        let record = engine.get(&name("notes"), k).await.unwrap().unwrap();
        assert_eq!(
            record.payload,
            k.as_bytes(),
            "a prefetched record is the stored one"
        );
        if i % 2 == 1 {
            engine.warm().await.unwrap();
        }
        if i == 12 * 5 - 1 {
            before = Some(engine.cache_stats());
        }
    }
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
    let (before, after) = (before.unwrap(), engine.cache_stats());
    let last_cycles = hybridsync_core::HotCacheStats {
        hits: after.hits - before.hits,
        misses: after.misses - before.misses,
        prefetch_hits: after.prefetch_hits - before.prefetch_hits,
        prefetched: after.prefetched - before.prefetched,
        ..after
    };
    (engine.warming_stats(), last_cycles)
}

#[tokio::test]
async fn warming_loads_periodic_keys_ahead_of_their_reads_and_plain_lru_never_hits() {
    let (off, lru) = periodic_reads(false).await;
    assert_eq!(
        (lru.hits, off.enabled, off.prefetches),
        (0, false, 0),
        "{lru:?}"
    );
    let (on, warmed) = periodic_reads(true).await;
    // The last four cycles: 48 reads, after four cycles of learning.
    assert!(
        warmed.prefetch_hits >= 24 && warmed.hits == warmed.prefetch_hits,
        "at least half the reads served by a prefetch: {warmed:?} {on:?}"
    );
    assert!(on.enabled && on.predictions >= on.prefetches && on.prefetches >= on.prefetch_hits);
    assert!(on.accuracy > 0.5 && on.tracked_keys == 12, "{on:?}");
}

/// Callers decide "try again later" from the engine's error type, never from strings.
#[test]
fn engine_errors_say_whether_a_retry_can_help() {
    let cloud = |retryable| {
        crate::Error::Core(hybridsync_core::Error::Cloud {
            retryable,
            source: "cloud".into(),
        })
    };
    assert!(cloud(true).is_retryable());
    assert!(!cloud(false).is_retryable());
    assert!(crate::Error::NotPushed { left: 3 }.is_retryable());
    assert!(!crate::Error::NoCloud.is_retryable());
    assert!(
        !crate::Error::Core(hybridsync_core::Error::UnknownCollection("x".into())).is_retryable()
    );
}
