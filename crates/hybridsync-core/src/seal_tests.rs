//! Tests of sealing: what the cloud gets holds no plaintext, opens only where it was
//! sealed, and refuses every tampering with a typed error.

use crate::{
    CollectionName, DeviceId, EncryptionKey, Error, Hlc, Key, KeyId, Keyring, Record, sealed_key_id,
};

fn key(n: u8) -> EncryptionKey {
    EncryptionKey::from_bytes([n; 32])
}

fn voice(key: &str, ms: u64) -> Record {
    Record::new(
        CollectionName::new("voices").unwrap(),
        Key::new(key).unwrap(),
        br#"{"pin":"1234"}"#.to_vec(),
        Some((0..192).map(|i| i as f32 * 0.25 + 1.5).collect()),
        Hlc {
            physical_ms: ms,
            logical: 3,
            origin: DeviceId([7; 16]),
        },
        false,
    )
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn a_sealed_record_holds_no_plaintext_and_opens_to_the_original() {
    let keyring = Keyring::new(key(1));
    let plain = voice("alice", 1_000);
    let sealed = keyring.seal("acme", &plain).unwrap();
    assert!(sealed.embedding.is_none());
    assert!(!contains(&sealed.payload, b"1234"));
    let embedding_bytes: Vec<u8> = plain.embedding.as_ref().unwrap()[..4]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    assert!(!contains(&sealed.payload, &embedding_bytes));
    assert_eq!(sealed_key_id(&sealed.payload), Some(keyring.current_id()));
    // The cloud's hash covers what the cloud holds; the version is the record's.
    assert_ne!(sealed.hash, plain.hash);
    assert_eq!(sealed.version, plain.version);
    assert_eq!(keyring.open("acme", sealed.clone()).unwrap(), plain);
    // Random nonces: the same record never seals to the same bytes twice.
    assert_ne!(
        keyring.seal("acme", &plain).unwrap().payload,
        sealed.payload
    );
}

#[test]
fn a_ciphertext_moved_to_another_row_tenant_or_version_is_refused() {
    let keyring = Keyring::new(key(1));
    let sealed = keyring.seal("acme", &voice("alice", 1_000)).unwrap();
    let moved = |f: &dyn Fn(&mut Record)| {
        let mut r = sealed.clone();
        f(&mut r);
        keyring.open("acme", r).unwrap_err()
    };
    let cases = [
        moved(&|r| r.key = Key::new("mallory").unwrap()),
        moved(&|r| r.collection = CollectionName::new("faces").unwrap()),
        moved(&|r| r.version.physical_ms += 1),
        moved(&|r| r.version.origin = DeviceId([8; 16])),
        moved(&|r| {
            let last = r.payload.len() - 1;
            r.payload[last] ^= 1;
        }),
        moved(&|r| r.payload[60] ^= 0x80),
        keyring.open("globex", sealed.clone()).unwrap_err(),
    ];
    for err in cases {
        assert!(
            matches!(&err, Error::SealBroken { reason, .. } if reason.contains("authentication")),
            "{err}"
        );
    }
}

#[test]
fn the_wrong_key_a_plaintext_row_or_a_truncated_one_is_a_typed_error() {
    let sealed = Keyring::new(key(1))
        .seal("acme", &voice("alice", 1_000))
        .unwrap();
    let err = Keyring::new(key(2))
        .open("acme", sealed.clone())
        .unwrap_err();
    assert!(
        matches!(&err, Error::UnknownEncryptionKey { key_id, .. } if *key_id == key(1).id().to_string()),
        "{err}"
    );
    // The key id in the header is authenticated too: relabelled as sealed by another
    // key the device holds, it fails to open rather than decrypting with that key.
    let both = Keyring::new(key(2)).with_previous(key(1));
    let mut relabelled = sealed.clone();
    let id2 = key(2).id().to_string();
    let id2: Vec<u8> = (0..8)
        .map(|i| u8::from_str_radix(&id2[2 * i..2 * i + 2], 16).unwrap())
        .collect();
    relabelled.payload[8..16].copy_from_slice(&id2);
    assert_eq!(sealed_key_id(&relabelled.payload), Some(key(2).id()));
    let err = both.open("acme", relabelled).unwrap_err();
    assert!(matches!(err, Error::SealBroken { .. }), "{err}");
    let keyring = Keyring::new(key(1));
    let plain = voice("alice", 1_000);
    let err = keyring.open("acme", plain).unwrap_err();
    assert!(
        matches!(&err, Error::SealBroken { reason, .. } if reason.contains("plaintext embedding")),
        "{err}"
    );
    let mut unsealed = voice("alice", 1_000);
    unsealed.embedding = None;
    let err = keyring.open("acme", unsealed).unwrap_err();
    assert!(
        matches!(&err, Error::SealBroken { reason, .. } if reason.contains("not sealed")),
        "{err}"
    );
    let mut truncated = sealed;
    truncated.payload.truncate(50);
    assert!(keyring.open("acme", truncated).is_err());
}

#[test]
fn rows_sealed_with_a_previous_key_still_open_and_new_ones_use_the_current_key() {
    let old = Keyring::new(key(1));
    let sealed_before = old.seal("acme", &voice("alice", 1_000)).unwrap();
    let rotated = Keyring::new(key(2))
        .with_previous(key(1))
        .with_previous(key(2));
    assert_eq!(rotated.ids(), vec![key(2).id(), key(1).id()]);
    assert_eq!(
        rotated.open("acme", sealed_before).unwrap(),
        voice("alice", 1_000)
    );
    let sealed_after = rotated.seal("acme", &voice("alice", 2_000)).unwrap();
    assert_eq!(sealed_key_id(&sealed_after.payload), Some(key(2).id()));
    assert!(old.open("acme", sealed_after).is_err());
}

#[test]
fn tombstones_travel_as_they_are_and_may_carry_nothing() {
    let keyring = Keyring::new(key(1));
    let mut tombstone = voice("alice", 1_000);
    tombstone.payload.clear();
    tombstone.embedding = None;
    tombstone.tombstone = true;
    assert_eq!(keyring.seal("acme", &tombstone).unwrap(), tombstone);
    assert_eq!(keyring.open("acme", tombstone.clone()).unwrap(), tombstone);
    tombstone.payload = b"smuggled".to_vec();
    assert!(keyring.open("acme", tombstone).is_err());
}

#[test]
fn a_key_file_is_32_raw_bytes_or_64_hex_digits_and_errors_never_quote_it() {
    let raw = [0xabu8; 32];
    let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    let from_raw = EncryptionKey::parse(&raw).unwrap();
    assert_eq!(
        EncryptionKey::parse(hex.as_bytes()).unwrap().id(),
        from_raw.id()
    );
    assert_eq!(
        EncryptionKey::parse(format!("{}\n", hex.to_uppercase()).as_bytes())
            .unwrap()
            .id(),
        from_raw.id()
    );
    let secret = "+b".repeat(32);
    for bad in [
        &b""[..],
        &[1u8; 31][..],
        &[1u8; 33][..],
        &hex.as_bytes()[..63],
        secret.as_bytes(),
        "zz".repeat(32).as_bytes(),
    ] {
        let err = EncryptionKey::parse(bad).unwrap_err();
        assert!(matches!(err, Error::InvalidEncryptionKey { .. }), "{err}");
        assert!(!err.to_string().contains("+b+b"), "{err}");
    }
    // R30: the key prints as its id only.
    let debug = format!("{from_raw:?} {:?}", Keyring::new(from_raw.clone()));
    assert!(
        !debug.contains(&hex[..16]) && !debug.contains("171, 171"),
        "{debug}"
    );
    assert!(debug.contains(&from_raw.id().to_string()), "{debug}");
    let (generated, generated_hex) = EncryptionKey::generate();
    assert_eq!(generated_hex.len(), 64);
    assert_eq!(
        EncryptionKey::parse(generated_hex.as_bytes()).unwrap().id(),
        generated.id()
    );
    assert!(!format!("{generated:?}").contains(&generated_hex[..16]));
    let id: KeyId = generated.id().to_string().parse().unwrap();
    assert_eq!(id, generated.id());
}
