//! Test kit for hybridsync: throwaway PostgreSQL ([`TempPostgres`]), PgBouncer
//! ([`TempPgBouncer`], transaction pooling) and Redis ([`TempRedis`]) servers started from the machine's installed binaries on free
//! loopback ports in temp directories, a fault-injecting TCP proxy ([`FaultProxy`]) to
//! put between the library and a server, an in-memory cloud sink with fault switches
//! ([`MemorySink`]), and deterministic workload generators.
//!
//! Tests never rely on a server that is already running and never share one between
//! runs: every server here is private to the test that made it and removed on drop.
//! Nothing here is used by the library itself.
#![forbid(unsafe_code)]

mod memory_sink;
mod pgbouncer;
mod postgres;
mod process;
mod proxy;
mod redis;
pub mod workload;

pub use memory_sink::MemorySink;
pub use pgbouncer::{TempPgBouncer, TempPgBouncerOptions};
pub use postgres::{ShutdownMode, TempPostgres, TempPostgresOptions};
pub use proxy::{Fault, FaultProxy};
pub use redis::TempRedis;

/// Errors of the test kit.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("{what} not found: {hint}")]
    NotInstalled { what: &'static str, hint: String },
    #[error("`{command}` failed ({status}): {output}")]
    Command {
        command: String,
        status: String,
        output: String,
    },
    #[error("{what} did not become ready within {seconds} s")]
    NotReady { what: &'static str, seconds: u64 },
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// `Result` with the test kit's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Starts a server on a free port: `start` binds the port it is given. A port free a
/// moment ago can be taken before the server binds it, so this tries five.
pub(crate) fn start_on_a_free_port(mut start: impl FnMut(u16) -> Result<()>) -> Result<u16> {
    let mut last = None;
    for _ in 0..5 {
        let port = free_port()?;
        match start(port) {
            Ok(()) => return Ok(port),
            Err(e) => last = Some(e),
        }
    }
    Err(last.expect("at least one attempt"))
}

/// The README's examples, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
