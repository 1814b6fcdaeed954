//! The local SQLite paths next to raw rusqlite on the same bytes: a cache-miss point
//! read, a single durable write, and batched writes, under NORMAL and FULL.

use crate::reads::{nanos, percentile};
use crate::report::{Row, median};
use anyhow::Result;
use hybridsync::{Durability, HybridStore, WriteOptions};
use std::hint::black_box;
use std::time::Instant;

const ROWS: usize = 10_000;
const PAYLOAD: usize = 256;
/// Trials of each batched-write side (fresh keys each); the rows report medians.
const BATCH_TRIALS: usize = 5;

/// Trials of the single writes, each of `single_writes` writes on fresh keys: a p99
/// is a handful of the slowest writes, and one run's raw p99 was 60 µs and the
/// run before's 151 µs on the same code.
const SINGLE_TRIALS: usize = 5;

/// `keys` written in transactions of 1,000 through `raw`; rows/s.
async fn batched_ours(
    raw: &hybridsync::RawCollection,
    keys: &[String],
    payload: &[u8],
) -> Result<f64> {
    let started = Instant::now();
    for chunk in keys.chunks(1_000) {
        raw.put_many(
            chunk
                .iter()
                .map(|k| (k.clone(), payload.to_vec(), WriteOptions::default()))
                .collect(),
        )
        .await?;
    }
    Ok(keys.len() as f64 / started.elapsed().as_secs_f64())
}

/// `keys` inserted into the raw table in transactions of 1,000; rows/s.
fn batched_raw(conn: &rusqlite::Connection, keys: &[String], payload: &[u8]) -> Result<f64> {
    let started = Instant::now();
    for chunk in keys.chunks(1_000) {
        let tx = conn.unchecked_transaction()?;
        {
            let mut insert =
                tx.prepare_cached("INSERT OR REPLACE INTO t (key, payload) VALUES (?1, ?2)")?;
            for k in chunk {
                insert.execute(rusqlite::params![k, payload])?;
            }
        }
        tx.commit()?;
    }
    Ok(keys.len() as f64 / started.elapsed().as_secs_f64())
}

fn raw_sqlite(dir: &std::path::Path, synchronous: &str) -> Result<rusqlite::Connection> {
    let conn = rusqlite::Connection::open(dir.join("raw.db"))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", synchronous)?;
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS t (key TEXT PRIMARY KEY, payload BLOB NOT NULL)",
    )?;
    Ok(conn)
}

/// Batched writes (1,000 rows per transaction) done by hand with rusqlite on our own
/// schema: the record upsert and its outbox entry with every index we keep, no
/// hashing, stamping or bookkeeping. The floor for a transactional outbox; rows/s.
///
/// With `tree`, each row also gets the consistency checker's bucket and leaf digest
/// (two SHA-256s) and the transaction adds them to the kept level-1 nodes (one upsert
/// per node touched), as the store does; without, those columns stay empty. The two
/// floors' ratio is what keeping the tree costs a batched write.
async fn same_schema_floor(
    dir: &std::path::Path,
    durability: Durability,
    synchronous: &str,
    keys: &[String],
    payload: &[u8],
    tree: bool,
) -> Result<f64> {
    use hybridsync_core::{CollectionName, ContentHash, DeviceId, Hlc, Key, RowDigest};
    let store = HybridStore::builder(dir)
        .durability(durability)
        .open()
        .await?;
    store.create_collection("notes", None).await?;
    store.close().await;
    let conn = rusqlite::Connection::open(dir.join("hybridsync.db"))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", synchronous)?;
    let (origin, hash) = ([1u8; 16], [2u8; 32]);
    let notes = CollectionName::new("notes")?;
    let started = Instant::now();
    for (c, chunk) in keys.chunks(1_000).enumerate() {
        let tx = conn.unchecked_transaction()?;
        {
            let mut record = tx.prepare_cached(
                "INSERT INTO records (collection, key, payload, embedding, hlc, origin, tombstone, hash, bucket, leaf) \
                 VALUES ('notes', ?1, ?2, NULL, ?3, ?4, 0, ?5, ?6, ?7) \
                 ON CONFLICT (collection, key) DO UPDATE SET payload = excluded.payload, \
                 hlc = excluded.hlc, origin = excluded.origin, tombstone = 0, hash = excluded.hash, \
                 bucket = excluded.bucket, leaf = excluded.leaf \
                 RETURNING id",
            )?;
            let mut outbox = tx.prepare_cached(
                "INSERT INTO outbox (record_id, hlc, origin, priority, state, attempts, next_attempt_ms, created_ms, updated_ms) \
                 VALUES (?1, ?2, ?3, 2, 0, 0, 0, ?4, ?4) \
                 ON CONFLICT (record_id) WHERE state IN (0, 3) DO UPDATE SET hlc = excluded.hlc, updated_ms = excluded.updated_ms",
            )?;
            let mut nodes = [(0i64, 0i64, 0i64); 16];
            for (i, k) in chunk.iter().enumerate() {
                let hlc = (c * 1_000 + i) as i64;
                let (bucket, leaf) = if tree {
                    let key = Key::new(k.as_str())?;
                    let digest = RowDigest {
                        key: key.clone(),
                        version: Hlc::from_packed(hlc, DeviceId(origin)),
                        tombstone: false,
                        hash: ContentHash(hash),
                    };
                    let bucket = hybridsync_core::bucket_of(&notes, &key);
                    let leaf = hybridsync_core::leaf_of(&notes, &digest, false);
                    let node = &mut nodes[(bucket >> 28) as usize];
                    *node = (
                        node.0 + 1,
                        node.1 + (leaf >> 32) as i64,
                        node.2 + (leaf & 0xffff_ffff) as i64,
                    );
                    (Some(i64::from(bucket)), Some(leaf as i64))
                } else {
                    (None, None)
                };
                let id: i64 = record.query_row(
                    rusqlite::params![k, payload, hlc, origin, hash, bucket, leaf],
                    |r| r.get(0),
                )?;
                outbox.execute(rusqlite::params![id, hlc, origin, hlc])?;
            }
            if tree {
                let mut save = tx.prepare_cached(
                    "INSERT INTO tree_nodes (collection, prefix, rows, sum_high, sum_low) VALUES ('notes', ?1, ?2, ?3, ?4) \
                     ON CONFLICT (collection, prefix) DO UPDATE SET rows = rows + excluded.rows, \
                     sum_high = sum_high + excluded.sum_high, sum_low = sum_low + excluded.sum_low",
                )?;
                for (prefix, (rows, high, low)) in nodes.iter().enumerate() {
                    save.execute(rusqlite::params![prefix as i64, rows, high, low])?;
                }
            }
        }
        tx.commit()?;
    }
    Ok(keys.len() as f64 / started.elapsed().as_secs_f64())
}

pub(crate) async fn run(single_writes: usize) -> Result<Vec<Row>> {
    println!("local paths: {ROWS} rows of {PAYLOAD} B; {single_writes} single writes per mode");
    let keys: Vec<String> = (0..ROWS).map(|i| format!("note-{i:06}")).collect();
    let payload = vec![7u8; PAYLOAD];
    let mut rows = Vec::new();

    for (durability, synchronous) in [(Durability::Normal, "NORMAL"), (Durability::Full, "FULL")] {
        let tmp = tempfile::tempdir()?;
        // A one-entry hot cache: every read below is a miss served by SQLite.
        let store = HybridStore::builder(tmp.path().join("ours"))
            .durability(durability)
            .hot_cache(1, usize::MAX)
            .open()
            .await?;
        store.create_collection("notes", None).await?;
        let raw = store.raw("notes")?;
        let conn = raw_sqlite(tmp.path(), synchronous)?;

        // Batched writes: 1,000 rows per transaction, the sides taking turns, fresh
        // keys each trial (the first trial's are the ones read back below).
        let (mut ours_batch, mut raw_batch, mut floor) = (vec![], vec![], vec![]);
        let mut untreed = vec![];
        for trial in 0..BATCH_TRIALS {
            let fresh: Vec<String>;
            let keys = if trial == 0 {
                &keys
            } else {
                fresh = keys.iter().map(|k| format!("t{trial}-{k}")).collect();
                &fresh
            };
            ours_batch.push(batched_ours(&raw, keys, &payload).await?);
            raw_batch.push(batched_raw(&conn, keys, &payload)?);
            // The two floors take turns, three times a trial: their ratio is the
            // checker's cost, and this machine's noise is of the same size.
            for turn in 0..3 {
                let dir = tmp.path().join(format!("floor{trial}-{turn}"));
                let with = same_schema_floor(&dir, durability, synchronous, keys, &payload, true);
                floor.push(with.await?);
                let dir = tmp.path().join(format!("untreed{trial}-{turn}"));
                let without =
                    same_schema_floor(&dir, durability, synchronous, keys, &payload, false);
                untreed.push(without.await?);
            }
        }
        let (ours_batch, raw_batch) = (median(&mut ours_batch), median(&mut raw_batch));
        let floor = median(&mut floor);
        let untreed = median(&mut untreed);

        // Single durable writes, the sides taking turns write by write.
        let mut single: [[Vec<f64>; 2]; 2] = Default::default();
        for trial in 0..SINGLE_TRIALS {
            let (mut ours, mut base) = (Vec::new(), Vec::new());
            for i in 0..single_writes {
                let key = format!("single-{trial}-{i}");
                let started = Instant::now();
                raw.put(&key, payload.clone(), WriteOptions::default())
                    .await?;
                ours.push(started.elapsed());
                let started = Instant::now();
                conn.prepare_cached("INSERT OR REPLACE INTO t (key, payload) VALUES (?1, ?2)")?
                    .execute(rusqlite::params![key, payload])?;
                base.push(started.elapsed());
            }
            for (at, q) in [0.5, 0.99].into_iter().enumerate() {
                single[at][0].push(nanos(percentile(&mut ours, q)));
                single[at][1].push(nanos(percentile(&mut base, q)));
            }
        }
        let [[o50, b50], [o99, b99]] = single.clone().map(|q| q.map(|mut v| median(&mut v)));
        let mode = synchronous.to_ascii_lowercase();
        println!(
            "  {mode}: batched {ours_batch:.0} vs {raw_batch:.0} rows/s ({floor:.0} by hand on our schema, {untreed:.0} without the checker's tree); single p50 {:.1} vs {:.1} µs, p99 {:.1} vs {:.1} µs (medians of {SINGLE_TRIALS} trials)",
            o50 / 1e3,
            b50 / 1e3,
            o99 / 1e3,
            b99 / 1e3
        );
        rows.push(Row::throughput(
            &format!("durable_write_batched_{mode}"),
            ours_batch,
            "rusqlite_tx_insert",
            raw_batch,
            ">= 0.5x",
        ));
        rows.push(Row::throughput(
            &format!("durable_write_batched_{mode}"),
            ours_batch,
            "rusqlite_record_and_outbox",
            floor,
            "report",
        ));
        rows.push(Row::throughput(
            &format!("tree_kept_on_write_{mode}"),
            floor,
            "same_schema_without_tree",
            untreed,
            ">= 0.9x",
        ));
        rows.push(
            Row::latency(
                &format!("durable_write_single_p50_{mode}"),
                o50,
                "rusqlite_insert_p50",
                b50,
                "<= 5x",
            )
            .paired(&single[0][0], &single[0][1]),
        );
        // The checkpoint kept off the commit path is what the p99 goal is about; under
        // FULL each commit's fsync is the tail on both sides.
        rows.push(
            Row::latency(
                &format!("durable_write_single_p99_{mode}"),
                o99,
                "rusqlite_insert_p99",
                b99,
                if durability == Durability::Normal {
                    "<= 3x"
                } else {
                    "report"
                },
            )
            .paired(&single[1][0], &single[1][1]),
        );

        if durability == Durability::Normal {
            // Cache-miss point reads.
            let (mut ours, mut base) = (Vec::new(), Vec::new());
            let mut select = conn.prepare_cached("SELECT payload FROM t WHERE key = ?1")?;
            for i in 0..ROWS {
                let key = &keys[(i * 7_919) % ROWS];
                let started = Instant::now();
                black_box(raw.get(key).await?);
                ours.push(started.elapsed());
                let started = Instant::now();
                black_box(select.query_row([key], |row| row.get::<_, Vec<u8>>(0))?);
                base.push(started.elapsed());
            }
            let misses = store.metrics().await?.cache_misses;
            anyhow::ensure!(
                misses as usize >= ROWS - 1,
                "expected cache misses, got {misses}"
            );
            let (o50, b50) = (percentile(&mut ours, 0.5), percentile(&mut base, 0.5));
            println!(
                "  cache-miss read p50 {:.1} vs rusqlite {:.1} µs",
                nanos(o50) / 1e3,
                nanos(b50) / 1e3
            );
            rows.push(Row::latency(
                "cache_miss_read_p50",
                nanos(o50),
                "rusqlite_point_read_p50",
                nanos(b50),
                "<= 3x",
            ));

            // The same reads while the cloud is down and the drain retries a backlog.
            store.close().await;
            let outage = crate::reads::dead_cloud_store(&tmp.path().join("ours"), 1).await?;
            let raw = outage.raw("notes")?;
            let mut down = Vec::new();
            for i in 0..ROWS {
                let key = &keys[(i * 7_919) % ROWS];
                let started = Instant::now();
                black_box(raw.get(key).await?);
                down.push(started.elapsed());
            }
            let d50 = percentile(&mut down, 0.5);
            println!(
                "  cache-miss read p50, cloud down {:.1} µs",
                nanos(d50) / 1e3
            );
            rows.push(Row::latency(
                "cache_miss_read_p50_cloud_down",
                nanos(d50),
                "cache_miss_read_p50",
                nanos(o50),
                "~1x (unchanged)",
            ));
            outage.close().await;
            continue;
        }
        store.close().await;
    }
    Ok(rows)
}
