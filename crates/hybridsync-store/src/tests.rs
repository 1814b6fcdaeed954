//! Tests of the SQLite store against real SQLite files in temp directories.

use super::*;
use hybridsync_core::{
    CollectionName, CollectionSpec, Key, LocalStore, ManualClock, Metric, Precision, Priority,
    RowDigest, VectorSpec, WriteRequest,
};
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

fn name(s: &str) -> CollectionName {
    CollectionName::new(s).unwrap()
}

fn key(s: &str) -> Key {
    Key::new(s).unwrap()
}

fn voices() -> CollectionSpec {
    CollectionSpec {
        name: name("voices"),
        vector: Some(VectorSpec::new(3, Metric::Cosine, Precision::F32).unwrap()),
        encrypted: false,
    }
}

fn notes() -> CollectionSpec {
    CollectionSpec {
        name: name("notes"),
        vector: None,
        encrypted: false,
    }
}

async fn open(dir: &std::path::Path) -> SqliteStore {
    let store = SqliteStore::open(StoreOptions::new(dir)).await.unwrap();
    store.create_collection(&voices()).await.unwrap();
    store.create_collection(&notes()).await.unwrap();
    store
}

fn put(collection: &str, k: &str, payload: &[u8], embedding: Option<Vec<f32>>) -> WriteRequest {
    WriteRequest::put(name(collection), key(k), payload.to_vec(), embedding)
}

#[tokio::test]
async fn files_are_private_and_identity_persists() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let store = open(&dir).await;
    store
        .write(vec![put("notes", "a", b"1", None)])
        .await
        .unwrap();
    let device = store.device_id();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700);
    for file in [DB_FILE, "hybridsync.db-wal", "hybridsync.db-shm"] {
        assert_eq!(mode(&dir.join(file)), 0o600, "{file}");
    }
    store.close().await;
    let reopened = SqliteStore::open(StoreOptions::new(&dir)).await.unwrap();
    assert_eq!(reopened.device_id(), device);
    assert_eq!(
        reopened
            .get(&name("notes"), &key("a"))
            .await
            .unwrap()
            .unwrap()
            .payload,
        b"1"
    );
}

#[tokio::test]
async fn write_read_delete_and_list() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path()).await;
    let receipts = store
        .write(vec![
            put("voices", "alice", b"A", Some(vec![1.0, 0.0, 0.0])),
            put("notes", "n1", b"N", None),
        ])
        .await
        .unwrap();
    assert_eq!(receipts.len(), 2);
    let alice = store
        .get(&name("voices"), &key("alice"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(alice, *receipts[0].record);
    assert_eq!(alice.embedding.as_deref(), Some(&[1.0, 0.0, 0.0][..]));

    let deleted = store
        .write(vec![WriteRequest::delete(name("voices"), key("alice"))])
        .await
        .unwrap();
    assert_eq!(
        deleted[0].label, receipts[0].label,
        "a key keeps its label across versions"
    );
    assert!(deleted[0].record.version > alice.version);
    let tomb = store
        .get(&name("voices"), &key("alice"))
        .await
        .unwrap()
        .unwrap();
    assert!(tomb.tombstone);
    assert!(
        store
            .list(&name("voices"), None, 10)
            .await
            .unwrap()
            .is_empty(),
        "tombstones are not listed"
    );
    assert_eq!(store.embeddings(&name("voices")).await.unwrap().len(), 0);
    let counts = store.counts().await.unwrap();
    assert_eq!((counts[&name("voices")], counts[&name("notes")]), (0, 1));
}

#[tokio::test]
async fn outbox_coalesces_per_key_keeping_latest_state_and_highest_priority() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path()).await;
    store
        .write(vec![
            put("notes", "k", b"1", None).with_priority(Priority::High),
        ])
        .await
        .unwrap();
    store
        .write(vec![
            put("notes", "k", b"2", None).with_priority(Priority::Low),
        ])
        .await
        .unwrap();
    let last = store
        .write(vec![
            put("notes", "k", b"3", None).with_priority(Priority::Deferred),
        ])
        .await
        .unwrap();
    store
        .write(vec![put("notes", "other", b"x", None)])
        .await
        .unwrap();
    let stats = store.outbox_stats().await.unwrap();
    assert_eq!(stats.pending, 2, "three writes to one key are one entry");
    assert_eq!(stats.by_priority.get(&Priority::High), Some(&1));
    assert_eq!(stats.by_priority.get(&Priority::Normal), Some(&1));
    assert_eq!(store.queue_depths().await.unwrap(), stats.by_priority);
    let hlc: i64 = sqlx::query_scalar(
        "SELECT o.hlc FROM outbox o JOIN records r ON r.id = o.record_id WHERE r.key = 'k'",
    )
    .fetch_one(&store.readers)
    .await
    .unwrap();
    assert_eq!(
        hlc,
        last[0].record.version.packed(),
        "the entry ships the latest version"
    );
}

#[tokio::test]
async fn batch_is_atomic_and_duplicate_keys_coalesce() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path()).await;
    let mut batch: Vec<WriteRequest> = (0..150)
        .map(|i| put("notes", &format!("k{i:03}"), b"v", None))
        .collect();
    batch.push(put("notes", "k000", b"last", None));
    let receipts = store.write(batch).await.unwrap();
    assert_eq!(receipts.len(), 150);
    assert_eq!(
        store
            .get(&name("notes"), &key("k000"))
            .await
            .unwrap()
            .unwrap()
            .payload,
        b"last"
    );
    let mut versions: Vec<_> = receipts.iter().map(|r| r.record.version).collect();
    versions.sort();
    versions.dedup();
    assert_eq!(versions.len(), 150, "every key gets its own version");

    // Writes to one key in a batch: the last state, the most urgent priority, one entry.
    let before = store.outbox_stats().await.unwrap();
    let receipts = store
        .write(vec![
            put("notes", "dup", b"1", None).with_priority(Priority::Low),
            put("notes", "other", b"x", None).with_priority(Priority::Deferred),
            put("notes", "dup", b"2", None).with_priority(Priority::Critical),
            put("notes", "dup", b"3", None).with_priority(Priority::Normal),
        ])
        .await
        .unwrap();
    let kept: Vec<&[u8]> = receipts
        .iter()
        .map(|r| r.record.payload.as_slice())
        .collect();
    assert_eq!(kept, [b"x".as_slice(), b"3"]);
    let after = store.outbox_stats().await.unwrap();
    let added = |p: Priority| {
        after.by_priority.get(&p).copied().unwrap_or(0)
            - before.by_priority.get(&p).copied().unwrap_or(0)
    };
    assert_eq!(
        (
            added(Priority::Critical),
            added(Priority::Deferred),
            added(Priority::Low),
            added(Priority::Normal)
        ),
        (1, 1, 0, 0)
    );

    // One bad request refuses the whole batch.
    let bad = vec![
        put("notes", "fine", b"v", None),
        put("voices", "bad", b"v", Some(vec![1.0])),
    ];
    assert!(store.write(bad).await.is_err());
    assert!(
        store
            .get(&name("notes"), &key("fine"))
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(store.outbox_stats().await.unwrap().pending, 152);
}

#[tokio::test]
async fn bad_input_is_refused_with_a_typed_error_and_writes_nothing() {
    use hybridsync_core::Error as E;
    let tmp = tempfile::tempdir().unwrap();
    let mut options = StoreOptions::new(tmp.path());
    options.limits.max_payload_bytes = 16;
    let store = SqliteStore::open(options).await.unwrap();
    store.create_collection(&voices()).await.unwrap();
    store.create_collection(&notes()).await.unwrap();
    type Expect = fn(&E) -> bool;
    let cases: Vec<(WriteRequest, Expect)> = vec![
        (put("voices", "a", b"x", Some(vec![1.0, 2.0])), |e| {
            matches!(
                e,
                E::DimensionMismatch {
                    expected: 3,
                    got: 2,
                    ..
                }
            )
        }),
        (
            put("voices", "a", b"x", Some(vec![1.0, f32::NAN, 0.0])),
            |e| matches!(e, E::NonFiniteEmbedding { index: 1, .. }),
        ),
        (
            put("voices", "a", b"x", Some(vec![f32::NEG_INFINITY, 0.0, 0.0])),
            |e| matches!(e, E::NonFiniteEmbedding { .. }),
        ),
        (put("voices", "a", b"x", Some(vec![0.0, -0.0, 0.0])), |e| {
            matches!(e, E::ZeroVector { .. })
        }),
        (put("notes", "a", &[0; 17], None), |e| {
            matches!(
                e,
                E::PayloadTooLarge {
                    size: 17,
                    limit: 16
                }
            )
        }),
        (put("notes", "a", b"x", Some(vec![1.0])), |e| {
            matches!(e, E::EmbeddingNotAllowed { .. })
        }),
        (put("missing", "a", b"x", None), |e| {
            matches!(e, E::UnknownCollection(_))
        }),
    ];
    for (request, expected) in cases {
        let err = store.write(vec![request.clone()]).await.unwrap_err();
        assert!(expected(&err), "{request:?} gave {err}");
    }
    assert_eq!(store.counts().await.unwrap().values().sum::<u64>(), 0);
    assert_eq!(store.outbox_stats().await.unwrap(), Default::default());
    // Still usable.
    store
        .write(vec![put("notes", "ok", b"x", None)])
        .await
        .unwrap();
}

#[tokio::test]
async fn collection_specs_are_persisted_and_a_different_spec_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path()).await;
    store.create_collection(&voices()).await.unwrap();
    let other = CollectionSpec {
        name: name("voices"),
        vector: Some(VectorSpec::new(4, Metric::L2, Precision::F16).unwrap()),
        encrypted: false,
    };
    assert!(matches!(
        store.create_collection(&other).await,
        Err(hybridsync_core::Error::CollectionSpecMismatch { .. })
    ));
    store.close().await;
    let reopened = SqliteStore::open(StoreOptions::new(tmp.path()))
        .await
        .unwrap();
    assert_eq!(
        reopened.collections().await.unwrap(),
        vec![notes(), voices()]
    );
}

#[tokio::test]
async fn in_flight_entries_return_to_pending_on_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path()).await;
    store
        .write(vec![
            put("notes", "a", b"1", None),
            put("notes", "b", b"2", None),
        ])
        .await
        .unwrap();
    store
        .execute_for_tests("UPDATE outbox SET state = 1")
        .await
        .unwrap();
    assert_eq!(store.outbox_stats().await.unwrap().in_flight, 2);
    store.close().await;
    let reopened = SqliteStore::open(StoreOptions::new(tmp.path()))
        .await
        .unwrap();
    let stats = reopened.outbox_stats().await.unwrap();
    assert_eq!((stats.pending, stats.in_flight), (2, 0));
}

#[tokio::test]
async fn versions_stay_monotone_across_restarts_and_clock_steps_and_processes() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(1_000_000));
    let mut options = StoreOptions::new(tmp.path());
    options.clock = clock.clone();
    let store = SqliteStore::open(options.clone()).await.unwrap();
    store.create_collection(&notes()).await.unwrap();
    let first = store
        .write(vec![put("notes", "k", b"1", None)])
        .await
        .unwrap()[0]
        .record
        .version;
    store.close().await;

    clock.set(500_000); // the wall clock stepped back while we were down
    let reopened = SqliteStore::open(options.clone()).await.unwrap();
    let second = reopened
        .write(vec![put("notes", "k", b"2", None)])
        .await
        .unwrap()[0]
        .record
        .version;
    assert!(second > first, "{second} after {first}");

    // A second handle on the same directory (another process) with a clock far behind.
    let mut behind = options.clone();
    behind.clock = Arc::new(ManualClock::new(1));
    let other = SqliteStore::open(behind).await.unwrap();
    let third = other
        .write(vec![put("notes", "k", b"3", None)])
        .await
        .unwrap()[0]
        .record
        .version;
    assert!(third > second, "{third} after {second}");
    assert_eq!(
        reopened
            .get(&name("notes"), &key("k"))
            .await
            .unwrap()
            .unwrap()
            .payload,
        b"3"
    );
}

fn file_digest(path: &std::path::Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

#[tokio::test]
async fn corrupted_and_truncated_files_are_refused_and_left_untouched() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path()).await;
    let batch: Vec<_> = (0..2000)
        .map(|i| put("notes", &format!("key-{i}"), &[7; 200], None))
        .collect();
    store.write(batch).await.unwrap();
    store.close().await;
    let db = tmp.path().join(DB_FILE);
    let healthy = file_digest(&db);

    // Truncated to half.
    std::fs::write(&db, &healthy[..healthy.len() / 2]).unwrap();
    let err = SqliteStore::open(StoreOptions::new(tmp.path()))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Corrupt { .. }),
        "truncated file gave {err}"
    );
    assert_eq!(
        file_digest(&db),
        &healthy[..healthy.len() / 2],
        "the file was modified"
    );

    // Garbage in place of the header.
    let mut garbage = healthy.clone();
    garbage[..100].fill(0x5a);
    std::fs::write(&db, &garbage).unwrap();
    let err = SqliteStore::open(StoreOptions::new(tmp.path()))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Corrupt { .. }),
        "garbage header gave {err}"
    );
    assert_eq!(file_digest(&db), garbage);

    // Damaged pages in the middle.
    let mut damaged = healthy.clone();
    let middle = damaged.len() / 2;
    damaged[middle..middle + 8192].fill(0xff);
    std::fs::write(&db, &damaged).unwrap();
    let err = SqliteStore::open(StoreOptions::new(tmp.path()))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Corrupt { .. }),
        "damaged pages gave {err}"
    );
}

#[tokio::test]
async fn a_newer_schema_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path()).await;
    store
        .execute_for_tests(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
             VALUES (999, 'from the future', 1, x'00', 0)",
        )
        .await
        .unwrap();
    store.close().await;
    let err = SqliteStore::open(StoreOptions::new(tmp.path()))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::SchemaTooNew {
                found: 999,
                supported: 7,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("newer"), "{err}");
}

#[tokio::test]
async fn a_write_that_fails_inside_sqlite_rolls_back_the_whole_batch() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path()).await;
    let gone = CollectionSpec {
        name: name("gone"),
        vector: None,
        encrypted: false,
    };
    store.create_collection(&gone).await.unwrap();
    // Another process drops the collection after we cached the catalogue: the insert
    // passes validation and then violates the foreign key inside SQLite.
    store
        .execute_for_tests("DELETE FROM collections WHERE name = 'gone'")
        .await
        .unwrap();

    // The failing row comes after 100 good ones in the same transaction.
    let mut batch: Vec<_> = (0..100)
        .map(|i| put("notes", &format!("k{i}"), b"v", None))
        .collect();
    batch.push(put("gone", "x", b"v", None));
    let err = store.write(batch).await.unwrap_err();
    assert!(err.to_string().contains("FOREIGN KEY"), "{err}");
    assert_eq!(
        store.counts().await.unwrap()[&name("notes")],
        0,
        "the first chunk was rolled back"
    );
    assert_eq!(store.outbox_stats().await.unwrap(), Default::default());

    // The writer is usable again: no transaction was left open on a pooled connection.
    store
        .write(vec![put("notes", "after", b"v", None)])
        .await
        .unwrap();
    assert_eq!(store.counts().await.unwrap()[&name("notes")], 1);
}

mod drain {
    use super::*;
    use hybridsync_core::{OutboxOutcome, OutboxState, Priority};

    async fn filled(dir: &std::path::Path) -> SqliteStore {
        let store = open(dir).await;
        let writes = [
            ("c", Priority::Critical),
            ("h", Priority::High),
            ("n", Priority::Normal),
            ("d", Priority::Deferred),
        ];
        for (k, p) in writes {
            store
                .write(vec![put("notes", k, k.as_bytes(), None).with_priority(p)])
                .await
                .unwrap();
        }
        store
    }

    #[tokio::test]
    async fn claims_go_most_urgent_first_and_respect_the_gate_and_the_schedule() {
        let tmp = tempfile::tempdir().unwrap();
        let store = filled(tmp.path()).await;
        let gated = store
            .claim_outbox(10, u64::MAX, Priority::High)
            .await
            .unwrap();
        let keys: Vec<&str> = gated.iter().map(|e| e.record.key.as_str()).collect();
        assert_eq!(keys, ["c", "h"], "under load only critical and high drain");
        assert_eq!(gated[0].record.payload, b"c");
        assert_eq!(store.outbox_stats().await.unwrap().in_flight, 2);
        let rest = store
            .claim_outbox(1, u64::MAX, Priority::Deferred)
            .await
            .unwrap();
        assert_eq!(rest[0].record.key.as_str(), "n");

        // A retry scheduled in the future is not claimed before its time.
        store
            .settle_outbox(vec![(
                rest[0].id,
                OutboxOutcome::Retry {
                    error: "down".into(),
                    next_attempt_ms: 5_000,
                },
            )])
            .await
            .unwrap();
        let early = store
            .claim_outbox(10, 4_999, Priority::Deferred)
            .await
            .unwrap();
        assert_eq!(
            early
                .iter()
                .map(|e| e.record.key.as_str())
                .collect::<Vec<_>>(),
            ["d"]
        );
        let due = store
            .claim_outbox(10, 5_000, Priority::Deferred)
            .await
            .unwrap();
        assert_eq!(due.len(), 1);
        assert_eq!((due[0].record.key.as_str(), due[0].attempts), ("n", 1));
    }

    #[tokio::test]
    async fn recent_errors_list_queued_failures_newest_first_and_the_grid_counts_by_state() {
        let tmp = tempfile::tempdir().unwrap();
        let store = filled(tmp.path()).await;
        assert!(store.recent_errors(10).await.unwrap().is_empty());
        let claimed = store
            .claim_outbox(10, u64::MAX, Priority::Deferred)
            .await
            .unwrap();
        let (first, second) = (&claimed[0], &claimed[1]);
        store
            .settle_outbox(vec![(
                first.id,
                OutboxOutcome::Retry {
                    error: "cloud down".into(),
                    next_attempt_ms: 5_000,
                },
            )])
            .await
            .unwrap();
        store
            .settle_outbox(vec![(
                second.id,
                OutboxOutcome::Failed {
                    error: "refused: too large".into(),
                },
            )])
            .await
            .unwrap();
        let errors = store.recent_errors(10).await.unwrap();
        let seen: Vec<(&str, OutboxState, &str)> = errors
            .iter()
            .map(|e| (e.key.as_str(), e.state, e.error.as_str()))
            .collect();
        assert_eq!(seen.len(), 2, "{errors:?}");
        for (entry, state, error) in [
            (first, OutboxState::Pending, "cloud down"),
            (second, OutboxState::Failed, "refused: too large"),
        ] {
            assert!(
                seen.contains(&(entry.record.key.as_str(), state, error)),
                "{seen:?}"
            );
        }
        assert_eq!(store.recent_errors(1).await.unwrap().len(), 1);
        let stats = store.outbox_stats().await.unwrap();
        let total: u64 = stats.by_state.values().flat_map(|r| r.values()).sum();
        assert_eq!(
            total,
            stats.pending + stats.in_flight + stats.failed + stats.done
        );
        assert_eq!(stats.by_state[&OutboxState::Failed][&second.priority], 1);
    }

    #[tokio::test]
    async fn released_entries_return_untouched() {
        let tmp = tempfile::tempdir().unwrap();
        let store = filled(tmp.path()).await;
        let claimed = store
            .claim_outbox(10, u64::MAX, Priority::Deferred)
            .await
            .unwrap();
        let released = claimed
            .iter()
            .map(|e| (e.id, OutboxOutcome::Released))
            .collect();
        store.settle_outbox(released).await.unwrap();
        let stats = store.outbox_stats().await.unwrap();
        assert_eq!((stats.pending, stats.in_flight, stats.done), (4, 0, 0));
        let again = store.claim_outbox(10, 0, Priority::Deferred).await.unwrap();
        assert_eq!(again.len(), 4, "released entries are due at once");
        assert!(
            again.iter().all(|e| e.attempts == 0),
            "releasing is not an attempt"
        );
    }

    #[tokio::test]
    async fn settling_ships_retries_and_parks() {
        let tmp = tempfile::tempdir().unwrap();
        let store = filled(tmp.path()).await;
        let claimed = store
            .claim_outbox(10, u64::MAX, Priority::Deferred)
            .await
            .unwrap();
        let outcomes = vec![
            (claimed[0].id, OutboxOutcome::Shipped),
            (claimed[1].id, OutboxOutcome::Shipped),
            (
                claimed[2].id,
                OutboxOutcome::Retry {
                    error: "timeout".into(),
                    next_attempt_ms: 0,
                },
            ),
            (
                claimed[3].id,
                OutboxOutcome::Failed {
                    error: "rejected".into(),
                },
            ),
        ];
        let before = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        store.settle_outbox(outcomes).await.unwrap();
        let stats = store.outbox_stats().await.unwrap();
        assert_eq!(
            (stats.done, stats.pending, stats.in_flight, stats.failed),
            (2, 1, 0, 1)
        );
        assert!(
            stats.last_shipped_ms.is_some_and(|ms| ms >= before),
            "the newest shipment is when these settled: {:?}",
            stats.last_shipped_ms
        );
        assert_eq!(store.retry_failed().await.unwrap(), 1);
        assert_eq!(store.outbox_stats().await.unwrap().pending, 2);
        let again = store
            .claim_outbox(10, u64::MAX, Priority::Deferred)
            .await
            .unwrap();
        let failed = again.iter().find(|e| e.record.key.as_str() == "d").unwrap();
        store
            .settle_outbox(vec![(
                failed.id,
                OutboxOutcome::Failed {
                    error: "rejected".into(),
                },
            )])
            .await
            .unwrap();
        assert_eq!(store.clear_failed().await.unwrap(), 1);
        assert_eq!(store.outbox_stats().await.unwrap().failed, 0);
    }

    #[tokio::test]
    async fn a_write_during_flight_gets_its_own_entry_and_supersedes_a_retry() {
        let tmp = tempfile::tempdir().unwrap();
        let store = open(tmp.path()).await;
        store
            .write(vec![put("notes", "k", b"v1", None)])
            .await
            .unwrap();
        let first = store
            .claim_outbox(10, u64::MAX, Priority::Deferred)
            .await
            .unwrap();
        assert_eq!(first[0].record.payload, b"v1");
        store
            .write(vec![put("notes", "k", b"v2", None)])
            .await
            .unwrap();
        let stats = store.outbox_stats().await.unwrap();
        assert_eq!(
            (stats.pending, stats.in_flight),
            (1, 1),
            "v2 waits beside the v1 in flight"
        );
        store
            .settle_outbox(vec![(
                first[0].id,
                OutboxOutcome::Retry {
                    error: "x".into(),
                    next_attempt_ms: 0,
                },
            )])
            .await
            .unwrap();
        let stats = store.outbox_stats().await.unwrap();
        assert_eq!(
            (stats.pending, stats.in_flight, stats.done),
            (1, 0, 1),
            "the v1 retry is superseded by v2"
        );
        let second = store
            .claim_outbox(10, u64::MAX, Priority::Deferred)
            .await
            .unwrap();
        assert_eq!(second[0].record.payload, b"v2");
    }

    #[tokio::test]
    async fn reopening_with_an_entry_in_flight_and_a_newer_one_pending_keeps_one() {
        let tmp = tempfile::tempdir().unwrap();
        let store = open(tmp.path()).await;
        store
            .write(vec![put("notes", "k", b"v1", None)])
            .await
            .unwrap();
        store
            .claim_outbox(10, u64::MAX, Priority::Deferred)
            .await
            .unwrap();
        store
            .write(vec![put("notes", "k", b"v2", None)])
            .await
            .unwrap();
        store.close().await; // "crash" with v1 in flight
        let reopened = SqliteStore::open(StoreOptions::new(tmp.path()))
            .await
            .unwrap();
        let stats = reopened.outbox_stats().await.unwrap();
        assert_eq!((stats.pending, stats.in_flight), (1, 0), "{stats:?}");
        let claimed = reopened
            .claim_outbox(10, u64::MAX, Priority::Deferred)
            .await
            .unwrap();
        assert_eq!(claimed.len(), 1);
        assert_eq!(
            claimed[0].record.payload, b"v2",
            "the survivor ships the current state"
        );
    }

    #[tokio::test]
    async fn two_drainers_never_claim_the_same_entry() {
        let tmp = tempfile::tempdir().unwrap();
        let a = open(tmp.path()).await;
        let b = SqliteStore::open(StoreOptions::new(tmp.path()))
            .await
            .unwrap();
        let batch: Vec<_> = (0..200)
            .map(|i| put("notes", &format!("k{i}"), b"v", None))
            .collect();
        a.write(batch).await.unwrap();
        let (mut seen, mut total) = (std::collections::HashSet::new(), 0);
        loop {
            let (x, y) = tokio::join!(
                a.claim_outbox(7, u64::MAX, Priority::Deferred),
                b.claim_outbox(7, u64::MAX, Priority::Deferred)
            );
            let (x, y) = (x.unwrap(), y.unwrap());
            if x.is_empty() && y.is_empty() {
                break;
            }
            for entry in x.iter().chain(&y) {
                assert!(seen.insert(entry.id), "entry {} claimed twice", entry.id);
                total += 1;
            }
        }
        assert_eq!(total, 200);
    }
}

#[tokio::test]
async fn a_point_read_the_fast_path_cannot_answer_is_answered_by_the_reader_pool() {
    let tmp = tempfile::tempdir().unwrap();
    let mut store = open(tmp.path()).await;
    let receipts = store
        .write(vec![put("notes", "n1", b"N", None)])
        .await
        .unwrap();
    // A fast path that cannot open its file fails every read.
    store.point = crate::connections::PointReaders::new(
        tmp.path().join("missing").join("hybridsync.db"),
        std::time::Duration::from_millis(10),
        1,
    );
    let read = store.get(&name("notes"), &key("n1")).await.unwrap();
    assert_eq!(
        read,
        Some(hybridsync_core::Record::clone(&receipts[0].record))
    );
    assert_eq!(
        store.get(&name("notes"), &key("absent")).await.unwrap(),
        None
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stores_opened_at_once_on_a_new_directory_both_open() {
    // As when `serve` starts while the CLI's `put` runs: both create and migrate.
    for _ in 0..20 {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("data");
        let (a, b) = tokio::join!(
            tokio::spawn(SqliteStore::open(StoreOptions::new(dir.clone()))),
            tokio::spawn(SqliteStore::open(StoreOptions::new(dir.clone())))
        );
        let (a, b) = (a.unwrap().unwrap(), b.unwrap().unwrap());
        assert_eq!(a.device_id(), b.device_id(), "one identity per directory");
    }
}

#[tokio::test(flavor = "current_thread")]
async fn two_stores_opened_at_once_on_one_thread_do_not_deadlock() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    let (a, b) = tokio::join!(
        SqliteStore::open(StoreOptions::new(dir.clone())),
        SqliteStore::open(StoreOptions::new(dir.clone()))
    );
    assert_eq!(a.unwrap().device_id(), b.unwrap().device_id());
}

#[tokio::test]
async fn a_version_3_file_is_upgraded_with_its_queue_intact() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path()).await;
    store
        .write(
            (0..5)
                .map(|i| put("notes", &format!("k{i}"), b"v", None))
                .collect(),
        )
        .await
        .unwrap();
    // Back to version 3's shape: the old drain index, migration 4 not applied.
    store
        .execute_for_tests(
            "DROP INDEX outbox_drain_order;
             CREATE INDEX outbox_drain_order ON outbox (state, priority, next_attempt_ms);
             DELETE FROM _sqlx_migrations WHERE version = 4;",
        )
        .await
        .unwrap();
    store.close().await;
    let store = open(tmp.path()).await;
    let columns: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM pragma_index_info('outbox_drain_order') ORDER BY seqno",
    )
    .fetch_all(&store.readers)
    .await
    .unwrap();
    assert_eq!(columns, ["state", "priority", "id", "next_attempt_ms"]);
    let claimed = store
        .claim_outbox(10, u64::MAX, Priority::Deferred)
        .await
        .unwrap();
    let keys: Vec<&str> = claimed.iter().map(|e| e.record.key.as_str()).collect();
    assert_eq!(
        keys,
        ["k0", "k1", "k2", "k3", "k4"],
        "oldest first, none lost"
    );
}

/// Another process holding SQLite's write lock: our write waits for it without holding
/// a thread (a ticker on the same single-threaded runtime keeps running), then commits;
/// past the busy timeout it fails with a typed error and writes nothing.
#[tokio::test(flavor = "current_thread")]
async fn a_write_waits_for_another_process_lock_without_blocking_the_runtime() {
    let tmp = tempfile::tempdir().unwrap();
    let mut options = StoreOptions::new(tmp.path());
    options.busy_timeout = std::time::Duration::from_millis(600);
    let store = SqliteStore::open(options).await.unwrap();
    store.create_collection(&notes()).await.unwrap();
    let hold = |ms: u64| {
        let path = tmp.path().join(DB_FILE);
        let (locked, is_locked) = std::sync::mpsc::channel();
        let holder = std::thread::spawn(move || {
            let other = rusqlite::Connection::open(path).unwrap();
            other.execute_batch("BEGIN IMMEDIATE").unwrap();
            locked.send(()).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(ms));
            other.execute_batch("COMMIT").unwrap();
        });
        is_locked.recv().unwrap();
        holder
    };
    let ticks = std::sync::atomic::AtomicU32::new(0);
    let ticker = async {
        loop {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            ticks.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    };

    // Held for 300 ms, within the timeout: the write waits, then commits.
    let holder = hold(300);
    let started = std::time::Instant::now();
    let written = tokio::select! {
        written = store.write(vec![put("notes", "a", b"1", None)]) => written,
        _ = ticker => unreachable!("the ticker never ends"),
    };
    written.unwrap();
    holder.join().unwrap();
    assert!(started.elapsed() >= std::time::Duration::from_millis(250));
    let ticked = ticks.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        ticked >= 10,
        "the runtime ran only {ticked} ticks while the write waited"
    );
    assert!(
        store
            .get(&name("notes"), &key("a"))
            .await
            .unwrap()
            .is_some()
    );

    // Held for 1.5 s, past the 600 ms timeout: refused, and nothing written.
    let holder = hold(1_500);
    let err = store
        .write(vec![put("notes", "b", b"2", None)])
        .await
        .unwrap_err();
    holder.join().unwrap();
    assert!(err.to_string().contains("locked"), "{err}");
    assert!(
        store
            .get(&name("notes"), &key("b"))
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(store.outbox_stats().await.unwrap().pending, 1);
}

/// A re-rank's embedding read: by label, in the order asked, and only live records of
/// the collection asked about.
#[tokio::test]
async fn embeddings_of_reads_by_label_in_order_and_only_live_rows_of_the_collection() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path()).await;
    let faces = CollectionSpec {
        name: name("faces"),
        ..voices()
    };
    store.create_collection(&faces).await.unwrap();
    let written = store
        .write(vec![
            put("voices", "a", b"1", Some(vec![1.0, 0.0, 0.0])),
            put("voices", "b", b"2", Some(vec![0.0, 1.0, 0.0])),
            put("voices", "gone", b"3", Some(vec![0.0, 0.0, 1.0])),
            put("faces", "n", b"4", Some(vec![1.0, 1.0, 0.0])),
        ])
        .await
        .unwrap();
    let label = |k: &str| {
        written
            .iter()
            .find(|r| r.record.key.as_str() == k)
            .unwrap()
            .label
    };
    store
        .write(vec![WriteRequest::delete(name("voices"), key("gone"))])
        .await
        .unwrap();
    let asked = [label("b"), label("gone"), label("n"), 9_999, label("a")];
    let found = store.embeddings_of(&name("voices"), &asked).await.unwrap();
    assert_eq!(
        found,
        vec![
            Some(vec![0.0, 1.0, 0.0]),
            None,
            None,
            None,
            Some(vec![1.0, 0.0, 0.0])
        ]
    );
}

/// Outbox states come from `OutboxState` alone: no statement of the store spells a state
/// as a number, every placeholder resolves, and the partial indexes the migrations
/// created (which statements must match literally) use the enum's codes.
#[test]
fn outbox_states_come_from_one_enum() {
    use hybridsync_core::OutboxState;
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "rs") || path.ends_with("tests.rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for pattern in [
            "state = 0",
            "state = 1",
            "state = 2",
            "state = 3",
            "state IN (0",
        ] {
            assert!(
                !text.contains(pattern),
                "{} spells an outbox state as a number ({pattern:?})",
                path.display()
            );
        }
    }
    assert_eq!(
        crate::outbox::with_states("{pending} {in_flight} {done} {failed}"),
        format!(
            "{} {} {} {}",
            OutboxState::Pending.code(),
            OutboxState::InFlight.code(),
            OutboxState::Done.code(),
            OutboxState::Failed.code()
        )
    );
    let migrations = [
        include_str!("../migrations/0001_init.sql"),
        include_str!("../migrations/0003_sync_state.sql"),
    ]
    .concat();
    for predicate in [
        "WHERE state IN ({pending}, {failed})",
        "WHERE state = {done}",
    ] {
        let resolved = crate::outbox::with_states(predicate);
        assert!(
            migrations.contains(&resolved),
            "no partial index with {resolved:?}: statements and indexes disagree"
        );
    }
    for state in OutboxState::ALL {
        assert_eq!(OutboxState::from_code(state.code()).unwrap(), state);
        assert_eq!(state.as_str().parse::<OutboxState>().unwrap(), state);
    }
    assert!(OutboxState::from_code(9).is_err());
}

/// Every node of the tree the store keeps, at every level (whole levels and under
/// chosen parents), and every leaf bucket's rows, against a tree computed from scratch
/// over the same rows.
async fn assert_kept_tree(store: &SqliteStore, spec: &CollectionSpec, keys: &[Key]) {
    let rows: Vec<RowDigest> = store
        .digests(&spec.name, keys)
        .await
        .unwrap()
        .into_iter()
        .map(|(row, _)| row)
        .collect();
    assert!(!rows.is_empty());
    let tree = hybridsync_core::LocalTree::new(&spec.name, rows, spec.encrypted);
    let top = store.tree_top(&spec.name).await.unwrap();
    assert_eq!(top, tree.nodes(1, &[], 0), "{} level 1", spec.name);
    let (all, _) = store
        .tree_under(&spec.name, &(0..16).collect::<Vec<_>>())
        .await
        .unwrap();
    assert_eq!(all.root(), tree.root(), "{} root", spec.name);
    for level in 2..=4 {
        assert_eq!(
            all.nodes(level, &[], 0),
            tree.nodes(level, &[], 0),
            "{} level {level}",
            spec.name
        );
    }
    let (some, _) = store.tree_under(&spec.name, &[3, 9]).await.unwrap();
    assert_eq!(some.nodes(3, &[3, 9], 1), tree.nodes(3, &[3, 9], 1));
    assert_eq!(some.len() as u64, top[&3].count + top[&9].count);
    let buckets: Vec<u32> = (0..256).step_by(5).collect();
    assert_eq!(all.rows_in(2, &buckets), tree.rows_in(2, &buckets));
}

/// The checker's tree is kept in every write transaction (inserts, overwrites,
/// deletes, applied remote rows; plain and encrypted collections), and rows written
/// before it existed get their digests when the store next opens.
#[tokio::test]
async fn the_kept_tree_is_the_tree_of_the_rows() {
    use hybridsync_core::{ChangeCursor, DeviceId, Hlc, Record, Strategy};
    let tmp = tempfile::tempdir().unwrap();
    let store = open(tmp.path()).await;
    let secret = CollectionSpec {
        name: name("secret"),
        vector: None,
        encrypted: true,
    };
    store.create_collection(&secret).await.unwrap();
    let mut keys: Vec<Key> = (0..300).map(|i| key(&format!("k{i}"))).collect();
    for round in 0..3u8 {
        let mut writes = Vec::new();
        for (i, k) in keys.iter().enumerate() {
            for c in ["notes", "secret"] {
                writes.push(if (i + round as usize) % 7 == 0 {
                    WriteRequest::delete(name(c), k.clone())
                } else {
                    put(c, k.as_str(), &[round, i as u8], None)
                });
            }
        }
        store.write(writes).await.unwrap();
    }
    // Remote rows: new keys, and versions older and newer than the device's.
    let remote = |k: &Key, packed: i64| {
        Record::new(
            name("notes"),
            k.clone(),
            b"remote".to_vec(),
            None,
            Hlc::from_packed(packed, DeviceId([9; 16])),
            false,
        )
    };
    let mut pulled: Vec<Record> = (0..50).map(|i| remote(&key(&format!("r{i}")), 5)).collect();
    pulled.extend(keys[..20].iter().map(|k| remote(k, 1)));
    pulled.extend(keys[20..40].iter().map(|k| remote(k, i64::MAX / 2)));
    store
        .apply_remote(
            &name("notes"),
            pulled,
            &ChangeCursor::default(),
            &Strategy::NewestWins,
        )
        .await
        .unwrap();
    keys.extend((0..50).map(|i| key(&format!("r{i}"))));
    assert_kept_tree(&store, &notes(), &keys).await;
    assert_kept_tree(&store, &secret, &keys[..300]).await;
    assert!(store.damaged_keys(&name("notes")).await.unwrap().is_empty());

    // A file from before the tree: no digests, no kept nodes.
    store
        .execute_for_tests(
            "UPDATE records SET bucket = NULL, leaf = NULL; DELETE FROM tree_nodes; \
             INSERT INTO meta (key, value) VALUES ('tree_backfill', 1);",
        )
        .await
        .unwrap();
    store.close().await;
    let store = SqliteStore::open(StoreOptions::new(tmp.path()))
        .await
        .unwrap();
    assert_kept_tree(&store, &notes(), &keys).await;
    assert_kept_tree(&store, &secret, &keys[..300]).await;

    // A stored leaf changed behind the store's back is damage a deep check finds.
    store
        .execute_for_tests(
            "UPDATE records SET leaf = leaf + 1 WHERE collection = 'notes' AND key = 'k5'",
        )
        .await
        .unwrap();
    assert_eq!(
        store.damaged_keys(&name("notes")).await.unwrap(),
        vec![key("k5")]
    );
}

/// The WAL file's size now, and the most it may reach when held to `pages` (one
/// transaction's worth of frames beyond it).
fn wal_bytes(dir: &std::path::Path) -> u64 {
    std::fs::metadata(dir.join("hybridsync.db-wal")).map_or(0, |m| m.len())
}

const FRAME: u64 = 4_096 + 24;

/// Writes `n` single-record transactions of 2 KiB payloads; the largest WAL file seen.
async fn single_writes(store: &SqliteStore, dir: &std::path::Path, n: usize) -> u64 {
    let mut largest = 0;
    for i in 0..n {
        store
            .write(vec![put(
                "notes",
                &format!("k{i:05}"),
                &[i as u8; 2_048],
                None,
            )])
            .await
            .unwrap();
        largest = largest.max(wal_bytes(dir));
    }
    largest
}

async fn open_with(
    dir: &std::path::Path,
    checkpoint_pages: u32,
    wal_cap_pages: u32,
) -> SqliteStore {
    let store = SqliteStore::open(StoreOptions {
        checkpoint_pages,
        wal_cap_pages,
        ..StoreOptions::new(dir)
    })
    .await
    .unwrap();
    store.create_collection(&notes()).await.unwrap();
    store
}

/// Checkpoints run off the commit path, in the background, and keep the WAL small
/// while writes go on: a fraction of what the same writes leave with no checkpoint at
/// all. How near the threshold it stays depends on how soon the task gets a core (a CI
/// run with every test beside it saw 2,290 pages at a threshold of 200), so the bound
/// is against the control, measured here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_run_in_the_background_and_keep_the_wal_small() {
    const WRITES: usize = 3_000;
    let tmp = tempfile::tempdir().unwrap();
    let store = open_with(tmp.path(), 200, 100_000).await;
    let largest = single_writes(&store, tmp.path(), WRITES).await;
    assert!(store.writer.background_checkpoints() > 0);
    store.close().await;

    let tmp = tempfile::tempdir().unwrap();
    let store = open_with(tmp.path(), u32::MAX, u32::MAX).await;
    let unchecked = single_writes(&store, tmp.path(), WRITES).await;
    assert_eq!(store.writer.background_checkpoints(), 0);
    store.close().await;
    assert!(
        largest * 4 < unchecked,
        "the WAL reached {} pages at a threshold of 200; {} with no checkpoint",
        largest / FRAME,
        unchecked / FRAME
    );
}

/// With background checkpoints held back entirely, the committing writer checkpoints
/// at the cap: the WAL never grows past it by more than one transaction. Without the
/// cap (the control), the same writes take it far beyond.
#[tokio::test]
async fn the_wal_is_held_to_its_cap_when_background_checkpoints_never_run() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open_with(tmp.path(), u32::MAX, 300).await;
    let largest = single_writes(&store, tmp.path(), 1_500).await;
    assert_eq!(store.writer.background_checkpoints(), 0);
    assert!(
        largest <= (300 + 20) * FRAME + 32,
        "the WAL reached {} pages against a cap of 300",
        largest / FRAME
    );
    store.close().await;

    let tmp = tempfile::tempdir().unwrap();
    let store = open_with(tmp.path(), u32::MAX, u32::MAX).await;
    let unbounded = single_writes(&store, tmp.path(), 1_500).await;
    assert!(
        unbounded > 3 * 300 * FRAME,
        "without a cap the WAL grows: {} pages",
        unbounded / FRAME
    );
    store.close().await;
}
