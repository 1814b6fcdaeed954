//! The Prometheus endpoint serves the catalogue's metrics as the store records them.

use hybridsync::{HybridStore, Metric, Precision, VectorSpec, WriteOptions};
use std::io::{Read, Write};

/// The body of `GET /metrics` at `addr`.
pub(crate) fn scrape(addr: std::net::SocketAddr) -> String {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut body = String::new();
    stream.read_to_string(&mut body).unwrap();
    body
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
