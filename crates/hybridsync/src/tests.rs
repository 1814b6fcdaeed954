//! Facade tests: the typed API end to end on a real store.

use crate::{Config, HybridStore, Metric, Precision, VectorSpec, WriteOptions};

#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct Note {
    title: String,
    body: String,
}

#[tokio::test]
async fn typed_round_trip_and_decode_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let store = HybridStore::builder(tmp.path()).open().await.unwrap();
    store.create_collection("notes", None).await.unwrap();
    let notes = store.collection::<Note>("notes").unwrap();
    let note = Note {
        title: "t".into(),
        body: "b".into(),
    };
    notes.put("n1", &note).await.unwrap();
    assert_eq!(notes.get("n1").await.unwrap(), Some(note));
    assert_eq!(notes.list(None, 10).await.unwrap().len(), 1);
    notes.delete("n1").await.unwrap();
    assert_eq!(notes.get("n1").await.unwrap(), None);

    // Bytes that are not a `Note` are a typed decode error, not a panic or garbage.
    store
        .raw("notes")
        .unwrap()
        .put("junk", vec![0xff; 3], WriteOptions::default())
        .await
        .unwrap();
    let err = notes.get("junk").await.unwrap_err();
    assert!(
        matches!(
            err,
            crate::Error::Core(hybridsync_core::Error::Decode { .. })
        ),
        "{err}"
    );
    assert!(store.collection::<Note>("Bad Name").is_err());
    for bad in ["", "a\nb"] {
        let err = notes.get(bad).await.unwrap_err();
        assert!(
            matches!(
                err,
                crate::Error::Core(hybridsync_core::Error::InvalidKey { .. })
            ),
            "{bad:?}: {err}"
        );
    }
}

#[tokio::test]
async fn config_applies_and_rejects_typos() {
    let tmp = tempfile::tempdir().unwrap();
    let config: Config = toml::from_str(&format!(
        "data_dir = {:?}\ndurability = \"full\"\n[limits]\nmax_payload_bytes = 8\n",
        tmp.path()
    ))
    .unwrap();
    let store = HybridStore::builder("/nonexistent")
        .config(&config)
        .unwrap()
        .open()
        .await
        .unwrap();
    store
        .create_collection(
            "v",
            Some(VectorSpec::new(2, Metric::L2, Precision::F32).unwrap()),
        )
        .await
        .unwrap();
    let raw = store.raw("v").unwrap();
    assert!(
        raw.put("k", vec![0; 9], WriteOptions::default())
            .await
            .is_err(),
        "limit from config applies"
    );
    raw.put(
        "k",
        vec![0; 8],
        WriteOptions::default().embedding(vec![1.0, 2.0]),
    )
    .await
    .unwrap();
    assert_eq!(
        raw.search(&[1.0, 2.0], 1).await.unwrap()[0].key.as_str(),
        "k"
    );
    assert!(
        toml::from_str::<Config>("dat_dir = \"/x\"").is_err(),
        "unknown fields are refused"
    );
    let bad = Config {
        durability: Some("sometimes".into()),
        ..Config::default()
    };
    assert!(HybridStore::builder(tmp.path()).config(&bad).is_err());
    // A pooler this build does not know is refused by name, before anything opens.
    let bad: Config = toml::from_str("[cloud]\npooler = \"pgpool\"\n").unwrap();
    let err = HybridStore::builder(tmp.path())
        .config(&bad)
        .unwrap_err()
        .to_string();
    assert!(err.contains("pooler") && err.contains("pgpool"), "{err}");
    let good: Config = toml::from_str(
        "[cloud]\npooler = \"pgbouncer-transaction\"\nidle_in_transaction_timeout_ms = 2000\n",
    )
    .unwrap();
    assert!(HybridStore::builder(tmp.path()).config(&good).is_ok());
}

/// `[cache.warming]` reaches the engine; a bad value is refused by name and opens
/// nothing; and the runtime's own loop (not a test's call) warms a store whose keys
/// are read on a cycle longer than its cache.
#[tokio::test]
async fn warming_is_configured_refused_by_name_and_its_loop_prefetches() {
    let tmp = tempfile::tempdir().unwrap();
    for (toml, named) in [
        ("threshold = 1.5", "threshold"),
        ("interval_ms = 0", "interval_ms"),
        ("top_k = 0", "top_k"),
        ("max_keys = 0", "max_keys"),
    ] {
        let bad: Config = toml::from_str(&format!("[cache.warming]\n{toml}\n")).unwrap();
        let err = HybridStore::builder(tmp.path().join("bad"))
            .config(&bad)
            .unwrap_err()
            .to_string();
        assert!(err.contains(named), "{toml}: {err}");
    }
    assert!(
        !tmp.path().join("bad").exists(),
        "a refused setting opens nothing"
    );
    assert!(toml::from_str::<Config>("[cache.warming]\ntopk = 3\n").is_err());

    let off: Config = toml::from_str("[cache.warming]\nenabled = false\n").unwrap();
    let store = HybridStore::builder(tmp.path().join("off"))
        .config(&off)
        .unwrap()
        .open()
        .await
        .unwrap();
    assert!(!store.warming_stats().enabled);
    store.close().await;

    let on: Config = toml::from_str(
        "[cache]\nentries = 3\n[cache.warming]\ninterval_ms = 100\ntop_k = 4\nmax_keys = 64\n",
    )
    .unwrap();
    let store = HybridStore::builder(tmp.path().join("on"))
        .config(&on)
        .unwrap()
        .open()
        .await
        .unwrap();
    store.create_collection("profiles", None).await.unwrap();
    let raw = store.raw("profiles").unwrap();
    let keys: Vec<String> = (0..9).map(|i| format!("user-{i}")).collect();
    for k in &keys {
        raw.put(k, k.as_bytes().to_vec(), WriteOptions::default())
            .await
            .unwrap();
    }
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(60));
    // A late tick delays the rest rather than bursting to catch up.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for k in keys.iter().cycle().take(9 * 10) {
        tick.tick().await;
        assert_eq!(raw.get(k).await.unwrap().unwrap(), k.as_bytes());
    }
    let stats = store.warming_stats();
    assert!(stats.enabled && stats.tracked_keys == 9, "{stats:?}");
    assert!(
        stats.prefetch_hits >= 20 && stats.accuracy > 0.5,
        "the loop served reads from its prefetches: {stats:?}"
    );
    let metrics = store.metrics().await.unwrap();
    assert!(metrics.cache_hits >= stats.prefetch_hits, "{metrics:?}");
    store.close().await;
}

#[tokio::test]
async fn metrics_snapshot_counts_reads_and_the_queue() {
    let tmp = tempfile::tempdir().unwrap();
    let store = HybridStore::builder(tmp.path())
        .hot_cache(1, usize::MAX)
        .open()
        .await
        .unwrap();
    store.create_collection("notes", None).await.unwrap();
    let raw = store.raw("notes").unwrap();
    raw.put(
        "a",
        vec![1],
        WriteOptions::default().priority(crate::Priority::High),
    )
    .await
    .unwrap();
    raw.put("b", vec![2], WriteOptions::default())
        .await
        .unwrap(); // evicts a (capacity 1)
    raw.get("b").await.unwrap();
    raw.get("a").await.unwrap();
    let metrics = store.metrics().await.unwrap();
    assert_eq!((metrics.cache_hits, metrics.cache_misses), (1, 1));
    assert_eq!(metrics.cache_hit_rate, 0.5);
    assert_eq!(metrics.queue[&crate::Priority::High], 1);
    assert_eq!(metrics.queue[&crate::Priority::Normal], 1);
    assert_eq!(
        (metrics.circuit, metrics.synced_total, metrics.last_sync_ms),
        (None, 0, None)
    );
    assert!(matches!(
        store.flush(std::time::Duration::from_secs(1)).await,
        Err(crate::Error::NoCloud)
    ));
}

fn voiceprint(i: usize) -> Vec<f32> {
    // Deterministic, well spread 16-D vectors (no two alike).
    (0..16)
        .map(|d| ((i * 31 + d * 17) as f32 * 0.618).sin() + (i % 7) as f32 * 0.01)
        .collect()
}

async fn voices_status(store: &HybridStore) -> crate::CollectionStatus {
    store
        .status()
        .await
        .unwrap()
        .collections
        .into_iter()
        .find(|c| c.name.as_str() == "voices")
        .unwrap()
}

/// The snapshot files in `dir`: the one index file (older ones are pruned) and the
/// description, which names it.
fn snapshot_files(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let mut indexes: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "hnsw"))
        .collect();
    assert_eq!(indexes.len(), 1, "{indexes:?}");
    let index = indexes.remove(0);
    let description = dir.join("voices.snapshot");
    let text = std::fs::read_to_string(&description).unwrap();
    let name = index.file_name().unwrap().to_str().unwrap();
    assert!(text.ends_with(&format!("file {name}\n")), "{text}");
    (index, description)
}

async fn nearest(store: &HybridStore, query: &[f32]) -> String {
    store.raw("voices").unwrap().search(query, 1).await.unwrap()[0]
        .key
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_saves_the_index_open_restores_it_and_a_store_that_moved_on_is_rebuilt() {
    let tmp = tempfile::tempdir().unwrap();
    let n = 3_000;
    let store = HybridStore::builder(tmp.path()).open().await.unwrap();
    store
        .create_collection(
            "voices",
            Some(VectorSpec::new(16, Metric::Cosine, Precision::F16).unwrap()),
        )
        .await
        .unwrap();
    let voices = store.raw("voices").unwrap();
    voices
        .put_many(
            (0..n)
                .map(|i| {
                    let options = WriteOptions::default().embedding(voiceprint(i));
                    (format!("v{i}"), vec![1], options)
                })
                .collect(),
        )
        .await
        .unwrap();
    assert!(
        !voices_status(&store).await.index_restored,
        "built: nothing saved yet"
    );
    store.close().await;
    let saved = tmp.path().join("indexes");
    let (index, description) = snapshot_files(&saved);
    for file in [&index, &description] {
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(file).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600, "{file:?} is owner-only");
    }

    // Reopened as it was: restored, and it answers as before. Nothing changed, so
    // closing again leaves the saved index file alone.
    let saved_at = std::fs::metadata(&index).unwrap().modified().unwrap();
    let store = HybridStore::builder(tmp.path()).open().await.unwrap();
    let status = voices_status(&store).await;
    assert!(status.index_restored);
    assert_eq!(status.indexed, n);
    assert_eq!(nearest(&store, &voiceprint(17)).await, "v17");
    store.close().await;
    assert_eq!(snapshot_files(&saved).0, index);
    let modified = std::fs::metadata(&index).unwrap().modified().unwrap();
    assert_eq!(
        modified, saved_at,
        "an unchanged index is not written again"
    );

    // A process that wrote and died without closing: its change is in SQLite, not in
    // the saved index (same labels, a different vector). The next open must notice.
    let crashed = HybridStore::builder(tmp.path()).open().await.unwrap();
    let moved = voiceprint(1_000_000);
    crashed
        .raw("voices")
        .unwrap()
        .put(
            "v17",
            vec![2],
            WriteOptions::default().embedding(moved.clone()),
        )
        .await
        .unwrap();
    drop(crashed);
    let store = HybridStore::builder(tmp.path()).open().await.unwrap();
    let status = voices_status(&store).await;
    assert!(!status.index_restored, "stale snapshot ignored");
    assert_eq!(status.indexed, n);
    assert_eq!(nearest(&store, &moved).await, "v17");
    store.close().await;

    // The same for a delete.
    let crashed = HybridStore::builder(tmp.path()).open().await.unwrap();
    assert!(voices_status(&crashed).await.index_restored);
    crashed
        .raw("voices")
        .unwrap()
        .delete("v5", crate::Priority::Normal)
        .await
        .unwrap();
    drop(crashed);
    let store = HybridStore::builder(tmp.path()).open().await.unwrap();
    let status = voices_status(&store).await;
    assert!(!status.index_restored, "stale snapshot ignored");
    assert_eq!(status.indexed, n - 1);
    assert_ne!(nearest(&store, &voiceprint(5)).await, "v5");
    store.close().await;

    // Two processes on the directory, one of them changing a vector, closing (and
    // saving) at the same moment: whichever description lands names its own index, so
    // the next open restores one that agrees with the store or rebuilds.
    let (a, b) = (
        HybridStore::builder(tmp.path()).open().await.unwrap(),
        HybridStore::builder(tmp.path()).open().await.unwrap(),
    );
    let again = voiceprint(2_000_000);
    a.raw("voices")
        .unwrap()
        .put(
            "v42",
            vec![3],
            WriteOptions::default().embedding(again.clone()),
        )
        .await
        .unwrap();
    tokio::join!(a.close(), b.close());
    let store = HybridStore::builder(tmp.path()).open().await.unwrap();
    assert_eq!(nearest(&store, &again).await, "v42");
    assert_eq!(voices_status(&store).await.indexed, n - 1);
    store.close().await;

    // A damaged index file beside an intact description: rebuilt, not an error.
    let (file, _) = snapshot_files(&saved);
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() / 3]).unwrap();
    let store = HybridStore::builder(tmp.path()).open().await.unwrap();
    let status = voices_status(&store).await;
    assert!(!status.index_restored);
    assert_eq!(status.indexed, n - 1);
    assert_eq!(nearest(&store, &moved).await, "v17");
    store.close().await;
}

/// R30: no public type that can hold a cloud URL shows its password in `Debug` (or in
/// an error's `Display`), whether the URL came from a file, the builder or the sink's
/// own options.
#[cfg(feature = "cloud-postgres")]
#[tokio::test]
async fn debug_output_never_shows_the_cloud_password() {
    const PASSWORD: &str = "hunter2-Sup3rSecret";
    let url = format!("postgres://app:{PASSWORD}@127.0.0.1:1/db?sslmode=disable");
    let tmp = tempfile::tempdir().unwrap();
    let config: Config = toml::from_str(&format!("cloud_url = {url:?}\n")).unwrap();
    let builder = HybridStore::builder(tmp.path())
        .config(&config)
        .unwrap()
        .cloud_url(url.clone());
    let store = builder.clone().open().await.unwrap();
    let options = hybridsync_cloud::CloudOptions::new(crate::CloudUrl::new(url.clone()), "t");
    let sink = hybridsync_cloud::PostgresSink::new(options.clone()).unwrap();
    // Errors that carry the URL or a refused connection to it.
    let unreachable = store.devices().await.unwrap_err();
    let unparsable = hybridsync_cloud::PostgresSink::new(hybridsync_cloud::CloudOptions::new(
        crate::CloudUrl::new(format!("postgres://app:{PASSWORD}@[::1")),
        "t",
    ))
    .unwrap_err();
    let facade_unparsable = crate::Error::from(unparsable);
    let printed = [
        format!("{config:?}"),
        format!("{builder:?}"),
        format!("{store:?}"),
        format!("{options:?}"),
        format!("{sink:?}"),
        format!("{unreachable:?} {unreachable}"),
        format!("{facade_unparsable:?} {facade_unparsable}"),
        format!("{:?}", store.status().await.unwrap()),
    ];
    for text in &printed {
        assert!(!text.contains(PASSWORD), "password shown in: {text}");
    }
    assert!(
        printed[0].contains("127.0.0.1:1") && printed[5].contains("cloud"),
        "the checks saw the URL and the error at all: {printed:#?}"
    );
    store.close().await;
}

/// `[vector]` picks the index and its breadth; an unknown index is refused by name and
/// opens nothing. Both indexes answer the same search, and each restores its own saved
/// file, while the other's file is refused and the index rebuilt from the store.
#[tokio::test]
async fn the_vector_index_is_configured_and_each_survives_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let bad: Config = toml::from_str("[vector]\nindex = \"faiss\"\n").unwrap();
    let err = HybridStore::builder(tmp.path().join("bad"))
        .config(&bad)
        .unwrap_err()
        .to_string();
    assert!(err.contains("vector.index"), "{err}");
    assert!(!tmp.path().join("bad").exists());
    assert!(toml::from_str::<Config>("[vector]\nefs = 3\n").is_err());

    let dir = tmp.path().join("data");
    // Components from a 64-bit mixer (splitmix64): no two vectors lie within half
    // precision's rounding of each other, so the nearest to vector 7 is vector 7 and
    // every index must say so (a sine pattern repeated itself: vectors 996 and 1985
    // were within 5e-8 of vector 7, and the top hit was a coin toss).
    let mix = |x: u64| {
        let x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        let x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        x ^ (x >> 31)
    };
    let vectors: Vec<Vec<f32>> = (0..2_500u64)
        .map(|i| {
            (0..16u64)
                .map(|j| (mix(i * 16 + j) >> 40) as f32 / (1u64 << 24) as f32 - 0.5)
                .collect()
        })
        .collect();
    let query = vectors[7].clone();
    let mut answers = Vec::new();
    // Each restores its own file and rebuilds from the other's.
    for (index, restored) in [
        ("usearch", false),
        ("usearch", true),
        ("hnsw", false),
        ("hnsw", true),
        ("usearch", false),
    ] {
        let config: Config =
            toml::from_str(&format!("[vector]\nindex = \"{index}\"\nef = 64\n")).unwrap();
        let store = HybridStore::builder(&dir)
            .config(&config)
            .unwrap()
            .open()
            .await
            .unwrap();
        if answers.is_empty() {
            store
                .create_collection(
                    "voices",
                    Some(VectorSpec::new(16, Metric::Cosine, Precision::F16).unwrap()),
                )
                .await
                .unwrap();
            let items = vectors
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    (
                        format!("k{i}"),
                        vec![1],
                        WriteOptions::default().embedding(v.clone()),
                    )
                })
                .collect();
            store.raw("voices").unwrap().put_many(items).await.unwrap();
        }
        let hits = store
            .raw("voices")
            .unwrap()
            .search(&query, 3)
            .await
            .unwrap();
        assert_eq!(hits[0].key.as_str(), "k7", "{index}");
        assert!(
            hits[0].distance.abs() < 1e-3,
            "{index}: {}",
            hits[0].distance
        );
        answers.push(hits.iter().map(|h| h.key.to_string()).collect::<Vec<_>>());
        let status = store.status().await.unwrap();
        let voices = status
            .collections
            .iter()
            .find(|c| c.name.as_str() == "voices")
            .unwrap();
        assert_eq!(
            (voices.indexed, voices.index_restored),
            (2_500, restored),
            "{index}"
        );
        store.close().await;
    }
    assert!(
        answers.windows(2).all(|w| w[0][0] == w[1][0]),
        "{answers:?}"
    );
}
