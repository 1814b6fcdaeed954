//! Drain throughput to PostgreSQL, next to one INSERT per row and a binary COPY of the
//! same rows.

use crate::report::Row;
use anyhow::{Context, Result};
use hybridsync::{CloudUrl, DeviceId, Hlc, HybridStore, Record, SyncConfig, WriteOptions};
use hybridsync_testkit::workload::Clustered;
use hybridsync_testkit::{TempPostgres, TempPostgresOptions};
use sqlx::Connection;
use std::time::{Duration, Instant};

const DIM: usize = 192;
const PAYLOAD: usize = 256;
const PER_ROW_SAMPLE: usize = 10_000;

fn rows(n: usize) -> Vec<(String, Vec<u8>, Vec<f32>)> {
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

fn records(data: &[(String, Vec<u8>, Vec<f32>)]) -> Vec<Record> {
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
/// origin, tombstone, hash).
fn copy_binary(records: &[Record]) -> Vec<u8> {
    let mut out = b"PGCOPY\n\xff\r\n\0".to_vec();
    out.extend_from_slice(&0i32.to_be_bytes());
    out.extend_from_slice(&0i32.to_be_bytes());
    let field = |out: &mut Vec<u8>, bytes: &[u8]| {
        out.extend_from_slice(&(bytes.len() as i32).to_be_bytes());
        out.extend_from_slice(bytes);
    };
    for r in records {
        out.extend_from_slice(&9i16.to_be_bytes());
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
    }
    out.extend_from_slice(&(-1i16).to_be_bytes());
    out
}

/// The cloud for the sync benches: a throwaway server that is durable, as a cloud
/// database is (fsync on), with the schema installed and a non-owner role `app`.
pub(crate) async fn durable_server() -> Result<TempPostgres> {
    let settings = vec![
        ("fsync".to_owned(), "on".to_owned()),
        ("full_page_writes".to_owned(), "on".to_owned()),
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
    hybridsync::layers::cloud::migrate(&CloudUrl::new(pg.url("postgres")), Some("app")).await?;
    Ok(pg)
}

/// Drains `n` records into `pg` (collection `bench`, tenant `default`; left there for
/// the hydrate bench).
pub(crate) async fn run(pg: &TempPostgres, n: usize) -> Result<Vec<Row>> {
    println!("drain: {n} records of {PAYLOAD} B + {DIM}-D embeddings to a throwaway PostgreSQL");
    let data = rows(n);

    // Ours: local writes, then the engine's drain through the capped pool.
    let tmp = tempfile::tempdir()?;
    let sync = SyncConfig {
        batch_size: 1_000,
        max_batch: 5_000,
        interval: Duration::from_secs(3600),
        ..SyncConfig::default()
    };
    let store = HybridStore::builder(tmp.path())
        .cloud_url(format!("postgres://app@127.0.0.1:{}/postgres", pg.port()))
        .sync_config(sync)
        .open()
        .await?;
    let spec =
        hybridsync::VectorSpec::new(DIM, hybridsync::Metric::Cosine, hybridsync::Precision::F16)?;
    store.create_collection("bench", Some(spec)).await?;
    let raw = store.raw("bench")?;
    write_locally(&raw, &data).await?;
    let started = Instant::now();
    let left = store.flush(Duration::from_secs(600)).await?;
    let drain_secs = started.elapsed().as_secs_f64();
    anyhow::ensure!(left == 0, "{left} entries did not drain");
    store.shutdown(Duration::from_secs(5)).await?;
    let ours = n as f64 / drain_secs;
    println!("  ours (drain):        {ours:>10.0} records/s ({drain_secs:.2} s)");

    let mut admin = sqlx::PgConnection::connect(&pg.url("postgres")).await?;
    let records = records(&data);

    // Baseline: one autocommitted INSERT per row with the same version guard.
    let sample = &records[..PER_ROW_SAMPLE.min(n)];
    let started = Instant::now();
    for r in sample {
        sqlx::query(
            "INSERT INTO hs_records AS t (tenant, collection, key, payload, embedding, hlc, origin, tombstone, hash)
             VALUES ('per_row', $1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (tenant, collection, key) DO UPDATE SET payload = excluded.payload, embedding = excluded.embedding,
                 hlc = excluded.hlc, origin = excluded.origin, tombstone = excluded.tombstone, hash = excluded.hash
             WHERE (excluded.hlc, excluded.origin) > (t.hlc, t.origin)",
        )
        .bind(r.collection.as_str())
        .bind(r.key.as_str())
        .bind(&r.payload)
        .bind(embedding_bytes(r.embedding.as_deref().unwrap_or_default()))
        .bind(r.version.packed())
        .bind(r.version.origin.0.to_vec())
        .bind(r.tombstone)
        .bind(r.hash.0.to_vec())
        .execute(&mut admin)
        .await?;
    }
    let per_row = sample.len() as f64 / started.elapsed().as_secs_f64();
    println!(
        "  insert per row:      {per_row:>10.0} records/s (first {} rows)",
        sample.len()
    );

    // Baselines: binary COPY of the same rows into an empty table of the same shape,
    // with the same indexes (the fair one: we maintain them too) and without any.
    let copy_rate = copy_into(&mut admin, &records, "bench_copy", "INCLUDING INDEXES").await?;
    let bare_rate = copy_into(&mut admin, &records, "bench_copy_bare", "").await?;
    println!("  binary COPY:         {copy_rate:>10.0} records/s (same indexes)");
    println!("  binary COPY:         {bare_rate:>10.0} records/s (no indexes)");

    Ok(vec![
        Row::throughput(
            "drain_to_postgres",
            ours,
            "insert_per_row",
            per_row,
            ">= 20x",
        ),
        Row::throughput(
            "drain_to_postgres",
            ours,
            "copy_binary",
            copy_rate,
            ">= 0.5x",
        ),
        Row::throughput(
            "drain_to_postgres",
            ours,
            "copy_binary_no_indexes",
            bare_rate,
            "report",
        ),
    ])
}

/// Records/s of one binary COPY of `records` into a new table `name` shaped like
/// `hs_records` (`like` adds to `INCLUDING DEFAULTS`, say `INCLUDING INDEXES`).
async fn copy_into(
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
            "COPY {name} (tenant, collection, key, payload, embedding, hlc, origin, tombstone, hash) FROM STDIN (FORMAT binary)"
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
