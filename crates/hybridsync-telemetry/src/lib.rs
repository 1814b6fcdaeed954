//! Telemetry for hybridsync: the one catalogue of metric names ([`catalogue`]) and the
//! Prometheus exporter ([`install_prometheus`]).
//!
//! Library crates record through the `metrics` facade using the names in
//! [`catalogue`]; only the facade and the CLI install an exporter. This crate knows
//! nothing of SQLite, usearch or PostgreSQL.
#![forbid(unsafe_code)]

pub mod catalogue;

use std::net::SocketAddr;

/// Errors of the telemetry layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("cannot install the Prometheus exporter on {addr}: {reason}")]
    Exporter { addr: SocketAddr, reason: String },
}

/// `Result` with the telemetry layer's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The default `/metrics` address.
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9090";

/// Installs the global `metrics` recorder with a Prometheus HTTP endpoint on `addr`
/// (`GET /metrics`) and registers the catalogue's descriptions. Call it once, from
/// an application (the CLI does), inside a Tokio runtime.
pub fn install_prometheus(addr: SocketAddr) -> Result<()> {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets(catalogue::LATENCY_BUCKETS)
        .and_then(|b| b.install())
        .map_err(|e| Error::Exporter {
            addr,
            reason: e.to_string(),
        })?;
    catalogue::describe_all();
    Ok(())
}
