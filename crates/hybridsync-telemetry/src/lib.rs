//! Telemetry for hybridsync: the one catalogue of metric names ([`catalogue`]), the
//! [`SyncMetrics`] snapshot that sets the gauges, and (with the `prometheus` feature)
//! the Prometheus endpoint (`install_prometheus`: `/metrics`, `/healthz`, `/readyz`).
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
#[cfg(feature = "prometheus")]
mod http;
#[cfg(feature = "redis")]
mod redis;
mod snapshot;

#[cfg(feature = "prometheus")]
pub use http::{Probe, ProbeAnswer, Probes};
#[cfg(feature = "redis")]
pub use redis::{
    Instance, InstanceView, PublisherStatus, RedisOptions, RedisPublisher, check_redis_url,
    redis_instances,
};
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
    /// A malformed Redis URL, or Redis did not answer a read (the URL is redacted).
    #[cfg(feature = "redis")]
    #[error("redis at {url}: {reason}")]
    Redis { url: String, reason: String },
}

/// `Result` with the telemetry layer's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The default `/metrics` address.
#[cfg(feature = "prometheus")]
#[cfg_attr(docsrs, doc(cfg(feature = "prometheus")))]
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9090";

/// Installs the global `metrics` recorder with an HTTP endpoint on `addr`: `GET
/// /metrics` (Prometheus text format) and `GET /healthz` / `GET /readyz`, which answer
/// 200 while the process runs. Registers the catalogue's descriptions. Returns the
/// bound address (port 0 picks a free one). Call it once, from an application, inside
/// a Tokio runtime; `install_prometheus_with` puts real probes behind the health paths.
#[cfg(feature = "prometheus")]
#[cfg_attr(docsrs, doc(cfg(feature = "prometheus")))]
pub fn install_prometheus(addr: SocketAddr) -> Result<SocketAddr> {
    http::serve(addr, None)
}

/// [`install_prometheus`] with `probes` behind `/healthz` and `/readyz` (200 when the
/// probe passes, 503 when it fails, its JSON as the body).
#[cfg(feature = "prometheus")]
#[cfg_attr(docsrs, doc(cfg(feature = "prometheus")))]
pub fn install_prometheus_with(addr: SocketAddr, probes: Probes) -> Result<SocketAddr> {
    http::serve(addr, Some(probes))
}

/// The README's examples, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
