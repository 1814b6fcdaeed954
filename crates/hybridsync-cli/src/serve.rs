//! `hybridsync serve`: the auto-sync daemon with the metrics and health endpoint
//! (`/metrics`, `/healthz`, `/readyz`).

use anyhow::{Context, Result};
use hybridsync::HybridStore;
use std::time::Duration;

/// How long shutdown may spend shipping what is left.
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(10);

/// The SIGTERM stream `serve` waits on, installed before the store opens.
pub(crate) fn terminate_signal() -> Result<tokio::signal::unix::Signal> {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")
}

/// Serves `store` until SIGINT or a signal on `terminate` (pending ones included: a
/// SIGTERM during the start-up below stops it as soon as it is done).
pub(crate) async fn run(
    store: &HybridStore,
    metrics_addr: std::net::SocketAddr,
    auto_sync: Duration,
    mut terminate: tokio::signal::unix::Signal,
) -> Result<()> {
    let metrics_addr = store.install_prometheus(metrics_addr)?;
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
            "serving: draining the outbox to {}; metrics on http://{metrics_addr}/metrics, probes on /healthz and /readyz",
            store.status().await?.cloud.unwrap_or_default()
        );
    } else {
        eprintln!(
            "serving local-only (no cloud configured); metrics on http://{metrics_addr}/metrics, probes on /healthz and /readyz"
        );
    }
    // The store's runtime keeps the gauges current; this only waits for a signal.
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    eprintln!("shutting down: shipping what is left (up to {SHUTDOWN_FLUSH:?})");
    let left = store.shutdown(SHUTDOWN_FLUSH).await?;
    eprintln!("stopped; {left} entries remain queued for next time");
    Ok(())
}
