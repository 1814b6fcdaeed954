//! Schedules: derive faults from a seed, run them against a writer, heal, check.

use anyhow::{Context, Result};
use hybridsync::{CloudUrl, HybridStore};
use hybridsync_testkit::{Fault, FaultProxy, ShutdownMode, TempPostgres};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

/// The pool cap every device keeps (the sink's default).
const POOL_CAP: u64 = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum FaultKind {
    Latency,
    Blackhole,
    Reset,
    CloseAfter,
    Down,
    Kill,
    Pause,
    PgFast,
    PgImmediate,
    PgTerminate,
}

const ALL: [(FaultKind, &str); 10] = [
    (FaultKind::Latency, "latency"),
    (FaultKind::Blackhole, "blackhole"),
    (FaultKind::Reset, "reset"),
    (FaultKind::CloseAfter, "close_after"),
    (FaultKind::Down, "down"),
    (FaultKind::Kill, "kill"),
    (FaultKind::Pause, "pause"),
    (FaultKind::PgFast, "pg_fast"),
    (FaultKind::PgImmediate, "pg_immediate"),
    (FaultKind::PgTerminate, "pg_terminate"),
];

fn name(kind: FaultKind) -> &'static str {
    ALL.iter().find(|(k, _)| *k == kind).map_or("?", |(_, n)| n)
}

pub(crate) fn parse_faults(list: &str) -> Result<Vec<FaultKind>> {
    list.split(',')
        .map(|n| {
            ALL.iter()
                .find(|(_, name)| *name == n.trim())
                .map(|(k, _)| *k)
                .with_context(|| format!("unknown fault {n:?}"))
        })
        .collect()
}

#[derive(Debug, Clone)]
pub(crate) struct Options {
    pub seed: Option<u64>,
    pub schedules: usize,
    pub duration_secs: u64,
    pub faults: Vec<FaultKind>,
    pub short: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            seed: None,
            schedules: 10,
            duration_secs: 20,
            faults: ALL.iter().map(|(k, _)| *k).collect(),
            short: false,
        }
    }
}

/// What was acknowledged: the last value of each live key, and deleted keys.
#[derive(Debug, Default)]
struct Acks {
    puts: BTreeMap<String, String>,
    deleted: BTreeSet<String>,
    /// Deletes invoked but never acknowledged (the writer died): either outcome is fine.
    maybe_deleted: BTreeSet<String>,
    ok: u64,
    highest: u64,
}

/// One schedule's outcome.
#[derive(Debug, Default, serde::Serialize)]
pub(crate) struct ScheduleResult {
    pub seed: u64,
    pub faults: BTreeMap<&'static str, u64>,
    pub writes_acknowledged: u64,
    pub writers_started: u64,
    pub lost: u64,
    pub stale: u64,
    pub resurrected: u64,
    pub device_cloud_mismatches: u64,
    pub outbox_left: u64,
    pub parked_failed: u64,
    pub convergence_ms: u64,
    pub max_pool: u64,
    pub reads: u64,
    pub read_errors: u64,
    pub read_p50_us: u64,
    pub read_p99_us: u64,
    pub read_max_us: u64,
}

impl ScheduleResult {
    fn violations(&self) -> u64 {
        self.lost
            + self.stale
            + self.resurrected
            + self.device_cloud_mismatches
            + self.outbox_left
            + u64::from(self.max_pool > POOL_CAP)
            + self.read_errors
    }
}

#[derive(Debug, Default, serde::Serialize)]
pub(crate) struct Report {
    pub schedules: Vec<ScheduleResult>,
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

impl Report {
    pub(crate) fn violations(&self) -> u64 {
        self.schedules.iter().map(ScheduleResult::violations).sum()
    }

    pub(crate) fn print_and_save(&self) -> Result<()> {
        let mut faults: BTreeMap<&str, u64> = BTreeMap::new();
        for s in &self.schedules {
            for (f, n) in &s.faults {
                *faults.entry(f).or_default() += n;
            }
        }
        let sum = |f: fn(&ScheduleResult) -> u64| self.schedules.iter().map(f).sum::<u64>();
        let max = |f: fn(&ScheduleResult) -> u64| self.schedules.iter().map(f).max().unwrap_or(0);
        let mut conv: Vec<u64> = self.schedules.iter().map(|s| s.convergence_ms).collect();
        conv.sort_unstable();
        let pct = |v: &[u64], q: f64| {
            v.get(((v.len() as f64 * q).ceil() as usize).saturating_sub(1))
                .copied()
                .unwrap_or(0)
        };
        let mut table = String::new();
        let _ = writeln!(table, "| measure | value |\n|---|---|");
        let mut row = |k: &str, v: String| {
            let _ = writeln!(table, "| {k} | {v} |");
        };
        row("schedules", self.schedules.len().to_string());
        row("faults injected", format!("{faults:?}"));
        row("writer processes", sum(|s| s.writers_started).to_string());
        row(
            "writes acknowledged",
            sum(|s| s.writes_acknowledged).to_string(),
        );
        row("lost (acknowledged, absent)", sum(|s| s.lost).to_string());
        row("stale (older value)", sum(|s| s.stale).to_string());
        row("resurrected deletes", sum(|s| s.resurrected).to_string());
        row(
            "device ≠ cloud rows",
            sum(|s| s.device_cloud_mismatches).to_string(),
        );
        row(
            "outbox left after healing",
            sum(|s| s.outbox_left).to_string(),
        );
        row("parked as failed", sum(|s| s.parked_failed).to_string());
        row(
            "convergence after healing p50 / p99 / max",
            format!(
                "{} / {} / {} ms",
                pct(&conv, 0.5),
                pct(&conv, 0.99),
                conv.last().unwrap_or(&0)
            ),
        );
        row(
            "max pool connections seen (cap 3)",
            max(|s| s.max_pool).to_string(),
        );
        row(
            "local reads during faults (errors)",
            format!("{} ({})", sum(|s| s.reads), sum(|s| s.read_errors)),
        );
        row(
            "read latency p50 / p99 / max (worst schedule)",
            format!(
                "{} / {} / {} µs",
                max(|s| s.read_p50_us),
                max(|s| s.read_p99_us),
                max(|s| s.read_max_us)
            ),
        );
        row("violations", self.violations().to_string());
        println!("\n{table}");
        let dir = root().join("target/chaos");
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("report.json"), serde_json::to_string_pretty(self)?)?;
        println!("report: {}", dir.join("report.json").display());
        Ok(())
    }
}

pub(crate) fn run_all(options: &Options) -> Result<Report> {
    let seeds: Vec<u64> = if options.short {
        vec![1, 2, rand::random::<u32>().into()]
    } else {
        let base = options.seed.unwrap_or_else(|| rand::random::<u32>().into());
        (0..options.schedules as u64).map(|i| base + i).collect()
    };
    let pg = Arc::new(TempPostgres::start().context("starting PostgreSQL")?);
    pg.psql("postgres", "CREATE ROLE app LOGIN")?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(hybridsync::layers::cloud::migrate(
        &CloudUrl::new(pg.url("postgres")),
        Some("app"),
    ))?;
    let mut report = Report::default();
    for seed in seeds {
        println!("schedule seed {seed}: {} s", options.duration_secs);
        let mut history = String::new();
        let result = run_one(&pg, &runtime, seed, options, &mut history)
            .with_context(|| format!("schedule seed {seed}"))?;
        println!(
            "  {} writes acknowledged, {} faults, converged in {} ms, {} violation(s)",
            result.writes_acknowledged,
            result.faults.values().sum::<u64>(),
            result.convergence_ms,
            result.violations()
        );
        if result.violations() > 0 {
            let path = root().join(format!("target/chaos/history-{seed}.log"));
            std::fs::create_dir_all(path.parent().expect("dir"))?;
            std::fs::write(&path, &history)?;
            println!(
                "  VIOLATED: {result:?}\n  replay: cargo xtask chaos --seed {seed} --schedules 1 --duration {}\n  history: {}",
                options.duration_secs,
                path.display()
            );
        }
        report.schedules.push(result);
    }
    Ok(report)
}

/// A running writer process and the thread collecting its acknowledgements.
struct Writer {
    child: Child,
    collector: std::thread::JoinHandle<()>,
}

fn spawn_writer(
    dir: &Path,
    url: &str,
    tenant: &str,
    first: u64,
    seed: u64,
    acks: &Arc<Mutex<Acks>>,
) -> Result<Writer> {
    let mut child = Command::new(std::env::current_exe()?)
        .args(["writer", &dir.display().to_string(), url, tenant])
        .args([first.to_string(), seed.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let stdout = child.stdout.take().expect("piped");
    let acks = acks.clone();
    let collector = std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let mut acks = acks.lock().unwrap_or_else(|e| e.into_inner());
            let mut parts = line.split(' ');
            match (parts.next(), parts.next(), parts.next(), parts.next()) {
                (Some("ack"), Some("put"), Some(key), Some(value)) => {
                    if let Some(i) = key.strip_prefix('w').and_then(|i| i.parse().ok()) {
                        acks.highest = acks.highest.max(i);
                    }
                    acks.deleted.remove(key);
                    acks.puts.insert(key.to_owned(), value.to_owned());
                    acks.ok += 1;
                }
                (Some("try"), Some("del"), Some(key), None) => {
                    acks.maybe_deleted.insert(key.to_owned());
                }
                (Some("ack"), Some("del"), Some(key), None) => {
                    acks.maybe_deleted.remove(key);
                    acks.puts.remove(key);
                    acks.deleted.insert(key.to_owned());
                    acks.ok += 1;
                }
                _ => {}
            }
        }
    });
    Ok(Writer { child, collector })
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill").args([sig, &pid.to_string()]).status();
}

fn now_epoch_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn percentile(sorted: &[u64], q: f64) -> u64 {
    sorted
        .get(((sorted.len() as f64 * q).ceil() as usize).saturating_sub(1))
        .copied()
        .unwrap_or(0)
}

fn run_one(
    pg: &Arc<TempPostgres>,
    runtime: &tokio::runtime::Runtime,
    seed: u64,
    options: &Options,
    history: &mut String,
) -> Result<ScheduleResult> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut result = ScheduleResult {
        seed,
        ..ScheduleResult::default()
    };
    let tenant = format!("chaos-{seed}");
    let dir = tempfile::tempdir()?;
    let upstream = format!("127.0.0.1:{}", pg.port()).parse()?;
    let proxy = FaultProxy::start(upstream)?;
    let url = format!("postgres://app@127.0.0.1:{}/postgres", proxy.port());
    let acks = Arc::new(Mutex::new(Acks::default()));
    let started = Instant::now();
    let log = |history: &mut String, what: &str| {
        let _ = writeln!(history, "{:>7} ms  {what}", started.elapsed().as_millis());
    };

    let mut writer = spawn_writer(dir.path(), &url, &tenant, 0, seed, &acks)?;
    result.writers_started = 1;
    let writer_since = Arc::new(AtomicU64::new(now_epoch_ms()));
    log(history, "writer started at w00000000");

    // Pool sampler: the current writer's backends (older ones may linger after a kill).
    let stop = Arc::new(AtomicBool::new(false));
    let max_pool = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (pg, stop, max_pool, since) = (
            pg.clone(),
            stop.clone(),
            max_pool.clone(),
            writer_since.clone(),
        );
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let sql = format!(
                    "SELECT count(*) FROM pg_stat_activity WHERE usename = 'app' \
                     AND backend_start >= to_timestamp({} / 1000.0)",
                    since.load(Ordering::SeqCst)
                );
                if let Ok(n) = pg.psql("postgres", &sql).map(|s| s.trim().parse::<u64>()) {
                    max_pool.fetch_max(n.unwrap_or(0), Ordering::SeqCst);
                }
                std::thread::sleep(Duration::from_millis(150));
            }
        })
    };

    // Reader probe: local reads on the device throughout, from this process.
    let probe = {
        let (dir, stop, acks) = (dir.path().to_owned(), stop.clone(), acks.clone());
        std::thread::spawn(move || -> (u64, Vec<u64>) {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                // Wait until the writer has created the store and its collection.
                while acks.lock().unwrap_or_else(|e| e.into_inner()).ok == 0 {
                    if stop.load(Ordering::SeqCst) {
                        return (0, Vec::new());
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                let Ok(store) = HybridStore::builder(&dir).open().await else {
                    return (1, Vec::new());
                };
                let Ok(chaos) = store.raw("chaos") else {
                    return (1, Vec::new());
                };
                let (mut errors, mut latencies) = (0, Vec::new());
                let mut i = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    let highest = acks.lock().unwrap_or_else(|e| e.into_inner()).highest;
                    i = (i + 7919) % (highest + 1);
                    let t = Instant::now();
                    if chaos.get(&format!("w{i:08}")).await.is_err() {
                        errors += 1;
                    }
                    latencies.push(t.elapsed().as_micros() as u64);
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                store.close().await;
                (errors, latencies)
            })
        })
    };

    // Faults until the duration is up.
    while started.elapsed() < Duration::from_secs(options.duration_secs) {
        std::thread::sleep(Duration::from_millis(rng.random_range(100..800)));
        let kind = options.faults[rng.random_range(0..options.faults.len())];
        let hold = Duration::from_millis(rng.random_range(200..1500));
        *result.faults.entry(name(kind)).or_default() += 1;
        log(history, &format!("fault {} for {hold:?}", name(kind)));
        match kind {
            FaultKind::Latency => {
                proxy.set(Fault::Latency {
                    ms: rng.random_range(10..200),
                    jitter_ms: rng.random_range(0..50),
                });
                std::thread::sleep(hold);
            }
            FaultKind::Blackhole => {
                proxy.set(Fault::Blackhole);
                std::thread::sleep(hold);
            }
            FaultKind::Reset => proxy.reset(),
            FaultKind::CloseAfter => {
                proxy.set(Fault::CloseAfter {
                    bytes: rng.random_range(100..20_000),
                });
                std::thread::sleep(hold);
            }
            FaultKind::Down => {
                proxy.set(Fault::Down);
                std::thread::sleep(hold);
            }
            FaultKind::Kill => {
                writer.child.kill()?;
                writer.child.wait()?;
                let _ = writer.collector.join();
                std::thread::sleep(hold);
                let first = acks.lock().unwrap_or_else(|e| e.into_inner()).highest + 1_000;
                writer_since.store(now_epoch_ms(), Ordering::SeqCst);
                writer = spawn_writer(dir.path(), &url, &tenant, first, seed, &acks)?;
                result.writers_started += 1;
                log(history, &format!("writer restarted at w{first:08}"));
            }
            FaultKind::Pause => {
                signal(writer.child.id(), "-STOP");
                std::thread::sleep(hold);
                signal(writer.child.id(), "-CONT");
            }
            FaultKind::PgFast => pg.restart(ShutdownMode::Fast)?,
            FaultKind::PgImmediate => pg.restart(ShutdownMode::Immediate)?,
            FaultKind::PgTerminate => {
                let _ = pg.psql(
                    "postgres",
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE usename = 'app'",
                );
            }
        }
        proxy.set(Fault::None);
        log(history, "healed");
    }

    // Heal: the writer is killed mid-flight one last time, everything else restored.
    writer.child.kill()?;
    writer.child.wait()?;
    let _ = writer.collector.join();
    proxy.set(Fault::None);
    stop.store(true, Ordering::SeqCst);
    let _ = sampler.join();
    let (read_errors, mut latencies) = probe.join().unwrap_or((1, Vec::new()));
    latencies.sort_unstable();
    result.reads = latencies.len() as u64;
    result.read_errors = read_errors;
    result.read_p50_us = percentile(&latencies, 0.5);
    result.read_p99_us = percentile(&latencies, 0.99);
    result.read_max_us = latencies.last().copied().unwrap_or(0);
    result.max_pool = max_pool.load(Ordering::SeqCst);
    log(history, "healing: final drain through a direct connection");

    let acks = std::mem::take(&mut *acks.lock().unwrap_or_else(|e| e.into_inner()));
    result.writes_acknowledged = acks.ok;
    let direct = format!("postgres://app@127.0.0.1:{}/postgres", pg.port());
    runtime.block_on(heal_and_check(
        pg,
        dir.path(),
        &direct,
        &tenant,
        &acks,
        &mut result,
        history,
    ))?;
    Ok(result)
}

async fn heal_and_check(
    pg: &TempPostgres,
    dir: &Path,
    url: &str,
    tenant: &str,
    acks: &Acks,
    result: &mut ScheduleResult,
    history: &mut String,
) -> Result<()> {
    use sqlx::{Connection, Row};
    let store = HybridStore::builder(dir)
        .cloud_url(url.to_owned())
        .tenant(tenant.to_owned())
        .sync_config(crate::writer::sync_config())
        .open()
        .await?;
    let healing = Instant::now();
    let left = store.flush(Duration::from_secs(120)).await?;
    result.convergence_ms = healing.elapsed().as_millis() as u64;
    let status = store.status().await?;
    result.outbox_left = left;
    result.parked_failed = status.outbox.failed;

    let chaos = store.raw("chaos")?;
    let mut local: BTreeMap<String, String> = BTreeMap::new();
    let mut after: Option<String> = None;
    loop {
        let page = chaos.list(after.as_deref(), 1_000).await?;
        let Some((last, _)) = page.last() else { break };
        after = Some(last.to_string());
        for (key, value) in page {
            local.insert(
                key.to_string(),
                String::from_utf8_lossy(&value).into_owned(),
            );
        }
    }
    store.shutdown(Duration::from_secs(5)).await?;

    let mut admin = sqlx::PgConnection::connect(&pg.url("postgres")).await?;
    let rows = sqlx::query(
        "SELECT key, payload, tombstone FROM hs_records WHERE tenant = $1 AND collection = 'chaos'",
    )
    .bind(tenant)
    .fetch_all(&mut admin)
    .await?;
    let cloud: BTreeMap<String, String> = rows
        .iter()
        .filter(|r| !r.get::<bool, _>(2))
        .map(|r| {
            (
                r.get::<String, _>(0),
                String::from_utf8_lossy(&r.get::<Vec<u8>, _>(1)).into_owned(),
            )
        })
        .collect();

    for side in [&local, &cloud] {
        for (key, value) in &acks.puts {
            match side.get(key) {
                None if acks.maybe_deleted.contains(key) => {}
                None => {
                    result.lost += 1;
                    let _ = writeln!(history, "LOST {key}={value}");
                }
                Some(v) if v != value => {
                    result.stale += 1;
                    let _ = writeln!(history, "STALE {key}: {v} instead of {value}");
                }
                Some(_) => {}
            }
        }
        for key in &acks.deleted {
            if side.contains_key(key) {
                result.resurrected += 1;
                let _ = writeln!(history, "RESURRECTED {key}");
            }
        }
    }
    let differing = local
        .iter()
        .filter(|(k, v)| cloud.get(*k) != Some(v))
        .count()
        + cloud.keys().filter(|k| !local.contains_key(*k)).count();
    result.device_cloud_mismatches = differing as u64;
    if differing > 0 {
        let _ = writeln!(history, "{differing} rows differ between device and cloud");
    }
    if left > 0 {
        let _ = writeln!(history, "{left} outbox entries left after healing");
    }
    Ok(())
}
