//! Drain throughput to PostgreSQL, next to one INSERT per row and a binary COPY of the
//! same rows, and the same drain through PgBouncer in transaction pooling mode.

use crate::report::{Row, median};
use anyhow::{Context, Result};
use hybridsync::Pooler;
use hybridsync::{
    CloudUrl, DeviceId, EncryptionKey, Hlc, HybridStore, Record, SyncConfig, WriteOptions,
};
use hybridsync_testkit::workload::Clustered;
use hybridsync_testkit::{TempPgBouncer, TempPgBouncerOptions, TempPostgres, TempPostgresOptions};
use sqlx::Connection;
use std::time::{Duration, Instant};

const DIM: usize = 192;
const PAYLOAD: usize = 256;
const PER_ROW_SAMPLE: usize = 10_000;

pub(crate) fn rows(n: usize) -> Vec<(String, Vec<u8>, Vec<f32>)> {
    let mut voices = Clustered::new(11, 1_000, DIM, 0.1);
    (0..n)
        .map(|i| {
            (
                format!("k{i:07}"),
                vec![(i % 251) as u8; PAYLOAD],
                voices.sample(i),
            )
        })
        .collect()
}

fn embedding_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

pub(crate) fn records(data: &[(String, Vec<u8>, Vec<f32>)]) -> Vec<Record> {
    let collection = hybridsync::CollectionName::new("bench").expect("valid");
    data.iter()
        .enumerate()
        .map(|(i, (key, payload, embedding))| {
            let version = Hlc {
                physical_ms: 1_000 + i as u64,
                logical: 0,
                origin: DeviceId([1; 16]),
            };
            let key = hybridsync::Key::new(key.as_str()).expect("valid");
            Record::new(
                collection.clone(),
                key,
                payload.clone(),
                Some(embedding.clone()),
                version,
                false,
            )
        })
        .collect()
}

/// Writes `data` to `raw` in batches of 1,000.
async fn write_locally(
    raw: &hybridsync::RawCollection,
    data: &[(String, Vec<u8>, Vec<f32>)],
) -> Result<()> {
    for chunk in data.chunks(1_000) {
        let items = chunk
            .iter()
            .map(|(k, p, e)| {
                (
                    k.clone(),
                    p.clone(),
                    WriteOptions::default().embedding(e.clone()),
                )
            })
            .collect();
        raw.put_many(items).await?;
    }
    Ok(())
}

/// PostgreSQL binary COPY framing for (tenant, collection, key, payload, embedding, hlc,
/// origin, tombstone, hash, bucket, leaf): every column the drain writes, the checker's
/// bucket and leaf included (left NULL, every entry of the tree index would land at one
/// end of it, where the drain's land across it).
fn copy_binary(records: &[Record]) -> Vec<u8> {
    let mut out = b"PGCOPY\n\xff\r\n\0".to_vec();
    out.extend_from_slice(&0i32.to_be_bytes());
    out.extend_from_slice(&0i32.to_be_bytes());
    let field = |out: &mut Vec<u8>, bytes: &[u8]| {
        out.extend_from_slice(&(bytes.len() as i32).to_be_bytes());
        out.extend_from_slice(bytes);
    };
    for r in records {
        out.extend_from_slice(&11i16.to_be_bytes());
        field(&mut out, b"copy");
        field(&mut out, r.collection.as_str().as_bytes());
        field(&mut out, r.key.as_str().as_bytes());
        field(&mut out, &r.payload);
        field(
            &mut out,
            &embedding_bytes(r.embedding.as_deref().unwrap_or_default()),
        );
        field(&mut out, &r.version.packed().to_be_bytes());
        field(&mut out, &r.version.origin.0);
        field(&mut out, &[u8::from(r.tombstone)]);
        field(&mut out, &r.hash.0);
        let (bucket, leaf) = hybridsync_core::tree_digests(r, false);
        field(&mut out, &i64::from(bucket).to_be_bytes());
        field(&mut out, &(leaf as i64).to_be_bytes());
    }
    out.extend_from_slice(&(-1i16).to_be_bytes());
    out
}

/// The cloud for the sync benches: a throwaway server that is durable, as a cloud
/// database is (fsync on), with the schema installed and a non-owner role `app`. Its
/// buffer pool (2 GB) holds everything the benches write, as a cloud instance's is
/// sized to its working set; with the 128 MB default, whichever side ran once the
/// tables outgrew it paid for evicting the others' dirty pages. Background
/// maintenance is off (autovacuum) or done between measurements (checkpoints, see
/// [`settle`]): its timing would otherwise land on whichever side ran beside it.
pub(crate) async fn durable_server() -> Result<TempPostgres> {
    let settings = vec![
        ("fsync".to_owned(), "on".to_owned()),
        ("full_page_writes".to_owned(), "on".to_owned()),
        ("shared_buffers".to_owned(), "2GB".to_owned()),
        ("autovacuum".to_owned(), "off".to_owned()),
    ];
    let pg = TempPostgres::with_options(TempPostgresOptions {
        settings,
        ..Default::default()
    })
    .context("starting PostgreSQL")?;
    anyhow::ensure!(
        pg.psql("postgres", "SHOW fsync")? == "on",
        "the bench server must be durable"
    );
    pg.psql("postgres", "CREATE ROLE app LOGIN")?;
    let admin = CloudUrl::new(pg.url("postgres"));
    hybridsync::cloud::migrate(&admin, Some("app")).await?;
    // The tenants the bench's devices act for.
    for tenant in ["default", "recovery", "propagation", "pooled", "plain"] {
        hybridsync::cloud::grant_tenant(&admin, Some("app"), tenant).await?;
    }
    Ok(pg)
}

/// Trials of each side of the drain bench; the rows report their medians (one
/// trial can meet a slow disk flush or a server-side hiccup).
pub(crate) const TRIALS: usize = 5;

/// Writes `data` into a new store for `tenant` and times the engine's drain of it to
/// `pg` (collection `bench`, encrypted when there is a `key`); records/s.
pub(crate) async fn drain_trial(
    pg: &TempPostgres,
    data: &[(String, Vec<u8>, Vec<f32>)],
    tenant: &str,
    key: Option<&EncryptionKey>,
) -> Result<f64> {
    drain_trial_via(&direct_link(pg), data, tenant, key).await
}

/// How a bench device reaches the server: its URL and what stands in between.
pub(crate) struct Link {
    url: String,
    pooler: Pooler,
}

pub(crate) fn direct_link(pg: &TempPostgres) -> Link {
    Link {
        url: format!("postgres://app@127.0.0.1:{}/postgres", pg.port()),
        pooler: Pooler::Direct,
    }
}

fn pgbouncer_link(bouncer: &TempPgBouncer) -> Link {
    Link {
        url: bouncer.url("app", "postgres"),
        pooler: Pooler::PgBouncerTransaction,
    }
}

/// [`drain_trial`] over `link`.
async fn drain_trial_via(
    link: &Link,
    data: &[(String, Vec<u8>, Vec<f32>)],
    tenant: &str,
    key: Option<&EncryptionKey>,
) -> Result<f64> {
    let tmp = tempfile::tempdir()?;
    let sync = SyncConfig {
        batch_size: 1_000,
        max_batch: 5_000,
        interval: Duration::from_secs(3600),
        ..SyncConfig::default()
    };
    let store = bench_device_via(link, tmp.path(), tenant, sync, key).await?;
    let raw = store.raw("bench")?;
    write_locally(&raw, data).await?;
    let started = Instant::now();
    let left = store.flush(Duration::from_secs(600)).await?;
    let secs = started.elapsed().as_secs_f64();
    anyhow::ensure!(left == 0, "{left} entries did not drain");
    store.shutdown(Duration::from_secs(5)).await?;
    Ok(data.len() as f64 / secs)
}

/// A device of `tenant` on `pg` in `dir` with the bench collection `bench` (192-D f16
/// cosine, encrypted when there is a `key`), defined at start-up as an app would.
pub(crate) async fn bench_device(
    pg: &TempPostgres,
    dir: &std::path::Path,
    tenant: &str,
    sync: SyncConfig,
    key: Option<&EncryptionKey>,
) -> Result<HybridStore> {
    bench_device_via(&direct_link(pg), dir, tenant, sync, key).await
}

/// [`bench_device`] over `link`.
async fn bench_device_via(
    link: &Link,
    dir: &std::path::Path,
    tenant: &str,
    sync: SyncConfig,
    key: Option<&EncryptionKey>,
) -> Result<HybridStore> {
    let mut builder = HybridStore::builder(dir)
        .cloud_url(link.url.clone())
        .pooler(link.pooler)
        .tenant(tenant)
        .sync_config(sync);
    if let Some(key) = key {
        builder = builder.encryption_key(key.clone());
    }
    let store = builder.open().await?;
    let spec =
        hybridsync::VectorSpec::new(DIM, hybridsync::Metric::Cosine, hybridsync::Precision::F16)?;
    if key.is_some() {
        store
            .create_encrypted_collection("bench", Some(spec))
            .await?;
    } else {
        store.create_collection("bench", Some(spec)).await?;
    }
    Ok(store)
}

/// Drains `n` records into `pg` as tenant `default` (left there for the hydrate bench),
/// next to the baselines; then the same again on [`TRIALS`]` - 1` fresh servers of
/// their own, so every trial meets a server in the same state.
pub(crate) async fn run(pg: &TempPostgres, n: usize) -> Result<Vec<Row>> {
    println!(
        "drain: {n} records of {PAYLOAD} B + {DIM}-D embeddings to a throwaway PostgreSQL, {TRIALS} trials each"
    );
    let data = rows(n);
    let records = records(&data);
    let sample = &records[..PER_ROW_SAMPLE.min(n)];
    let (mut ours, mut per_row, mut copy, mut bare) = (vec![], vec![], vec![], vec![]);
    let mut pooled = vec![];
    let mut fresh = None;
    for trial in 0..TRIALS {
        let server = if trial == 0 {
            pg
        } else {
            fresh.insert(durable_server().await?)
        };
        let mut admin = sqlx::PgConnection::connect(&server.url("postgres")).await?;
        // Ours: local writes, then the engine's drain through the capped pool; and the
        // same through PgBouncer in transaction mode (unnamed statements), first and
        // second in turn.
        let bouncer = TempPgBouncer::start(server.port(), TempPgBouncerOptions::default())?;
        for through_bouncer in [trial % 2 == 1, trial % 2 == 0] {
            settle(&mut admin).await?;
            if through_bouncer {
                pooled
                    .push(drain_trial_via(&pgbouncer_link(&bouncer), &data, "pooled", None).await?);
            } else {
                ours.push(drain_trial(server, &data, "default", None).await?);
            }
        }
        // Baseline: one autocommitted INSERT per row with the same version guard.
        settle(&mut admin).await?;
        per_row.push(insert_per_row(&mut admin, sample, "per_row").await?);
        // Baselines: binary COPY of the same rows into an empty table of the same
        // shape, with the same indexes (the fair one: we maintain them too) and
        // without any.
        settle(&mut admin).await?;
        copy.push(copy_into(&mut admin, &records, "bench_copy", "INCLUDING INDEXES").await?);
        settle(&mut admin).await?;
        bare.push(copy_into(&mut admin, &records, "bench_copy_bare", "").await?);
    }
    let trials = |label: &str, values: &[f64]| {
        let shown: Vec<String> = values.iter().map(|v| format!("{v:.0}")).collect();
        println!("  {label:<31} {}", shown.join(" / "));
    };
    trials("ours (drain), records/s:", &ours);
    trials("ours through PgBouncer:", &pooled);
    trials(
        &format!("insert per row (first {}):", sample.len()),
        &per_row,
    );
    trials("binary COPY (same indexes):", &copy);
    trials("binary COPY (no indexes):", &bare);
    let trials = (
        ours.clone(),
        per_row.clone(),
        copy.clone(),
        bare.clone(),
        pooled.clone(),
    );
    let (ours, per_row) = (median(&mut ours), median(&mut per_row));
    let (copy, bare) = (median(&mut copy), median(&mut bare));
    let pooled = median(&mut pooled);
    // The direct drain stays first: the callers take its records/s from row 0.
    Ok(vec![
        Row::throughput(
            "drain_to_postgres",
            ours,
            "insert_per_row",
            per_row,
            ">= 20x",
        )
        .paired(&trials.0, &trials.1),
        Row::throughput("drain_to_postgres", ours, "copy_binary", copy, ">= 0.8x")
            .paired(&trials.0, &trials.2),
        Row::throughput(
            "drain_to_postgres",
            ours,
            "copy_binary_no_indexes",
            bare,
            "report",
        )
        .paired(&trials.0, &trials.3),
        Row::throughput(
            "drain_through_pgbouncer",
            pooled,
            "drain_direct",
            ours,
            ">= 0.8x",
        )
        .paired(&trials.4, &trials.0),
    ])
}

/// Flushes the server's dirty buffers (a checkpoint) between measurements, so no
/// side pays for the one before.
pub(crate) async fn settle(admin: &mut sqlx::PgConnection) -> Result<()> {
    sqlx::query("CHECKPOINT").execute(&mut *admin).await?;
    Ok(())
}

/// Records/s of `sample` written as tenant `tenant` with one autocommitted
/// `INSERT … ON CONFLICT` each, with the version guard and every column the drain
/// writes.
async fn insert_per_row(
    admin: &mut sqlx::PgConnection,
    sample: &[Record],
    tenant: &str,
) -> Result<f64> {
    let started = Instant::now();
    for r in sample {
        let (bucket, leaf) = hybridsync_core::tree_digests(r, false);
        sqlx::query(
            "INSERT INTO hs_records AS t (tenant, collection, key, payload, embedding, hlc, origin, tombstone, hash, bucket, leaf)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
             ON CONFLICT (tenant, collection, key) DO UPDATE SET payload = excluded.payload, embedding = excluded.embedding,
                 hlc = excluded.hlc, origin = excluded.origin, tombstone = excluded.tombstone, hash = excluded.hash,
                 bucket = excluded.bucket, leaf = excluded.leaf
             WHERE (excluded.hlc, excluded.origin) > (t.hlc, t.origin)",
        )
        .bind(tenant)
        .bind(r.collection.as_str())
        .bind(r.key.as_str())
        .bind(&r.payload)
        .bind(embedding_bytes(r.embedding.as_deref().unwrap_or_default()))
        .bind(r.version.packed())
        .bind(r.version.origin.0.to_vec())
        .bind(r.tombstone)
        .bind(r.hash.0.to_vec())
        .bind(i64::from(bucket))
        .bind(leaf as i64)
        .execute(&mut *admin)
        .await?;
    }
    Ok(sample.len() as f64 / started.elapsed().as_secs_f64())
}

/// Records/s of one binary COPY of `records` into a new table `name` shaped like
/// `hs_records` (`like` adds to `INCLUDING DEFAULTS`, say `INCLUDING INDEXES`).
pub(crate) async fn copy_into(
    admin: &mut sqlx::PgConnection,
    records: &[Record],
    name: &str,
    like: &str,
) -> Result<f64> {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE {name} (LIKE hs_records INCLUDING DEFAULTS {like})"
    )))
    .execute(&mut *admin)
    .await?;
    let started = Instant::now();
    let mut copy = admin
        .copy_in_raw(&format!(
            "COPY {name} (tenant, collection, key, payload, embedding, hlc, origin, tombstone, hash, bucket, leaf) FROM STDIN (FORMAT binary)"
        ))
        .await?;
    copy.send(copy_binary(records)).await?;
    let copied = copy.finish().await?;
    let rate = copied as f64 / started.elapsed().as_secs_f64();
    anyhow::ensure!(
        copied as usize == records.len(),
        "COPY wrote {copied} of {} rows",
        records.len()
    );
    Ok(rate)
}

/// Recovery: `n` records written while the cloud is down (the drain failing, the
/// breaker opening), then the time from the cloud's return until the outbox is empty,
/// with the default breaker and health-check timings. The baseline is the plain drain
/// of the same number of records, `drain_secs`.
pub(crate) async fn recovery(pg: &TempPostgres, n: usize, drain_secs: f64) -> Result<Row> {
    println!("recovery: {n} records written during an outage, then the cloud returns");
    let data = rows(n);
    let proxy = hybridsync_testkit::FaultProxy::start(format!("127.0.0.1:{}", pg.port()).parse()?)?;
    proxy.set(hybridsync_testkit::Fault::Down);
    let tmp = tempfile::tempdir()?;
    let store = HybridStore::builder(tmp.path())
        .cloud_url(format!(
            "postgres://app@127.0.0.1:{}/postgres",
            proxy.port()
        ))
        .tenant("recovery")
        .sync_config(SyncConfig {
            batch_size: 1_000,
            max_batch: 5_000,
            ..SyncConfig::default()
        })
        .open()
        .await?;
    let spec =
        hybridsync::VectorSpec::new(DIM, hybridsync::Metric::Cosine, hybridsync::Precision::F16)?;
    store.create_collection("bench", Some(spec)).await?;
    store.start_sync().await?;
    let raw = store.raw("bench")?;
    write_locally(&raw, &data).await?;
    let circuit = store.sync_status().map(|s| s.circuit);
    proxy.set(hybridsync_testkit::Fault::None);
    let started = Instant::now();
    loop {
        let outbox = store.status().await?.outbox;
        if outbox.pending + outbox.in_flight == 0 {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(600),
            "the backlog did not drain after the outage"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    store.shutdown(Duration::from_secs(5)).await?;
    println!(
        "  drained in {secs:.2} s after the cloud returned (circuit was {circuit:?}); plain drain {drain_secs:.2} s"
    );
    Ok(Row::new(
        "recovery_drain_after_outage",
        "s",
        secs,
        "plain_drain_same_records",
        drain_secs,
        "report",
    ))
}
