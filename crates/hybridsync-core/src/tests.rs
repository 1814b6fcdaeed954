//! Unit and property tests of the core types.

use super::*;
use proptest::prelude::{
    Strategy as _, any, prop_assert, prop_assert_eq, prop_assert_ne, proptest,
};
use std::sync::Arc;

fn manual_clock(start: u64) -> Arc<ManualClock> {
    Arc::new(ManualClock::new(start))
}

fn device(n: u8) -> DeviceId {
    DeviceId([n; 16])
}

fn record(key: &str, ms: u64, origin: u8, tombstone: bool) -> Record {
    Record::new(
        CollectionName::new("notes").unwrap(),
        Key::new(key).unwrap(),
        if tombstone {
            vec![]
        } else {
            b"payload".to_vec()
        },
        None,
        Hlc {
            physical_ms: ms,
            logical: 0,
            origin: device(origin),
        },
        tombstone,
    )
}

#[test]
fn collection_names_refuse_hostile_input() {
    for bad in [
        "",
        "Notes",
        "a;drop table x",
        "a\"b",
        "a b",
        "1abc",
        "é",
        &"a".repeat(64),
    ] {
        let err = CollectionName::new(bad).unwrap_err();
        assert!(
            matches!(err, Error::InvalidCollectionName { .. }),
            "{bad:?} gave {err}"
        );
    }
    for good in ["notes", "_x", "voice_profiles_2", &"a".repeat(63)] {
        assert_eq!(CollectionName::new(good).unwrap().as_str(), good);
    }
}

#[test]
fn keys_are_bounded_and_printable() {
    assert!(Key::new("").is_err());
    assert!(Key::new("a\u{0}b").is_err());
    assert!(Key::new("x".repeat(513)).is_err());
    assert!(Key::new("x".repeat(512)).is_ok());
    let tight = Limits {
        max_key_bytes: 4,
        ..Limits::default()
    };
    assert!(matches!(
        Key::with_limits("hello", &tight),
        Err(Error::InvalidKey { len: 5, .. })
    ));
    assert_eq!(
        Key::new("speaker/ダニエル").unwrap().as_str(),
        "speaker/ダニエル"
    );
}

#[test]
fn vector_spec_refuses_bad_embeddings() {
    let spec = VectorSpec::new(3, Metric::L2, Precision::F32).unwrap();
    assert!(matches!(
        spec.validate("v", &[1.0, 2.0]),
        Err(Error::DimensionMismatch {
            expected: 3,
            got: 2,
            ..
        })
    ));
    assert!(matches!(
        spec.validate("v", &[1.0, f32::NAN, 0.0]),
        Err(Error::NonFiniteEmbedding { index: 1, .. })
    ));
    assert!(matches!(
        spec.validate("v", &[1.0, 0.0, f32::INFINITY]),
        Err(Error::NonFiniteEmbedding { index: 2, .. })
    ));
    assert!(spec.validate("v", &[1.0, 0.0, 0.5]).is_ok());
    // A zero vector has no direction: refused under cosine, defined under L2² and IP.
    assert!(spec.validate("v", &[0.0; 3]).is_ok());
    let ip = VectorSpec::new(3, Metric::Ip, Precision::F32).unwrap();
    assert!(ip.validate("v", &[0.0; 3]).is_ok());
    let cosine = VectorSpec::new(3, Metric::Cosine, Precision::F16).unwrap();
    assert!(matches!(
        cosine.validate("v", &[0.0, -0.0, 0.0]),
        Err(Error::ZeroVector { .. })
    ));
    assert!(VectorSpec::new(0, Metric::L2, Precision::F32).is_err());
    assert!(
        VectorSpec::new(8, Metric::L2, Precision::I8).is_err(),
        "i8 is only correct for cosine"
    );
    assert!(VectorSpec::new(8, Metric::Cosine, Precision::I8).is_ok());
}

#[test]
fn write_request_validation_checks_payload_and_embedding_presence() {
    let plain = CollectionSpec {
        name: CollectionName::new("notes").unwrap(),
        vector: None,
        encrypted: false,
    };
    let limits = Limits {
        max_payload_bytes: 4,
        ..Limits::default()
    };
    let key = Key::new("k").unwrap();
    let too_big = WriteRequest::put(plain.name.clone(), key.clone(), vec![0; 5], None);
    assert!(matches!(
        too_big.validate(&plain, &limits),
        Err(Error::PayloadTooLarge { size: 5, limit: 4 })
    ));
    let with_vector = WriteRequest::put(plain.name.clone(), key, vec![0; 4], Some(vec![1.0]));
    assert!(matches!(
        with_vector.validate(&plain, &limits),
        Err(Error::EmbeddingNotAllowed { .. })
    ));
}

#[test]
fn metric_distances() {
    assert_eq!(Metric::L2.distance(&[0.0, 0.0], &[3.0, 4.0]), 25.0);
    assert!((Metric::Cosine.distance(&[1.0, 0.0], &[2.0, 0.0])).abs() < 1e-6);
    assert!((Metric::Cosine.distance(&[1.0, 0.0], &[0.0, 1.0]) - 1.0).abs() < 1e-6);
    assert!((Metric::Ip.distance(&[1.0, 0.0], &[1.0, 0.0])).abs() < 1e-6);
}

#[test]
fn hlc_survives_a_clock_that_steps_backwards() {
    let clock = manual_clock(1_000);
    let hlc = HlcClock::new(clock.clone(), device(1), None, 60_000);
    let a = hlc.now();
    clock.set(500);
    let b = hlc.now();
    assert!(b > a);
    // A restart with the persisted high-water mark keeps stamps monotone.
    let restarted = HlcClock::new(clock.clone(), device(1), Some(b), 60_000);
    assert!(restarted.now() > b);
}

#[test]
fn hlc_refuses_far_future_remote_stamps_and_merges_others() {
    let clock = manual_clock(10_000);
    let hlc = HlcClock::new(clock.clone(), device(1), None, 5_000);
    let runaway = Hlc {
        physical_ms: 10_000 + 5_001,
        logical: 0,
        origin: device(2),
    };
    assert!(matches!(
        hlc.observe(runaway),
        Err(Error::ClockDrift {
            ahead_ms: 5_001,
            ..
        })
    ));
    assert_eq!(
        hlc.now().physical_ms,
        10_000,
        "a refused stamp changes nothing"
    );
    let ahead = Hlc {
        physical_ms: 14_000,
        logical: 7,
        origin: device(2),
    };
    hlc.observe(ahead).unwrap();
    let next = hlc.now();
    assert!(next > ahead, "{next} must order after {ahead}");
}

#[test]
fn tombstones_never_resurrect_whatever_the_strategy() {
    let deleted = record("k", 200, 1, true);
    let stale = record("k", 100, 2, false);
    for strategy in [
        Strategy::NewestWins,
        Strategy::LocalWins,
        Strategy::RemoteWins,
    ] {
        assert_eq!(
            resolve(
                Conflict {
                    local: &deleted,
                    remote: &stale
                },
                &strategy
            ),
            Resolution::KeepLocal
        );
        assert_eq!(
            resolve(
                Conflict {
                    local: &stale,
                    remote: &deleted
                },
                &strategy
            ),
            Resolution::KeepRemote
        );
    }
}

#[test]
fn strategies_pick_their_side() {
    let older = record("k", 100, 1, false);
    let newer = record("k", 200, 2, false);
    let conflict = Conflict {
        local: &older,
        remote: &newer,
    };
    assert_eq!(
        resolve(conflict, &Strategy::NewestWins),
        Resolution::KeepRemote
    );
    assert_eq!(
        resolve(conflict, &Strategy::LocalWins),
        Resolution::KeepLocal
    );
    assert_eq!(
        resolve(
            Conflict {
                local: &newer,
                remote: &older
            },
            &Strategy::RemoteWins
        ),
        Resolution::KeepRemote
    );
}

#[test]
fn decoding_the_wrong_type_is_a_typed_error() {
    let bytes = encode_payload(&("speaker".to_owned(), 42u64)).unwrap();
    assert!(matches!(
        decode_payload::<u8>(&bytes),
        Err(Error::Decode { .. })
    ));
    assert!(matches!(
        decode_payload::<String>(&[0xff, 0xff, 0xff]),
        Err(Error::Decode { .. })
    ));
}

#[test]
fn device_id_hex_round_trip() {
    let id = DeviceId([0xab; 16]);
    assert_eq!(DeviceId::parse_hex(&id.to_string()).unwrap(), id);
    assert!(DeviceId::parse_hex("xyz").is_err());
}

#[test]
fn priority_codes_and_names() {
    for p in Priority::ALL {
        assert_eq!(Priority::from_code(p.code()).unwrap(), p);
        assert_eq!(p.as_str().parse::<Priority>().unwrap(), p);
    }
    assert!(
        Priority::Critical < Priority::Deferred,
        "critical sorts first"
    );
    assert!(Priority::from_code(9).is_err());
}

fn arb_hlc() -> impl proptest::strategy::Strategy<Value = Hlc> {
    (0..Hlc::MAX_PHYSICAL_MS, any::<u16>(), any::<[u8; 16]>()).prop_map(
        |(physical_ms, logical, origin)| Hlc {
            physical_ms,
            logical,
            origin: DeviceId(origin),
        },
    )
}

proptest! {
    #[test]
    fn hlc_packing_preserves_order(a in arb_hlc(), b in arb_hlc()) {
        let unpacked_a = Hlc::from_packed(a.packed(), a.origin);
        prop_assert_eq!(unpacked_a, a);
        let by_pack = (a.packed(), a.origin).cmp(&(b.packed(), b.origin));
        prop_assert_eq!(by_pack, a.cmp(&b));
    }

    #[test]
    fn hlc_stamps_strictly_increase(steps in proptest::collection::vec(-50i64..50, 1..200)) {
        let clock = manual_clock(1_000_000);
        let hlc = HlcClock::new(clock.clone(), device(3), None, 60_000);
        let mut last = hlc.now();
        for step in steps {
            clock.set((clock.now_ms() as i64 + step) as u64);
            let next = hlc.now();
            prop_assert!(next > last);
            last = next;
        }
    }

    #[test]
    fn content_hash_is_stable_and_sensitive(
        key in "[a-z]{1,20}",
        payload in proptest::collection::vec(any::<u8>(), 0..64),
        embedding in proptest::option::of(proptest::collection::vec(-1.0f32..1.0, 1..8)),
    ) {
        let h1 = ContentHash::compute("c", &key, false, &payload, embedding.as_deref());
        let h2 = ContentHash::compute("c", &key, false, &payload, embedding.as_deref());
        prop_assert_eq!(h1, h2);
        prop_assert_ne!(h1, ContentHash::compute("c", &key, true, &payload, embedding.as_deref()));
        let mut longer = payload.clone();
        longer.push(0);
        prop_assert_ne!(h1, ContentHash::compute("c", &key, false, &longer, embedding.as_deref()));
        // Field boundaries are part of the encoding: moving a byte between fields changes the hash.
        prop_assert_ne!(
            ContentHash::compute("c", &format!("{key}x"), false, &payload, None),
            ContentHash::compute("cx", &key, false, &payload, None)
        );
    }

    #[test]
    fn codec_round_trips(name in ".{0,40}", values in proptest::collection::vec(any::<f32>(), 0..32), n in any::<u64>()) {
        let value = (name, values, n);
        let bytes = encode_payload(&value).unwrap();
        let back: (String, Vec<f32>, u64) = decode_payload(&bytes).unwrap();
        prop_assert_eq!(format!("{back:?}"), format!("{value:?}"));
    }
}

#[test]
fn cloud_urls_never_show_their_password() {
    for (url, shown) in [
        (
            "postgres://app:s3cr3t@db.example:5432/prod",
            "postgres://app:***@db.example:5432/prod",
        ),
        (
            "postgres://app@db/prod?sslmode=require&password=s3cr3t",
            "postgres://app@db/prod?sslmode=require&password=***",
        ),
        ("postgres://db/prod", "postgres://db/prod"),
        ("postgres://a:p@ss:w0rd@db/x", "postgres://a:***@db/x"),
    ] {
        let url = CloudUrl::new(url);
        assert_eq!(url.to_string(), shown);
        assert!(!format!("{url:?}").contains("s3cr3t") && !format!("{url:?}").contains("w0rd"));
    }
}

#[test]
fn soft_caps_downgrade_one_class_but_never_critical_and_never_drop() {
    assert_eq!(Priority::High.downgraded(499), Priority::High);
    assert_eq!(Priority::High.downgraded(500), Priority::Normal);
    assert_eq!(Priority::Normal.downgraded(200), Priority::Low);
    assert_eq!(Priority::Low.downgraded(100), Priority::Deferred);
    assert_eq!(Priority::Deferred.downgraded(1_000_000), Priority::Deferred);
    assert_eq!(Priority::Critical.downgraded(u64::MAX), Priority::Critical);
}

/// Descends two trees top-down as the checker does and returns the keys whose rows
/// differ in the leaf buckets found differing.
fn differing_keys(a: &LocalTree, b: &LocalTree, depth: u32) -> std::collections::BTreeSet<String> {
    let mut suspects = if a.root() == b.root() {
        vec![]
    } else {
        vec![0]
    };
    for level in 1..=depth {
        if suspects.is_empty() {
            break;
        }
        suspects = differing(
            &a.nodes(level, &suspects, level - 1),
            &b.nodes(level, &suspects, level - 1),
        );
    }
    let rows = |t: &LocalTree| -> std::collections::BTreeMap<String, RowDigest> {
        t.rows_in(depth, &suspects)
            .into_iter()
            .map(|r| (r.key.to_string(), r.clone()))
            .collect()
    };
    let (ra, rb) = (rows(a), rows(b));
    ra.keys()
        .chain(rb.keys())
        .filter(|k| ra.get(*k) != rb.get(*k))
        .cloned()
        .collect()
}

proptest! {
    /// Random divergence of every kind (missing on either side, newer, tombstoned,
    /// same version with other content) is found exactly: every changed key, and no
    /// other, lies in a differing leaf bucket and differs there; identical sets have
    /// equal roots; duplicated rows do not cancel out.
    #[test]
    fn the_tree_finds_exactly_the_rows_that_differ(
        n in 1usize..600,
        changes in proptest::collection::vec((0usize..600, 0u8..5), 0..40),
    ) {
        let collection = CollectionName::new("docs").unwrap();
        let row = |i: usize, ms: u64, tombstone: bool, content: u8| RowDigest {
            key: Key::new(format!("k{i}")).unwrap(),
            version: Hlc { physical_ms: ms, logical: 0, origin: device(1) },
            tombstone,
            hash: ContentHash([content; 32]),
        };
        let a: Vec<RowDigest> = (0..n).map(|i| row(i, 10, false, 1)).collect();
        let mut b = a.clone();
        let mut changed = std::collections::BTreeSet::new();
        for (i, kind) in changes {
            let i = i % n;
            if !changed.insert(format!("k{i}")) {
                continue;
            }
            let at = b.iter().position(|r| r.key.as_str() == format!("k{i}"));
            match (kind, at) {
                (0, Some(at)) => { b.remove(at); }
                (1, Some(at)) => b[at] = row(i, 11, false, 1),
                (2, Some(at)) => b[at] = row(i, 11, true, 0),
                (3, Some(at)) => b[at] = row(i, 10, false, 2),
                _ => b.push(row(n + i, 10, false, 1)),
            }
            if kind >= 4 || at.is_none() {
                changed.remove(&format!("k{i}"));
                changed.insert(format!("k{}", n + i));
            }
        }
        let depth = depth_for(n as u64 + 40);
        let (ta, tb) = (LocalTree::new(&collection, a, false), LocalTree::new(&collection, b, false));
        prop_assert_eq!(differing_keys(&ta, &tb, depth), changed.clone());
        prop_assert_eq!(changed.is_empty(), ta.root() == tb.root());
    }
}

#[test]
fn two_equal_rows_do_not_cancel_in_a_node() {
    let collection = CollectionName::new("docs").unwrap();
    let row = |key: &str| RowDigest {
        key: Key::new(key).unwrap(),
        version: Hlc {
            physical_ms: 1,
            logical: 0,
            origin: device(1),
        },
        tombstone: false,
        hash: ContentHash([3; 32]),
    };
    let one = LocalTree::new(&collection, vec![row("a")], false);
    let twice = LocalTree::new(&collection, vec![row("a"), row("a")], false);
    let none = LocalTree::new(&collection, vec![], false);
    assert_ne!(twice.root(), none.root());
    assert_ne!(twice.root().sum, 0);
    assert_eq!(twice.root().sum, one.root().sum.wrapping_mul(2));
}
