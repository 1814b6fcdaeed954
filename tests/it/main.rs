//! End-to-end tests of hybridsync: the `hybridsync` binary as a user runs it, the
//! facade over real SQLite and usearch, the throwaway servers of the test kit, and the
//! Prometheus endpoint. One test binary, modules by area.

mod cli;
mod cloud_sync;
mod codegen;
mod disk_full;
mod metrics_endpoint;
mod migrate;
mod pool_pressure;
mod redis_publisher;
mod testkit;
mod watch;

/// The generator `cargo xtask codegen` runs (the `hybridsync-codegen` binary), for
/// the checks of what it writes.
#[path = "../codegen/generate.rs"]
mod generate;
