//! The Prometheus endpoint serves the catalogue's metrics as the store records them.

use hybridsync::{HybridStore, Metric, Precision, VectorSpec, WriteOptions};
use std::io::{Read, Write};

/// The whole response (head and body) of `GET /metrics` at `addr`.
pub(crate) fn scrape(addr: std::net::SocketAddr) -> String {
    request(addr, "GET", "/metrics").unwrap()
}

/// The raw response to `METHOD path` at `addr`.
pub(crate) fn request(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
) -> std::io::Result<String> {
    let mut stream = std::net::TcpStream::connect(addr)?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response)
}

/// The status code and body of `GET path` at `addr`.
pub(crate) fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let response = request(addr, "GET", path).unwrap();
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"));
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// `promtool check metrics` on a scraped body: its complaints, or `Ok`.
pub(crate) fn promtool_check_metrics(body: &str) -> Result<String, String> {
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool runs (Debian package prometheus; cargo xtask test installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(said)
    } else {
        Err(said)
    }
}

#[tokio::test]
async fn metrics_endpoint_exposes_reads_writes_and_queue_depth() {
    let port = hybridsync_testkit::free_port().unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    hybridsync::install_prometheus(addr).unwrap();

    let tmp = tempfile::tempdir().unwrap();
    let store = HybridStore::builder(tmp.path()).open().await.unwrap();
    store
        .create_collection(
            "voices",
            Some(VectorSpec::new(2, Metric::Cosine, Precision::F32).unwrap()),
        )
        .await
        .unwrap();
    let voices = store.raw("voices").unwrap();
    voices
        .put(
            "a",
            vec![1],
            WriteOptions::default().embedding(vec![1.0, 0.0]),
        )
        .await
        .unwrap();
    voices.get("a").await.unwrap();
    voices.search(&[1.0, 0.0], 1).await.unwrap();
    store.status().await.unwrap();

    // The queue gauges come from the runtime's gauge loop (every second, and once at
    // open on its own task): scrape until it has published, as Prometheus would.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let body = loop {
        let body = tokio::task::spawn_blocking(move || scrape(addr))
            .await
            .unwrap();
        if body.contains("hybridsync_queue_size{") || std::time::Instant::now() > deadline {
            break body;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    // The recorder is global to this test process, and other tests in it write too:
    // counts are at least what this test did, and the queue gauge holds whatever
    // store reported last.
    let value = |name: &str| -> f64 {
        body.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("missing {name:?} in:\n{body}"))
    };
    for name in [
        "hybridsync_cache_hits_total",
        "hybridsync_write_latency_seconds_count",
        "hybridsync_read_latency_seconds_count{source=\"cache\"}",
        "hybridsync_search_latency_seconds_count",
    ] {
        assert!(value(name) >= 1.0, "{name} counts nothing in:\n{body}");
    }
    for priority in ["critical", "high", "normal", "low", "deferred"] {
        value(&format!("hybridsync_queue_size{{priority=\"{priority}\"}}"));
    }
}
