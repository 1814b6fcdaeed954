//! Cached point reads next to a plain `HashMap` of the same bytes and to a direct
//! PostgreSQL point read over loopback (the "before" our users had).

use crate::report::Row;
use anyhow::Result;
use hybridsync::{HybridStore, WriteOptions};
use hybridsync_testkit::TempPostgres;
use sqlx::Connection;
use std::collections::HashMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

const KEYS: usize = 10_000;
const PAYLOAD: usize = 256;

pub(crate) fn percentile(samples: &mut [Duration], q: f64) -> Duration {
    samples.sort();
    samples[((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1]
}

pub(crate) fn nanos(d: Duration) -> f64 {
    d.as_secs_f64() * 1e9
}

/// Reopens the store in `dir` with a cloud that refuses every connection and its drain
/// running, with a backlog to retry: an outage as the application sees it. The hot
/// cache holds `cache_entries` records.
pub(crate) async fn dead_cloud_store(
    dir: &std::path::Path,
    cache_entries: usize,
) -> Result<HybridStore> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let store = HybridStore::builder(dir)
        .cloud_url(format!("postgres://app@127.0.0.1:{port}/postgres"))
        .hot_cache(cache_entries, usize::MAX)
        .open()
        .await?;
    store.start_sync().await?;
    let pending = store.status().await?.outbox.pending;
    anyhow::ensure!(pending > 0, "the outage bench needs a backlog to retry");
    // Let the drain fail a few times, so the reads below run beside a failing drain.
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok(store)
}

pub(crate) async fn run(iterations: usize) -> Result<Vec<Row>> {
    println!("cached read: {KEYS} keys of {PAYLOAD} B, {iterations} reads each side");
    let tmp = tempfile::tempdir()?;
    let store = HybridStore::builder(tmp.path()).open().await?;
    store.create_collection("hot", None).await?;
    let raw = store.raw("hot")?;
    let keys: Vec<String> = (0..KEYS).map(|i| format!("user-{i:06}")).collect();
    let payload = |i: usize| vec![(i % 251) as u8; PAYLOAD];
    for chunk in keys.chunks(1_000).enumerate() {
        let items = chunk
            .1
            .iter()
            .enumerate()
            .map(|(j, k)| {
                (
                    k.clone(),
                    payload(chunk.0 * 1_000 + j),
                    WriteOptions::default(),
                )
            })
            .collect();
        raw.put_many(items).await?;
    }
    let map: HashMap<String, Vec<u8>> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| (k.clone(), payload(i)))
        .collect();

    let (mut ours, mut base) = (
        Vec::with_capacity(iterations),
        Vec::with_capacity(iterations),
    );
    for i in 0..iterations {
        let key = &keys[i % KEYS];
        let started = Instant::now();
        black_box(raw.get(key).await?);
        ours.push(started.elapsed());
        let started = Instant::now();
        black_box(map.get(key).cloned());
        base.push(started.elapsed());
    }
    let hits = store.metrics().await?;
    anyhow::ensure!(
        hits.cache_misses == 0,
        "the cached-read benchmark missed the cache {} times",
        hits.cache_misses
    );
    let (ours50, base50) = (percentile(&mut ours, 0.5), percentile(&mut base, 0.5));
    let (ours99, base99) = (percentile(&mut ours, 0.99), percentile(&mut base, 0.99));
    println!(
        "  ours (hot cache):   p50 {:>8.0} ns  p99 {:>8.0} ns",
        nanos(ours50),
        nanos(ours99)
    );
    println!(
        "  HashMap + clone:    p50 {:>8.0} ns  p99 {:>8.0} ns",
        nanos(base50),
        nanos(base99)
    );
    store.close().await;

    // The same reads while the cloud is down: the store reopened with a cloud nobody
    // answers, its drain retrying a backlog in the background.
    let outage = dead_cloud_store(tmp.path(), 2 * KEYS).await?;
    let raw = outage.raw("hot")?;
    for key in &keys {
        raw.get(key).await?;
    }
    let mut down = Vec::with_capacity(iterations);
    for i in 0..iterations {
        let key = &keys[i % KEYS];
        let started = Instant::now();
        black_box(raw.get(key).await?);
        down.push(started.elapsed());
    }
    let down50 = percentile(&mut down, 0.5);
    println!("  ours, cloud down:   p50 {:>8.0} ns", nanos(down50));
    outage.close().await;

    // The "before": a point read from PostgreSQL over loopback, prepared statement.
    let pg = TempPostgres::start()?;
    let mut conn = sqlx::PgConnection::connect(&pg.url("postgres")).await?;
    sqlx::query("CREATE TABLE profiles (key text PRIMARY KEY, payload bytea NOT NULL)")
        .execute(&mut conn)
        .await?;
    for (i, key) in keys.iter().enumerate().take(1_000) {
        sqlx::query("INSERT INTO profiles VALUES ($1, $2)")
            .bind(key)
            .bind(payload(i))
            .execute(&mut conn)
            .await?;
    }
    let mut remote = Vec::with_capacity(2_000);
    for i in 0..2_000 {
        let started = Instant::now();
        let row: (Vec<u8>,) = sqlx::query_as("SELECT payload FROM profiles WHERE key = $1")
            .bind(&keys[i % 1_000])
            .fetch_one(&mut conn)
            .await?;
        remote.push(started.elapsed());
        black_box(row);
    }
    let pg50 = percentile(&mut remote, 0.5);
    println!("  PostgreSQL point:   p50 {:>8.0} ns", nanos(pg50));
    Ok(vec![
        Row::latency(
            "cached_read_p50",
            nanos(ours50),
            "hashmap_clone_p50",
            nanos(base50),
            "<= 3x",
        ),
        Row::latency(
            "cached_read_p99",
            nanos(ours99),
            "hashmap_clone_p99",
            nanos(base99),
            "report",
        ),
        Row::latency(
            "cached_read_p50_cloud_down",
            nanos(down50),
            "cached_read_p50",
            nanos(ours50),
            "~1x (unchanged)",
        ),
        Row::latency(
            "cached_read_p50",
            nanos(ours50),
            "postgres_point_read_p50",
            nanos(pg50),
            "<= 0.02x (50x faster)",
        ),
    ])
}
