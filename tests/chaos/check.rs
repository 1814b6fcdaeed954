//! The reader probe during faults, healing, and the checkers.

use crate::ops::Ops;
use crate::schedule::{Device, POOL_CAP};
use crate::writer;
use anyhow::Result;
use hybridsync::{HybridStore, Strategy};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Every device and the cloud must agree within this long after healing.
pub(crate) const CONVERGENCE_BOUND: Duration = Duration::from_secs(60);

/// One schedule's outcome.
#[derive(Debug, Default, serde::Serialize)]
pub(crate) struct ScheduleResult {
    pub seed: u64,
    pub devices: u64,
    pub faults: BTreeMap<&'static str, u64>,
    pub writers_started: u64,
    /// Writers that aborted at a named crash point, by point.
    pub crash_points_hit: BTreeMap<String, u64>,
    pub ops_invoked: u64,
    pub ops_ok: u64,
    pub ops_failed: u64,
    pub ops_unknown: u64,
    pub writes_acknowledged: u64,
    pub rogue_writes: u64,
    /// Invariants 1 to 3, per write (lost, stale, duplicated, resurrected, unknown).
    #[serde(flatten)]
    pub verdict: Verdict,
    /// Invariant 4: live rows that differ between a device and the cloud.
    pub device_cloud_mismatches: u64,
    /// Invariant 4 again, by the consistency checker (`verify`): rows it found
    /// differing after healing, collections whose Merkle roots did not match, and the
    /// rows it exchanged to tell.
    pub verify_differences: u64,
    pub verify_roots_unmatched: u64,
    pub verify_rows_exchanged: u64,
    /// Invariant 5.
    pub convergence_ms: u64,
    pub sync_rounds: u64,
    pub not_converged: u64,
    /// Invariant 6: the most connections one device's pool held, as the device sees
    /// it. The server's view (`pg_stat_activity`) is reported beside it: a connection
    /// abandoned behind a dead link lingers there until the server notices, so it can
    /// exceed the cap while the device holds no more than the cap.
    pub max_pool: u64,
    pub max_pool_server: u64,
    /// Invariant 7.
    pub reads: u64,
    pub read_errors: u64,
    pub read_p50_us: u64,
    pub read_p99_us: u64,
    pub read_max_us: u64,
    /// Invariant 8.
    pub outbox_left: u64,
    pub parked_failed: u64,
    pub rogue_parked: u64,
    pub retries: u64,
    pub reconnects: u64,
    pub breaker_transitions: u64,
    /// Invariant 9 (`foreign_tx`): a write crossing between two devices while an
    /// unrelated transaction is open, slowest, and how many took longer than the bound.
    pub propagation_probes: u64,
    pub propagation_max_ms: u64,
    pub propagation_over_bound: u64,
    /// Invariant 10 (`vanish_mid_tx`): how long a frozen writer's open transaction
    /// outlived its freeze, slowest, and how many outlived the bound; and how many
    /// freezes left no open transaction to time (each a violation: nothing was tested).
    pub vanished: u64,
    pub vanish_release_max_ms: u64,
    pub vanish_over_bound: u64,
    pub vanish_unseen: u64,
}

impl ScheduleResult {
    pub(crate) fn violations(&self) -> u64 {
        self.verdict.violations()
            + self.device_cloud_mismatches
            + self.verify_differences
            + self.verify_roots_unmatched
            + self.not_converged
            + self.outbox_left
            + self.propagation_over_bound
            + self.vanish_over_bound
            + self.vanish_unseen
            + u64::from(self.max_pool > POOL_CAP)
            + self.read_errors
            + self
                .crash_points_hit
                .get(crate::schedule::UNEXPECTED)
                .copied()
                .unwrap_or(0)
    }
}

/// Local reads on device `name` every 5 ms until `stop`, from this process: returns
/// the errors and the latencies in µs.
pub(crate) fn spawn_reader(
    dir: PathBuf,
    name: String,
    stop: Arc<AtomicBool>,
    ops: Arc<Mutex<Ops>>,
) -> std::thread::JoinHandle<(Vec<String>, Vec<u64>)> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            // Wait until this device's writer has created its collection (it has
            // acknowledged a write of its own).
            while !ops
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .highest
                .contains_key(&name)
            {
                if stop.load(Ordering::SeqCst) {
                    return (Vec::new(), Vec::new());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let store = match HybridStore::builder(&dir).open().await {
                Ok(store) => store,
                Err(e) => return (vec![format!("opening the device: {e}")], Vec::new()),
            };
            let chaos = match store.raw("chaos") {
                Ok(chaos) => chaos,
                Err(e) => return (vec![e.to_string()], Vec::new()),
            };
            let (mut errors, mut latencies) = (Vec::new(), Vec::new());
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let highest = ops
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .highest
                    .get(&name)
                    .copied()
                    .unwrap_or(0);
                i = (i + 7919) % (highest + 1);
                let key = if i.is_multiple_of(4) {
                    format!("s{:02}", i % writer::SHARED_KEYS)
                } else {
                    format!("{name}-w{i:08}")
                };
                let t = Instant::now();
                if let Err(e) = chaos.get(&key).await {
                    errors.push(format!("reading {key}: {e}"));
                }
                latencies.push(t.elapsed().as_micros() as u64);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            store.close().await;
            (errors, latencies)
        })
    })
}

use crate::verdict::{Row, State, Verdict, row};

/// Live rows only: where a tombstone exists does not matter, only what reads return.
fn live(state: &State) -> BTreeMap<&String, &Row> {
    state.iter().filter(|(_, r)| r.1.is_some()).collect()
}

fn live_values(state: &State) -> BTreeMap<String, String> {
    state
        .iter()
        .filter_map(|(k, r)| Some((k.clone(), r.1.clone()?)))
        .collect()
}

fn differing(a: &State, b: &State) -> u64 {
    let (a, b) = (live(a), live(b));
    (a.iter().filter(|(k, r)| b.get(*k) != Some(*r)).count()
        + b.keys().filter(|k| !a.contains_key(*k)).count()) as u64
}

/// Every record of `chaos` in a device's SQLite file, tombstones included, with the
/// outbox's retry total and its parked entries.
fn device_state(dir: &std::path::Path) -> Result<(State, u64, Vec<String>)> {
    let db = rusqlite::Connection::open(dir.join("hybridsync.db"))?;
    let mut state = State::new();
    let mut stmt = db.prepare(
        "SELECT key, hlc, origin, tombstone, payload FROM records WHERE collection = 'chaos'",
    )?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let (key, packed, origin, tombstone, payload): (String, i64, Vec<u8>, bool, Vec<u8>) =
            (r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?);
        state.insert(key, row(packed, &origin, tombstone, &payload));
    }
    let retries: i64 = db.query_row("SELECT coalesce(sum(attempts), 0) FROM outbox", [], |r| {
        r.get(0)
    })?;
    let parked = db
        .prepare(
            "SELECT r.key || ': ' || coalesce(o.last_error, '') FROM outbox o \
             JOIN records r ON r.id = o.record_id WHERE o.state = 3",
        )?
        .query_map([], |r| r.get(0))?
        .collect::<rusqlite::Result<Vec<String>>>()?;
    Ok((state, retries as u64, parked))
}

/// Heals: every device syncs both ways through a direct connection, round after round,
/// until every device's live rows equal the cloud's and no outbox holds anything (or
/// the bound passes). Then checks every side against the operation history.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn heal_and_check(
    pg: &hybridsync_testkit::TempPostgres,
    devices: &[Device],
    rogues: &[tempfile::TempDir],
    url: &str,
    tenant: &str,
    ops: &Ops,
    result: &mut ScheduleResult,
    history: &mut String,
) -> Result<()> {
    let open = |dir: &std::path::Path, name: &str| {
        HybridStore::builder(dir)
            .cloud_url(url.to_owned())
            .tenant(tenant.to_owned())
            .application_name(writer::application_name(name))
            .sync_config(writer::sync_config())
            .open()
    };
    let mut stores = Vec::new();
    for device in devices {
        stores.push(open(device.dir.path(), &device.name).await?);
    }
    let healing = Instant::now();
    let mut converged = false;
    while healing.elapsed() < CONVERGENCE_BOUND {
        result.sync_rounds += 1;
        for store in &stores {
            store.sync(&[], Strategy::NewestWins, |_, _| {}).await?;
        }
        let cloud =
            live_values(&crate::verdict::cloud_state(&pg.url("postgres"), tenant, "chaos").await?);
        let mut agree = true;
        for store in &stores {
            let outbox = store.status().await?.outbox;
            agree &= outbox.pending + outbox.in_flight == 0;
            agree &= live_via_api(store).await? == cloud;
            // Equal live values are not yet equal sides: a newer tombstone another
            // device pushed this round is not pulled yet. The checker compares
            // versions, tombstones included.
            agree = agree
                && store
                    .verify(hybridsync::VerifyOptions::default())
                    .await?
                    .consistent();
        }
        if agree {
            converged = true;
            break;
        }
    }
    result.convergence_ms = healing.elapsed().as_millis() as u64;
    result.not_converged = u64::from(!converged);
    for store in &stores {
        // The row-by-row check below and the checker's roots can each catch the other's
        // bugs: both must agree the sides are identical.
        let report = store.verify(hybridsync::VerifyOptions::default()).await?;
        result.verify_differences += report.differences();
        for check in &report.collections {
            result.verify_roots_unmatched += u64::from(!check.roots_matched);
            result.verify_rows_exchanged += check.rows_exchanged;
            if !check.roots_matched {
                let _ = writeln!(
                    history,
                    "verify: {} roots differ: {check:?}",
                    check.collection
                );
            }
        }
        let outbox = store.status().await?.outbox;
        result.outbox_left += outbox.pending + outbox.in_flight;
        result.parked_failed += outbox.failed;
        store.shutdown(Duration::from_secs(5)).await?;
    }
    drop(stores);
    if !converged {
        let _ = writeln!(history, "NOT CONVERGED within {CONVERGENCE_BOUND:?}");
    }

    // A rogue device's writes must all be refused by the cloud and parked at home.
    for dir in rogues {
        let healing = Instant::now();
        let store = open(dir.path(), "rogue").await?;
        // Every refused record is isolated by splitting its batch: allow for that.
        let _ = store.flush(Duration::from_secs(60)).await?;
        let outbox = store.status().await?.outbox;
        let left = outbox.pending + outbox.in_flight;
        let _ = writeln!(
            history,
            "rogue device: {} parked, {left} left after {:?}",
            outbox.failed,
            healing.elapsed()
        );
        result.rogue_parked += outbox.failed;
        result.outbox_left += outbox.pending + outbox.in_flight;
        store.shutdown(Duration::from_secs(5)).await?;
    }

    let cloud = crate::verdict::cloud_state(&pg.url("postgres"), tenant, "chaos").await?;
    let mut sides: Vec<(String, State)> = Vec::new();
    for device in devices {
        let (state, retries, parked) = device_state(device.dir.path())?;
        result.retries += retries;
        for line in parked {
            let _ = writeln!(history, "PARKED on {}: {line}", device.name);
        }
        let diff = differing(&state, &cloud);
        if diff > 0 {
            let _ = writeln!(
                history,
                "{diff} live rows differ between {} and the cloud",
                device.name
            );
        }
        result.device_cloud_mismatches += diff;
        sides.push((device.name.clone(), state));
    }
    sides.push(("cloud".into(), cloud));

    result.ops_invoked = ops.invoked;
    result.ops_ok = ops.ok;
    result.ops_failed = ops.failed;
    result.ops_unknown = ops.unknown;
    result.writes_acknowledged = ops.acked.values().map(|v| v.len() as u64).sum();
    result.rogue_writes = ops.rogue_values.len() as u64;
    result.breaker_transitions = ops.breaker_transitions;
    result.max_pool = ops.max_pool;
    for (side, state) in &sides {
        crate::verdict::check_side(side, state, ops, &mut result.verdict, history);
    }
    Ok(())
}

/// The live rows through the public API, as key → value.
async fn live_via_api(store: &HybridStore) -> Result<BTreeMap<String, String>> {
    let chaos = store.raw("chaos")?;
    let mut local = BTreeMap::new();
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
    Ok(local)
}
