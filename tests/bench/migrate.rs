//! `migrate`: bulk imports beside their baselines in the same run: a JSON Lines import
//! against the store's own batched write of the same records; a PostgreSQL source
//! against `COPY … TO STDOUT` of the same table; and an import until the cloud holds it
//! (through the outbox and the drain) against one binary `COPY` of the same rows.

use crate::drain;
use crate::report::Row;
use anyhow::{Context, Result};
use hybridsync::migrate::{MigrateOptions, Select, Source};
use hybridsync::{HybridStore, Metric, Precision, Priority, VectorSpec, WriteOptions};
use std::io::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

/// The payload field's length: a row's JSON payload is 256 bytes.
const BODY: usize = 256 - r#"{"body":""}"#.len();

/// Row `i`: its key, JSON payload and (for `dim`) embedding.
fn row(i: usize, dim: Option<usize>) -> (String, Vec<u8>, Option<Vec<f32>>) {
    let body: String = std::iter::repeat_n((b'a' + (i % 26) as u8) as char, BODY).collect();
    let payload = serde_json::to_vec(&serde_json::json!({ "body": body })).expect("json");
    let embedding = dim.map(|d| {
        (0..d)
            .map(|j| ((i * 31 + j * 17) % 97) as f32 / 97.0 + 0.01)
            .collect()
    });
    (format!("k{i:07}"), payload, embedding)
}

fn write_jsonl(path: &Path, n: usize, dim: Option<usize>) -> Result<()> {
    let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
    for i in 0..n {
        let (key, payload, embedding) = row(i, dim);
        let mut value: serde_json::Value = serde_json::from_slice(&payload)?;
        value["id"] = key.into();
        if let Some(embedding) = embedding {
            value["vec"] = embedding.into();
        }
        serde_json::to_writer(&mut file, &value)?;
        file.write_all(b"\n")?;
    }
    file.flush()?;
    Ok(())
}

async fn open(dir: &Path, dim: Option<usize>) -> Result<HybridStore> {
    let store = HybridStore::builder(dir).open().await?;
    let vector = dim
        .map(|d| VectorSpec::new(d, Metric::Cosine, Precision::F16))
        .transpose()?;
    store.create_collection("bench", vector).await?;
    Ok(store)
}

/// Rows/s of the store's batched write (10,000 rows a transaction, deferred) of the
/// records the import makes.
async fn batched(dir: &Path, n: usize, dim: Option<usize>) -> Result<f64> {
    let store = open(dir, dim).await?;
    let raw = store.raw("bench")?;
    let started = Instant::now();
    for chunk in (0..n).collect::<Vec<_>>().chunks(10_000) {
        let items = chunk
            .iter()
            .map(|&i| {
                let (key, payload, embedding) = row(i, dim);
                let mut options = WriteOptions::default().priority(Priority::Deferred);
                if let Some(e) = embedding {
                    options = options.embedding(e);
                }
                (key, payload, options)
            })
            .collect();
        raw.put_many(items).await?;
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    store.close().await;
    Ok(rate)
}

fn options(dim: Option<usize>) -> MigrateOptions {
    let mut options = MigrateOptions::new("bench", "id");
    if dim.is_some() {
        options.mapping.embedding = Some("vec".into());
    }
    options.run.verify = false;
    options.run.cloud_check = None;
    options
}

/// Rows/s of `hybridsync migrate jsonl` of the same rows.
async fn imported(dir: &Path, source: &Path, n: usize, dim: Option<usize>) -> Result<f64> {
    let store = open(dir, dim).await?;
    let started = Instant::now();
    let report = store
        .migrate(
            Source::JsonLines(Some(source.to_owned())),
            options(dim),
            |_| {},
        )
        .await?;
    let rate = n as f64 / started.elapsed().as_secs_f64();
    anyhow::ensure!(
        report.run.imported == n as u64,
        "imported {} of {n}",
        report.run.imported
    );
    store.close().await;
    Ok(rate)
}

/// Trials of each side, alternating (the rows report medians).
const TRIALS: usize = 3;

/// The JSON Lines import against the batched write, alternating.
async fn jsonl(name: &str, n: usize, dim: Option<usize>) -> Result<Row> {
    let tmp = tempfile::tempdir()?;
    let source = tmp.path().join("rows.jsonl");
    write_jsonl(&source, n, dim)?;
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for trial in 0..TRIALS {
        theirs.push(batched(&tmp.path().join(format!("b{trial}")), n, dim).await?);
        ours.push(imported(&tmp.path().join(format!("m{trial}")), &source, n, dim).await?);
        for side in ["b", "m"] {
            std::fs::remove_dir_all(tmp.path().join(format!("{side}{trial}")))?;
        }
    }
    let (ours, theirs) = (
        crate::report::median(&mut ours),
        crate::report::median(&mut theirs),
    );
    println!("  {name}: {n} rows, import {ours:.0} rows/s vs batched write {theirs:.0} rows/s");
    Ok(Row::throughput(
        name,
        ours,
        "store_batched_write",
        theirs,
        ">= 0.8x",
    ))
}

/// A PostgreSQL table read by the import against `COPY … TO STDOUT`.
async fn postgres_source(pg: &hybridsync_testkit::TempPostgres, n: usize) -> Result<Row> {
    pg.psql(
        "postgres",
        &format!(
            "DROP TABLE IF EXISTS bench_source; \
             CREATE TABLE bench_source (id text PRIMARY KEY, body text NOT NULL); \
             INSERT INTO bench_source SELECT 'k' || lpad(i::text, 7, '0'), repeat(chr(97 + i % 26), {BODY}) \
             FROM generate_series(0, {}) i",
            n - 1
        ),
    )?;
    pg.psql("postgres", "VACUUM ANALYZE bench_source")?;
    use sqlx::Connection as _;
    let mut conn = sqlx::PgConnection::connect(&pg.url("postgres")).await?;
    let started = Instant::now();
    let mut out = conn.copy_out_raw("COPY bench_source TO STDOUT").await?;
    let mut lines = 0usize;
    use futures_util::StreamExt as _;
    while let Some(chunk) = out.next().await {
        lines += chunk?.iter().filter(|b| **b == b'\n').count();
    }
    let copy = lines as f64 / started.elapsed().as_secs_f64();
    anyhow::ensure!(lines == n, "COPY gave {lines} of {n} rows");
    drop(out);
    conn.close().await?;

    let tmp = tempfile::tempdir()?;
    let store = open(tmp.path(), None).await?;
    let started = Instant::now();
    let report = store
        .migrate(
            Source::Postgres {
                url: hybridsync::CloudUrl::new(pg.url("postgres")),
                select: Select::Table("bench_source".into()),
            },
            options(None),
            |_| {},
        )
        .await?;
    let ours = n as f64 / started.elapsed().as_secs_f64();
    anyhow::ensure!(
        report.run.imported == n as u64,
        "imported {}",
        report.run.imported
    );
    store.close().await;
    println!("  migrate_postgres_source: {ours:.0} rows/s vs COPY TO STDOUT {copy:.0} rows/s");
    Ok(Row::throughput(
        "migrate_postgres_source",
        ours,
        "copy_to_stdout",
        copy,
        "report",
    ))
}

/// An import until the cloud holds every row (the outbox and the drain, as by default)
/// against one binary `COPY` of the same rows into a table with `hs_records`' indexes:
/// the ceiling of any `--direct` path that ends in that table. Rows without vectors, so
/// the cloud side, not the local index, is what the time measures.
async fn into_cloud(pg: &hybridsync_testkit::TempPostgres, n: usize) -> Result<Vec<Row>> {
    let admin_url = hybridsync::CloudUrl::new(pg.url("postgres"));
    hybridsync::cloud::grant_tenant(&admin_url, Some("app"), "migrate").await?;
    let tmp = tempfile::tempdir()?;
    let source = tmp.path().join("rows.jsonl");
    write_jsonl(&source, n, None)?;
    let store = HybridStore::builder(tmp.path().join("data"))
        .cloud_url(format!("postgres://app@127.0.0.1:{}/postgres", pg.port()))
        .tenant("migrate")
        .open()
        .await?;
    store.create_collection("bench", None).await?;
    let started = Instant::now();
    store
        .migrate(
            Source::JsonLines(Some(source.clone())),
            options(None),
            |_| {},
        )
        .await?;
    let left = store.flush(Duration::from_secs(600)).await?;
    let ours = n as f64 / started.elapsed().as_secs_f64();
    anyhow::ensure!(left == 0, "{left} rows left unshipped");
    store.close().await;

    use sqlx::Connection as _;
    let mut admin = sqlx::PgConnection::connect(&pg.url("postgres"))
        .await
        .context("admin connection")?;
    drain::settle(&mut admin).await?;
    let records: Vec<_> = (0..n)
        .map(|i| {
            let (key, payload, _) = row(i, None);
            (key, payload, Vec::new())
        })
        .collect();
    let records = drain::records(&records);
    let copy = drain::copy_into(&mut admin, &records, "copy_migrate", "INCLUDING INDEXES").await?;
    sqlx::query("DROP TABLE copy_migrate")
        .execute(&mut admin)
        .await?;
    // What a `--direct` path would cost the server at best: a binary COPY into an
    // unindexed staging table, then one monotone merge into a table shaped and indexed
    // like `hs_records` (no row-level security, no tenant setting, no digests computed).
    drain::settle(&mut admin).await?;
    sqlx::query(
        "CREATE TABLE direct_target (LIKE hs_records INCLUDING DEFAULTS INCLUDING INDEXES)",
    )
    .execute(&mut admin)
    .await?;
    let started = Instant::now();
    drain::copy_into(&mut admin, &records, "direct_stage", "").await?;
    sqlx::query(
        "INSERT INTO direct_target AS r (tenant, collection, key, payload, embedding, hlc, origin, tombstone, hash) \
         SELECT tenant, collection, key, payload, embedding, hlc, origin, tombstone, hash FROM direct_stage \
         ON CONFLICT (tenant, collection, key) DO UPDATE SET payload = excluded.payload, \
         embedding = excluded.embedding, hlc = excluded.hlc, origin = excluded.origin, \
         tombstone = excluded.tombstone, hash = excluded.hash \
         WHERE (excluded.hlc, excluded.origin) > (r.hlc, r.origin)",
    )
    .execute(&mut admin)
    .await?;
    let direct = n as f64 / started.elapsed().as_secs_f64();
    sqlx::query("DROP TABLE direct_stage, direct_target")
        .execute(&mut admin)
        .await?;
    println!(
        "  migrate_into_cloud: {ours:.0} rows/s (import + drain) vs binary COPY {copy:.0} rows/s; \
         a direct path's server side (COPY to staging + one merge) {direct:.0} rows/s"
    );
    Ok(vec![
        Row::throughput("migrate_into_cloud", ours, "copy_binary", copy, "report"),
        Row::throughput(
            "migrate_into_cloud",
            ours,
            "direct_stage_and_merge",
            direct,
            "report",
        ),
    ])
}

pub(crate) async fn run(quick: bool) -> Result<Vec<Row>> {
    let scale = if quick { 20 } else { 1 };
    let mut rows = vec![
        jsonl("migrate_jsonl_1m", 1_000_000 / scale, None).await?,
        jsonl("migrate_jsonl_100k_192d", 100_000 / scale, Some(192)).await?,
    ];
    let pg = drain::durable_server().await?;
    rows.push(postgres_source(&pg, 100_000 / scale).await?);
    rows.extend(into_cloud(&pg, 100_000 / scale).await?);
    Ok(rows)
}
