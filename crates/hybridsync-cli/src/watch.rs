//! `hybridsync status --watch`: a live dashboard, redrawn every second, of what the
//! local database says (shared with `serve` and every other process on this data
//! directory): the outbox by state and priority, the push and pull rates, the last
//! errors, the collections and the sync history; and the cloud as this process sees
//! it (reachability, circuit and pool, probed every few seconds).
//!
//! On a terminal it draws on the alternate screen with the cursor hidden and reads
//! keys unbuffered; `q` or Ctrl-C restores the terminal exactly as it was. Elsewhere
//! (a pipe, a file) it prints one plain frame per second.

use crate::time::{span, utc};
use anyhow::{Context, Result};
use hybridsync::{HybridStore, OutboxState, Priority, Status};
use std::fmt::Write as _;
use std::io::{IsTerminal, Read, Write};
use std::time::{Duration, Instant};

const REFRESH: Duration = Duration::from_secs(1);
/// How often the cloud is probed (each probe waits at most `PROBE_TIMEOUT`).
const PROBE_EVERY: Duration = Duration::from_secs(5);
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Pull rates are averaged over the sync runs that started this long ago or less.
const PULL_WINDOW_MS: u64 = 60_000;

/// The terminal in dashboard mode; dropping it (also while unwinding) restores it.
struct Screen {
    saved: Option<rustix::termios::Termios>,
}

impl Screen {
    fn enter() -> Result<Self> {
        let stdin = std::io::stdin();
        let saved = if stdin.is_terminal() {
            let saved = rustix::termios::tcgetattr(&stdin).context("reading the terminal mode")?;
            let mut raw = saved.clone();
            // Keys arrive one by one and are not echoed; Ctrl-C still raises SIGINT.
            raw.local_modes
                .remove(rustix::termios::LocalModes::ICANON | rustix::termios::LocalModes::ECHO);
            raw.special_codes[rustix::termios::SpecialCodeIndex::VMIN] = 1;
            raw.special_codes[rustix::termios::SpecialCodeIndex::VTIME] = 0;
            rustix::termios::tcsetattr(&stdin, rustix::termios::OptionalActions::Now, &raw)
                .context("setting the terminal mode")?;
            Some(saved)
        } else {
            None
        };
        // The alternate screen, cursor hidden.
        print!("\x1b[?1049h\x1b[?25l");
        std::io::stdout().flush()?;
        Ok(Self { saved })
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        print!("\x1b[?25h\x1b[?1049l");
        let _ = std::io::stdout().flush();
        if let Some(saved) = &self.saved {
            let _ = rustix::termios::tcsetattr(
                std::io::stdin(),
                rustix::termios::OptionalActions::Now,
                saved,
            );
        }
    }
}

/// Keys from standard input, read on a thread of their own that polls, so it stops
/// (and stops taking the keys typed for the shell) as soon as the dashboard ends.
struct Keys {
    rx: tokio::sync::mpsc::UnboundedReceiver<u8>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Keys {
    fn start() -> Self {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let stdin = std::io::stdin();
            let mut byte = [0u8; 1];
            while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                let mut fds = [rustix::event::PollFd::new(
                    &stdin,
                    rustix::event::PollFlags::IN,
                )];
                let timeout = rustix::event::Timespec {
                    tv_sec: 0,
                    tv_nsec: 100_000_000,
                };
                match rustix::event::poll(&mut fds, Some(&timeout)) {
                    Ok(0) => continue,
                    Ok(_) => {}
                    Err(rustix::io::Errno::INTR) => continue,
                    Err(_) => break,
                }
                match stdin.lock().read(&mut byte) {
                    Ok(1) if tx.send(byte[0]).is_ok() => {}
                    _ => break,
                }
            }
        });
        Self {
            rx,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Keys {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The cloud as this process last probed it.
#[derive(Default)]
struct Probe {
    at: Option<Instant>,
    reachable: Option<bool>,
}

pub(crate) async fn run(store: &HybridStore) -> Result<()> {
    let interactive = std::io::stdout().is_terminal();
    let screen = if interactive {
        Some(Screen::enter()?)
    } else {
        None
    };
    let mut keys = interactive.then(Keys::start);
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut terminate =
        signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut probe = Probe::default();
    let mut previous: Option<(Instant, u64)> = None;
    let mut tick = tokio::time::interval(REFRESH);
    let result = loop {
        tokio::select! {
            _ = tick.tick() => {}
            key = async { keys.as_mut()?.rx.recv().await }, if keys.is_some() => match key {
                Some(b'q' | b'Q' | 0x03) | None => break Ok(()),
                Some(_) => continue,
            },
            _ = interrupt.recv() => break Ok(()),
            _ = terminate.recv() => break Ok(()),
        }
        if store.cloud_configured() && probe.at.is_none_or(|at| at.elapsed() >= PROBE_EVERY) {
            probe = Probe {
                at: Some(Instant::now()),
                reachable: store.cloud_reachable(PROBE_TIMEOUT).await,
            };
        }
        let frame = match frame(store, &probe, &mut previous).await {
            Ok(frame) => frame,
            Err(e) => break Err(e),
        };
        let mut out = std::io::stdout().lock();
        let drawn = if interactive {
            // Home, each line cleared to its end, then everything below: no flicker.
            let mut text = String::from("\x1b[H");
            for line in frame.lines() {
                let _ = write!(text, "{line}\x1b[K\r\n");
            }
            text.push_str("\x1b[J");
            out.write_all(text.as_bytes()).and_then(|()| out.flush())
        } else {
            writeln!(out, "{frame}").and_then(|()| out.flush())
        };
        if let Err(e) = drawn {
            break Err(e.into());
        }
    };
    // The key reader stops first, so the terminal's mode is restored after the last
    // read and nothing typed afterwards is taken from the shell.
    drop(keys);
    drop(screen);
    result
}

/// One screen of the dashboard.
async fn frame(
    store: &HybridStore,
    probe: &Probe,
    previous: &mut Option<(Instant, u64)>,
) -> Result<String> {
    let status = store.status().await?;
    let errors = store.recent_errors(5).await?;
    let now_ms = crate::time::now_ms();
    let mut f = String::new();
    writeln!(
        f,
        "hybridsync status --watch   {}   device {}   q or Ctrl-C quits",
        utc(now_ms),
        &status.device_id.to_string()[..8]
    )?;
    writeln!(f, "data   {}", status.data_dir.display())?;
    cloud_line(&mut f, store, &status, probe)?;
    writeln!(f)?;

    outbox_table(&mut f, &status)?;
    let done = status.outbox.done;
    let push = match previous.replace((Instant::now(), done)) {
        Some((at, before)) => done.saturating_sub(before) as f64 / at.elapsed().as_secs_f64(),
        None => 0.0,
    };
    let pulled: u64 = status
        .history
        .iter()
        .filter(|h| now_ms.saturating_sub(h.started_ms) <= PULL_WINDOW_MS)
        .map(|h| h.pulled)
        .sum();
    let shipped = status
        .outbox
        .last_shipped_ms
        .map_or_else(|| "never".to_owned(), |ms| crate::time::age(ms, now_ms));
    writeln!(
        f,
        "push {push:.1} rows/s   pull {:.1} rows/s (last minute of sync runs)   last shipped {shipped}",
        pulled as f64 / (PULL_WINDOW_MS as f64 / 1000.0),
    )?;
    writeln!(f)?;

    writeln!(f, "LAST ERRORS")?;
    if errors.is_empty() {
        writeln!(f, "  none")?;
    }
    for e in &errors {
        let mut error = e.error.replace('\n', " ");
        error.truncate(90);
        writeln!(
            f,
            "  {}  {}/{}  {} after {} attempt{}  {error}",
            &utc(e.at_ms)[11..19],
            e.collection,
            e.key,
            e.state,
            e.attempts,
            if e.attempts == 1 { "" } else { "s" }
        )?;
    }
    writeln!(f)?;

    writeln!(f, "COLLECTIONS")?;
    if status.collections.is_empty() {
        writeln!(f, "  none")?;
    }
    for c in &status.collections {
        let vector = c.vector.map_or_else(String::new, |v| {
            format!(
                "  dim {} {} {}  indexed {}",
                v.dim, v.metric, v.precision, c.indexed
            )
        });
        let encrypted = if c.encrypted { "  encrypted" } else { "" };
        let records = if c.records == 1 { "record" } else { "records" };
        writeln!(
            f,
            "  {:<24} {:>9} {records}{vector}{encrypted}",
            c.name.to_string(),
            c.records
        )?;
    }
    writeln!(f)?;

    writeln!(f, "SYNC HISTORY (newest first)")?;
    if status.history.is_empty() {
        writeln!(f, "  none")?;
    }
    for h in status.history.iter().take(8) {
        writeln!(
            f,
            "  {}  {:<8} pushed {:>6}  pulled {:>6}  conflicts {:>4}  {:>6} ms  {}",
            &utc(h.started_ms)[..19],
            h.operation.to_string(),
            h.pushed,
            h.pulled,
            h.conflicts,
            h.duration_ms,
            h.error.as_deref().unwrap_or("ok")
        )?;
    }
    Ok(f)
}

fn cloud_line(f: &mut String, store: &HybridStore, status: &Status, probe: &Probe) -> Result<()> {
    let Some(url) = &status.cloud else {
        writeln!(f, "cloud  none (local-only; changes wait in the outbox)")?;
        return Ok(());
    };
    let reachable = match (probe.reachable, probe.at) {
        (Some(true), Some(at)) => format!("reachable ({} ago)", span(at.elapsed().as_secs_f64())),
        (Some(false), _) => "UNREACHABLE".to_owned(),
        _ => "probing".to_owned(),
    };
    let (circuit, pool) = store.sync_status().map_or_else(
        || ("-".to_owned(), "-".to_owned()),
        |s| {
            (
                s.circuit.as_str().to_owned(),
                format!("{}/{} (load {:.2})", s.pool.0, s.pool.1, s.pool_load),
            )
        },
    );
    writeln!(
        f,
        "cloud  {url}   {reachable}   circuit {circuit}   pool {pool}"
    )?;
    Ok(())
}

fn outbox_table(f: &mut String, status: &Status) -> Result<()> {
    write!(f, "{:<10}", "OUTBOX")?;
    for p in Priority::ALL {
        write!(f, " {:>9}", p.as_str())?;
    }
    writeln!(f, " {:>9}", "total")?;
    for state in OutboxState::ALL {
        let row = status.outbox.by_state.get(&state);
        write!(f, "{:<10}", state.to_string())?;
        let mut total = 0;
        for p in Priority::ALL {
            let n = row.and_then(|r| r.get(&p)).copied().unwrap_or(0);
            total += n;
            write!(f, " {n:>9}")?;
        }
        writeln!(f, " {total:>9}")?;
    }
    Ok(())
}
