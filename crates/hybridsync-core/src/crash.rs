//! Named crash points for crash drills (`cargo xtask chaos`).
//!
//! The engine calls [`crash_point`] at the moments where a crash is most likely to lose
//! or duplicate data:
//!
//! | point | where |
//! |---|---|
//! | `after_local_commit` | a local write is committed (record and outbox) but not yet returned |
//! | `during_batch` | an upsert ran on the server, its transaction is not committed (behind PgBouncer; a direct sink's upsert commits on its own) |
//! | `after_server_commit` | the server committed a batch, the outbox does not know yet |
//! | `during_pull_apply` | a pulled page is committed locally, the in-memory index not updated |
//!
//! The body compiles only under `--cfg hybridsync_crash_points`, which `cargo xtask
//! test` and `cargo xtask chaos` pass to their builds (as tokio gates loom with
//! `--cfg loom`); no manifest can turn it on, so `cargo build --release` never links
//! it. Without the cfg the call compiles to nothing. With it, setting
//! `HYBRIDSYNC_CRASH_POINT=NAME:N` aborts the process (no destructors, no flushing, as
//! with SIGKILL) the Nth time it passes point `NAME`; `NAME:N:stop` freezes it there
//! instead (SIGSTOP: its sockets stay open and silent, as when a device's network
//! vanishes mid-transaction). Unset, a point costs one load.

/// Every crash point, for drills that pick one.
pub const CRASH_POINTS: [&str; 4] = [
    "after_local_commit",
    "during_batch",
    "after_server_commit",
    "during_pull_apply",
];

/// Aborts the process here when `HYBRIDSYNC_CRASH_POINT` names `name` and this is the
/// configured hit (see the module docs).
#[cfg(hybridsync_crash_points)]
pub fn crash_point(name: &'static str) {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};
    static ARMED: OnceLock<Option<(String, u64, bool)>> = OnceLock::new();
    static HITS: AtomicU64 = AtomicU64::new(0);
    let armed = ARMED.get_or_init(|| {
        let spec = std::env::var("HYBRIDSYNC_CRASH_POINT").ok()?;
        let mut parts = spec.split(':');
        let point = parts.next()?.to_owned();
        let nth = parts.next().unwrap_or("1").parse().ok()?;
        Some((point, nth, parts.next() == Some("stop")))
    });
    if let Some((point, nth, stop)) = armed {
        if point == name && HITS.fetch_add(1, Ordering::SeqCst) + 1 == *nth {
            if *stop {
                // Frozen until someone sends SIGCONT or SIGKILL. The stop reaches each
                // thread on its own way back from the kernel, and this one was seen to
                // run on for 2-7 ms after `kill` returned (long enough to commit the
                // batch it was meant to hold open), so it waits here for the stop.
                let _ = std::process::Command::new("kill")
                    .args(["-STOP", &std::process::id().to_string()])
                    .status();
                std::thread::sleep(std::time::Duration::from_secs(1));
            } else {
                std::process::abort();
            }
        }
    }
}

/// Without `--cfg hybridsync_crash_points`, nothing.
#[cfg(not(hybridsync_crash_points))]
#[inline(always)]
pub fn crash_point(_name: &'static str) {}
