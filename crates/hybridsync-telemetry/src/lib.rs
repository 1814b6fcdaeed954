//! Telemetry for hybridsync: the one catalogue of metric names ([`catalogue`]), the
//! [`SyncMetrics`] snapshot that sets the gauges, and (with the `prometheus` feature)
//! the Prometheus exporter (`install_prometheus`).
//!
//! Library crates record through the `metrics` facade using the names in
//! [`catalogue`]; only the facade and the CLI install an exporter. Without the
//! `prometheus` feature this crate links no exporter and no HTTP server. It knows the
//! core types and nothing of SQLite, usearch or PostgreSQL.
//!
//! The README's example (a doc test) shows it in use.
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod catalogue;
mod snapshot;

pub use snapshot::{DrainGauges, SyncMetrics};

#[cfg(feature = "prometheus")]
use std::net::SocketAddr;

/// Errors of the telemetry layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[cfg(feature = "prometheus")]
    #[error("cannot install the Prometheus exporter on {addr}: {reason}")]
    Exporter { addr: SocketAddr, reason: String },
}

/// `Result` with the telemetry layer's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The default `/metrics` address.
#[cfg(feature = "prometheus")]
#[cfg_attr(docsrs, doc(cfg(feature = "prometheus")))]
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9090";

/// Installs the global `metrics` recorder with a Prometheus HTTP endpoint on `addr`
/// (`GET /metrics`) and registers the catalogue's descriptions. Call it once, from
/// an application (the CLI does), inside a Tokio runtime.
#[cfg(feature = "prometheus")]
#[cfg_attr(docsrs, doc(cfg(feature = "prometheus")))]
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

/// The README's examples, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
