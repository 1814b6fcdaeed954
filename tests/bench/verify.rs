//! The consistency checker: a check of identical sides next to downloading every row's
//! `(key, version, hash)` and comparing; the rows exchanged for d differences against
//! the 4·d bound; a repair of 10,000 differences next to syncing as many changes; and
//! a deep check's hashing rate next to SHA-256 of the same bytes in a loop.

use crate::drain::durable_server;
use crate::report::Row;
use anyhow::{Result, ensure};
use hybridsync::{CloudUrl, HybridStore, SyncConfig, VerifyOptions, WriteOptions};
use hybridsync_testkit::TempPostgres;
use sha2::{Digest, Sha256};
use sqlx::{Connection, Row as _};
use std::collections::HashMap;
use std::time::{Duration, Instant};

const PAYLOAD: usize = 128;

fn url(pg: &TempPostgres) -> String {
    format!("postgres://app@127.0.0.1:{}/postgres", pg.port())
}

/// A device of tenant `tenant` with `n` records of collection `docs`, all in the cloud.
async fn seeded(
    pg: &TempPostgres,
    dir: &std::path::Path,
    tenant: &str,
    n: usize,
) -> Result<HybridStore> {
    let sync = SyncConfig {
        batch_size: 1_000,
        max_batch: 5_000,
        interval: Duration::from_secs(3600),
        ..SyncConfig::default()
    };
    let store = HybridStore::builder(dir)
        .cloud_url(url(pg))
        .tenant(tenant)
        .sync_config(sync)
        .open()
        .await?;
    store.create_collection("docs", None).await?;
    let docs = store.raw("docs")?;
    for chunk in (0..n).collect::<Vec<_>>().chunks(5_000) {
        let items = chunk
            .iter()
            .map(|i| {
                (
                    format!("d{i:08}"),
                    vec![(*i % 251) as u8; PAYLOAD],
                    WriteOptions::default(),
                )
            })
            .collect();
        docs.put_many(items).await?;
    }
    ensure!(
        store.flush(Duration::from_secs(600)).await? == 0,
        "the seed did not drain"
    );
    Ok(store)
}

fn verify_options() -> VerifyOptions {
    VerifyOptions {
        max_keys: 0,
        ..VerifyOptions::default()
    }
}

/// Removes `d` rows of tenant `tenant` from the cloud behind the device's back (spread
/// over the key space): `d` rows missing remotely.
fn delete_rows(pg: &TempPostgres, tenant: &str, n: usize, d: usize) -> Result<()> {
    let step = (n / d.max(1)).max(1);
    pg.psql(
        "postgres",
        &format!(
            "DELETE FROM hs_records WHERE tenant = '{tenant}' AND collection = 'docs' \
             AND key IN (SELECT 'd' || lpad(i::text, 8, '0') FROM generate_series(0, {}, {step}) i LIMIT {d})",
            n - 1
        ),
    )?;
    Ok(())
}

/// The baseline of an identical check: every row's `(key, version, origin, hash)`
/// downloaded from PostgreSQL and compared with the device's rows read from its file.
async fn download_and_compare(
    pg: &TempPostgres,
    dir: &std::path::Path,
    tenant: &str,
) -> Result<(f64, usize)> {
    let started = Instant::now();
    let mut admin = sqlx::PgConnection::connect(&pg.url("postgres")).await?;
    let rows = sqlx::query(
        "SELECT key, hlc, origin, hash FROM hs_records WHERE tenant = $1 AND collection = 'docs'",
    )
    .bind(tenant)
    .fetch_all(&mut admin)
    .await?;
    let remote: HashMap<String, (i64, Vec<u8>, Vec<u8>)> = rows
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2), r.get(3))))
        .collect();
    let local = rusqlite::Connection::open(dir.join("hybridsync.db"))?;
    let mut statement =
        local.prepare("SELECT key, hlc, origin, hash FROM records WHERE collection = 'docs'")?;
    let mut differing = 0;
    let mut seen = 0;
    let mut rows = statement.query([])?;
    while let Some(row) = rows.next()? {
        let key: String = row.get(0)?;
        let mine: (i64, Vec<u8>, Vec<u8>) = (row.get(1)?, row.get(2)?, row.get(3)?);
        seen += 1;
        if remote.get(&key) != Some(&mine) {
            differing += 1;
        }
    }
    ensure!(
        seen == remote.len() && differing == 0,
        "the baseline saw {differing} differences"
    );
    Ok((started.elapsed().as_secs_f64(), remote.len()))
}

pub(crate) async fn run(quick: bool) -> Result<Vec<Row>> {
    let n = if quick { 20_000 } else { 500_000 };
    println!("verify: {n} records of {PAYLOAD} B on a device and in PostgreSQL");
    let pg = durable_server().await?;
    let admin = CloudUrl::new(pg.url("postgres"));
    let mut rows = Vec::new();

    hybridsync::cloud::grant_tenant(&admin, Some("app"), "verify").await?;
    let tmp = tempfile::tempdir()?;
    let store = seeded(&pg, tmp.path(), "verify", n).await?;
    // The steady state autovacuum keeps: the visibility map set, so the checker's
    // aggregates are index-only scans (a fresh bulk load would read every heap page).
    pg.psql("postgres", "VACUUM (ANALYZE) hs_records")?;
    let started = Instant::now();
    let report = store.verify(verify_options()).await?;
    let ours = started.elapsed().as_secs_f64();
    ensure!(
        report.consistent() && report.collections[0].roots_matched,
        "{report:?}"
    );
    let (baseline, downloaded) = download_and_compare(&pg, tmp.path(), "verify").await?;
    println!("  identical, ours:            {:>8.1} ms", ours * 1e3);
    println!(
        "  download {downloaded} rows and compare: {:>8.1} ms",
        baseline * 1e3
    );
    rows.push(Row::new(
        "verify_identical",
        "ms",
        ours * 1e3,
        "download_and_compare",
        baseline * 1e3,
        "<= 0.1x",
    ));

    // Deep: every hash recomputed on both sides, against SHA-256 of the same bytes.
    let started = Instant::now();
    let deep = store
        .verify(VerifyOptions {
            deep: true,
            ..verify_options()
        })
        .await?;
    let deep_rate = n as f64 / started.elapsed().as_secs_f64();
    ensure!(deep.consistent(), "{deep:?}");
    let bytes: Vec<Vec<u8>> = (0..n)
        .map(|i| vec![(i % 251) as u8; PAYLOAD + 40])
        .collect();
    let started = Instant::now();
    let mut sink = 0u8;
    for b in &bytes {
        sink ^= Sha256::digest(b)[0];
    }
    let loop_rate = n as f64 / started.elapsed().as_secs_f64();
    std::hint::black_box(sink);
    println!("  deep: {deep_rate:.0} rows/s on both sides; sha256 loop {loop_rate:.0}/s");
    rows.push(Row::throughput(
        "verify_deep",
        deep_rate,
        "sha256_loop",
        loop_rate,
        "report",
    ));

    for d in [1usize, 100, 10_000] {
        if d * 2 > n {
            continue;
        }
        delete_rows(&pg, "verify", n, d)?;
        let started = Instant::now();
        let report = store.verify(verify_options()).await?;
        let secs = started.elapsed().as_secs_f64();
        let check = &report.collections[0];
        ensure!(
            report.differences() == d as u64,
            "found {} of {d}",
            report.differences()
        );
        let bound = 4 * d as u64 + check.nodes_exchanged;
        println!(
            "  {d} differences: {:.1} ms, {} rows and {} nodes exchanged (bound {bound})",
            secs * 1e3,
            check.rows_exchanged,
            check.nodes_exchanged
        );
        rows.push(Row::new(
            &format!("verify_differences_{d}"),
            "rows",
            check.rows_exchanged as f64,
            "4d_plus_nodes",
            bound as f64,
            "<= 1x",
        ));
        if d == 10_000 || (quick && d == 100) {
            let started = Instant::now();
            let repaired = store
                .verify(VerifyOptions {
                    repair: true,
                    ..verify_options()
                })
                .await?;
            let repair_secs = started.elapsed().as_secs_f64();
            ensure!(
                repaired.repaired == d as u64,
                "repaired {}",
                repaired.repaired
            );
            // Baseline: the same number of changes written and synced normally.
            let docs = store.raw("docs")?;
            let items = (0..d)
                .map(|i| {
                    (
                        format!("d{i:08}"),
                        vec![7u8; PAYLOAD],
                        WriteOptions::default(),
                    )
                })
                .collect();
            let started = Instant::now();
            docs.put_many(items).await?;
            ensure!(
                store.flush(Duration::from_secs(600)).await? == 0,
                "not drained"
            );
            let sync_secs = started.elapsed().as_secs_f64();
            println!(
                "  repair of {d}: {:.1} ms; writing and syncing {d} changes {:.1} ms",
                repair_secs * 1e3,
                sync_secs * 1e3
            );
            rows.push(Row::new(
                &format!("repair_{d}"),
                "ms",
                repair_secs * 1e3,
                "sync_of_as_many_changes",
                sync_secs * 1e3,
                "<= 2x",
            ));
        } else {
            store
                .verify(VerifyOptions {
                    repair: true,
                    ..verify_options()
                })
                .await?;
        }
        ensure!(
            store.verify(verify_options()).await?.consistent(),
            "repair left differences"
        );
    }
    store.shutdown(Duration::from_secs(5)).await?;
    Ok(rows)
}
