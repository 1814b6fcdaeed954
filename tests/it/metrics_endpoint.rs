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

    let body = tokio::task::spawn_blocking(move || scrape(addr))
        .await
        .unwrap();
    for name in [
        "hybridsync_cache_hits_total 1",
        "hybridsync_write_latency_seconds_count 1",
        "hybridsync_read_latency_seconds_count{source=\"cache\"} 1",
        "hybridsync_search_latency_seconds_count 1",
        "hybridsync_queue_size{priority=\"normal\"} 1",
    ] {
        assert!(body.contains(name), "missing {name:?} in:\n{body}");
    }
}
