//! `hybridsync serve`: the auto-sync daemon with the metrics endpoint.

use anyhow::{Context, Result};
use hybridsync::HybridStore;
use std::time::Duration;

/// How long shutdown may spend shipping what is left.
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(10);

pub(crate) async fn run(
    store: HybridStore,
    metrics_addr: std::net::SocketAddr,
    auto_sync: Duration,
) -> Result<()> {
    hybridsync::install_prometheus(metrics_addr)?;
    if store.cloud_configured() {
        if let Err(e) = store.verify_cloud_schema().await {
            // Keep serving: the cloud may be down now and fine later. Say why nothing drains.
            tracing::warn!(error = %e, "cloud not ready; the drain will keep retrying");
        }
        store.start_sync().await?;
        if !auto_sync.is_zero() {
            store
                .start_auto_sync(auto_sync, hybridsync::Strategy::NewestWins)
                .await?;
        }
        eprintln!(
            "serving: draining the outbox to {}; metrics on http://{metrics_addr}/metrics",
            store.status().await?.cloud.unwrap_or_default()
        );
    } else {
        eprintln!(
            "serving local-only (no cloud configured); metrics on http://{metrics_addr}/metrics"
        );
    }
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let mut gauges = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => break,
            _ = terminate.recv() => break,
            _ = gauges.tick() => {
                // Refreshes the queue and cache gauges the endpoint serves.
                if let Err(e) = store.status().await {
                    tracing::warn!(error = %e, "status refresh failed");
                }
            }
        }
    }
    eprintln!("shutting down: shipping what is left (up to {SHUTDOWN_FLUSH:?})");
    let left = if store.cloud_configured() {
        store.shutdown(SHUTDOWN_FLUSH).await?
    } else {
        0
    };
    store.close().await;
    eprintln!("stopped; {left} entries remain queued for next time");
    Ok(())
}
