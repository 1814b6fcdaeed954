//! Two-way sync: a new device's hydrate throughput next to one raw SELECT of the same
//! rows, and the propagation latency of a write from device A to device B (auto-sync
//! nudged by the cloud's change signal) next to a raw write and read over two
//! PostgreSQL connections.

use crate::reads::{nanos, percentile};
use crate::report::Row;
use crate::report::median;
use anyhow::{Context, Result, ensure};
use hybridsync::{EncryptionKey, HybridStore, Strategy, SyncEvent, WriteOptions};
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

/// Trials of the propagation rows in a full run. Each trial runs its share of our
/// rounds, then as many baseline rounds, so both sides meet the machine's swings.
const PROPAGATION_TRIALS: usize = 5;

/// When each of A's writes was shipped and each of B's sync rounds started, as seen by
/// tasks that only listen to the two devices' events.
#[derive(Default)]
struct Marks {
    shipped: Vec<Instant>,
    round_started: Vec<Instant>,
}

/// One round's stages, measured from the moment A's write was started.
struct Stages {
    /// A's `put` returned (the local commit).
    committed: Duration,
    /// A's drain had the record in the cloud (its upsert committed).
    shipped: Duration,
    /// B's sync round that read the record started.
    started: Duration,
    /// B read the new value.
    visible: Duration,
}

impl Stages {
    const HOPS: [&str; 4] = [
        "A: write committed locally",
        "A: commit → shipped (drain's upsert committed)",
        "B: shipped → its sync round started",
        "B: round started → value read",
    ];

    /// The time each hop of [`Self::HOPS`] took.
    fn hops(&self) -> [Duration; 4] {
        [
            self.committed,
            self.shipped.saturating_sub(self.committed),
            self.started.saturating_sub(self.shipped),
            self.visible.saturating_sub(self.started),
        ]
    }
}

/// Write on device A, read device B after each event it reports until it reads the
/// new value. B runs auto-sync on a one-minute interval, so what is measured is the
/// nudge path: A's drain is woken by the write, its upsert notifies, B's listener wakes
/// B's sync, B pulls and applies. Each round's stages are printed as well (medians and
/// p99 over all rounds), so a slow figure says which hop it came from.
pub(crate) async fn propagation(pg: &TempPostgres, rounds: usize) -> Result<Vec<Row>> {
    let trials = if rounds >= 10 * PROPAGATION_TRIALS {
        PROPAGATION_TRIALS
    } else {
        1
    };
    let per_trial = rounds / trials;
    println!(
        "propagation: {} writes on device A, each awaited on device B, in {trials} trials beside as many raw writes and reads",
        per_trial * trials
    );
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
    let marks = std::sync::Arc::new(std::sync::Mutex::new(Marks::default()));
    let listeners = [(a.subscribe()?, true), (b.subscribe()?, false)].map(|(mut device, is_a)| {
        let marks = marks.clone();
        tokio::spawn(async move {
            loop {
                // A lagged listener loses only some marks; those rounds are not counted.
                let event = match device.recv().await {
                    Ok(event) => event,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                };
                let mut marks = marks.lock().expect("marks");
                match event {
                    SyncEvent::RecordSynced { .. } if is_a => marks.shipped.push(Instant::now()),
                    SyncEvent::SyncStarted { .. } if !is_a => {
                        marks.round_started.push(Instant::now());
                    }
                    _ => {}
                }
            }
        })
    });
    // Let B's first (listen-triggered) round pass.
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Baseline: an autocommitted write on one connection, read back on another.
    let mut writer = sqlx::PgConnection::connect(&pg.url("postgres")).await?;
    let mut reader = sqlx::PgConnection::connect(&pg.url("postgres")).await?;
    sqlx::query("CREATE TABLE bench_propagation (key text PRIMARY KEY, payload bytea)")
        .execute(&mut writer)
        .await
        .context("baseline table")?;

    let (mut ours, mut base, mut stages) = (Vec::new(), Vec::new(), Vec::new());
    let (mut trial_ours, mut trial_base) = ([Vec::new(), Vec::new()], [Vec::new(), Vec::new()]);
    for trial in 0..trials {
        let mut these = Vec::with_capacity(per_trial);
        for i in trial * per_trial..(trial + 1) * per_trial {
            let value = format!("value {i}").into_bytes();
            let started = Instant::now();
            notes_a
                .put("shared", value.clone(), WriteOptions::default())
                .await?;
            let committed = started.elapsed();
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
            let visible = started.elapsed();
            these.push(visible);
            let marks = marks.lock().expect("marks");
            let since = |at: &Instant| at.checked_duration_since(started);
            // The first shipment after the write, and the last round B started before
            // it read the value (the one that pulled it).
            if let (Some(shipped), Some(round)) = (
                marks.shipped.iter().find_map(since),
                marks
                    .round_started
                    .iter()
                    .rev()
                    .find_map(|at| since(at).filter(|d| *d <= visible)),
            ) {
                stages.push(Stages {
                    committed,
                    shipped,
                    started: round,
                    visible,
                });
            }
        }
        let mut raw = Vec::with_capacity(per_trial);
        for i in trial * per_trial..(trial + 1) * per_trial {
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
            raw.push(started.elapsed());
        }
        for (q, at) in [0.5, 0.99].into_iter().enumerate() {
            trial_ours[q].push(nanos(percentile(&mut these, at)));
            trial_base[q].push(nanos(percentile(&mut raw, at)));
        }
        ours.extend(these);
        base.extend(raw);
    }
    for listener in listeners {
        listener.abort();
    }
    b.stop_auto_sync().await;
    a.shutdown(Duration::from_secs(5)).await?;
    b.shutdown(Duration::from_secs(5)).await?;

    let (p50, p99) = (percentile(&mut ours, 0.5), percentile(&mut ours, 0.99));
    let (b50, b99) = (percentile(&mut base, 0.5), percentile(&mut base, 0.99));
    println!("  ours (A → B):        p50 {p50:?}, p99 {p99:?}");
    println!("  raw write + read:    p50 {b50:?}, p99 {b99:?}");
    print_stages(&stages);
    let row = |name: &str, ours: Duration, base: &str, value: Duration, q: usize| {
        let row = Row::latency(name, nanos(ours), base, nanos(value), "report");
        if trials > 1 {
            row.paired(&trial_ours[q], &trial_base[q])
        } else {
            row
        }
    };
    Ok(vec![
        row("propagation_p50", p50, "raw_write_then_read_p50", b50, 0),
        row("propagation_p99", p99, "raw_write_then_read_p99", b99, 1),
    ])
}

/// Each hop's share of the propagation rounds: medians and p99 of the time between
/// one stage and the next.
fn print_stages(stages: &[Stages]) {
    if stages.is_empty() {
        return;
    }
    println!(
        "  stages of {} rounds (p50 / p99 of each hop):",
        stages.len()
    );
    for (i, name) in Stages::HOPS.iter().enumerate() {
        let mut times: Vec<Duration> = stages.iter().map(|s| s.hops()[i]).collect();
        println!(
            "    {name:<48} {:>10.3?} / {:>10.3?}",
            percentile(&mut times, 0.5),
            percentile(&mut times, 0.99)
        );
    }
}
