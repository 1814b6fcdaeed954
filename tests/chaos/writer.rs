//! Writer mode: one device writing unique values as fast as its local store takes
//! them, syncing both ways in the background. Every operation is announced before it
//! is invoked (`try put KEY VALUE`, `try del KEY`) and acknowledged with its version
//! only after the call returned Ok (`ack put KEY VALUE VERSION`, `ack del KEY VERSION`),
//! so the parent knows exactly what was promised and what is indeterminate. Breaker
//! transitions are printed as `breaker FROM TO`, and each new high of the open cloud
//! connections as `pool N`.
//!
//! Three knobs come from the environment: `HYBRIDSYNC_CHAOS_SKEW_MS` shifts this
//! process's wall clock (clock-skew faults), `HYBRIDSYNC_CHAOS_POOLER` says the URL
//! reaches PgBouncer in transaction mode, and `HYBRIDSYNC_CRASH_POINT` (read by the
//! library) aborts or freezes the process at a named crash point.

use anyhow::{Context, Result};
use hybridsync::BreakerConfig;
use hybridsync::{Clock, Hlc, SyncEvent, SystemClock};
use hybridsync::{HybridStore, Priority, Strategy, SyncConfig, WriteOptions};
use rand::{Rng, SeedableRng};
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

/// Keys every device writes and deletes: where devices overlap.
pub(crate) const SHARED_KEYS: u64 = 40;

/// Sync tuned for a chaos run: quick retries, a breaker that recovers within a second
/// and no attempt limit to speak of, so faults delay shipping but never park entries.
pub(crate) fn sync_config() -> SyncConfig {
    SyncConfig {
        interval: Duration::from_millis(200),
        retry_initial: Duration::from_millis(50),
        retry_max: Duration::from_millis(500),
        max_attempts: 1_000,
        breaker: BreakerConfig {
            failure_threshold: 5,
            open_for: Duration::from_millis(500),
            half_open_successes: 2,
        },
        health_interval: Duration::from_millis(200),
        ..SyncConfig::default()
    }
}

/// How long a writer's transaction may sit idle after its upsert before the server
/// ends it (the `vanish_mid_tx` fault holds the others' feed back at most this long).
pub(crate) const IDLE_IN_TRANSACTION: Duration = Duration::from_secs(1);

/// How often a writer syncs both ways (besides the nudge from other devices' writes).
pub(crate) const AUTO_SYNC: Duration = Duration::from_millis(300);

/// A version as one string that sorts in version order.
pub(crate) fn version(hlc: Hlc) -> String {
    format!("{:020}.{}", hlc.packed(), hlc.origin)
}

/// The wall clock shifted by a fixed offset.
#[derive(Debug)]
struct Skewed(i64);

impl Clock for Skewed {
    fn now_ms(&self) -> u64 {
        (SystemClock.now_ms() as i64).saturating_add(self.0).max(0) as u64
    }
}

/// The `application_name` of a device's connections, so the pool can be sampled per
/// device.
pub(crate) fn application_name(device: &str) -> String {
    format!("hybridsync-chaos-{device}")
}

/// `writer DIR URL TENANT DEVICE FIRST SEED`: writes until killed. Own keys are
/// `DEVICE-wFIRST`, `DEVICE-wFIRST+1`, ...; three in ten writes go to one of the
/// shared keys `s00`..`s39` instead, and one operation in eight deletes an own or a
/// shared key.
pub(crate) fn run(args: &[String]) -> Result<()> {
    let [dir, url, tenant, device, first, seed] = args else {
        anyhow::bail!("writer DIR URL TENANT DEVICE FIRST SEED");
    };
    let first: u64 = first.parse().context("FIRST")?;
    let seed: u64 = seed.parse().context("SEED")?;
    let skew: i64 = std::env::var("HYBRIDSYNC_CHAOS_SKEW_MS")
        .ok()
        .map(|s| s.parse())
        .transpose()
        .context("HYBRIDSYNC_CHAOS_SKEW_MS")?
        .unwrap_or(0);
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let mut builder = HybridStore::builder(dir)
            .cloud_url(url.clone())
            .tenant(tenant.clone())
            .application_name(application_name(device))
            .sync_config(sync_config())
            .idle_in_transaction_timeout(IDLE_IN_TRANSACTION)
            .clock(Arc::new(Skewed(skew)));
        if std::env::var("HYBRIDSYNC_CHAOS_POOLER").as_deref() == Ok("pgbouncer-transaction") {
            builder = builder
                .pooler(hybridsync::Pooler::PgBouncerTransaction)
                .poll_interval(AUTO_SYNC);
        }
        let store = builder.open().await?;
        if store.collections().await?.is_empty() {
            store.create_collection("chaos", None).await?;
        }
        store.start_sync().await?;
        store
            .start_auto_sync(AUTO_SYNC, Strategy::NewestWins)
            .await?;
        let mut events = store.subscribe()?;
        tokio::spawn(async move {
            while let Ok(event) = events.recv().await {
                if let SyncEvent::CircuitStateChanged { from, to } = event {
                    println!("breaker {from:?} {to:?}");
                }
            }
        });
        // The pool as the device sees it: every new high is printed.
        let sampled = store.clone();
        tokio::spawn(async move {
            let mut high = 0;
            loop {
                let open = sampled.sync_status().map_or(0, |s| s.pool.0);
                if open > high {
                    high = open;
                    println!("pool {open}");
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        let chaos = store.raw("chaos")?;
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ first);
        // Line by line (stdout is line-buffered), never holding its lock across an
        // await: the breaker task prints too.
        let say = |line: String| -> Result<()> {
            let mut out = std::io::stdout().lock();
            writeln!(out, "{line}")?;
            Ok(out.flush()?)
        };
        let mut written: Vec<String> = Vec::new();
        for i in first.. {
            if rng.random_ratio(1, 8) {
                let key = if !written.is_empty() && rng.random_bool(0.5) {
                    written.swap_remove(rng.random_range(0..written.len()))
                } else {
                    format!("s{:02}", rng.random_range(0..SHARED_KEYS))
                };
                // Announced first: if we die before the ack, the delete may or may not
                // have happened, and the checker must accept either.
                say(format!("try del {key}"))?;
                if let Ok(hlc) = chaos.delete(&key, Priority::Normal).await {
                    say(format!("ack del {key} {}", version(hlc)))?;
                }
                continue;
            }
            let key = if rng.random_ratio(3, 10) {
                format!("s{:02}", rng.random_range(0..SHARED_KEYS))
            } else {
                format!("{device}-w{i:08}")
            };
            let value = format!("v.{device}.{i}.{seed}");
            let priority = if rng.random_ratio(1, 10) {
                Priority::High
            } else {
                Priority::Normal
            };
            say(format!("try put {key} {value}"))?;
            let options = WriteOptions::default().priority(priority);
            if let Ok(hlc) = chaos.put(&key, value.clone().into_bytes(), options).await {
                say(format!("ack put {key} {value} {}", version(hlc)))?;
                if !key.starts_with('s') {
                    written.push(key);
                }
            }
            tokio::time::sleep(Duration::from_millis(rng.random_range(0..3))).await;
        }
        Ok(())
    })
}
