//! Writer mode: one device writing unique values as fast as its local store takes
//! them, printing each acknowledged write (`ack put KEY VALUE` / `ack del KEY`) only
//! after the call returned Ok, so the parent knows exactly what was promised. A delete
//! is announced (`try del KEY`) before it is invoked: its outcome is unknown until the
//! ack.

use anyhow::{Context, Result};
use hybridsync::layers::engine::BreakerConfig;
use hybridsync::{HybridStore, Priority, SyncConfig, WriteOptions};
use rand::{Rng, SeedableRng};
use std::io::Write;
use std::time::Duration;

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

/// `writer DIR URL TENANT FIRST SEED`: writes keys `wFIRST`, `wFIRST+1`, ... until
/// killed; one in eight operations deletes an earlier key of this run instead.
pub(crate) fn run(args: &[String]) -> Result<()> {
    let [dir, url, tenant, first, seed] = args else {
        anyhow::bail!("writer DIR URL TENANT FIRST SEED");
    };
    let first: u64 = first.parse().context("FIRST")?;
    let seed: u64 = seed.parse().context("SEED")?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let store = HybridStore::builder(dir)
            .cloud_url(url.clone())
            .tenant(tenant.clone())
            .sync_config(sync_config())
            .open()
            .await?;
        if store.collections().await?.is_empty() {
            store.create_collection("chaos", None).await?;
        }
        store.start_sync().await?;
        let chaos = store.raw("chaos")?;
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ first);
        let mut out = std::io::stdout().lock();
        let mut written: Vec<u64> = Vec::new();
        for i in first.. {
            if !written.is_empty() && rng.random_ratio(1, 8) {
                let victim = written.swap_remove(rng.random_range(0..written.len()));
                let key = format!("w{victim:08}");
                // Announced first: if we die before the ack, the delete may or may not
                // have happened, and the checker must accept either.
                writeln!(out, "try del {key}")?;
                out.flush()?;
                if chaos.delete(&key, Priority::Normal).await.is_ok() {
                    writeln!(out, "ack del {key}")?;
                    out.flush()?;
                }
                continue;
            }
            let key = format!("w{i:08}");
            let value = format!("v{i}-{seed}");
            let priority = if rng.random_ratio(1, 10) {
                Priority::High
            } else {
                Priority::Normal
            };
            let options = WriteOptions::default().priority(priority);
            if chaos
                .put(&key, value.clone().into_bytes(), options)
                .await
                .is_ok()
            {
                writeln!(out, "ack put {key} {value}")?;
                out.flush()?;
                written.push(i);
            }
            tokio::time::sleep(Duration::from_millis(rng.random_range(0..3))).await;
        }
        Ok(())
    })
}
