//! Client-side encryption end to end, against the in-memory sink and the real
//! PostgreSQL sink by one shared suite (`seal_suite!`): what the cloud holds, what a
//! device with the key, without it or with another key gets, tampering and rotation.

use crate::no_progress;
use crate::replicate_tests::{Device, keyed_device};
use crate::sync_tests::{TestCloud, cloud_rows_of, memory_cloud, pg_cloud};
use hybridsync_core::{
    ChangeCursor, CloudSink, CollectionName, CollectionSpec, EncryptionKey, Error, Key, KeyId,
    Keyring, LocalStore, Metric, Precision, Record, Strategy, SystemClock, VectorSpec,
    WriteRequest, sealed_key_id,
};
use std::collections::BTreeMap;
use std::sync::Arc;

const DIM: usize = 192;

fn voices() -> CollectionName {
    CollectionName::new("voices").unwrap()
}

fn voices_spec() -> CollectionSpec {
    CollectionSpec::new(voices())
        .with_vector(VectorSpec::new(DIM, Metric::Cosine, Precision::F32).unwrap())
        .encrypted()
}

fn key(n: u8) -> EncryptionKey {
    EncryptionKey::from_bytes([n; 32])
}

fn keyring(n: u8) -> Option<Keyring> {
    Some(Keyring::new(key(n)))
}

/// A distinctive embedding per speaker: no component appears in another's.
fn embedding(i: usize) -> Vec<f32> {
    (0..DIM)
        .map(|d| 1.0 + i as f32 * 0.001 + d as f32 * 0.37)
        .collect()
}

fn pin(i: usize) -> String {
    format!(r#"{{"pin":"PIN-{i:04}-SECRET"}}"#)
}

async fn device<C: CloudSink>(cloud: Arc<C>, keyring: Option<Keyring>) -> Device<C> {
    keyed_device(cloud, Arc::new(SystemClock), Some(voices_spec()), keyring).await
}

async fn enrol<C: CloudSink>(device: &Device<C>, n: usize) {
    let writes = (0..n)
        .map(|i| {
            WriteRequest::put(
                voices(),
                Key::new(format!("speaker-{i}")).unwrap(),
                pin(i).into_bytes(),
                Some(embedding(i)),
            )
        })
        .collect();
    device.engine.write(writes).await.unwrap();
}

async fn local_rows<C: CloudSink>(device: &Device<C>) -> BTreeMap<String, Record> {
    let store = device.engine.store();
    let rows = store.scan(&voices(), None, usize::MAX).await.unwrap();
    rows.into_iter().map(|r| (r.key.to_string(), r)).collect()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Asserts that no cloud row holds a PIN or any 16-byte run of an embedding, and that
/// every live row is sealed with `key`.
fn assert_only_ciphertext(cloud: &BTreeMap<String, Record>, n: usize, key: KeyId) {
    assert_eq!(cloud.len(), n);
    for row in cloud.values() {
        assert!(row.embedding.is_none(), "{}: plaintext embedding", row.key);
        assert!(!contains(&row.payload, b"SECRET"), "{}: plaintext", row.key);
        for i in 0..n {
            let bytes: Vec<u8> = embedding(i)[..4]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect();
            assert!(
                !contains(&row.payload, &bytes),
                "{}: embedding bytes",
                row.key
            );
        }
        assert_eq!(sealed_key_id(&row.payload), Some(key), "{}", row.key);
    }
}

/// Two devices with the same key converge through a cloud that holds only ciphertext,
/// and search the pulled voiceprints locally.
async fn devices_with_the_same_key_converge_through_ciphertext<T: TestCloud>(cloud: T) {
    let a = device(cloud.sink(), keyring(1)).await;
    enrol(&a, 20).await;
    a.sync(&Strategy::NewestWins).await;
    assert_only_ciphertext(
        &cloud_rows_of(&*cloud.sink(), &voices()).await,
        20,
        key(1).id(),
    );

    let b = device(cloud.own_sink(), keyring(1)).await;
    let report = b.repl.hydrate(&[], &no_progress).await.unwrap();
    assert_eq!(report.pulled, 20);
    assert_eq!(local_rows(&b).await, local_rows(&a).await);
    let hits = b
        .engine
        .search(&voices(), &embedding(7), 1, crate::SearchOptions::default())
        .await
        .unwrap();
    assert_eq!(hits[0].key.as_str(), "speaker-7");

    // Both ways: B changes a voiceprint and deletes another; A pulls both.
    b.engine
        .put(WriteRequest::put(
            voices(),
            Key::new("speaker-3").unwrap(),
            pin(99).into_bytes(),
            Some(embedding(99)),
        ))
        .await
        .unwrap();
    b.engine
        .delete(voices(), Key::new("speaker-4").unwrap(), Default::default())
        .await
        .unwrap();
    b.sync(&Strategy::NewestWins).await;
    a.sync(&Strategy::NewestWins).await;
    assert_eq!(local_rows(&a).await, local_rows(&b).await);
    let three = a.engine.get(&voices(), "speaker-3").await.unwrap().unwrap();
    assert_eq!(three.payload, pin(99).into_bytes());
    let four = Key::new("speaker-4").unwrap();
    let four = a.engine.store().get(&voices(), &four).await.unwrap();
    assert!(four.unwrap().tombstone);
    // The checker agrees, though the two sides hash different bytes (plaintext here,
    // the sealed rows there): an encrypted collection's leaves leave the hash out.
    for device in [&a, &b] {
        let report = device
            .repl
            .verify(&crate::VerifyOptions::default())
            .await
            .unwrap();
        assert!(
            report.collections.iter().all(|c| c.roots_matched),
            "{report:?}"
        );
    }
}

/// A device without the key, or with another one, gets a typed error from hydrate:
/// nothing is applied and its cursor stays where it was.
async fn a_device_without_the_key_gets_a_clear_error_and_applies_nothing<T: TestCloud>(cloud: T) {
    let a = device(cloud.sink(), keyring(1)).await;
    enrol(&a, 5).await;
    a.sync(&Strategy::NewestWins).await;

    for (keyring, expect) in [(None, "no encryption key"), (keyring(2), "does not hold")] {
        let other = keyed_device(cloud.own_sink(), Arc::new(SystemClock), None, keyring).await;
        let err = other.repl.hydrate(&[], &no_progress).await.unwrap_err();
        assert!(err.to_string().contains(expect), "{err}");
        assert!(!err.is_retryable());
        match expect {
            "no encryption key" => assert!(
                matches!(err, crate::Error::Core(Error::NoEncryptionKey { .. })),
                "{err:?}"
            ),
            _ => assert!(
                matches!(err, crate::Error::Core(Error::UnknownEncryptionKey { .. })),
                "{err:?}"
            ),
        }
        assert!(local_rows(&other).await.is_empty());
        let cursor = other.engine.store().cursor(&voices()).await.unwrap();
        assert_eq!(cursor, ChangeCursor::default());
    }
}

/// A device holding an encrypted collection and no key keeps its writes locally and
/// parks them with the typed error; nothing reaches the cloud.
async fn changes_without_a_key_are_parked_and_nothing_leaves<T: TestCloud>(cloud: T) {
    let a = device(cloud.sink(), None).await;
    enrol(&a, 3).await;
    let mut events = a.repl.syncer().subscribe();
    let report = a.sync(&Strategy::NewestWins).await;
    assert_eq!((report.pushed, report.failed), (0, 3), "{report:?}");
    let mut errors = Vec::new();
    while let Ok(event) = events.try_recv() {
        if let hybridsync_core::SyncEvent::RecordFailed { error, .. } = event {
            errors.push(error);
        }
    }
    assert_eq!(errors.len(), 3, "{errors:?}");
    assert!(
        errors.iter().all(|e| e.contains("no encryption key")),
        "{errors:?}"
    );
    let stats = a.engine.store().outbox_stats().await.unwrap();
    assert_eq!((stats.pending, stats.failed), (0, 3), "{stats:?}");
    assert!(cloud_rows_of(&*cloud.sink(), &voices()).await.is_empty());
    assert_eq!(local_rows(&a).await.len(), 3);
}

/// A ciphertext moved to another row, or with one bit flipped, is refused on pull,
/// and the device applies nothing of the page.
async fn a_tampered_or_moved_ciphertext_is_refused_on_pull<T: TestCloud>(cloud: T) {
    let a = device(cloud.sink(), keyring(1)).await;
    enrol(&a, 3).await;
    a.sync(&Strategy::NewestWins).await;
    let rows = cloud_rows_of(&*cloud.sink(), &voices()).await;
    let (zero, one) = (&rows["speaker-0"], &rows["speaker-1"]);
    // Moved: speaker-1's ciphertext (and its version) under speaker-0's key, with the
    // content hash recomputed, as a forger would.
    let moved = Record::new(
        zero.collection.clone(),
        zero.key.clone(),
        one.payload.clone(),
        None,
        one.version,
        false,
    );
    // Flipped: one bit of speaker-2's ciphertext, hash recomputed.
    let mut payload = rows["speaker-2"].payload.clone();
    payload[70] ^= 1;
    let r2 = &rows["speaker-2"];
    let flipped = Record::new(
        r2.collection.clone(),
        r2.key.clone(),
        payload,
        None,
        r2.version,
        false,
    );
    for forged in [moved, flipped] {
        cloud.overwrite(&forged);
        let b = device(cloud.own_sink(), keyring(1)).await;
        let err = b.repl.hydrate(&[], &no_progress).await.unwrap_err();
        assert!(
            matches!(&err, crate::Error::Core(Error::SealBroken { key, .. }) if *key == forged.key.to_string()),
            "{err:?}"
        );
        assert!(local_rows(&b).await.is_empty());
        assert_eq!(
            b.engine.store().cursor(&voices()).await.unwrap(),
            ChangeCursor::default()
        );
        // Put the honest row back for the next case.
        cloud.overwrite(&rows[forged.key.as_str()]);
    }
}

/// Rotation: a device holding the new key (and the old one as previous) re-encrypts;
/// afterwards every live row in the cloud is under the new key id, and a device with
/// only the new key restores everything.
async fn rotation_ends_with_every_row_under_the_new_key<T: TestCloud>(cloud: T) {
    let a = device(cloud.sink(), keyring(1)).await;
    enrol(&a, 30).await;
    a.engine
        .delete(voices(), Key::new("speaker-0").unwrap(), Default::default())
        .await
        .unwrap();
    a.sync(&Strategy::NewestWins).await;

    let rotated = Some(Keyring::new(key(2)).with_previous(key(1)));
    let b = device(cloud.own_sink(), rotated).await;
    let report = b.repl.reencrypt(&no_progress).await.unwrap();
    assert_eq!((report.collections, report.pushed), (1, 29), "{report:?}");
    let rows = cloud_rows_of(&*cloud.sink(), &voices()).await;
    assert_eq!(rows.len(), 30);
    let live: BTreeMap<String, Record> = rows.into_iter().filter(|(_, r)| !r.tombstone).collect();
    assert_only_ciphertext(&live, 29, key(2).id());

    let c = device(cloud.own_sink(), keyring(2)).await;
    c.repl.hydrate(&[], &no_progress).await.unwrap();
    let (b_rows, c_rows) = (local_rows(&b).await, local_rows(&c).await);
    assert_eq!(c_rows, b_rows);
    assert_eq!(c_rows.len(), 30);
    let seven = &c_rows["speaker-7"];
    assert_eq!(seven.payload, pin(7).into_bytes());
    assert_eq!(seven.embedding.as_deref(), Some(&embedding(7)[..]));
}

/// What an attacker with the database files sees: the heap and TOAST files of
/// `hs_records`, read from disk after a checkpoint, hold no PIN and no embedding bytes
/// of the encrypted collection (a plaintext collection's marker beside it is there, so
/// the check can fail), and the key id column names each row's key through a rotation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_raw_table_files_hold_no_plaintext_and_each_row_names_its_key() {
    let cloud = pg_cloud().await;
    let a = device(cloud.sink(), keyring(1)).await;
    let notes = CollectionName::new("notes").unwrap();
    a.engine
        .create_collection(CollectionSpec::new(notes.clone()))
        .await
        .unwrap();
    enrol(&a, 200).await;
    a.engine
        .put(WriteRequest::put(
            notes,
            Key::new("control").unwrap(),
            b"CONTROL-PLAINTEXT-MARKER".to_vec(),
            None,
        ))
        .await
        .unwrap();
    a.sync(&Strategy::NewestWins).await;

    let server = cloud.server();
    let sql = |q: &str| server.psql("postgres", q).unwrap();
    sql("CHECKPOINT");
    let files = sql(
        "SELECT pg_relation_filepath(oid) FROM pg_class WHERE relname = 'hs_records' \
         UNION ALL SELECT pg_relation_filepath(reltoastrelid) FROM pg_class WHERE relname = 'hs_records'",
    );
    let mut bytes = Vec::new();
    for file in files.lines() {
        bytes.extend(std::fs::read(server.dir().join("data").join(file)).unwrap());
    }
    assert!(
        contains(&bytes, b"CONTROL-PLAINTEXT-MARKER"),
        "the check cannot see rows"
    );
    assert!(
        !contains(&bytes, b"SECRET"),
        "a PIN is on disk in the cloud"
    );
    for i in 0..200 {
        let run: Vec<u8> = embedding(i)[..4]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        assert!(
            !contains(&bytes, &run),
            "speaker-{i}'s embedding is on disk in the cloud"
        );
    }
    let count = |q: String| sql(&q).parse::<u64>().unwrap();
    let under = |id: KeyId| {
        format!("SELECT count(*) FROM hs_records WHERE collection = 'voices' AND key_id = '{id}'")
    };
    assert_eq!(count(under(key(1).id())), 200);
    assert_eq!(
        count("SELECT count(*) FROM hs_records WHERE embedding IS NOT NULL".into()),
        0
    );
    assert_eq!(
        count(
            "SELECT count(*) FROM hs_records WHERE collection = 'notes' AND key_id IS NULL".into()
        ),
        1
    );

    let rotated = Some(Keyring::new(key(2)).with_previous(key(1)));
    let b = device(cloud.own_sink(), rotated).await;
    b.repl.reencrypt(&no_progress).await.unwrap();
    assert_eq!(count(under(key(1).id())), 0);
    assert_eq!(count(under(key(2).id())), 200);
}

macro_rules! seal_suite {
    ($module:ident, $cloud:expr) => {
        mod $module {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn devices_with_the_same_key_converge_through_ciphertext() {
                super::devices_with_the_same_key_converge_through_ciphertext($cloud).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_device_without_the_key_gets_a_clear_error_and_applies_nothing() {
                super::a_device_without_the_key_gets_a_clear_error_and_applies_nothing($cloud)
                    .await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn changes_without_a_key_are_parked_and_nothing_leaves() {
                super::changes_without_a_key_are_parked_and_nothing_leaves($cloud).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_tampered_or_moved_ciphertext_is_refused_on_pull() {
                super::a_tampered_or_moved_ciphertext_is_refused_on_pull($cloud).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn rotation_ends_with_every_row_under_the_new_key() {
                super::rotation_ends_with_every_row_under_the_new_key($cloud).await;
            }
        }
    };
}

seal_suite!(memory, memory_cloud());
seal_suite!(postgres, pg_cloud().await);
