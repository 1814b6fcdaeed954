//! The consistency checker against the in-memory sink and the real PostgreSQL sink by
//! one shared suite (`verify_suite!`): every kind of difference, injected on purpose,
//! found exactly; pending changes reported apart; work that follows the differences;
//! repair that leaves both sides identical.

use crate::replicate_tests::{Device, keyed_device};
use crate::sync_tests::{TestCloud, memory_cloud, pg_cloud};
use crate::{VerifyOptions, VerifyReport};
use hybridsync_core::{
    CloudSink, CollectionName, CollectionSpec, ContentHash, Difference, Key, LocalStore, Record,
    Strategy, SystemClock, WriteRequest,
};
use rand::{Rng, SeedableRng};
use std::collections::BTreeMap;
use std::sync::Arc;

fn docs() -> CollectionName {
    CollectionName::new("docs").unwrap()
}

async fn device<C: CloudSink>(cloud: Arc<C>) -> Device<C> {
    let spec = Some(CollectionSpec::new(docs()));
    keyed_device(cloud, Arc::new(SystemClock), spec, None).await
}

fn key(i: usize) -> Key {
    Key::new(format!("doc-{i:06}")).unwrap()
}

async fn write<C: CloudSink>(device: &Device<C>, keys: impl Iterator<Item = usize>, tag: &str) {
    let writes = keys
        .map(|i| WriteRequest::put(docs(), key(i), format!("{tag}-{i}").into_bytes(), None))
        .collect();
    device.engine.write(writes).await.unwrap();
}

async fn verify<C: CloudSink>(device: &Device<C>, repair: bool) -> VerifyReport {
    let options = VerifyOptions {
        repair,
        max_keys: usize::MAX,
        ..VerifyOptions::default()
    };
    device.repl.verify(&options).await.unwrap()
}

/// What a report found, by kind and key.
fn found(report: &VerifyReport) -> BTreeMap<Difference, Vec<String>> {
    let check = &report.collections[0];
    check
        .found
        .iter()
        .map(|(kind, found)| {
            assert_eq!(found.count as usize, found.keys.len());
            (*kind, found.keys.clone())
        })
        .collect()
}

/// The row the cloud holds for `i`.
async fn remote<C: CloudSink>(sink: &C, i: usize) -> Record {
    sink.fetch_rows(&docs(), &[key(i)]).await.unwrap().remove(0)
}

/// Identical sides: the roots match and nothing but the root crosses the wire.
async fn identical_sides_match_at_the_root<T: TestCloud>(cloud: T) {
    let a = device(cloud.sink()).await;
    write(&a, 0..500, "v").await;
    a.sync(&Strategy::NewestWins).await;
    let report = verify(&a, false).await;
    let check = &report.collections[0];
    assert!(report.consistent() && check.roots_matched, "{report:?}");
    assert_eq!((check.local_rows, check.remote_rows), (500, 500));
    assert_eq!((check.nodes_exchanged, check.rows_exchanged), (1, 0));
}

/// Every kind of difference, injected on purpose on one side or the other, is found
/// for exactly the rows it was injected into; a change still queued is reported as
/// pending, apart; repair mends everything and a second check finds both sides equal.
async fn each_kind_of_difference_is_found_exactly_and_repaired<T: TestCloud>(cloud: T) {
    let a = device(cloud.sink()).await;
    let b = device(cloud.own_sink()).await;
    write(&a, 0..400, "v1").await;
    a.sync(&Strategy::NewestWins).await;
    // Stale remote: the cloud's row replaced by an older version of it.
    let older = remote(&*cloud.sink(), 10).await;
    write(&a, [10].into_iter(), "v2").await;
    a.sync(&Strategy::NewestWins).await;
    cloud.overwrite(&older);
    // Missing remote: a shipped row deleted from the cloud behind our back.
    cloud.delete_row(&docs(), &key(20));
    // Missing local and stale local: another device adds one row and updates another.
    b.sync(&Strategy::NewestWins).await;
    write(&b, [30, 400].into_iter(), "from-b").await;
    b.sync(&Strategy::NewestWins).await;
    // Damaged: the cloud's row at the same version with other content (hash recomputed,
    // as a careless manual UPDATE with a trigger would), and one whose bytes changed
    // under its old hash.
    let r = remote(&*cloud.sink(), 40).await;
    let altered = Record::new(
        r.collection.clone(),
        r.key.clone(),
        b"tampered".to_vec(),
        None,
        r.version,
        false,
    );
    cloud.overwrite(&altered);
    let mut rotten = remote(&*cloud.sink(), 50).await;
    rotten.payload[0] ^= 0x20;
    assert!(!ContentHash::matches(&rotten));
    cloud.overwrite(&rotten);
    // Pending: a local change not yet pushed.
    write(&a, [60].into_iter(), "unpushed").await;

    let report = verify(&a, false).await;
    let expect = BTreeMap::from([
        (Difference::StaleRemote, vec![key(10).to_string()]),
        (Difference::MissingRemote, vec![key(20).to_string()]),
        (Difference::StaleLocal, vec![key(30).to_string()]),
        (Difference::MissingLocal, vec![key(400).to_string()]),
        (Difference::Damaged, vec![key(40).to_string()]),
        (Difference::Pending, vec![key(60).to_string()]),
    ]);
    // Key 50's bytes changed under its old hash and version: its leaf is unchanged, so
    // only a deep check (which recomputes every hash from the bytes) sees it.
    assert_eq!(found(&report), expect, "{report:?}");
    assert_eq!(report.differences(), 5);
    let deep = VerifyOptions {
        deep: true,
        max_keys: usize::MAX,
        ..VerifyOptions::default()
    };
    let report = a.repl.verify(&deep).await.unwrap();
    let mut expect = expect;
    expect.insert(
        Difference::Damaged,
        vec![key(40).to_string(), key(50).to_string()],
    );
    assert_eq!(found(&report), expect, "{report:?}");
    // The work followed the differences: the rows of the six buckets that differ
    // (of sixteen at this size), not the collection.
    let check = &report.collections[0];
    assert!(check.rows_exchanged < 200, "{check:?}");

    let repair = VerifyOptions {
        repair: true,
        ..deep
    };
    let repaired = a.repl.verify(&repair).await.unwrap();
    assert_eq!(repaired.repaired, 6, "{repaired:?}");
    let after = verify(&a, false).await;
    assert!(
        after.consistent() && after.collections[0].roots_matched,
        "{after:?}"
    );
    // The device took the cloud's newer rows and the cloud the device's.
    for (i, value) in [(30, "from-b-30"), (400, "from-b-400")] {
        let record = a
            .engine
            .get(&docs(), key(i).as_str())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(record.payload, value.as_bytes());
    }
    assert_eq!(remote(&*cloud.sink(), 10).await.payload, b"v2-10");
    assert_eq!(remote(&*cloud.sink(), 20).await.payload, b"v1-20");
    // Damage: the intact side wins (both intact at one version: newest-wins keeps the
    // device's), written as a new version that reaches every device.
    assert_eq!(remote(&*cloud.sink(), 40).await.payload, b"v1-40");
    assert_eq!(remote(&*cloud.sink(), 50).await.payload, b"v1-50");
    b.sync(&Strategy::NewestWins).await;
    assert_eq!(verify(&b, false).await.differences(), 0);
}

/// Random pairs of sets with random divergence of every kind: the checker reports
/// exactly the injected differences, and after repair the roots match.
async fn random_divergence_is_found_exactly<T: TestCloud>(cloud: T) {
    let a = device(cloud.sink()).await;
    let b = device(cloud.own_sink()).await;
    let n = 2_000;
    write(&a, 0..n, "v1").await;
    a.sync(&Strategy::NewestWins).await;
    b.sync(&Strategy::NewestWins).await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(23);
    let mut expect: BTreeMap<Difference, Vec<String>> = BTreeMap::new();
    let mut used = std::collections::BTreeSet::new();
    for _ in 0..40 {
        let i = rng.random_range(0..n);
        if !used.insert(i) {
            continue;
        }
        let kind = match rng.random_range(0..5) {
            0 => {
                cloud.delete_row(&docs(), &key(i));
                Difference::MissingRemote
            }
            1 => {
                write(&b, [i].into_iter(), "b").await;
                b.sync(&Strategy::NewestWins).await;
                Difference::StaleLocal
            }
            2 => {
                let older = remote(&*cloud.sink(), i).await;
                write(&a, [i].into_iter(), "a").await;
                // Pushed only: a pull would also bring A the other rows B changed.
                let timeout = std::time::Duration::from_secs(30);
                assert_eq!(a.repl.syncer().flush(timeout).await.unwrap(), 0);
                cloud.overwrite(&older);
                Difference::StaleRemote
            }
            3 => {
                b.engine
                    .delete(docs(), key(i), Default::default())
                    .await
                    .unwrap();
                b.sync(&Strategy::NewestWins).await;
                Difference::StaleLocal
            }
            _ => {
                let r = remote(&*cloud.sink(), i).await;
                let mut payload = r.payload.clone();
                payload.push(b'!');
                cloud.overwrite(&Record::new(
                    r.collection,
                    r.key,
                    payload,
                    None,
                    r.version,
                    false,
                ));
                Difference::Damaged
            }
        };
        expect.entry(kind).or_default().push(key(i).to_string());
    }
    for keys in expect.values_mut() {
        keys.sort();
    }
    let report = verify(&a, false).await;
    assert_eq!(found(&report), expect, "{report:?}");
    verify(&a, true).await;
    let after = verify(&a, false).await;
    assert!(after.collections[0].roots_matched, "{after:?}");
}

/// Differences so dense that the check skips levels of the tree (600 rows missing in
/// the cloud and 50 damaged there, of 3,000) are still found exactly, and mended.
async fn dense_differences_are_found_exactly<T: TestCloud>(cloud: T) {
    let a = device(cloud.sink()).await;
    let n = 3_000;
    write(&a, 0..n, "v1").await;
    a.sync(&Strategy::NewestWins).await;
    let mut expect: BTreeMap<Difference, Vec<String>> = BTreeMap::new();
    for i in (0..n).step_by(5) {
        cloud.delete_row(&docs(), &key(i));
        expect
            .entry(Difference::MissingRemote)
            .or_default()
            .push(key(i).to_string());
    }
    for i in (1..n).step_by(60) {
        let r = remote(&*cloud.sink(), i).await;
        let payload = [r.payload.as_slice(), b"!"].concat();
        cloud.overwrite(&Record::new(
            r.collection,
            r.key,
            payload,
            None,
            r.version,
            false,
        ));
        expect
            .entry(Difference::Damaged)
            .or_default()
            .push(key(i).to_string());
    }
    for keys in expect.values_mut() {
        keys.sort();
    }
    let report = verify(&a, false).await;
    assert_eq!(found(&report), expect, "{report:?}");
    assert_eq!(verify(&a, true).await.repaired, 650);
    let after = verify(&a, false).await;
    assert!(after.collections[0].roots_matched, "{after:?}");
}

/// Writes landing while a check runs are not reported: the device writes and its
/// background drain ships while checks run beside them, and no check reports anything
/// but changes still in the outbox. Each differing key is read again on both sides, and
/// one whose local state moved during the check is left for the next.
async fn concurrent_writes_are_not_reported<T: TestCloud>(cloud: T) {
    let a = device(cloud.sink()).await;
    write(&a, 0..1_000, "v1").await;
    a.sync(&Strategy::NewestWins).await;
    let drain = a.repl.syncer().start();
    let writer = async {
        for round in 0..40 {
            write(&a, (round * 25..round * 25 + 25).map(|i| i % 1_000), "live").await;
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    };
    let checker = async {
        let mut reports = Vec::new();
        for _ in 0..6 {
            reports.push(verify(&a, false).await);
        }
        reports
    };
    let ((), reports) = tokio::join!(writer, checker);
    drain.shutdown().await;
    for report in &reports {
        assert_eq!(report.differences(), 0, "{report:?}");
    }
    a.repl
        .syncer()
        .flush(std::time::Duration::from_secs(30))
        .await
        .unwrap();
    let settled = verify(&a, false).await;
    assert!(
        settled.consistent() && settled.collections[0].roots_matched,
        "{settled:?}"
    );
}

macro_rules! verify_suite {
    ($module:ident, $cloud:expr) => {
        mod $module {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn identical_sides_match_at_the_root() {
                super::identical_sides_match_at_the_root($cloud).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn each_kind_of_difference_is_found_exactly_and_repaired() {
                super::each_kind_of_difference_is_found_exactly_and_repaired($cloud).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn random_divergence_is_found_exactly() {
                super::random_divergence_is_found_exactly($cloud).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn dense_differences_are_found_exactly() {
                super::dense_differences_are_found_exactly($cloud).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn concurrent_writes_are_not_reported() {
                super::concurrent_writes_are_not_reported($cloud).await;
            }
        }
    };
}

verify_suite!(memory, memory_cloud());
verify_suite!(postgres, pg_cloud().await);

/// One difference in 20,000 rows moves a few buckets' worth of rows, not the set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_difference_moves_a_few_buckets_of_rows() {
    let cloud = pg_cloud().await;
    let a = device(cloud.sink()).await;
    write(&a, 0..20_000, "v").await;
    a.sync(&Strategy::NewestWins).await;
    cloud.delete_row(&docs(), &key(12_345));
    let report = verify(&a, false).await;
    let check = &report.collections[0];
    assert_eq!(
        found(&report),
        BTreeMap::from([(Difference::MissingRemote, vec![key(12_345).to_string()])])
    );
    // One leaf bucket holds about ROWS_PER_LEAF rows at the depth chosen for this size.
    assert!(
        check.rows_exchanged <= 4 * hybridsync_core::ROWS_PER_LEAF,
        "{check:?}"
    );
    assert!(
        check.nodes_exchanged <= 1 + 16 * u64::from(check.depth),
        "{check:?}"
    );
    let _ = LocalStore::device_id(&**a.engine.store());
}
