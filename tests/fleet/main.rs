//! `hybridsync-fleet`: many simulated devices in one process against one PostgreSQL,
//! direct or through PgBouncer in transaction pooling mode, with the chaos checkers and
//! a report. Driven by `cargo xtask fleet`.
//!
//! Each device is a real store (its own SQLite file in its own data directory, its own
//! capped pool, its drain and auto-sync). Devices come in groups of `--group` sharing a
//! tenant; each writes its own keys and a few keys shared with its group, at `--rate`
//! writes a second, for `--duration` seconds, while a sampler reads the server's
//! backends (`pg_stat_activity`) and PgBouncer's pools. One own write in five is
//! probed: the time until the next device of the group reads it locally is its
//! propagation. When the writes stop, the time until every device of a group holds
//! every group's newest value is its convergence. Then the chaos checkers hold every
//! device and the cloud against every acknowledged write: lost, stale and duplicated.

#[path = "../chaos/ops.rs"]
#[allow(dead_code)] // the writer-process half is the chaos binary's
mod ops;
mod report;
#[path = "../chaos/verdict.rs"]
mod verdict;

use anyhow::{Context, Result, bail};
use hybridsync::{HybridStore, Pooler, Strategy, SyncConfig, WriteOptions};
use hybridsync_testkit::{TempPgBouncer, TempPgBouncerOptions, TempPostgres, TempPostgresOptions};
use ops::{Op, Ops};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use report::{Report, Through};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The collection every device writes.
const COLLECTION: &str = "fleet";
/// Keys every device of a group may write: where devices overlap.
const SHARED_KEYS: u64 = 20;
/// One own write in this many is probed for propagation.
const PROBE_EVERY: u64 = 5;
/// A probe gives up after this long (counted as not propagated).
const PROBE_LIMIT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub(crate) struct Options {
    pub devices: usize,
    pub through: Through,
    pub duration: Duration,
    /// PgBouncer's `default_pool_size`.
    pub pool_size: u32,
    /// The server's `max_connections`.
    pub max_connections: u32,
    /// Devices per tenant.
    pub group: usize,
    /// Writes a second per device.
    pub rate: f64,
    /// Each device's pool cap.
    pub cap: u32,
    /// How often a device that cannot LISTEN polls, and how often auto-sync runs.
    pub poll: Duration,
    pub auto_sync: Duration,
    /// How long to wait for convergence after the last write.
    pub converge_limit: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            devices: 100,
            through: Through::PgBouncer,
            duration: Duration::from_secs(30),
            pool_size: 20,
            max_connections: 100,
            group: 10,
            rate: 0.2,
            cap: 3,
            poll: Duration::from_millis(2_000),
            auto_sync: Duration::from_secs(10),
            converge_limit: Duration::from_secs(60),
        }
    }
}

fn usage() -> &'static str {
    "hybridsync-fleet [--devices N] [--through pgbouncer|direct] [--duration SECS] [--pool-size N] \
     [--max-connections N] [--group N] [--rate WRITES_PER_SEC] [--cap N] [--poll-ms MS] [--auto-sync-ms MS] [--converge-secs S]"
}

fn parse(args: &[String]) -> Result<Options> {
    let mut o = Options::default();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = || {
            it.next()
                .with_context(|| format!("{arg} needs a value\n{}", usage()))
        };
        match arg.as_str() {
            "--devices" => o.devices = value()?.parse().context("--devices")?,
            "--through" => o.through = value()?.parse()?,
            "--duration" => {
                o.duration = Duration::from_secs(value()?.parse().context("--duration")?)
            }
            "--pool-size" => o.pool_size = value()?.parse().context("--pool-size")?,
            "--max-connections" => {
                o.max_connections = value()?.parse().context("--max-connections")?
            }
            "--group" => o.group = value()?.parse().context("--group")?,
            "--rate" => o.rate = value()?.parse().context("--rate")?,
            "--cap" => o.cap = value()?.parse().context("--cap")?,
            "--poll-ms" => o.poll = Duration::from_millis(value()?.parse().context("--poll-ms")?),
            "--auto-sync-ms" => {
                o.auto_sync = Duration::from_millis(value()?.parse().context("--auto-sync-ms")?)
            }
            "--converge-secs" => {
                o.converge_limit = Duration::from_secs(value()?.parse().context("--converge-secs")?)
            }
            "--help" | "-h" => {
                println!("{}", usage());
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}\n{}", usage()),
        }
    }
    if o.devices < 2 || o.group < 2 || o.rate <= 0.0 || o.cap == 0 {
        bail!(
            "at least 2 devices, groups of at least 2, a positive rate and cap\n{}",
            usage()
        );
    }
    Ok(o)
}

/// A version as one string that sorts in version order (as the chaos writer prints it).
fn version(hlc: hybridsync::Hlc) -> String {
    format!("{:020}.{}", hlc.packed(), hlc.origin)
}

/// This process's resident memory now and at its peak, in bytes.
fn memory() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

pub(crate) fn percentile(sorted: &[u64], q: f64) -> u64 {
    sorted
        .get(((sorted.len() as f64 * q).ceil() as usize).saturating_sub(1))
        .copied()
        .unwrap_or(0)
}

/// One simulated device.
struct Device {
    name: String,
    group: usize,
    store: HybridStore,
    dir: tempfile::TempDir,
}

fn tenant(group: usize) -> String {
    format!("fleet-{group}")
}

/// The server-side counters the report turns into rates.
#[derive(Debug, Default, Clone, Copy)]
struct ServerCounters {
    commits: u64,
    rows: u64,
}

fn server_counters(pg: &TempPostgres) -> ServerCounters {
    let text = pg
        .psql(
            "postgres",
            "SELECT (SELECT xact_commit FROM pg_stat_database WHERE datname = 'postgres'), \
             (SELECT coalesce(sum(n_tup_ins + n_tup_upd), 0) FROM pg_stat_user_tables WHERE relname = 'hs_records')",
        )
        .unwrap_or_default();
    let mut parts = text.split('|').map(|p| p.trim().parse().unwrap_or(0));
    ServerCounters {
        commits: parts.next().unwrap_or(0),
        rows: parts.next().unwrap_or(0),
    }
}

/// What the sampler saw while the fleet ran.
#[derive(Debug, Default)]
struct Samples {
    backends: Vec<u64>,
    waiting_clients: u64,
    max_wait_us: u64,
}

fn spawn_sampler(
    pg: Arc<TempPostgres>,
    bouncer: Option<Arc<TempPgBouncer>>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Samples> {
    std::thread::spawn(move || {
        let mut samples = Samples::default();
        while !stop.load(Ordering::SeqCst) {
            if let Ok(n) = pg.psql(
                "postgres",
                "SELECT count(*) FROM pg_stat_activity WHERE usename = 'app'",
            ) {
                samples.backends.push(n.trim().parse().unwrap_or(0));
            }
            if let Some(pools) = bouncer.as_ref().and_then(|b| b.admin("SHOW POOLS").ok()) {
                for pool in pools
                    .iter()
                    .filter(|p| p.get("user").map(String::as_str) == Some("app"))
                {
                    let num =
                        |k: &str| pool.get(k).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
                    samples.waiting_clients = samples.waiting_clients.max(num("cl_waiting"));
                    samples.max_wait_us = samples
                        .max_wait_us
                        .max(num("maxwait") * 1_000_000 + num("maxwait_us"));
                }
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        samples
    })
}

async fn open_device(i: usize, options: &Options, url: &str) -> Result<Device> {
    let dir = tempfile::Builder::new()
        .prefix("hybridsync-fleet-")
        .tempdir()?;
    let group = i / options.group;
    let name = format!("d{i:04}");
    let mut builder = HybridStore::builder(dir.path())
        .cloud_url(url)
        .tenant(tenant(group))
        .application_name(format!("hybridsync-fleet-{name}"))
        .poll_interval(options.poll)
        .sync_config(SyncConfig {
            retry_initial: Duration::from_millis(200),
            retry_max: Duration::from_secs(5),
            max_attempts: 1_000,
            ..SyncConfig::default()
        })
        // A fleet device holds a few hundred rows: small caches, one scan connection
        // (a thread each), and gauges every 5 s; 500 stores share 2 cores here.
        .hot_cache(256, 1 << 20)
        .readers(1)
        .gauge_interval(Duration::from_secs(5));
    if options.through == Through::PgBouncer {
        builder = builder.pooler(Pooler::PgBouncerTransaction);
    }
    let mut config = hybridsync::Config::default();
    config.cloud.max_connections = Some(options.cap);
    let store = builder.config(&config)?.open().await?;
    store.create_collection(COLLECTION, None).await?;
    store.start_sync().await?;
    store
        .start_auto_sync(options.auto_sync, Strategy::NewestWins)
        .await?;
    Ok(Device {
        name,
        group,
        store,
        dir,
    })
}

/// Writes at `rate` until `deadline`, recording every acknowledged write, and probes
/// one own write in [`PROBE_EVERY`] on `observer`; returns the probes, still running.
#[allow(clippy::too_many_arguments)]
async fn write_until(
    device: Arc<Device>,
    observer: Arc<Device>,
    rate: f64,
    deadline: Instant,
    ops: Arc<Mutex<Ops>>,
    latencies: Arc<Mutex<Vec<u64>>>,
    unpropagated: Arc<AtomicU64>,
    write_errors: Arc<AtomicU64>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let Ok(collection) = device.store.raw(COLLECTION) else {
        write_errors.fetch_add(1, Ordering::Relaxed);
        return Vec::new();
    };
    let mut rng = StdRng::seed_from_u64(device.name.bytes().map(u64::from).sum());
    let mean = Duration::from_secs_f64(1.0 / rate);
    tokio::time::sleep(mean.mul_f64(rng.random_range(0.0..1.0))).await;
    let mut probes = Vec::new();
    let mut n = 0u64;
    while Instant::now() < deadline {
        let shared = rng.random_ratio(3, 10);
        let key = if shared {
            format!("s{:02}", rng.random_range(0..SHARED_KEYS))
        } else {
            format!("{}-w{n:08}", device.name)
        };
        let value = format!("v.{}.{n}", device.name);
        match collection
            .put(&key, value.clone().into_bytes(), WriteOptions::default())
            .await
        {
            Ok(hlc) => {
                let written = Instant::now();
                ops.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .invoked_and_acknowledged(
                        &device.name,
                        Op {
                            key: key.clone(),
                            value: Some(value.clone()),
                        },
                        version(hlc),
                    );
                if !shared && n.is_multiple_of(PROBE_EVERY) {
                    let observer = observer.clone();
                    let (latencies, unpropagated) = (latencies.clone(), unpropagated.clone());
                    probes.push(tokio::spawn(async move {
                        let Ok(seen_by) = observer.store.raw(COLLECTION) else {
                            return;
                        };
                        loop {
                            if let Ok(Some(found)) = seen_by.get(&key).await
                                && found == value.as_bytes()
                            {
                                let ms = written.elapsed().as_millis() as u64;
                                latencies.lock().unwrap_or_else(|e| e.into_inner()).push(ms);
                                return;
                            }
                            if written.elapsed() > PROBE_LIMIT {
                                unpropagated.fetch_add(1, Ordering::Relaxed);
                                return;
                            }
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }));
                }
            }
            Err(_) => {
                write_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        n += 1;
        // Exponential gaps: writes arrive as a Poisson process of the given rate.
        let gap = -rng.random_range(f64::EPSILON..1.0f64).ln();
        tokio::time::sleep(
            mean.mul_f64(gap.min(10.0))
                .min(deadline.saturating_duration_since(Instant::now())),
        )
        .await;
    }
    probes
}

/// The newest acknowledged value of every key of one group.
fn newest(ops: &Ops) -> Vec<(String, String, String)> {
    ops.acked
        .iter()
        .filter_map(|(key, acked)| {
            let (version, value) = acked.iter().max_by(|a, b| a.0.cmp(&b.0))?;
            Some((key.clone(), version.clone(), value.clone()?))
        })
        .collect()
}

/// Whether `device` holds every one of `expected` exactly (value and version).
async fn holds(device: &Device, expected: &[(String, String, String)]) -> bool {
    let Ok(collection) = device.store.raw(COLLECTION) else {
        return false;
    };
    for (key, version_wanted, value) in expected {
        match collection.get_record(key).await {
            Ok(Some(record))
                if !record.tombstone
                    && record.payload == value.as_bytes()
                    && version(record.version) == *version_wanted => {}
            _ => return false,
        }
    }
    true
}

/// A device's rows (tombstones included) and its outbox entries not yet shipped, read
/// from its SQLite file once the device is closed, as the chaos checkers read a side.
fn device_state(
    dir: &std::path::Path,
) -> Result<(verdict::State, u64, std::collections::BTreeSet<String>)> {
    let db = rusqlite::Connection::open_with_flags(
        dir.join("hybridsync.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )?;
    let mut state = verdict::State::new();
    let mut stmt = db.prepare(
        "SELECT key, hlc, origin, tombstone, payload FROM records WHERE collection = ?1",
    )?;
    let mut rows = stmt.query([COLLECTION])?;
    while let Some(r) = rows.next()? {
        let (key, packed, origin, tombstone, payload): (String, i64, Vec<u8>, bool, Vec<u8>) =
            (r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?);
        state.insert(key, verdict::row(packed, &origin, tombstone, &payload));
    }
    // The versions still queued (pending or in flight): not in the cloud yet, and
    // not lost.
    let mut queued = std::collections::BTreeSet::new();
    let mut stmt = db.prepare(
        "SELECT r.hlc, r.origin FROM outbox o JOIN records r ON r.id = o.record_id \
         WHERE o.state IN (0, 1)",
    )?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let (packed, origin): (i64, Vec<u8>) = (r.get(0)?, r.get(1)?);
        queued.insert(verdict::row(packed, &origin, true, &[]).0);
    }
    Ok((state, queued.len() as u64, queued))
}

/// The checkers on a side that need hold only `part` of the writes: absence and age
/// (lost, stale, resurrected) against `part`; values with the wrong version or that
/// nobody wrote against every write, `all`.
fn check_part(
    side: &str,
    state: &verdict::State,
    all: &Ops,
    part: &Ops,
    verdict: &mut verdict::Verdict,
    history: &mut String,
) {
    let (mut by_all, mut by_part) = (verdict::Verdict::default(), verdict::Verdict::default());
    let (mut all_lines, mut part_lines) = (String::new(), String::new());
    verdict::check_side(side, state, all, &mut by_all, &mut all_lines);
    verdict::check_side(side, state, part, &mut by_part, &mut part_lines);
    verdict.lost += by_part.lost;
    verdict.stale += by_part.stale;
    verdict.resurrected += by_part.resurrected;
    verdict.version_mismatches += by_all.version_mismatches;
    verdict.unknown_values += by_all.unknown_values;
    verdict.rogue_leaked += by_all.rogue_leaked;
    let kept = |lines: &str, kinds: &[&str]| -> String {
        lines
            .lines()
            .filter(|l| kinds.iter().any(|k| l.contains(&format!(": {k} "))))
            .map(|l| format!("{l}\n"))
            .collect()
    };
    history.push_str(&kept(&part_lines, &["LOST", "STALE", "RESURRECTED"]));
    history.push_str(&kept(
        &all_lines,
        &["VERSION", "UNKNOWN VALUE", "ROGUE VALUE"],
    ));
}

/// `ops` without the keys whose newest acknowledged version is one of `queued` (still
/// in its device's outbox), or, with `only_origin`, only the operations of that device
/// (a version ends with its origin).
fn ops_where(ops: &Ops, keep: impl Fn(&str, &str) -> bool) -> Ops {
    let acked = ops
        .acked
        .iter()
        .filter_map(|(key, acked)| {
            let kept: Vec<_> = acked
                .iter()
                .filter(|(version, _)| keep(key, version))
                .cloned()
                .collect();
            (!kept.is_empty()).then(|| (key.clone(), kept))
        })
        .collect();
    Ops {
        acked,
        ..Ops::default()
    }
}

fn run(options: &Options) -> Result<Report> {
    let groups = options.devices.div_ceil(options.group);
    let pg = Arc::new(
        TempPostgres::with_options(TempPostgresOptions {
            max_connections: options.max_connections,
            settings: vec![("superuser_reserved_connections".into(), "5".into())],
        })
        .context("starting PostgreSQL")?,
    );
    pg.psql("postgres", "CREATE ROLE app LOGIN")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let admin = hybridsync::CloudUrl::new(pg.url("postgres"));
    runtime.block_on(hybridsync::cloud::migrate(&admin, Some("app")))?;
    for group in 0..groups {
        runtime.block_on(hybridsync::cloud::grant_tenant(
            &admin,
            Some("app"),
            &tenant(group),
        ))?;
    }
    let bouncer = match options.through {
        Through::PgBouncer => Some(Arc::new(TempPgBouncer::start(
            pg.port(),
            TempPgBouncerOptions {
                default_pool_size: options.pool_size,
                max_client_conn: (options.devices as u32 * options.cap + 100).max(1_000),
                ..TempPgBouncerOptions::default()
            },
        )?)),
        Through::Direct => None,
    };
    let url = match &bouncer {
        Some(b) => b.url("app", "postgres"),
        None => format!("postgres://app@127.0.0.1:{}/postgres", pg.port()),
    };
    println!(
        "fleet: {} devices in {groups} tenants, {} through {}, {:.1} writes/s each for {} s",
        options.devices,
        if options.through == Through::PgBouncer {
            format!("pool {}", options.pool_size)
        } else {
            format!("max_connections {}", options.max_connections)
        },
        options.through,
        options.rate,
        options.duration.as_secs()
    );

    let (rss_before, _) = memory();
    let opened = Instant::now();
    let devices: Vec<Arc<Device>> = runtime.block_on(async {
        use futures_util::StreamExt;
        futures_util::stream::iter(0..options.devices)
            .map(|i| open_device(i, options, &url))
            .buffered(8)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .map(|d| d.map(Arc::new))
            .collect::<Result<Vec<_>>>()
    })?;
    let (rss_opened, _) = memory();
    println!(
        "  {} devices open in {:.1} s ({:.1} MiB)",
        devices.len(),
        opened.elapsed().as_secs_f64(),
        (rss_opened.saturating_sub(rss_before)) as f64 / (1 << 20) as f64
    );

    let stop = Arc::new(AtomicBool::new(false));
    let sampler = spawn_sampler(pg.clone(), bouncer.clone(), stop.clone());
    let ops: Vec<Arc<Mutex<Ops>>> = (0..groups).map(|_| Arc::default()).collect();
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let unpropagated = Arc::new(AtomicU64::new(0));
    let write_errors = Arc::new(AtomicU64::new(0));
    let before = server_counters(&pg);
    let started = Instant::now();
    let deadline = started + options.duration;
    let probes = runtime.block_on(async {
        let writers: Vec<_> = devices
            .iter()
            .enumerate()
            .map(|(i, device)| {
                // The observer: the next device of the same group.
                let first = device.group * options.group;
                let size = options.group.min(devices.len() - first);
                let observer = devices[first + (i - first + 1) % size].clone();
                tokio::spawn(write_until(
                    device.clone(),
                    observer,
                    options.rate,
                    deadline,
                    ops[device.group].clone(),
                    latencies.clone(),
                    unpropagated.clone(),
                    write_errors.clone(),
                ))
            })
            .collect();
        let mut probes = Vec::new();
        for writer in writers {
            probes.extend(writer.await.unwrap_or_default());
        }
        probes
    });
    let writes_done = Instant::now();
    let after = server_counters(&pg);
    println!(
        "  writes done after {:.1} s; waiting for convergence",
        started.elapsed().as_secs_f64()
    );
    let write_secs = writes_done.duration_since(started).as_secs_f64();

    // Convergence: the time from the last write until each group's devices all hold
    // every newest value of the group.
    let expected: Vec<Vec<(String, String, String)>> = ops
        .iter()
        .map(|o| newest(&o.lock().unwrap_or_else(|e| e.into_inner())))
        .collect();
    let mut converged_ms: Vec<Option<u64>> = vec![None; devices.len()];
    runtime.block_on(async {
        while converged_ms.iter().any(Option::is_none)
            && writes_done.elapsed() < options.converge_limit
        {
            for (i, device) in devices.iter().enumerate() {
                if converged_ms[i].is_none() && holds(device, &expected[device.group]).await {
                    converged_ms[i] = Some(writes_done.elapsed().as_millis() as u64);
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    println!(
        "  {} of {} devices converged after {:.1} s; waiting for the probes",
        converged_ms.iter().flatten().count(),
        devices.len(),
        writes_done.elapsed().as_secs_f64()
    );
    runtime.block_on(async {
        for probe in probes {
            let _ = probe.await;
        }
    });
    println!(
        "  probes done after {:.1} s; closing the devices",
        writes_done.elapsed().as_secs_f64()
    );
    // What keeps a device from converging, for the report's reader.
    runtime.block_on(async {
        for (i, device) in devices.iter().enumerate() {
            if converged_ms[i].is_some() {
                continue;
            }
            let outbox = device.store.status().await.map(|s| s.outbox);
            let errors = device.store.recent_errors(3).await.unwrap_or_default();
            let circuit = device.store.sync_status().map(|s| s.circuit);
            let history = device.store.history(3).await.unwrap_or_default();
            println!(
                "  not converged: {} (tenant {}): outbox {outbox:?}, circuit {circuit:?}, errors {errors:?}, last syncs {history:?}",
                device.name,
                tenant(device.group)
            );
        }
    });
    stop.store(true, Ordering::SeqCst);
    let samples = sampler.join().unwrap_or_default();
    let (rss_end, rss_peak) = memory();

    // The checkers: every device's file (read beside the open store, as WAL allows)
    // and the cloud against every acknowledged write. The stores are not closed one by
    // one: at 500 in one process that took minutes (see docs/scaling.md); the process
    // ends instead, as a killed device would.
    let mut verdict = verdict::Verdict::default();
    let mut history = String::new();
    let mut outbox_left = 0;
    // A device that converged must hold every write of its group. One that did not
    // (direct, refused by a full server) must still hold every write it made itself:
    // queued, not lost. The cloud must hold every write that left its device's outbox.
    let mut queued_writes = 0;
    for (group, ops) in ops.iter().enumerate() {
        let ops = ops.lock().unwrap_or_else(|e| e.into_inner());
        let mut queued = std::collections::BTreeSet::new();
        for (i, device) in devices.iter().enumerate().filter(|(_, d)| d.group == group) {
            let (state, left, versions) = device_state(device.dir.path())?;
            outbox_left += left;
            queued.extend(versions);
            if converged_ms[i].is_some() {
                verdict::check_side(&device.name, &state, &ops, &mut verdict, &mut history);
            } else {
                let origin = device.store.device_id().to_string();
                let own = ops_where(&ops, |_, version| version.ends_with(&origin));
                check_part(&device.name, &state, &ops, &own, &mut verdict, &mut history);
            }
        }
        let newest_queued = |key: &str| {
            ops.acked
                .get(key)
                .and_then(|a| a.iter().map(|(v, _)| v).max())
                .is_some_and(|v| queued.contains(v))
        };
        let shipped = ops_where(&ops, |key, _| !newest_queued(key));
        queued_writes += ops.acked.len() - shipped.acked.len();
        let cloud = runtime.block_on(verdict::cloud_state(
            &pg.url("postgres"),
            &tenant(group),
            COLLECTION,
        ))?;
        check_part(
            &format!("cloud/{}", tenant(group)),
            &cloud,
            &ops,
            &shipped,
            &mut verdict,
            &mut history,
        );
    }
    if verdict.violations() > 0 {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/fleet/violations.log");
        std::fs::create_dir_all(path.parent().expect("dir"))?;
        std::fs::write(&path, &history)?;
        println!("  violations written to {}", path.display());
    }
    let bouncer_stats = bouncer
        .as_ref()
        .and_then(|b| b.admin("SHOW STATS").ok())
        .and_then(|rows| {
            rows.into_iter()
                .find(|r| r.get("database").map(String::as_str) == Some("postgres"))
        });
    if let Some(b) = &bouncer {
        for line in b
            .log()
            .lines()
            .filter(|l| l.contains("ERROR") || l.contains("WARNING"))
            .take(5)
        {
            println!("  pgbouncer: {line}");
        }
    }
    let server_log = pg.log();
    let refusals = server_log.matches("too many clients already").count() as u64
        + server_log
            .matches("remaining connection slots are reserved")
            .count() as u64;
    let acknowledged: u64 = ops
        .iter()
        .map(|o| o.lock().unwrap_or_else(|e| e.into_inner()).ok)
        .sum();

    std::mem::forget(devices);
    std::mem::forget(runtime);

    let mut latencies = std::mem::take(&mut *latencies.lock().unwrap_or_else(|e| e.into_inner()));
    latencies.sort_unstable();
    let mut converged: Vec<u64> = converged_ms.iter().flatten().copied().collect();
    converged.sort_unstable();
    let mut backends = samples.backends.clone();
    backends.sort_unstable();
    Ok(Report {
        devices: options.devices as u64,
        tenants: groups as u64,
        through: options.through,
        pool_size: options.pool_size,
        max_connections: options.max_connections,
        duration_secs: write_secs,
        rate: options.rate,
        writes_acknowledged: acknowledged,
        write_errors: write_errors.load(Ordering::Relaxed),
        backends_max: backends.last().copied().unwrap_or(0),
        backends_p99: percentile(&backends, 0.99),
        server_refusals: refusals,
        bouncer_waiting_clients_max: samples.waiting_clients,
        bouncer_max_wait_ms: samples.max_wait_us as f64 / 1_000.0,
        bouncer_avg_wait_us: bouncer_stats.as_ref().and_then(|s| {
            let wait: f64 = s.get("total_wait_time")?.parse().ok()?;
            let xacts: f64 = s.get("total_xact_count")?.parse().ok()?;
            Some(if xacts > 0.0 { wait / xacts } else { 0.0 })
        }),
        bouncer_transactions: bouncer_stats
            .as_ref()
            .and_then(|s| s.get("total_xact_count")?.parse().ok()),
        commits_per_sec: (after.commits.saturating_sub(before.commits)) as f64 / write_secs,
        rows_per_sec: (after.rows.saturating_sub(before.rows)) as f64 / write_secs,
        propagation_samples: latencies.len() as u64,
        propagation_p50_ms: percentile(&latencies, 0.5),
        propagation_p99_ms: percentile(&latencies, 0.99),
        not_propagated: unpropagated.load(Ordering::Relaxed),
        convergence_p50_ms: percentile(&converged, 0.5),
        convergence_p99_ms: percentile(&converged, 0.99),
        convergence_max_ms: converged.last().copied().unwrap_or(0),
        not_converged: converged_ms.iter().filter(|c| c.is_none()).count() as u64,
        outbox_left,
        queued_keys: queued_writes as u64,
        verdict,
        memory_per_device_kib: (rss_end.saturating_sub(rss_before)) / 1024 / options.devices as u64,
        memory_peak_mib: rss_peak / (1 << 20),
    })
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let options = parse(&args)?;
    let report = run(&options)?;
    report.print_and_save()?;
    if report.verdict.violations() > 0 {
        bail!(
            "{} write(s) lost, stale or duplicated",
            report.verdict.violations()
        );
    }
    Ok(())
}
