//! The HTTP endpoint of `install_prometheus`: `GET /metrics` (Prometheus text format),
//! `GET /healthz` (liveness) and `GET /readyz` (readiness), both JSON.
//!
//! One small HTTP/1.1 server on Tokio: one request per connection, a bounded request
//! head read within a deadline, the connection closed after the answer. It replaces
//! the exporter's hyper listener, so the probes share the metrics port.

use crate::{Error, Result, catalogue};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What a probe found: whether it passes (200, else 503) and its JSON body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeAnswer {
    pub ok: bool,
    /// A JSON document.
    pub body: String,
}

/// A health probe, run once per request.
pub type Probe = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = ProbeAnswer> + Send>> + Send + Sync>;

/// The probes behind `/healthz` and `/readyz`. Without them (`install_prometheus`), both
/// answer 200 while the process runs.
#[derive(Clone)]
pub struct Probes {
    /// `/healthz`: is the process (and what it serves) alive? A failure means restart.
    pub live: Probe,
    /// `/readyz`: can it do its work now? A failure means send no traffic yet.
    pub ready: Probe,
}

impl std::fmt::Debug for Probes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Probes").finish_non_exhaustive()
    }
}

/// The largest request head read; anything longer is refused.
const MAX_HEAD: usize = 8 * 1024;
/// How long a client may take to send its request head.
const HEAD_DEADLINE: Duration = Duration::from_secs(5);
/// How often histograms' buckets are drained (the exporter's upkeep).
const UPKEEP: Duration = Duration::from_secs(5);

/// Installs the global `metrics` recorder and serves `/metrics`, `/healthz` and
/// `/readyz` on `addr` (port 0 picks a free one; the bound address is returned), with
/// `probes` behind the health paths. Call it once per process, inside a Tokio runtime.
pub(crate) fn serve(addr: SocketAddr, probes: Option<Probes>) -> Result<SocketAddr> {
    let failed = |reason: String| Error::Exporter { addr, reason };
    let listener = std::net::TcpListener::bind(addr).map_err(|e| failed(e.to_string()))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| failed(e.to_string()))?;
    let bound = listener.local_addr().map_err(|e| failed(e.to_string()))?;
    let listener =
        tokio::net::TcpListener::from_std(listener).map_err(|e| failed(e.to_string()))?;
    let handle = PrometheusBuilder::new()
        .set_buckets(catalogue::LATENCY_BUCKETS)
        .and_then(PrometheusBuilder::install_recorder)
        .map_err(|e| failed(e.to_string()))?;
    catalogue::describe_all();
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(UPKEEP);
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                // Out of descriptors, say: back off instead of spinning.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let (handle, probes) = (handle.clone(), probes.clone());
            tokio::spawn(async move {
                // A client that hangs up mid-answer is its own business.
                let _ = answer(stream, &handle, probes.as_ref()).await;
            });
        }
    });
    Ok(bound)
}

/// Reads one request head and writes its answer.
async fn answer(
    mut stream: tokio::net::TcpStream,
    handle: &PrometheusHandle,
    probes: Option<&Probes>,
) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let read = tokio::time::timeout(HEAD_DEADLINE, async {
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream.read(&mut buf).await?;
            if n == 0 || head.len() + n > MAX_HEAD {
                return Ok(false);
            }
            head.extend_from_slice(&buf[..n]);
        }
        Ok::<_, std::io::Error>(true)
    })
    .await;
    let (status, content_type, body) = match read {
        Ok(Ok(true)) => route(&head, handle, probes).await,
        Ok(Err(e)) => return Err(e),
        _ => (400, "text/plain", "bad request\n".to_owned()),
    };
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        503 => "Service Unavailable",
        _ => "Bad Request",
    };
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// The status, content type and body for a request head.
async fn route(
    head: &[u8],
    handle: &PrometheusHandle,
    probes: Option<&Probes>,
) -> (u16, &'static str, String) {
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    if method != "GET" {
        return (405, "text/plain", "only GET is served\n".to_owned());
    }
    let probe = |pick: fn(&Probes) -> &Probe| probes.map(|p| pick(p).clone());
    let run = async |probe: Option<Probe>| match probe {
        Some(probe) => {
            let answer = probe().await;
            let status = if answer.ok { 200 } else { 503 };
            (status, "application/json", answer.body)
        }
        None => (200, "application/json", "{\"status\":\"ok\"}\n".to_owned()),
    };
    match path {
        "/metrics" => (
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            handle.render(),
        ),
        "/healthz" => run(probe(|p| &p.live)).await,
        "/readyz" => run(probe(|p| &p.ready)).await,
        _ => (
            404,
            "text/plain",
            "not found: try /metrics, /healthz or /readyz\n".to_owned(),
        ),
    }
}
