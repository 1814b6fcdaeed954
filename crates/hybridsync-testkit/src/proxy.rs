//! `FaultProxy`: a TCP proxy on loopback between the library and a server, with faults
//! switched at run time: latency and jitter, a bandwidth limit, a blackhole (sockets
//! stay open, nothing moves), resets (RST) of every open connection, closing a
//! connection after N bytes, and down (refuse and drop everything).

use crate::Result;
use hybridsync_core::MutexExt;
use rand::{Rng, SeedableRng};
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the proxy does to traffic. Faults apply to new and open connections alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fault {
    /// Forward faithfully.
    #[default]
    None,
    /// Delay every chunk by `ms` plus up to `jitter_ms` more.
    Latency { ms: u64, jitter_ms: u64 },
    /// Forward at most this many bytes per second in each direction.
    Bandwidth { bytes_per_sec: u64 },
    /// Accept and keep sockets open, but forward nothing.
    Blackhole,
    /// Close each connection (both ways) once it has carried this many more bytes.
    CloseAfter { bytes: u64 },
    /// Refuse new connections and drop open ones.
    Down,
}

impl Fault {
    /// Short name, for reports.
    pub fn name(&self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Latency { .. } => "latency",
            Self::Bandwidth { .. } => "bandwidth",
            Self::Blackhole => "blackhole",
            Self::CloseAfter { .. } => "close_after",
            Self::Down => "down",
        }
    }
}

#[derive(Debug, Default)]
struct Shared {
    fault: Mutex<Fault>,
    /// Bumped by [`FaultProxy::reset`] and by [`Fault::Down`]: connections of an older
    /// generation are cut.
    generation: AtomicU64,
    /// Bytes allowed before a [`Fault::CloseAfter`] cut, counted from when it was set.
    budget: AtomicU64,
    connections: AtomicU64,
    resets: AtomicU64,
    stopped: AtomicBool,
}

/// A fault-injecting TCP proxy listening on a free loopback port. Dropping it stops
/// accepting; open connections are cut.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

const CHUNK: usize = 16 * 1024;
const POLL: Duration = Duration::from_millis(20);

impl FaultProxy {
    /// A proxy to `upstream`, forwarding faithfully until told otherwise.
    pub fn start(upstream: SocketAddr) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::default());
        let accept = shared.clone();
        std::thread::Builder::new()
            .name("fault-proxy".into())
            .spawn(move || accept_loop(&listener, upstream, &accept))?;
        Ok(Self { addr, shared })
    }

    /// The port clients connect to instead of the server's.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Switches the fault; [`Fault::Down`] also cuts every open connection.
    pub fn set(&self, fault: Fault) {
        if let Fault::CloseAfter { bytes } = fault {
            self.shared.budget.store(bytes, Ordering::SeqCst);
        }
        *self.shared.fault.lock_or_recover() = fault;
        if fault == Fault::Down {
            self.shared.generation.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// The fault in force.
    pub fn fault(&self) -> Fault {
        *self.shared.fault.lock_or_recover()
    }

    /// Resets (RST) every open connection; new ones are forwarded as before.
    pub fn reset(&self) {
        self.shared.resets.fetch_add(1, Ordering::SeqCst);
        self.shared.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::SeqCst)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.stopped.store(true, Ordering::SeqCst);
        self.shared.generation.fetch_add(1, Ordering::SeqCst);
    }
}

fn accept_loop(listener: &TcpListener, upstream: SocketAddr, shared: &Arc<Shared>) {
    while !shared.stopped.load(Ordering::SeqCst) {
        let client = match listener.accept() {
            Ok((client, _)) => client,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(2));
                continue;
            }
            Err(_) => continue,
        };
        if *shared.fault.lock_or_recover() == Fault::Down {
            cut(&client);
            continue;
        }
        let Ok(server) = TcpStream::connect_timeout(&upstream, Duration::from_secs(2)) else {
            cut(&client);
            continue;
        };
        shared.connections.fetch_add(1, Ordering::SeqCst);
        let generation = shared.generation.load(Ordering::SeqCst);
        for (from, to) in [(&client, &server), (&server, &client)] {
            let (Ok(from), Ok(to)) = (from.try_clone(), to.try_clone()) else {
                continue;
            };
            let shared = shared.clone();
            let _ = std::thread::Builder::new()
                .name("fault-proxy-pump".into())
                .spawn(move || pump(from, to, generation, &shared));
        }
    }
}

/// Closes a socket with RST rather than FIN, as a crashed peer or middlebox would.
fn cut(stream: &TcpStream) {
    let _ = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
    let _ = stream.shutdown(Shutdown::Both);
}

/// Copies `from` → `to` under the faults in force until either side closes or the
/// connection's generation is cut.
fn pump(mut from: TcpStream, mut to: TcpStream, generation: u64, shared: &Shared) {
    let _ = from.set_read_timeout(Some(POLL));
    let mut rng = rand::rngs::SmallRng::from_os_rng();
    let mut buf = vec![0u8; CHUNK];
    let cut_both = |from: &TcpStream, to: &TcpStream| {
        cut(from);
        cut(to);
    };
    loop {
        if shared.generation.load(Ordering::SeqCst) != generation {
            return cut_both(&from, &to);
        }
        let fault = *shared.fault.lock_or_recover();
        if fault == Fault::Blackhole {
            std::thread::sleep(POLL);
            continue;
        }
        let n = match from.read(&mut buf) {
            Ok(0) => {
                let _ = to.shutdown(Shutdown::Write);
                return;
            }
            Ok(n) => n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(_) => return cut_both(&from, &to),
        };
        // Faults may have changed while we waited for data.
        let fault = *shared.fault.lock_or_recover();
        match fault {
            Fault::Latency { ms, jitter_ms } => {
                let extra = if jitter_ms > 0 {
                    rng.random_range(0..=jitter_ms)
                } else {
                    0
                };
                std::thread::sleep(Duration::from_millis(ms + extra));
            }
            Fault::Bandwidth { bytes_per_sec } => {
                let secs = n as f64 / bytes_per_sec.max(1) as f64;
                std::thread::sleep(Duration::from_secs_f64(secs));
            }
            Fault::CloseAfter { .. } => {
                let left = shared
                    .budget
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |b| {
                        Some(b.saturating_sub(n as u64))
                    })
                    .unwrap_or(0);
                if left < n as u64 {
                    let _ = to.write_all(&buf[..left as usize]);
                    return cut_both(&from, &to);
                }
            }
            Fault::Blackhole => {
                // Hold what was read until the blackhole lifts (or the link is cut).
                while *shared.fault.lock_or_recover() == Fault::Blackhole {
                    if shared.generation.load(Ordering::SeqCst) != generation {
                        return cut_both(&from, &to);
                    }
                    std::thread::sleep(POLL);
                }
            }
            Fault::Down => return cut_both(&from, &to),
            Fault::None => {}
        }
        if to.write_all(&buf[..n]).is_err() {
            return cut_both(&from, &to);
        }
    }
}
