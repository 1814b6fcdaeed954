//! Tests of the PostgreSQL sink against throwaway servers from the test kit.

use super::*;
use crate::feed::encode_cursor;
use hybridsync_core::{ChangeCursor, CloudUrl, CollectionName, DeviceId, Hlc, Key, Record};
use hybridsync_testkit::{ShutdownMode, TempPgBouncer, TempPgBouncerOptions, TempPostgres};
use sqlx::Connection;
use std::time::Duration;

/// A server with the schema installed and a non-owner login role `app` for the sink.
fn server() -> TempPostgres {
    let pg = TempPostgres::start().unwrap();
    pg.psql("postgres", "CREATE ROLE app LOGIN PASSWORD 'app-password'")
        .unwrap();
    pg
}

/// The tenants the tests act for as `app`.
const TENANTS: [&str; 3] = ["t", "tenant-a", "tenant-b"];

async fn migrated() -> TempPostgres {
    let pg = server();
    let admin = CloudUrl::new(pg.url("postgres"));
    migrate(&admin, Some("app")).await.unwrap();
    for tenant in TENANTS {
        grant_tenant(&admin, Some("app"), tenant).await.unwrap();
    }
    pg
}

fn app_url(pg: &TempPostgres) -> CloudUrl {
    CloudUrl::new(format!(
        "postgres://app:app-password@127.0.0.1:{}/postgres",
        pg.port()
    ))
}

fn sink(pg: &TempPostgres, tenant: &str) -> PostgresSink {
    PostgresSink::new(CloudOptions::new(app_url(pg), tenant)).unwrap()
}

fn name(s: &str) -> CollectionName {
    CollectionName::new(s).unwrap()
}

fn record(key: &str, ms: u64, payload: &str) -> Record {
    Record::new(
        name("notes"),
        Key::new(key).unwrap(),
        payload.as_bytes().to_vec(),
        Some(vec![0.5, -1.0, 2.0]),
        Hlc {
            physical_ms: ms,
            logical: 0,
            origin: DeviceId([7; 16]),
        },
        false,
    )
}

async fn pull_all(sink: &PostgresSink) -> Vec<Record> {
    let mut cursor = ChangeCursor::default();
    let mut all = Vec::new();
    loop {
        let batch = sink.pull(&name("notes"), &cursor, 2).await.unwrap();
        if batch.records.is_empty() {
            return all;
        }
        all.extend(batch.records);
        cursor = batch.next;
    }
}

#[tokio::test]
async fn upsert_and_pull_round_trip_exactly() {
    let pg = migrated().await;
    let sink = sink(&pg, "tenant-a");
    sink.verify_schema().await.unwrap();
    let tombstone = Record::new(
        name("notes"),
        Key::new("gone").unwrap(),
        vec![],
        None,
        record("gone", 5, "").version,
        true,
    );
    let sent = vec![record("a", 1, "one"), record("b", 2, "two"), tombstone];
    sink.upsert_batch(&sent).await.unwrap();
    let mut got = pull_all(&sink).await;
    got.sort_by(|x, y| x.key.cmp(&y.key));
    let mut want = sent.clone();
    want.sort_by(|x, y| x.key.cmp(&y.key));
    assert_eq!(got, want);
    assert!(
        sink.pull(&name("other"), &ChangeCursor::default(), 10)
            .await
            .unwrap()
            .records
            .is_empty()
    );
}

/// A page of the feed is read from the feed index in order, never by sorting every
/// row after the cursor (which made a hydrate of n rows cost O(n²)): a page at the
/// start of 20,000 rows touches the buffers of its own rows, not those of every row.
#[tokio::test]
async fn a_page_of_the_feed_comes_from_its_index_without_a_sort() {
    let pg = migrated().await;
    let sink = sink(&pg, "t");
    let records: Vec<Record> = (0..20_000)
        .map(|i| record(&format!("k{i:05}"), 1 + i, "payload"))
        .collect();
    for batch in records.chunks(2_000) {
        sink.upsert_batch(batch).await.unwrap();
    }
    pg.psql("postgres", "ANALYZE hs_records").unwrap();
    let mut app = sqlx::PgConnection::connect(app_url(&pg).expose())
        .await
        .unwrap();
    // The page's statements run inside hs_feed_page, out of EXPLAIN's sight, but the
    // buffers they touch count in the function scan's. The first call plans them (and
    // reads the catalogue), so the second is the one measured.
    let mut buffers = 0;
    for _ in 0..2 {
        let plan: Vec<String> = sqlx::query_scalar(
            "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF, TIMING OFF, SUMMARY OFF) \
             SELECT * FROM hs_feed_page('t', 'notes', 0, 0, 1000)",
        )
        .fetch_all(&mut app)
        .await
        .unwrap();
        let plan = plan.join("\n");
        assert!(plan.contains("actual rows=1000"), "{plan}");
        let line = plan
            .lines()
            .find(|l| l.contains("Buffers: shared"))
            .unwrap();
        buffers = ["hit=", "read="]
            .iter()
            .filter_map(|what| line.split_once(what))
            .map(|(_, n)| {
                let n = n.split(|c: char| !c.is_ascii_digit()).next().unwrap();
                n.parse::<u64>().unwrap()
            })
            .sum();
    }
    // Measured: about 25 from the index, about 300 when every row is sorted.
    assert!(
        buffers < 100,
        "a page of 1,000 rows touched {buffers} buffers"
    );
    // And the feed hands out every row once, in pages.
    let mut cursor = ChangeCursor::default();
    let mut seen = 0;
    loop {
        let batch = sink.pull(&name("notes"), &cursor, 1_000).await.unwrap();
        if batch.records.is_empty() {
            break;
        }
        seen += batch.records.len();
        cursor = batch.next;
    }
    assert_eq!(seen, records.len());
}

/// On a server whose default isolation is not `READ COMMITTED`, the one-statement page
/// would read the horizon and the rows in one snapshot; it refuses (HS001), and the
/// sink reads every later page inside a `READ COMMITTED` transaction, missing nothing.
#[tokio::test]
async fn a_server_defaulting_to_repeatable_read_gets_its_pages_in_transactions() {
    let pg = migrated().await;
    pg.psql(
        "postgres",
        "ALTER DATABASE postgres SET default_transaction_isolation = 'repeatable read'",
    )
    .unwrap();
    let sink = sink(&pg, "t");
    sink.upsert_batch(&[record("a", 1, "v"), record("b", 1, "v")])
        .await
        .unwrap();
    assert!(
        !sink
            .feed_in_transaction
            .load(std::sync::atomic::Ordering::Relaxed)
    );
    assert_eq!(pulled_keys(&sink).await, ["a", "b"]);
    assert!(
        sink.feed_in_transaction
            .load(std::sync::atomic::Ordering::Relaxed),
        "the refusal switched the sink to transactions"
    );
    sink.upsert_batch(&[record("c", 1, "v")]).await.unwrap();
    assert_eq!(pulled_keys(&sink).await, ["a", "b", "c"]);
}

#[tokio::test]
async fn upserts_are_idempotent_and_never_move_a_row_backwards() {
    let pg = migrated().await;
    let sink = sink(&pg, "t");
    let old = vec![record("k", 100, "old"), record("j", 100, "old")];
    let new = vec![record("k", 200, "new"), record("j", 300, "new")];
    sink.upsert_batch(&new).await.unwrap();
    // Replays and reordered, older batches change nothing.
    for batch in [&old, &new, &old] {
        sink.upsert_batch(batch).await.unwrap();
    }
    // A batch holding two versions of one key keeps the newer, whatever the order.
    sink.upsert_batch(&[record("k", 250, "newest"), record("k", 240, "stale")])
        .await
        .unwrap();
    let rows = pull_all(&sink).await;
    let payload = |k: &str| {
        rows.iter()
            .find(|r| r.key.as_str() == k)
            .map(|r| r.payload.clone())
            .unwrap()
    };
    assert_eq!(payload("k"), b"newest");
    assert_eq!(payload("j"), b"new");
    assert_eq!(rows.len(), 2);
    // Same (hlc) from another origin: the higher origin wins, deterministically.
    let mut other = record("j", 300, "other-origin");
    other.version.origin = DeviceId([9; 16]);
    sink.upsert_batch(&[other]).await.unwrap();
    assert_eq!(
        pull_all(&sink)
            .await
            .iter()
            .find(|r| r.key.as_str() == "j")
            .unwrap()
            .payload,
        b"other-origin"
    );
}

/// Two transactions commit in the reverse order of the sequence numbers they took.
/// A reader that pages by sequence number alone skips the late one for ever; ours
/// waits for it and then delivers both.
#[tokio::test]
async fn the_change_feed_cannot_skip_a_row_committed_out_of_order() {
    let pg = migrated().await;
    let ours = sink(&pg, "t");
    let admin = pg.url("postgres");
    let insert = "INSERT INTO hs_records (tenant, collection, key, payload, hlc, origin, tombstone, hash) \
                  VALUES ('t', 'notes', $1, '', 1, $2, false, $3)";
    let mut early = sqlx::PgConnection::connect(&admin).await.unwrap();
    let mut late = sqlx::PgConnection::connect(&admin).await.unwrap();
    let row = |key: &str| {
        let r = Record::new(
            name("notes"),
            Key::new(key).unwrap(),
            vec![],
            None,
            Hlc {
                physical_ms: 1,
                logical: 0,
                origin: DeviceId([7; 16]),
            },
            false,
        );
        (
            key.to_owned(),
            r.version.origin.0.to_vec(),
            r.hash.0.to_vec(),
        )
    };

    let mut slow = early.begin().await.unwrap();
    let (k, o, h) = row("slow");
    sqlx::query(insert)
        .bind(k)
        .bind(o)
        .bind(h)
        .execute(&mut *slow)
        .await
        .unwrap(); // takes seq 1
    let mut fast = late.begin().await.unwrap();
    let (k, o, h) = row("fast");
    sqlx::query(insert)
        .bind(k)
        .bind(o)
        .bind(h)
        .execute(&mut *fast)
        .await
        .unwrap(); // takes seq 2
    fast.commit().await.unwrap();

    let mut reader = sqlx::PgConnection::connect(&admin).await.unwrap();
    let naive = |after: i64| {
        sqlx::query_as::<_, (String, i64)>(
            "SELECT key, seq FROM hs_records WHERE seq > $1 ORDER BY seq",
        )
        .bind(after)
    };
    let first: Vec<(String, i64)> = naive(0).fetch_all(&mut reader).await.unwrap();
    assert_eq!(
        first.iter().map(|r| r.0.as_str()).collect::<Vec<_>>(),
        ["fast"]
    );
    let naive_cursor = first.last().unwrap().1;
    let feed = ours
        .pull(&name("notes"), &ChangeCursor::default(), 100)
        .await
        .unwrap();
    assert!(
        feed.records.is_empty(),
        "ours holds back while an older transaction is open"
    );

    slow.commit().await.unwrap();
    let naive_rest: Vec<(String, i64)> = naive(naive_cursor).fetch_all(&mut reader).await.unwrap();
    assert!(
        naive_rest.is_empty(),
        "the naive cursor skipped `slow` for ever: this is the bug we avoid"
    );
    let mut keys: Vec<String> = pull_all(&ours)
        .await
        .into_iter()
        .map(|r| r.key.to_string())
        .collect();
    keys.sort();
    assert_eq!(keys, ["fast", "slow"], "our feed delivers both");
}

#[tokio::test]
async fn tenants_cannot_read_or_overwrite_each_other() {
    let pg = migrated().await;
    let a = sink(&pg, "tenant-a");
    let b = sink(&pg, "tenant-b");
    a.upsert_batch(&[record("shared-key", 100, "a's data")])
        .await
        .unwrap();
    assert!(pull_all(&b).await.is_empty(), "b sees nothing of a's");
    b.upsert_batch(&[record("shared-key", 999, "b's data")])
        .await
        .unwrap();
    assert_eq!(
        pull_all(&a).await[0].payload,
        b"a's data",
        "b's newer write did not touch a's row"
    );
    assert_eq!(pull_all(&b).await[0].payload, b"b's data");

    // Even hand-written SQL as the app role cannot reach across tenants.
    let mut conn = sqlx::PgConnection::connect(app_url(&pg).expose())
        .await
        .unwrap();
    sqlx::query("SELECT set_config('hybridsync.tenant', 'tenant-b', false)")
        .execute(&mut conn)
        .await
        .unwrap();
    let touched = sqlx::query("UPDATE hs_records SET payload = 'x' WHERE tenant = 'tenant-a'")
        .execute(&mut conn)
        .await
        .unwrap()
        .rows_affected();
    assert_eq!(touched, 0);
    let forged = sqlx::query(
        "INSERT INTO hs_records (tenant, collection, key, payload, hlc, origin, tombstone, hash) \
         VALUES ('tenant-a', 'notes', 'forged', '', 1, '', false, '')",
    )
    .execute(&mut conn)
    .await;
    assert!(
        forged.is_err(),
        "writing a row for another tenant violates the policy"
    );
    assert_eq!(
        pg.psql("postgres", "SELECT count(*) FROM hs_records")
            .unwrap(),
        "2"
    );
}

/// `migrate` upgrades a version-2 schema in place: rows stay, tenants now need members.
#[tokio::test]
async fn migrate_upgrades_a_version_2_schema_keeping_its_rows() {
    let pg = server();
    let admin = CloudUrl::new(pg.url("postgres"));
    let pool = sqlx::PgPool::connect(admin.expose()).await.unwrap();
    crate::schema::migrator_until(2).run(&pool).await.unwrap();
    pool.close().await;
    pg.psql(
        "postgres",
        "INSERT INTO hs_records (tenant, collection, key, payload, hlc, origin, tombstone, hash) \
         VALUES ('t', 'notes', 'old', 'kept', 1, '', false, '')",
    )
    .unwrap();
    assert_eq!(
        crate::schema::applied_version(&sqlx::PgPool::connect(admin.expose()).await.unwrap())
            .await
            .unwrap(),
        2
    );
    migrate(&admin, Some("app")).await.unwrap();
    let pool = sqlx::PgPool::connect(admin.expose()).await.unwrap();
    assert_eq!(
        crate::schema::applied_version(&pool).await.unwrap(),
        SCHEMA_VERSION
    );
    assert_eq!(
        pg.psql(
            "postgres",
            "SELECT encode(payload, 'escape') FROM hs_records WHERE key = 'old'"
        )
        .unwrap(),
        "kept"
    );
    let sink = sink(&pg, "t");
    assert!(
        matches!(sink.verify_schema().await, Ok(())),
        "the upgraded schema is the one this build expects"
    );
    assert!(matches!(
        sink.count(&name("notes")).await,
        Err(Error::TenantDenied { .. })
    ));
    grant_tenant(&admin, Some("app"), "t").await.unwrap();
    assert_eq!(sink.count(&name("notes")).await.unwrap(), 1);
}

/// Every row of tenant `bob` as the administrator sees it, for row-by-row comparison.
fn bob_rows(pg: &TempPostgres) -> String {
    [
        "SELECT string_agg(concat_ws('|', collection, key, encode(payload, 'hex'), hlc, tombstone), ',' ORDER BY collection, key) FROM hs_records WHERE tenant = 'bob'",
        "SELECT string_agg(concat_ws('|', device_id, name), ',' ORDER BY device_id) FROM hs_devices WHERE tenant = 'bob'",
        "SELECT string_agg(name, ',' ORDER BY name) FROM hs_collections WHERE tenant = 'bob'",
    ]
    .iter()
    .map(|sql| pg.psql("postgres", sql).unwrap())
    .collect::<Vec<_>>()
    .join(" / ")
}

/// R32, tried as an attacker would: a login role granted only `alice` claims `bob`,
/// through the sink and through raw SQL. Every attempt sees nothing or is refused, and
/// bob's rows are unchanged, row by row.
#[tokio::test]
async fn a_role_that_claims_another_tenant_reads_and_writes_nothing() {
    let pg = TempPostgres::start().unwrap();
    for role in ["alice_app", "bob_app"] {
        pg.psql(
            "postgres",
            &format!("CREATE ROLE {role} LOGIN PASSWORD 'pw'"),
        )
        .unwrap();
    }
    let admin = CloudUrl::new(pg.url("postgres"));
    migrate(&admin, Some("alice_app")).await.unwrap();
    migrate(&admin, Some("bob_app")).await.unwrap();
    grant_tenant(&admin, Some("alice_app"), "alice")
        .await
        .unwrap();
    grant_tenant(&admin, Some("bob_app"), "bob").await.unwrap();
    let url = |role: &str| {
        CloudUrl::new(format!(
            "postgres://{role}:pw@127.0.0.1:{}/postgres",
            pg.port()
        ))
    };
    let as_role =
        |role: &str, tenant: &str| PostgresSink::new(CloudOptions::new(url(role), tenant)).unwrap();
    let bob = as_role("bob_app", "bob");
    bob.upsert_batch(&[record("secret", 10, r#"{"pin":"1234"}"#)])
        .await
        .unwrap();
    bob.register_device(DeviceId([2; 16]), "bob's phone")
        .await
        .unwrap();
    bob.publish_collections(&[hybridsync_core::CollectionSpec {
        name: name("notes"),
        vector: None,
        encrypted: false,
    }])
    .await
    .unwrap();
    let before = bob_rows(&pg);
    assert!(before.contains("notes|secret"), "{before}");

    // Through the sink: a typed, permanent refusal that names the tenant.
    let liar = as_role("alice_app", "bob");
    // The refusal names the tenant the sink claimed.
    let denied = |e: Error| matches!(e, Error::TenantDenied { ref tenant } if tenant == "bob" || tenant == "alice");
    assert!(denied(
        liar.upsert_batch(&[record("secret", 99, "owned")])
            .await
            .unwrap_err()
    ));
    assert!(denied(
        liar.pull(&name("notes"), &ChangeCursor::default(), 10)
            .await
            .unwrap_err()
    ));
    assert!(denied(liar.list_devices().await.unwrap_err()));
    assert!(denied(
        liar.register_device(DeviceId([9; 16]), "implant")
            .await
            .unwrap_err()
    ));
    assert!(denied(liar.remote_collections().await.unwrap_err()));
    let core = hybridsync_core::CloudSink::upsert_batch(&liar, &[record("secret", 99, "x")])
        .await
        .unwrap_err();
    assert!(
        matches!(
            core,
            hybridsync_core::Error::Cloud {
                retryable: false,
                ..
            }
        ),
        "a denied write is permanent, so the drain parks it: {core}"
    );
    // alice's own tenant works for her.
    let alice = as_role("alice_app", "alice");
    alice
        .upsert_batch(&[record("mine", 1, "ok")])
        .await
        .unwrap();

    // Through raw SQL as alice's login role.
    let mut conn = sqlx::PgConnection::connect(url("alice_app").expose())
        .await
        .unwrap();
    let count = |sql: &'static str| sqlx::query_scalar::<_, i64>(sql);
    sqlx::query("SELECT set_config('hybridsync.tenant', 'bob', false)")
        .execute(&mut conn)
        .await
        .unwrap();
    for sql in [
        "SELECT count(*) FROM hs_records",
        "SELECT count(*) FROM hs_records WHERE tenant = 'bob'",
        "SELECT count(*) FROM hs_devices",
        "SELECT count(*) FROM hs_collections",
    ] {
        assert_eq!(count(sql).fetch_one(&mut conn).await.unwrap(), 0, "{sql}");
    }
    let updated = sqlx::query("UPDATE hs_records SET payload = 'x' WHERE tenant = 'bob'")
        .execute(&mut conn)
        .await
        .unwrap()
        .rows_affected();
    assert_eq!(updated, 0, "nothing of bob's is visible to update");
    for sql in [
        "INSERT INTO hs_records (tenant, collection, key, payload, hlc, origin, tombstone, hash) \
         VALUES ('bob', 'notes', 'forged', '', 999, '', false, '')",
        "INSERT INTO hs_devices (tenant, device_id, name) VALUES ('bob', 'ff', 'implant')",
        "INSERT INTO hs_collections (tenant, name) VALUES ('bob', 'stolen')",
        "DELETE FROM hs_records WHERE tenant = 'bob'",
        "INSERT INTO hs_tenant_members (member, tenant) VALUES ('alice_app', 'bob')",
        "UPDATE hs_tenant_members SET tenant = 'bob'",
        "ALTER TABLE hs_records DISABLE ROW LEVEL SECURITY",
        "DROP POLICY hs_records_tenant ON hs_records",
    ] {
        assert!(
            sqlx::query(sql).execute(&mut conn).await.is_err(),
            "alice's role could run: {sql}"
        );
    }
    // The schema's own functions run as the caller, and check the tenant before they
    // touch a row (since schema 9, `hs_ship` too, which a direct sink sends on its own):
    // bob's feed and an upsert into bob's tenant are refused as not alice's to act for.
    for (sql, code) in [
        (
            "SELECT * FROM hs_feed_page('bob', 'notes', 0, 0, 100)",
            "HS403",
        ),
        (
            "SELECT * FROM hs_ship('bob', 0, 1000, NULL, 'c', NULL, ARRAY['notes'], \
             ARRAY['secret'], ARRAY['\\x00'::bytea], ARRAY[NULL::bytea], ARRAY[99999::int8], \
             ARRAY['\\x00'::bytea], ARRAY[false], ARRAY['\\x00'::bytea], ARRAY[NULL::text], \
             ARRAY[0::int8], ARRAY[0::int8])",
            "HS403",
        ),
        ("SELECT hs_select_tenant('bob')", "HS403"),
    ] {
        let err = sqlx::query(sql).execute(&mut conn).await.unwrap_err();
        let got = err.as_database_error().and_then(|e| e.code());
        assert_eq!(got.as_deref(), Some(code), "{sql}: {err}");
    }
    // Changing the tenant mid-transaction, or resetting it, reaches nothing more.
    let mut tx = conn.begin().await.unwrap();
    for (step, visible) in [
        ("SELECT set_config('hybridsync.tenant', 'alice', true)", 1),
        ("SELECT set_config('hybridsync.tenant', 'bob', true)", 0),
        ("RESET hybridsync.tenant", 0),
    ] {
        sqlx::query(step).execute(&mut *tx).await.unwrap();
        let rows = count("SELECT count(*) FROM hs_records")
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        assert_eq!(rows, visible, "after {step}");
    }
    tx.rollback().await.unwrap();
    // The mapping shows alice's role its own membership only, and it bypasses nothing.
    assert_eq!(
        count("SELECT count(*) FROM hs_tenant_members")
            .fetch_one(&mut conn)
            .await
            .unwrap(),
        1
    );
    let bypass: bool = sqlx::query_scalar(
        "SELECT rolbypassrls OR rolsuper FROM pg_roles WHERE rolname = current_user",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert!(!bypass);
    assert_eq!(
        bob_rows(&pg),
        before,
        "bob's rows are unchanged, row by row"
    );

    // A revoked role loses its tenant at its next transaction.
    assert!(revoke_tenant(&admin, "alice_app", "alice").await.unwrap());
    let late = alice
        .upsert_batch(&[record("mine", 2, "late")])
        .await
        .unwrap_err();
    assert!(denied(late), "revoked, yet");
    let members = tenant_members(&admin).await.unwrap();
    assert_eq!(
        members
            .iter()
            .map(|m| (m.role.as_str(), m.tenant.as_str()))
            .collect::<Vec<_>>(),
        [("bob_app", "bob")]
    );
    assert!(
        grant_tenant(&admin, Some("nobody"), "bob").await.is_err(),
        "unknown role"
    );
    assert!(
        grant_tenant(&admin, Some("x; drop table hs_records"), "bob")
            .await
            .is_err()
    );
}

#[tokio::test]
async fn the_tenant_never_leaks_to_the_next_user_of_a_pooled_connection() {
    let pg = migrated().await;
    let mut options = CloudOptions::new(app_url(&pg), "tenant-a");
    options.max_connections = 1;
    let sink = PostgresSink::new(options).unwrap();
    sink.upsert_batch(&[record("k", 1, "v")]).await.unwrap();
    let setting: Option<String> =
        sqlx::query_scalar("SELECT nullif(current_setting('hybridsync.tenant', true), '')")
            .fetch_one(&sink.pool_for_tests())
            .await
            .unwrap();
    assert_eq!(
        setting, None,
        "the same (only) connection carries no tenant after the transaction"
    );
}

#[tokio::test]
async fn the_pool_never_exceeds_its_cap() {
    let pg = migrated().await;
    let mut options = CloudOptions::new(app_url(&pg), "t");
    options.max_connections = 2;
    options.application_name = "hs-cap-test".into();
    let sink = std::sync::Arc::new(PostgresSink::new(options).unwrap());
    let workers: Vec<_> = (0..24)
        .map(|i| {
            let sink = sink.clone();
            tokio::spawn(async move {
                for j in 0..5u64 {
                    sink.upsert_batch(&[record(&format!("k{i}-{j}"), j + 1, "v")])
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    let mut max_seen = 0;
    while workers.iter().any(|w| !w.is_finished()) {
        let seen: u32 = pg
            .psql(
                "postgres",
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'hs-cap-test'",
            )
            .unwrap()
            .parse()
            .unwrap();
        max_seen = max_seen.max(seen);
        assert!(hybridsync_core::CloudSink::pool_size(&*sink).0 <= 2);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for w in workers {
        w.await.unwrap();
    }
    assert!(max_seen <= 2, "saw {max_seen} connections");
    assert!(max_seen >= 1, "the sampler saw our connections at all");
    assert_eq!(pull_all(&sink).await.len(), 120);
    let load = hybridsync_core::CloudSink::load(&*sink);
    assert!(load > 0.0 && load <= 1.0);
}

#[tokio::test]
async fn failures_are_classified_retryable_or_permanent() {
    let pg = migrated().await;
    let mut options = CloudOptions::new(app_url(&pg), "t");
    options.statement_timeout = Duration::from_millis(200);
    options.acquire_timeout = Duration::from_secs(2);
    let sink = PostgresSink::new(options).unwrap();
    let pool = sink.pool_for_tests();
    let err = Error::from(
        sqlx::query("SELECT pg_sleep(2)")
            .execute(&pool)
            .await
            .unwrap_err(),
    );
    assert!(
        matches!(err, Error::Transient { ref code, .. } if code == "57014"),
        "{err}"
    );
    assert!(err.is_retryable());
    let err = Error::from(
        sqlx::query("SELECT 1 / 0")
            .execute(&pool)
            .await
            .unwrap_err(),
    );
    assert!(
        matches!(err, Error::Rejected { ref code, .. } if code == "22012"),
        "{err}"
    );
    assert!(!err.is_retryable());

    // Our backend terminated mid-session: retryable, and the next call recovers.
    let mut conn = pool.acquire().await.unwrap();
    pg.psql("postgres", "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'hybridsync'").unwrap();
    let err = Error::from(
        sqlx::query("SELECT 1")
            .execute(&mut *conn)
            .await
            .unwrap_err(),
    );
    assert!(err.is_retryable(), "{err}");
    drop(conn);
    // The pool checks only a connection idle a second or more, so each of its other
    // terminated connections may fail one statement (retryable) before it is replaced.
    let mut attempts = 0;
    loop {
        attempts += 1;
        match sink
            .upsert_batch(&[record("after-terminate", 1, "v")])
            .await
        {
            Ok(_) => break,
            Err(e) => assert!(e.is_retryable() && attempts < 4, "attempt {attempts}: {e}"),
        }
    }

    // The server ends a session idle inside a transaction (25P03): retryable, not a
    // reason to park the entry. A session of its own: an idle pooled one may be one the
    // terminate above ended, which the pool checks only after a second's idleness.
    let mut conn = sqlx::PgConnection::connect(app_url(&pg).expose())
        .await
        .unwrap();
    sqlx::query("SET idle_in_transaction_session_timeout = '50ms'")
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query("BEGIN").execute(&mut conn).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let err = Error::from(
        sqlx::query("SELECT 1")
            .execute(&mut conn)
            .await
            .unwrap_err(),
    );
    assert!(err.to_string().contains("25P03"), "{err}");
    assert!(err.is_retryable(), "{err}");

    // Server down: retryable as core::Error::Cloud; after a crash restart it works again.
    pg.stop(ShutdownMode::Immediate).unwrap();
    let err = hybridsync_core::CloudSink::upsert_batch(&sink, &[record("k", 2, "v")])
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            hybridsync_core::Error::Cloud {
                retryable: true,
                ..
            }
        ),
        "{err}"
    );
    assert!(sink.health_check().await.is_err());
    pg.start_again().unwrap();
    sink.health_check().await.unwrap();
    sink.upsert_batch(&[record("k", 3, "v")]).await.unwrap();
}

#[tokio::test]
async fn passwords_never_appear_in_errors_or_debug_output() {
    let pg = migrated().await;
    let url = CloudUrl::new(format!(
        "postgres://app:hunter2-secret@127.0.0.1:{}/no_such_database",
        pg.port()
    ));
    let options = CloudOptions::new(url.clone(), "t");
    assert!(!format!("{options:?}").contains("hunter2"));
    let sink = PostgresSink::new(options).unwrap();
    assert!(!format!("{sink:?}").contains("hunter2"));
    let err = sink.health_check().await.unwrap_err();
    let shown = format!("{err} {err:?}");
    assert!(!shown.contains("hunter2"), "{shown}");
    let bad = PostgresSink::new(CloudOptions::new(
        CloudUrl::new("postgres://u:hunter2@[::1"),
        "t",
    ))
    .unwrap_err();
    assert!(!format!("{bad} {bad:?}").contains("hunter2"), "{bad}");
}

#[tokio::test]
async fn schema_mismatches_are_refused() {
    let pg = server();
    let sink = sink(&pg, "t");
    assert!(
        matches!(sink.verify_schema().await, Err(Error::Schema(_))),
        "no schema yet"
    );
    // What a new user running `sync` before `cloud migrate` sees: what to do, not
    // only PostgreSQL's words; permanent, like any refused statement.
    let said = sink.remote_collections().await.unwrap_err();
    let text = said.to_string();
    assert!(
        text.contains("does not exist (SQLSTATE 42883)") && text.contains("cloud migrate"),
        "{text}"
    );
    assert!(
        matches!(said, Error::Schema(_)) && !said.is_retryable(),
        "{said:?}"
    );
    let admin = CloudUrl::new(pg.url("postgres"));
    migrate(&admin, Some("app")).await.unwrap();
    migrate(&admin, Some("app")).await.unwrap(); // idempotent
    sink.verify_schema().await.unwrap();
    pg.psql(
        "postgres",
        "INSERT INTO _hybridsync_migrations (version, description, success, checksum, execution_time) \
         VALUES (99, 'future', true, '\\x00', 0)",
    )
    .unwrap();
    assert!(matches!(sink.verify_schema().await, Err(Error::Schema(_))));
    assert!(matches!(migrate(&admin, None).await, Err(Error::Schema(_))));
    assert!(matches!(
        migrate(&admin, Some("app; drop table x")).await,
        Err(Error::Config(_))
    ));
}

#[test]
fn cursors_round_trip_and_bad_ones_are_refused() {
    let cursor = encode_cursor(42, 7);
    assert_eq!(cursor.0.len(), 16);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let err = rt.block_on(async {
        let sink = PostgresSink::new(CloudOptions::new(
            CloudUrl::new("postgres://127.0.0.1:1/x"),
            "t",
        ))
        .unwrap();
        hybridsync_core::CloudSink::pull(&sink, &name("notes"), &ChangeCursor(vec![1, 2, 3]), 10)
            .await
            .unwrap_err()
    });
    assert!(
        matches!(
            err,
            hybridsync_core::Error::Cloud {
                retryable: false,
                ..
            }
        ),
        "{err}"
    );
}

/// TLS through rustls: a server with a self-signed certificate, `sslmode=require`, and
/// proof from the server that the session is encrypted.
#[tokio::test]
async fn connects_over_tls() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let pg = server();
    let data = pg.dir().join("data");
    let (cert, key) = (data.join("server.crt"), data.join("server.key"));
    let made = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl is needed to make a test certificate");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    // The server insists its key is private and its own.
    let owner = std::fs::metadata(&data).unwrap();
    for file in [&cert, &key] {
        std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::os::unix::fs::chown(file, Some(owner.uid()), Some(owner.gid())).unwrap();
    }
    pg.psql("postgres", "ALTER SYSTEM SET ssl = on").unwrap();
    pg.restart(ShutdownMode::Fast).unwrap();
    let admin = CloudUrl::new(pg.url("postgres"));
    migrate(&admin, Some("app")).await.unwrap();
    grant_tenant(&admin, Some("app"), "t").await.unwrap();
    let url = CloudUrl::new(format!(
        "postgres://app:app-password@127.0.0.1:{}/postgres?sslmode=require",
        pg.port()
    ));
    let sink = PostgresSink::new(CloudOptions::new(url, "t")).unwrap();
    sink.upsert_batch(&[record("over-tls", 1, "v")])
        .await
        .unwrap();
    let encrypted: bool =
        sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .fetch_one(&sink.pool_for_tests())
            .await
            .unwrap();
    assert!(encrypted, "the session is not encrypted");
    assert_eq!(pull_all(&sink).await.len(), 1);
}

#[tokio::test]
async fn devices_register_rename_touch_list_and_deregister_per_tenant() {
    let pg = migrated().await;
    let a = sink(&pg, "tenant-a");
    let b = sink(&pg, "tenant-b");
    let (phone, laptop) = (DeviceId([1; 16]), DeviceId([2; 16]));
    a.register_device(phone, "phone").await.unwrap();
    a.register_device(laptop, "laptop").await.unwrap();
    a.register_device(phone, "work phone").await.unwrap(); // rename
    let listed = a.list_devices().await.unwrap();
    assert_eq!(
        listed
            .iter()
            .map(|d| (d.id, d.name.as_str()))
            .collect::<Vec<_>>(),
        [(laptop, "laptop"), (phone, "work phone")]
    );
    assert!(
        b.list_devices().await.unwrap().is_empty(),
        "devices are per tenant"
    );
    assert!(
        !b.deregister_device(phone).await.unwrap(),
        "b cannot remove a's device"
    );

    let before = listed.iter().find(|d| d.id == phone).unwrap().last_seen_ms;
    tokio::time::sleep(Duration::from_millis(20)).await;
    a.touch_device(phone, "ignored default").await.unwrap();
    let after = a
        .list_devices()
        .await
        .unwrap()
        .into_iter()
        .find(|d| d.id == phone)
        .unwrap()
        .last_seen_ms;
    assert!(after > before, "touch moves last-seen: {before} -> {after}");
    assert_eq!(
        a.list_devices()
            .await
            .unwrap()
            .iter()
            .find(|d| d.id == phone)
            .unwrap()
            .name,
        "work phone",
        "a touch keeps the registered name"
    );
    // First contact registers an unknown device under its default name, in its own
    // tenant only; a bad default name is refused and registers nothing.
    let tablet = DeviceId([9; 16]);
    assert!(b.touch_device(tablet, "").await.is_err());
    assert!(b.list_devices().await.unwrap().is_empty());
    b.touch_device(tablet, "tablet-host").await.unwrap();
    let b_devices = b.list_devices().await.unwrap();
    assert_eq!(
        b_devices
            .iter()
            .map(|d| (d.id, d.name.as_str()))
            .collect::<Vec<_>>(),
        [(tablet, "tablet-host")]
    );
    assert!(
        a.list_devices()
            .await
            .unwrap()
            .iter()
            .all(|d| d.id != tablet)
    );
    assert!(b.deregister_device(tablet).await.unwrap());

    assert!(a.deregister_device(phone).await.unwrap());
    assert!(!a.deregister_device(phone).await.unwrap());
    assert_eq!(a.list_devices().await.unwrap().len(), 1);
    for bad in ["", " padded", &"x".repeat(65), "tab\there"] {
        assert!(
            a.register_device(phone, bad).await.is_err(),
            "{bad:?} accepted"
        );
    }
}

#[tokio::test]
async fn a_high_recent_load_with_an_idle_pool_is_not_busy_now() {
    // Lazy pool: nothing connects, so nothing is busy.
    let sink = PostgresSink::new(CloudOptions::new(
        CloudUrl::new("postgres://app@127.0.0.1:1/x"),
        "t",
    ))
    .unwrap();
    sink.fill_load_for_tests(1.0);
    assert!(
        hybridsync_core::CloudSink::load(&sink) > 0.99,
        "the recent mean stays where the last work left it"
    );
    assert_eq!(
        hybridsync_core::CloudSink::busy_now(&sink),
        0.0,
        "but nothing is busy now, so the drain must not stay gated"
    );
}

/// Keys a sink pulls from the start of `notes`.
async fn pulled_keys(sink: &PostgresSink) -> Vec<String> {
    let mut keys: Vec<String> = pull_all(sink)
        .await
        .into_iter()
        .map(|r| r.key.to_string())
        .collect();
    keys.sort();
    keys
}

/// An open transaction that writes something else (a batch job, a `psql` left open)
/// holds no writer key, so it does not hold back the feed of any tenant. Under the old
/// horizon (`pg_snapshot_xmin`) the reader would see nothing until it ended.
#[tokio::test]
async fn an_open_unrelated_write_transaction_does_not_hold_back_the_feed() {
    let pg = migrated().await;
    pg.psql("postgres", "CREATE TABLE unrelated (x int)")
        .unwrap();
    let mut other = sqlx::PgConnection::connect(&pg.url("postgres"))
        .await
        .unwrap();
    let mut open = other.begin().await.unwrap();
    sqlx::query("INSERT INTO unrelated VALUES (1)")
        .execute(&mut *open)
        .await
        .unwrap();
    let (device_a, device_b) = (sink(&pg, "t"), sink(&pg, "t"));
    device_a
        .upsert_batch(&[record("k1", 1, "v")])
        .await
        .unwrap();
    assert_eq!(pulled_keys(&device_b).await, ["k1"], "k1 reached b at once");
    let old_horizon: String = pg
        .psql(
            "postgres",
            "SELECT count(*) FROM hs_records WHERE txid < pg_snapshot_xmin(pg_current_snapshot())",
        )
        .unwrap();
    assert_eq!(old_horizon, "0", "the global xmin would have held k1 back");
    open.rollback().await.unwrap();
}

/// A writer of one tenant holds back only its own tenant's feed (and a writer that
/// selected no tenant holds back every tenant's, as the out-of-order test shows).
#[tokio::test]
async fn an_open_writer_holds_back_its_own_tenant_only() {
    let pg = migrated().await;
    let mut conn = sqlx::PgConnection::connect(app_url(&pg).expose())
        .await
        .unwrap();
    let mut open = conn.begin().await.unwrap();
    sqlx::query("SELECT set_config('hybridsync.tenant', 'tenant-b', true)")
        .execute(&mut *open)
        .await
        .unwrap();
    let (k, o, h) = {
        let r = Record::new(
            name("notes"),
            Key::new("b-open").unwrap(),
            vec![],
            None,
            record("b-open", 1, "").version,
            false,
        );
        (
            r.key.to_string(),
            r.version.origin.0.to_vec(),
            r.hash.0.to_vec(),
        )
    };
    sqlx::query(
        "INSERT INTO hs_records (tenant, collection, key, payload, hlc, origin, tombstone, hash) \
         VALUES ('tenant-b', 'notes', $1, '', 1, $2, false, $3)",
    )
    .bind(k)
    .bind(o)
    .bind(h)
    .execute(&mut *open)
    .await
    .unwrap();
    let (a, b) = (sink(&pg, "tenant-a"), sink(&pg, "tenant-b"));
    a.upsert_batch(&[record("a1", 1, "v")]).await.unwrap();
    b.upsert_batch(&[record("b1", 1, "v")]).await.unwrap();
    assert_eq!(pulled_keys(&a).await, ["a1"], "tenant-a is not held back");
    assert!(
        pulled_keys(&b).await.is_empty(),
        "tenant-b waits for its open writer, whose id is older than b1's"
    );
    open.commit().await.unwrap();
    assert_eq!(pulled_keys(&b).await, ["b-open", "b1"]);
}

/// A transaction that took an id before it wrote `hs_records` could commit rows below
/// a horizon a reader already passed, so the schema refuses it; announcing itself
/// first (`hs_enter_writer()`) makes it a writer like any other.
#[tokio::test]
async fn a_transaction_with_an_id_before_its_first_write_of_records_is_refused() {
    let pg = migrated().await;
    pg.psql("postgres", "CREATE TABLE unrelated (x int)")
        .unwrap();
    let insert = "INSERT INTO hs_records (tenant, collection, key, payload, hlc, origin, tombstone, hash) \
                  VALUES ('t', 'notes', 'late', '', 1, '\\x00000000000000000000000000000000', false, '\\x00')";
    let refused = pg
        .psql(
            "postgres",
            &format!("BEGIN; INSERT INTO unrelated VALUES (1); {insert}; COMMIT;"),
        )
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("must be written before anything else"),
        "{refused}"
    );
    assert_eq!(
        pg.psql("postgres", "SELECT count(*) FROM hs_records")
            .unwrap(),
        "0",
        "nothing was written"
    );
    pg.psql(
        "postgres",
        &format!(
            "BEGIN; SELECT hs_enter_writer(); INSERT INTO unrelated VALUES (1); {insert}; COMMIT;"
        ),
    )
    .unwrap();
    assert_eq!(
        pg.psql("postgres", "SELECT count(*) FROM hs_records")
            .unwrap(),
        "1"
    );
}

/// A device whose link goes dark (a blackhole: sockets open, nothing moves) after its
/// upsert and before its COMMIT: the upsert armed the idle-in-transaction timeout, so
/// the server ends that session within it, and the other devices' feed, held back
/// meanwhile, moves on. Without the timeout the server would keep the transaction
/// until TCP gave up (hours), and every device of the tenant would wait that long
/// (with the timeout set to zero this test fails on its 20 s bound).
#[tokio::test]
async fn a_device_gone_dark_before_its_commit_holds_the_feed_back_at_most_the_idle_timeout() {
    let pg = migrated().await;
    let proxy =
        hybridsync_testkit::FaultProxy::start(format!("127.0.0.1:{}", pg.port()).parse().unwrap())
            .unwrap();
    let mut options = CloudOptions::new(
        CloudUrl::new(format!(
            "postgres://app:app-password@127.0.0.1:{}/postgres",
            proxy.port()
        )),
        "t",
    );
    let timeout = Duration::from_millis(1_500);
    options.idle_in_transaction_timeout = timeout;
    let vanishing = PostgresSink::new(options).unwrap();
    let mut tx = vanishing.begin().await.unwrap();
    let armed: String =
        sqlx::query_scalar("SELECT current_setting('idle_in_transaction_session_timeout')")
            .fetch_one(&mut *tx)
            .await
            .unwrap();
    assert_eq!(
        armed, "30s",
        "before the upsert, the loose timeout (3 x the 10 s statement timeout)"
    );
    vanishing
        .ship_rows(&mut tx, &[record("vanishing", 1, "v")], None)
        .await
        .unwrap();
    let armed: String =
        sqlx::query_scalar("SELECT current_setting('idle_in_transaction_session_timeout')")
            .fetch_one(&mut *tx)
            .await
            .unwrap();
    assert_eq!(armed, "1500ms", "the upsert tightened it");
    proxy.set(hybridsync_testkit::Fault::Blackhole);
    let dark = std::time::Instant::now();

    // Another device's write commits behind the open one, and waits for it.
    sink(&pg, "t")
        .upsert_batch(&[record("behind", 1, "v")])
        .await
        .unwrap();
    let reader = sink(&pg, "t");
    assert!(
        pulled_keys(&reader).await.is_empty(),
        "held back while open"
    );
    while pulled_keys(&reader).await.is_empty() {
        assert!(
            dark.elapsed() < Duration::from_secs(20),
            "the vanished device still holds the feed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let held = dark.elapsed();
    assert!(
        held < timeout + Duration::from_millis(1_000),
        "held back {held:?} with an idle timeout of {timeout:?}"
    );
    // It never committed: its row is gone; the write behind it arrived.
    assert_eq!(pulled_keys(&reader).await, ["behind"]);
    assert_eq!(
        pg.psql(
            "postgres",
            "SELECT count(*) FROM pg_stat_activity WHERE state LIKE 'idle in transaction%'"
        )
        .unwrap(),
        "0",
        "the server ended the dark session"
    );
    std::mem::forget(tx);
}

/// A PgBouncer in transaction pooling mode in front of `pg`.
fn bouncer(pg: &TempPostgres, pool: u32, settings: &[(&str, &str)]) -> TempPgBouncer {
    TempPgBouncer::start(
        pg.port(),
        TempPgBouncerOptions {
            default_pool_size: pool,
            settings: settings
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            ..TempPgBouncerOptions::default()
        },
    )
    .unwrap()
}

fn pooled_options(bouncer: &TempPgBouncer, tenant: &str) -> CloudOptions {
    let mut options = CloudOptions::new(
        CloudUrl::new(format!(
            "postgres://app:app-password@127.0.0.1:{}/postgres",
            bouncer.port()
        )),
        tenant,
    );
    options.pooler = hybridsync_core::Pooler::PgBouncerTransaction;
    options.acquire_timeout = Duration::from_secs(3);
    options
}

fn app_backends(pg: &TempPostgres) -> u32 {
    pg.psql(
        "postgres",
        "SELECT count(*) FROM pg_stat_activity WHERE usename = 'app'",
    )
    .unwrap()
    .parse()
    .unwrap()
}

/// Eight sinks (24 client connections) share two server connections: every operation
/// works through the pooler, each sink sees the others' rows, and the server never
/// holds more than the pool's two backends of ours.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_pgbouncer_many_sinks_share_a_small_pool() {
    let pg = migrated().await;
    let bouncer = bouncer(&pg, 2, &[]);
    let sinks: Vec<_> = (0..8)
        .map(|_| std::sync::Arc::new(PostgresSink::new(pooled_options(&bouncer, "t")).unwrap()))
        .collect();
    sinks[0].verify_schema().await.unwrap();
    sinks[0].health_check().await.unwrap();
    let workers: Vec<_> = sinks
        .iter()
        .enumerate()
        .map(|(i, sink)| {
            let sink = sink.clone();
            tokio::spawn(async move {
                for j in 0..10u64 {
                    sink.upsert_batch(&[record(&format!("s{i}-{j}"), j + 1, "v")])
                        .await
                        .unwrap();
                    sink.pull(&name("notes"), &ChangeCursor::default(), 5)
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    let mut most = 0;
    while workers.iter().any(|w| !w.is_finished()) {
        most = most.max(app_backends(&pg));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for w in workers {
        w.await.unwrap();
    }
    assert!(most <= 2, "saw {most} server backends behind a pool of 2");
    for sink in &sinks {
        assert_eq!(pull_all(sink).await.len(), 80, "each sink sees every row");
    }
    assert_eq!(sinks[1].count(&name("notes")).await.unwrap(), 80);
    let device = DeviceId([3; 16]);
    sinks[2].register_device(device, "pooled").await.unwrap();
    assert_eq!(sinks[3].list_devices().await.unwrap().len(), 1);
}

/// The control: a sink set up for a direct connection names its prepared statements,
/// and behind a transaction pooler the next client on the same server connection
/// trips over them. (PgBouncer is told to ignore the `options` startup parameter here,
/// which it otherwise refuses outright.)
#[tokio::test]
async fn named_statements_break_behind_a_transaction_pooler() {
    let pg = migrated().await;
    let bouncer = bouncer(&pg, 1, &[("ignore_startup_parameters", "options")]);
    let direct = |_| {
        let mut options = pooled_options(&bouncer, "t");
        options.pooler = hybridsync_core::Pooler::Direct;
        PostgresSink::new(options).unwrap()
    };
    let (first, second) = (direct(1), direct(2));
    first.upsert_batch(&[record("a", 1, "v")]).await.unwrap();
    let err = second
        .upsert_batch(&[record("b", 1, "v")])
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("prepared statement"), "{err}");
    // The same two, configured for the pooler, work.
    let pooled = |_| PostgresSink::new(pooled_options(&bouncer, "t")).unwrap();
    let (first, second) = (pooled(1), pooled(2));
    first.upsert_batch(&[record("c", 1, "v")]).await.unwrap();
    second.upsert_batch(&[record("d", 1, "v")]).await.unwrap();
}

/// A sink set up for a direct connection but pointed at PgBouncer says what to change
/// instead of retrying a refusal for ever.
#[tokio::test]
async fn a_direct_sink_pointed_at_pgbouncer_is_told_to_set_the_pooler() {
    let pg = migrated().await;
    let bouncer = bouncer(&pg, 2, &[]);
    let mut options = pooled_options(&bouncer, "t");
    options.pooler = hybridsync_core::Pooler::Direct;
    let err = PostgresSink::new(options)
        .unwrap()
        .health_check()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err}");
    assert!(err.to_string().contains("pgbouncer-transaction"), "{err}");
}

/// PgBouncer's own refusals are retryable: no client slot left (max_client_conn), no
/// server connection within query_wait_timeout, and the server gone behind it; once the
/// cause passes, the same sink works again.
#[tokio::test]
async fn pgbouncer_refusals_are_retryable() {
    let pg = migrated().await;
    let bouncer = bouncer(
        &pg,
        1,
        &[("max_client_conn", "2"), ("query_wait_timeout", "1")],
    );
    let options = pooled_options(&bouncer, "t");
    let url = options.url.clone();
    let sink = PostgresSink::new(options).unwrap();

    // Two clients hold every client slot; one of them holds the only server connection.
    // A plain client of the pooler (without the startup parameter PgBouncer refuses).
    let client = || async {
        let options: sqlx::postgres::PgConnectOptions = url.expose().parse().unwrap();
        sqlx::PgConnection::connect_with(&options.extra_float_digits(None))
            .await
            .unwrap()
    };
    let mut hog = client().await;
    let mut held = hog.begin().await.unwrap();
    sqlx::query("SELECT 1").execute(&mut *held).await.unwrap();
    let idle = client().await;
    let err = sink.health_check().await.unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert!(err.to_string().contains("max_client_conn"), "{err}");
    idle.close().await.unwrap();

    // A client slot, but the server connection stays taken.
    let err = sink
        .upsert_batch(&[record("waits", 1, "v")])
        .await
        .unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert!(err.to_string().contains("query_wait_timeout"), "{err}");
    held.rollback().await.unwrap();
    hog.close().await.unwrap();
    sink.upsert_batch(&[record("waits", 2, "v")]).await.unwrap();

    // The server restarts behind the pooler.
    pg.stop(ShutdownMode::Immediate).unwrap();
    let err = sink
        .upsert_batch(&[record("down", 1, "v")])
        .await
        .unwrap_err();
    assert!(err.is_retryable(), "{err}");
    pg.start_again().unwrap();
    let started = std::time::Instant::now();
    while sink.upsert_batch(&[record("down", 2, "v")]).await.is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "never recovered"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(pulled_keys(&sink).await, ["down", "waits"]);
}

/// Behind a transaction pooler, a sink with a `listen_url` holds one direct session in
/// `LISTEN` and is woken at once by another device's commit (its poll is set to an hour,
/// so only the listener could wake it in time).
#[tokio::test]
async fn a_pooled_sink_listens_on_a_direct_session_of_its_own() {
    use hybridsync_core::CloudSink;
    let pg = migrated().await;
    let bouncer = bouncer(&pg, 2, &[]);
    let mut options = pooled_options(&bouncer, "t");
    options.listen_url = Some(app_url(&pg));
    options.application_name = "hs-pooled-listener".into();
    options.poll_interval = Duration::from_secs(3_600);
    let listener = PostgresSink::new(options).unwrap();
    // The first count says only that listening began.
    let began = tokio::time::timeout(Duration::from_secs(10), listener.next_change(0))
        .await
        .expect("the listener starts");
    let woken = tokio::spawn(async move {
        let n = tokio::time::timeout(Duration::from_secs(10), listener.next_change(began)).await;
        (n, listener)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    sink(&pg, "t")
        .upsert_batch(&[record("k", 1, "v")])
        .await
        .unwrap();
    let (n, listener) = woken.await.unwrap();
    assert!(
        n.expect("woken by the other device's commit") > began,
        "a new count"
    );
    let listening = pg
        .psql(
            "postgres",
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'hs-pooled-listener' \
             AND query LIKE 'LISTEN%'",
        )
        .unwrap();
    assert_eq!(listening, "1", "one direct LISTEN session");
    drop(listener);
}

/// Behind a transaction pooler the next client may get the same server session: after a
/// sink's transactions, that session carries no tenant, no statement timeout and no
/// idle timeout of ours, and no prepared statement.
#[tokio::test]
async fn through_pgbouncer_the_sink_leaves_no_session_state_behind() {
    let pg = migrated().await;
    let bouncer = bouncer(&pg, 1, &[]);
    let options = pooled_options(&bouncer, "tenant-a");
    let url = options.url.clone();
    let sink = PostgresSink::new(options).unwrap();
    sink.upsert_batch(&[record("k", 1, "v")]).await.unwrap();
    assert_eq!(pull_all(&sink).await.len(), 1);
    sink.close().await;
    // Another client, on the pool's only server session.
    let connect: sqlx::postgres::PgConnectOptions = url.expose().parse().unwrap();
    let mut next = sqlx::PgConnection::connect_with(&connect.extra_float_digits(None))
        .await
        .unwrap();
    let row = sqlx::raw_sql(
        "SELECT coalesce(nullif(current_setting('hybridsync.tenant', true), ''), '-') || ' ' || \
         current_setting('statement_timeout') || ' ' || \
         current_setting('idle_in_transaction_session_timeout') || ' ' || \
         (SELECT count(*) FROM pg_prepared_statements)",
    )
    .fetch_one(&mut next)
    .await
    .unwrap();
    let left: String = sqlx::Row::get(&row, 0);
    assert_eq!(
        left, "- 0 0 0",
        "tenant, statement timeout, idle timeout, prepared statements"
    );
}
