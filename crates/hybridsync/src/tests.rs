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
