//! Tests of the indexes (each test runs on our HNSW and on usearch) and the hot cache.

use super::*;
use hybridsync_core::{
    CollectionName, DeviceId, Hlc, Key, Metric, Precision, Record, RecordCache, VectorCache,
    VectorSpec,
};
use hybridsync_testkit::workload::Clustered;
use std::sync::Arc;

/// An index under test.
trait Index: VectorCache + Default {
    fn with(options: VectorOptions) -> Self;
    fn exact(
        &self,
        c: &CollectionName,
        q: &[f32],
        k: usize,
    ) -> Result<Vec<hybridsync_core::VectorHit>>;
}

/// Both indexes have the same inherent constructor and exact scan.
macro_rules! index {
    ($($cache:ty),*) => {
        $(impl Index for $cache {
            fn with(options: VectorOptions) -> Self {
                Self::new(options)
            }
            fn exact(
                &self,
                c: &CollectionName,
                q: &[f32],
                k: usize,
            ) -> Result<Vec<hybridsync_core::VectorHit>> {
                self.exact_search(c, q, k)
            }
        })*
    };
}

index!(HnswCache, UsearchCache);

/// `#[test]`s of a generic test, one per index.
macro_rules! on_both {
    ($($test:ident),* $(,)?) => {
        $(mod $test {
            #[test]
            fn hnsw() {
                super::$test::<super::HnswCache>();
            }
            #[test]
            fn usearch() {
                super::$test::<super::UsearchCache>();
            }
        })*
    };
}

on_both!(
    hnsw_recall_on_clustered_data_is_at_least_095,
    distances_match_the_core_metric,
    upsert_replaces_remove_forgets_and_the_index_grows_under_concurrent_search,
    a_saved_index_restores_and_a_mismatched_one_is_refused_changing_nothing,
    a_cosine_index_reports_the_cosine_distance_of_unscaled_vectors,
);

fn name(s: &str) -> CollectionName {
    CollectionName::new(s).unwrap()
}

fn rows(vectors: &[Vec<f32>]) -> Vec<(u64, Key, Vec<f32>)> {
    vectors
        .iter()
        .enumerate()
        .map(|(i, v)| (i as u64 + 1, Key::new(format!("k{i}")).unwrap(), v.clone()))
        .collect()
}

fn recall_at_10<C: Index>(metric: Metric, precision: Precision) -> f64 {
    let (dim, n) = (48, 6_000);
    let mut data = Clustered::new(7, 60, dim, 0.15);
    let vectors = data.samples(n);
    let cache = C::with(VectorOptions {
        exact_below: 0,
        ..VectorOptions::default()
    });
    let spec = VectorSpec::new(dim, metric, precision).unwrap();
    cache.build(&name("v"), &spec, rows(&vectors)).unwrap();
    assert_eq!(cache.len(&name("v")), n);
    let queries = data.samples(100);
    let mut found = 0;
    for q in &queries {
        let approx: Vec<Key> = cache
            .search(&name("v"), q, 10)
            .unwrap()
            .into_iter()
            .map(|h| h.key)
            .collect();
        let exact = cache.exact(&name("v"), q, 10).unwrap();
        assert_eq!(exact.len(), 10);
        found += exact.iter().filter(|h| approx.contains(&h.key)).count();
    }
    found as f64 / (queries.len() * 10) as f64
}

fn hnsw_recall_on_clustered_data_is_at_least_095<C: Index>() {
    for (metric, precision) in [
        (Metric::Cosine, Precision::F32),
        (Metric::Cosine, Precision::F16),
        (Metric::Cosine, Precision::I8),
        (Metric::L2, Precision::F16),
    ] {
        let recall = recall_at_10::<C>(metric, precision);
        assert!(recall >= 0.95, "{metric}/{precision}: recall@10 {recall}");
    }
}

fn distances_match_the_core_metric<C: Index>() {
    let spec = VectorSpec::new(3, Metric::L2, Precision::F32).unwrap();
    let cache = C::default();
    let a = vec![1.0, 2.0, 3.0];
    let b = vec![0.0, 0.0, 1.0];
    cache
        .build(&name("v"), &spec, rows(&[a.clone(), b.clone()]))
        .unwrap();
    let hits = cache.search(&name("v"), &b, 2).unwrap();
    assert_eq!(hits[0].key.as_str(), "k1");
    assert_eq!(hits[0].distance, 0.0);
    assert!((hits[1].distance - Metric::L2.distance(&a, &b)).abs() < 1e-4);
}

fn upsert_replaces_remove_forgets_and_the_index_grows_under_concurrent_search<C: Index>() {
    let spec = VectorSpec::new(8, Metric::Cosine, Precision::F16).unwrap();
    let cache = Arc::new(C::default());
    let v = name("v");
    cache.build(&v, &spec, Vec::new()).unwrap();
    assert!(cache.search(&v, &[1.0; 8], 5).unwrap().is_empty());

    let mut data = Clustered::new(1, 10, 8, 0.1);
    let vectors = data.samples(3_000);
    std::thread::scope(|s| {
        for part in 0..2 {
            let (cache, vectors, v) = (&cache, &vectors, &v);
            s.spawn(move || {
                for (i, vector) in vectors.iter().enumerate().skip(part).step_by(2) {
                    cache
                        .upsert(v, i as u64, &Key::new(format!("k{i}")).unwrap(), vector)
                        .unwrap();
                }
            });
        }
        s.spawn(|| {
            for q in vectors.iter().take(300) {
                cache.search(&v, q, 3).unwrap();
            }
        });
    });
    assert_eq!(cache.len(&v), 3_000);

    // Moving k0 next to a fresh point makes it that point's nearest neighbour. The graph
    // walk is approximate (and its shape depends on the threads' interleaving), so the
    // index contents are checked with the exact scan over the same index.
    let far = vec![-5.0, 5.0, -5.0, 5.0, -5.0, 5.0, -5.0, 5.0];
    cache.upsert(&v, 0, &Key::new("k0").unwrap(), &far).unwrap();
    assert_eq!(cache.len(&v), 3_000, "upsert replaces, it does not add");
    assert_eq!(cache.exact(&v, &far, 1).unwrap()[0].key.as_str(), "k0");
    cache.remove(&v, 0).unwrap();
    assert_ne!(cache.exact(&v, &far, 1).unwrap()[0].key.as_str(), "k0");
    assert_eq!(cache.len(&v), 2_999);
    assert!(cache.search(&name("nope"), &far, 1).is_err());
}

fn record(key: &str, ms: u64, payload: usize) -> Arc<Record> {
    Arc::new(Record::new(
        name("c"),
        Key::new(key).unwrap(),
        vec![0; payload],
        None,
        Hlc {
            physical_ms: ms,
            logical: 0,
            origin: DeviceId::default(),
        },
        false,
    ))
}

#[test]
fn hot_cache_evicts_least_recently_used_by_entries() {
    let cache = HotCache::new(2, usize::MAX);
    cache.insert(record("a", 1, 1));
    cache.insert(record("b", 1, 1));
    assert!(cache.get(&name("c"), "a").is_some()); // a is now fresher than b
    cache.insert(record("c", 1, 1));
    assert!(
        cache.get(&name("c"), "b").is_none(),
        "b was least recently used"
    );
    assert!(cache.get(&name("c"), "a").is_some());
    let stats = cache.stats();
    assert_eq!((stats.hits, stats.misses, stats.entries), (2, 1, 2));
}

#[test]
fn hot_cache_is_bounded_by_bytes_and_refuses_older_versions() {
    let one = record("k0", 1, 1_000).approx_size();
    let cache = HotCache::new(100, one * 3);
    for i in 0..10 {
        cache.insert(record(&format!("k{i}"), 1, 1_000));
    }
    let stats = cache.stats();
    assert!(stats.bytes <= one * 3 && stats.entries == 3, "{stats:?}");

    cache.insert(record("v", 5, 10));
    cache.insert(record("v", 4, 20));
    let cached = cache.get(&name("c"), "v").unwrap();
    assert_eq!(
        cached.version.physical_ms, 5,
        "an older version never replaces a newer one"
    );
    cache.remove(&name("c"), &Key::new("v").unwrap());
    assert!(cache.get(&name("c"), "v").is_none());
}

#[test]
fn a_prefetch_never_replaces_a_cached_key_nor_evicts_one_kept_and_counts_its_first_hit() {
    let cache = HotCache::new(2, usize::MAX);
    let keep_none = |_: &Record| false;
    cache.insert(record("a", 5, 1));
    assert!(
        !cache.prefetch(record("a", 4, 1), &keep_none),
        "a cached key is left as it is"
    );
    assert_eq!(cache.get(&name("c"), "a").unwrap().version.physical_ms, 5);
    assert!(cache.prefetch(record("b", 1, 1), &keep_none));
    assert!(cache.contains(&name("c"), "b") && !cache.contains(&name("c"), "z"));

    // Full: the victim would be `a` (least recently used); a hotter `a` is kept.
    let keep_a = |victim: &Record| victim.key.as_str() == "a";
    assert!(!cache.prefetch(record("c", 1, 1), &keep_a));
    assert!(cache.contains(&name("c"), "a"));
    assert!(
        cache.prefetch(record("c", 1, 1), &keep_none),
        "a colder victim goes"
    );
    assert!(!cache.contains(&name("c"), "a"));

    assert!(cache.get(&name("c"), "c").is_some());
    assert!(cache.get(&name("c"), "c").is_some());
    let stats = cache.stats();
    assert_eq!(
        (stats.prefetched, stats.prefetch_hits),
        (2, 1),
        "one prefetch hit per load, at its first read: {stats:?}"
    );
    // A write over a prefetched entry that was never read clears its mark.
    cache.insert(record("b", 9, 1));
    assert!(cache.get(&name("c"), "b").is_some());
    assert_eq!(cache.stats().prefetch_hits, 1);
    // Contains counts nothing.
    assert_eq!((cache.stats().hits, cache.stats().misses), (4, 0));
}

#[test]
fn an_unread_prefetch_outlives_one_eviction_not_two_and_a_read_one_none() {
    let keep_none = |_: &Record| false;
    let cached = |cache: &HotCache, key: &str| cache.contains(&name("c"), key);
    let cache = HotCache::new(3, usize::MAX);
    assert!(cache.prefetch(record("p", 1, 1), &keep_none));
    cache.insert(record("a", 1, 1));
    cache.insert(record("b", 1, 1));
    // `p` is least recently used, but the entry the next eviction takes is `a`, and
    // that is what a prefetch asks `keep` about.
    let keep_a = |victim: &Record| victim.key.as_str() == "a";
    assert!(!cache.prefetch(record("r", 1, 1), &keep_a));
    cache.insert(record("c", 1, 1));
    assert!(
        cached(&cache, "p") && !cached(&cache, "a"),
        "p passed over once"
    );
    cache.insert(record("d", 1, 1));
    assert!(cached(&cache, "p") && !cached(&cache, "b"));
    cache.insert(record("e", 1, 1));
    assert!(!cached(&cache, "p"), "passed over once only");
    assert_eq!(cache.stats().entries, 3);

    // Read once, a prefetched entry is an ordinary one.
    assert!(cache.prefetch(record("q", 1, 1), &keep_none));
    assert!(cache.get(&name("c"), "q").is_some());
    for key in ["f", "g", "h"] {
        cache.insert(record(key, 1, 1));
    }
    assert!(!cached(&cache, "q"), "a read entry gets no second chance");

    // Every entry unread and prefetched: each is passed over once, so the least
    // recently used goes, and that is the one `keep` is asked about.
    let cache = HotCache::new(2, usize::MAX);
    assert!(cache.prefetch(record("x", 1, 1), &keep_none));
    assert!(cache.prefetch(record("y", 1, 1), &keep_none));
    let keep_x = |victim: &Record| victim.key.as_str() == "x";
    assert!(!cache.prefetch(record("z", 1, 1), &keep_x));
    assert!(cache.prefetch(record("z", 1, 1), &keep_none));
    assert!(!cached(&cache, "x") && cached(&cache, "y") && cached(&cache, "z"));

    // The byte bound passes over it the same way, and still holds.
    let one = record("k", 1, 1_000).approx_size();
    let cache = HotCache::new(100, one * 2);
    assert!(cache.prefetch(record("p", 1, 1_000), &keep_none));
    cache.insert(record("a", 1, 1_000));
    cache.insert(record("b", 1, 1_000));
    assert!(cached(&cache, "p") && !cached(&cache, "a"));
    cache.insert(record("c", 1, 1_000));
    assert!(cached(&cache, "p") && !cached(&cache, "b"));
    cache.insert(record("d", 1, 1_000));
    assert!(!cached(&cache, "p") && cached(&cache, "c") && cached(&cache, "d"));
    let stats = cache.stats();
    assert!(stats.bytes <= one * 2 && stats.entries == 2, "{stats:?}");
}

fn a_saved_index_restores_and_a_mismatched_one_is_refused_changing_nothing<C: Index>() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("v.usearch");
    let spec = VectorSpec::new(16, Metric::Cosine, Precision::F16).unwrap();
    let vectors = Clustered::new(3, 10, 16, 0.1).samples(3_000);
    let cache = C::default();
    cache.build(&name("v"), &spec, rows(&vectors)).unwrap();
    cache.remove(&name("v"), 1).unwrap();
    // Label 2 (key k1) moves far away: its first node is left behind, dead.
    let far: Vec<f32> = (0..16)
        .map(|i| if i % 2 == 0 { -5.0 } else { 5.0 })
        .collect();
    cache
        .upsert(&name("v"), 2, &Key::new("k1").unwrap(), &far)
        .unwrap();
    cache.save(&name("v"), &path).unwrap();
    let keys = |rows: Vec<(u64, Key, Vec<f32>)>| -> Vec<(u64, Key)> {
        rows.into_iter()
            .filter(|(label, ..)| *label != 1)
            .map(|(label, key, _)| (label, key))
            .collect()
    };

    let restored = C::default();
    restored
        .restore(&name("v"), &spec, &path, keys(rows(&vectors)))
        .unwrap();
    assert_eq!(restored.len(&name("v")), 2_999);
    for (i, v) in vectors.iter().enumerate().skip(1).step_by(97) {
        assert_eq!(
            restored.search(&name("v"), v, 1).unwrap()[0].key,
            cache.search(&name("v"), v, 1).unwrap()[0].key,
            "vector {i}"
        );
    }
    let nearest = |cache: &C, v: &[f32]| cache.exact(&name("v"), v, 1).unwrap()[0].clone();
    assert_eq!(
        (nearest(&restored, &far).label, nearest(&restored, &far).key),
        (2, Key::new("k1").unwrap()),
        "a replaced label is found where it moved, under its key"
    );
    // It keeps growing like a built one, each vector under its own key.
    let extra = Clustered::new(4, 10, 16, 0.1).samples(500);
    for (i, v) in extra.iter().enumerate() {
        let label = 10_000 + i as u64;
        restored
            .upsert(&name("v"), label, &Key::new(format!("x{i}")).unwrap(), v)
            .unwrap();
    }
    assert_eq!(restored.len(&name("v")), 3_499);
    for (i, v) in extra.iter().enumerate().step_by(50) {
        assert_eq!(nearest(&restored, v).key.as_str(), format!("x{i}"));
    }

    // Another shape, other labels, a damaged file: refused, and the index in place stays.
    let other = VectorSpec::new(16, Metric::L2, Precision::F16).unwrap();
    assert!(
        restored
            .restore(&name("v"), &other, &path, keys(rows(&vectors)))
            .is_err()
    );
    let mut wrong = keys(rows(&vectors));
    wrong[0].0 = 99_999;
    assert!(restored.restore(&name("v"), &spec, &path, wrong).is_err());
    assert!(
        restored
            .restore(&name("v"), &spec, &path, keys(rows(&vectors))[1..].to_vec())
            .is_err()
    );
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    assert!(
        restored
            .restore(&name("v"), &spec, &path, keys(rows(&vectors)))
            .is_err()
    );
    assert!(
        restored
            .restore(&name("v"), &spec, &tmp.path().join("absent"), Vec::new())
            .is_err()
    );
    assert_eq!(
        restored.len(&name("v")),
        3_499,
        "a refused restore changes nothing"
    );
}

/// A cosine index reports the cosine distances of the vectors as given, whatever their
/// length. (Holding f16 unit vectors and measuring them by inner product was 40 %
/// faster, but lost near-ties: see `docs/benchmarks.md`, history.)
fn a_cosine_index_reports_the_cosine_distance_of_unscaled_vectors<C: Index>() {
    // 3,000 vectors walk the graph; 1,000 are scanned exactly.
    for (precision, n) in [
        (Precision::F32, 3_000),
        (Precision::F16, 3_000),
        (Precision::F16, 1_000),
    ] {
        let spec = VectorSpec::new(16, Metric::Cosine, precision).unwrap();
        let vectors: Vec<Vec<f32>> = Clustered::new(5, 10, 16, 0.2)
            .samples(n)
            .into_iter()
            .enumerate()
            .map(|(i, v)| v.iter().map(|x| x * (1 + i % 7) as f32).collect())
            .collect();
        let cache = C::default();
        cache.build(&name("v"), &spec, rows(&vectors)).unwrap();
        let query: Vec<f32> = vectors[42].iter().map(|x| x * 0.3).collect();
        let hits = cache.search(&name("v"), &query, 5).unwrap();
        // `rows` labels vector i as i + 1.
        assert_eq!(hits[0].label, 43, "{precision:?}");
        for hit in &hits {
            let exact = Metric::Cosine.distance(&query, &vectors[hit.label as usize - 1]);
            assert!(
                (hit.distance - exact).abs() < 2e-3,
                "{precision:?}: {} against {exact}",
                hit.distance
            );
        }
    }
}
