//! Two-way sync: a new device's hydrate throughput next to one raw SELECT of the same
//! rows, and the propagation latency of a write from device A to device B (auto-sync
//! nudged by the cloud's change signal) next to a raw write and read over two
//! PostgreSQL connections.

use crate::reads::{nanos, percentile};
use crate::report::Row;
use crate::report::median;
use anyhow::{Context, Result, ensure};
use hybridsync::{EncryptionKey, HybridStore, Strategy, WriteOptions};
use hybridsync_testkit::TempPostgres;
use sqlx::{Connection, Row as _};
use std::time::{Duration, Instant};

/// The rows a hydrate of the bench collection pulls, in one raw SELECT.
async fn select_bench_rows(admin: &mut sqlx::PgConnection) -> Result<Vec<sqlx::postgres::PgRow>> {
    Ok(sqlx::query(
        "SELECT key, payload, embedding, hlc, origin, tombstone, hash FROM hs_records
         WHERE tenant = 'default' AND collection = 'bench'",
    )
    .fetch_all(admin)
    .await?)
}

/// Hydrates what the drain bench left in the cloud (`records` rows of collection
/// `bench`, tenant `default`) into a fresh device.
pub(crate) async fn hydrate(pg: &TempPostgres, records: usize) -> Result<Vec<Row>> {
    println!("hydrate: {records} records with 192-D embeddings into a new device");
    let ours = hydrate_trial(pg, "default", None, records).await?;
    let secs = records as f64 / ours;
    println!("  ours (hydrate):      {ours:>10.0} records/s ({secs:.2} s, index built)");

    // Baseline: the same rows and columns in one SELECT, decoded into memory.
    let mut admin = sqlx::PgConnection::connect(&pg.url("postgres")).await?;
    let started = Instant::now();
    let rows = select_bench_rows(&mut admin).await?;
    let bytes: usize = rows
        .iter()
        .map(|r| r.get::<Vec<u8>, _>(1).len() + r.get::<Vec<u8>, _>(2).len())
        .sum();
    let select = rows.len() as f64 / started.elapsed().as_secs_f64();
    ensure!(rows.len() == records, "SELECT read {} rows", rows.len());
    println!(
        "  one raw SELECT:      {select:>10.0} records/s ({} MB)",
        bytes >> 20
    );

    // Baseline: that SELECT plus a raw usearch index of the same vectors (same
    // options, both cores): the least a device must do to search what it restored.
    let started = Instant::now();
    let rows = select_bench_rows(&mut admin).await?;
    let index = usearch::Index::new(&usearch::IndexOptions {
        dimensions: 192,
        metric: usearch::MetricKind::Cos,
        quantization: usearch::ScalarKind::F16,
        ..Default::default()
    })
    .context("usearch index")?;
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    index.reserve_capacity_and_threads(rows.len(), threads)?;
    std::thread::scope(|scope| {
        for (t, part) in rows.chunks(rows.len().div_ceil(threads)).enumerate() {
            let index = &index;
            scope.spawn(move || {
                for (i, row) in part.iter().enumerate() {
                    let vector: Vec<f32> = row
                        .get::<Vec<u8>, _>(2)
                        .chunks_exact(4)
                        .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
                        .collect();
                    let label = (t * part.len() + i) as u64;
                    index.add(label, &vector).expect("raw usearch add");
                }
            });
        }
    });
    ensure!(index.size() == records, "raw index holds {}", index.size());
    let with_index = records as f64 / started.elapsed().as_secs_f64();
    println!("  SELECT + raw index:  {with_index:>10.0} records/s");
    Ok(vec![
        Row::throughput("hydrate_192d", ours, "raw_select", select, "report"),
        Row::throughput(
            "hydrate_192d",
            ours,
            "raw_select_and_usearch_build",
            with_index,
            "report",
        ),
    ])
}

/// Plain records (256-byte payloads, no embeddings): one device writes `records` of them
/// to collection `notes` of tenant `plain` and drains them; then a new device hydrates
/// them, beside one raw SELECT of the same rows and columns: three paired trials,
/// alternating, so a swing of the machine lands on both sides.
pub(crate) async fn hydrate_plain(pg: &TempPostgres, records: usize) -> Result<Vec<Row>> {
    println!("hydrate (plain): {records} records of 256 bytes into a new device");
    let url = format!("postgres://app@127.0.0.1:{}/postgres", pg.port());
    let open = |dir: &std::path::Path| {
        HybridStore::builder(dir)
            .cloud_url(url.clone())
            .tenant("plain")
            .open()
    };
    let source = tempfile::tempdir()?;
    let writer = open(source.path()).await?;
    writer.create_collection("notes", None).await?;
    // Publishes the collection (nothing to push yet); the drain ships the writes.
    writer.seed(&[], |_, _| {}).await?;
    let notes = writer.raw("notes")?;
    for chunk in (0..records).collect::<Vec<_>>().chunks(1_000) {
        let items = chunk
            .iter()
            .map(|i| {
                let mut payload = format!("note {i:08} ").into_bytes();
                payload.resize(256, b'.');
                (format!("note-{i:08}"), payload, WriteOptions::default())
            })
            .collect();
        notes.put_many(items).await?;
    }
    ensure!(
        writer.flush(Duration::from_secs(300)).await? == 0,
        "the plain rows did not all drain"
    );
    writer.shutdown(Duration::from_secs(5)).await?;

    let mut admin = sqlx::PgConnection::connect(&pg.url("postgres")).await?;
    let (mut ours, mut select) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        let tmp = tempfile::tempdir()?;
        let device = open(tmp.path()).await?;
        let started = Instant::now();
        let report = device.hydrate(&["notes"], |_, _| {}).await?;
        ours.push(records as f64 / started.elapsed().as_secs_f64());
        ensure!(
            report.pulled as usize == records,
            "hydrate pulled {} of {records}",
            report.pulled
        );
        device.shutdown(Duration::from_secs(5)).await?;

        let started = Instant::now();
        let rows = sqlx::query(
            "SELECT key, payload, hlc, origin, tombstone, hash FROM hs_records
             WHERE tenant = 'plain' AND collection = 'notes'",
        )
        .fetch_all(&mut admin)
        .await?;
        select.push(rows.len() as f64 / started.elapsed().as_secs_f64());
        ensure!(rows.len() == records, "SELECT read {} rows", rows.len());
    }
    let (ours_median, select_median) = (median(&mut ours.clone()), median(&mut select.clone()));
    println!(
        "  ours (hydrate):      {ours_median:>10.0} records/s (median of {})",
        ours.len()
    );
    println!("  one raw SELECT:      {select_median:>10.0} records/s");
    Ok(vec![
        Row::throughput(
            "hydrate_plain",
            ours_median,
            "raw_select",
            select_median,
            ">= 50k records/s",
        )
        .paired(&ours, &select),
    ])
}

/// Times a new device's hydrate of collection `bench` of `tenant` (`records` rows,
/// encrypted when there is a `key`), index built; records/s.
pub(crate) async fn hydrate_trial(
    pg: &TempPostgres,
    tenant: &str,
    key: Option<&EncryptionKey>,
    records: usize,
) -> Result<f64> {
    let tmp = tempfile::tempdir()?;
    let sync = hybridsync::SyncConfig::default();
    let store = crate::drain::bench_device(pg, tmp.path(), tenant, sync, key).await?;
    let started = Instant::now();
    let report = store.hydrate(&["bench"], |_, _| {}).await?;
    let secs = started.elapsed().as_secs_f64();
    ensure!(
        report.pulled as usize == records,
        "hydrate pulled {} of {records}",
        report.pulled
    );
    store.shutdown(Duration::from_secs(5)).await?;
    Ok(records as f64 / secs)
}

/// Write on device A, read device B after each event it reports until it reads the
/// new value. B runs auto-sync on a one-minute interval, so what is measured is the
/// nudge path: A's drain is woken by the write, its upsert notifies, B's listener wakes
/// B's sync, B pulls and applies.
pub(crate) async fn propagation(pg: &TempPostgres, rounds: usize) -> Result<Vec<Row>> {
    println!("propagation: {rounds} writes on device A, each awaited on device B");
    let url = format!("postgres://app@127.0.0.1:{}/postgres", pg.port());
    let (dir_a, dir_b) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let open = |dir: &std::path::Path| {
        HybridStore::builder(dir)
            .cloud_url(url.clone())
            .tenant("propagation")
            .open()
    };
    let (a, b) = (open(dir_a.path()).await?, open(dir_b.path()).await?);
    a.create_collection("notes", None).await?;
    a.start_sync().await?;
    a.seed(&[], |_, _| {}).await?;
    b.hydrate(&[], |_, _| {}).await?;
    b.start_auto_sync(Duration::from_secs(60), Strategy::NewestWins)
        .await?;
    let (notes_a, notes_b) = (a.raw("notes")?, b.raw("notes")?);
    let mut events = b.subscribe()?;
    // Let B's first (listen-triggered) round pass.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut ours = Vec::with_capacity(rounds);
    for i in 0..rounds {
        let value = format!("value {i}").into_bytes();
        let started = Instant::now();
        notes_a
            .put("shared", value.clone(), WriteOptions::default())
            .await?;
        loop {
            if notes_b.get("shared").await?.as_deref() == Some(value.as_slice()) {
                break;
            }
            ensure!(
                started.elapsed() < Duration::from_secs(30),
                "write {i} never reached device B"
            );
            // B reports each page it applies; a timer (1 ms at the finest in tokio)
            // would add up to its own period to every figure.
            let event = tokio::time::timeout(Duration::from_millis(5), events.recv()).await;
            if let Ok(Err(tokio::sync::broadcast::error::RecvError::Closed)) = event {
                anyhow::bail!("device B stopped reporting events");
            }
        }
        ours.push(started.elapsed());
    }
    b.stop_auto_sync().await;
    a.shutdown(Duration::from_secs(5)).await?;
    b.shutdown(Duration::from_secs(5)).await?;

    // Baseline: an autocommitted write on one connection, read back on another.
    let mut writer = sqlx::PgConnection::connect(&pg.url("postgres")).await?;
    let mut reader = sqlx::PgConnection::connect(&pg.url("postgres")).await?;
    sqlx::query("CREATE TABLE bench_propagation (key text PRIMARY KEY, payload bytea)")
        .execute(&mut writer)
        .await
        .context("baseline table")?;
    let mut base = Vec::with_capacity(rounds);
    for i in 0..rounds {
        let value = format!("value {i}").into_bytes();
        let started = Instant::now();
        sqlx::query(
            "INSERT INTO bench_propagation VALUES ('shared', $1)
             ON CONFLICT (key) DO UPDATE SET payload = excluded.payload",
        )
        .bind(&value)
        .execute(&mut writer)
        .await?;
        let read: Vec<u8> =
            sqlx::query_scalar("SELECT payload FROM bench_propagation WHERE key = 'shared'")
                .fetch_one(&mut reader)
                .await?;
        ensure!(read == value, "baseline read a stale value");
        base.push(started.elapsed());
    }
    let (p50, p99) = (percentile(&mut ours, 0.5), percentile(&mut ours, 0.99));
    let (b50, b99) = (percentile(&mut base, 0.5), percentile(&mut base, 0.99));
    println!("  ours (A → B):        p50 {p50:?}, p99 {p99:?}");
    println!("  raw write + read:    p50 {b50:?}, p99 {b99:?}");
    Ok(vec![
        Row::latency(
            "propagation_p50",
            nanos(p50),
            "raw_write_then_read_p50",
            nanos(b50),
            "report",
        ),
        Row::latency(
            "propagation_p99",
            nanos(p99),
            "raw_write_then_read_p99",
            nanos(b99),
            "report",
        ),
    ])
}
