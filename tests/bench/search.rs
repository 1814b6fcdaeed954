//! Vector search through hybridsync next to raw usearch with the same parameters, and
//! recall@10 against exact brute force, on clustered data (speakers and their samples).

use crate::reads::{nanos, percentile};
use crate::report::Row;
use anyhow::{Context, Result};
use hybridsync::{HybridStore, Metric, Precision, VectorSpec, WriteOptions};
use hybridsync_testkit::workload::Clustered;
use std::hint::black_box;
use std::time::Instant;

const DIM: usize = 192;
const QUERIES: usize = 200;

pub(crate) async fn run(n: usize) -> Result<Vec<Row>> {
    println!("vector search: {n} × {DIM}-D cosine f16, top-10, {QUERIES} queries");
    let mut voices = Clustered::new(21, n / 20, DIM, 0.15);
    let vectors = voices.samples(n);
    let queries = voices.samples(QUERIES);

    let tmp = tempfile::tempdir()?;
    let store = HybridStore::builder(tmp.path()).open().await?;
    store
        .create_collection(
            "voices",
            Some(VectorSpec::new(DIM, Metric::Cosine, Precision::F16)?),
        )
        .await?;
    let raw = store.raw("voices")?;
    for (c, chunk) in vectors.chunks(1_000).enumerate() {
        let items = chunk
            .iter()
            .enumerate()
            .map(|(j, v)| {
                (
                    format!("k{}", c * 1_000 + j),
                    vec![0u8; 16],
                    WriteOptions::default().embedding(v.clone()),
                )
            })
            .collect();
        raw.put_many(items).await?;
    }

    // Raw usearch, same metric, precision and defaults, built from the same vectors.
    let index = usearch::Index::new(&usearch::IndexOptions {
        dimensions: DIM,
        metric: usearch::MetricKind::Cos,
        quantization: usearch::ScalarKind::F16,
        ..Default::default()
    })
    .context("usearch index")?;
    index.reserve(n)?;
    for (i, v) in vectors.iter().enumerate() {
        index.add(i as u64, v)?;
    }

    let (mut ours, mut base) = (Vec::new(), Vec::new());
    let (mut found, mut raw_found) = (0usize, 0usize);
    for q in &queries {
        let started = Instant::now();
        let hits = raw.search(q, 10).await?;
        ours.push(started.elapsed());
        let started = Instant::now();
        let matches = black_box(index.search(q, 10)?);
        base.push(started.elapsed());
        // Exact top-10 by brute force over the f32 vectors.
        let mut exact: Vec<(f32, usize)> = vectors
            .iter()
            .enumerate()
            .map(|(i, v)| (Metric::Cosine.distance(q, v), i))
            .collect();
        exact.select_nth_unstable_by(9, |a, b| a.0.total_cmp(&b.0));
        let truth: Vec<usize> = exact[..10].iter().map(|(_, i)| *i).collect();
        found += hits
            .iter()
            .filter(|h| truth.contains(&h.key.as_str()[1..].parse().unwrap_or(usize::MAX)))
            .count();
        raw_found += matches
            .keys
            .iter()
            .filter(|k| truth.contains(&(**k as usize)))
            .count();
    }
    let recall = found as f64 / (QUERIES * 10) as f64;
    let raw_recall = raw_found as f64 / (QUERIES * 10) as f64;
    let (o50, b50) = (percentile(&mut ours, 0.5), percentile(&mut base, 0.5));
    let (o99, b99) = (percentile(&mut ours, 0.99), percentile(&mut base, 0.99));
    println!(
        "  ours:        p50 {:>9.0} ns  p99 {:>9.0} ns  recall@10 {recall:.3}",
        nanos(o50),
        nanos(o99)
    );
    println!(
        "  raw usearch: p50 {:>9.0} ns  p99 {:>9.0} ns  recall@10 {raw_recall:.3}",
        nanos(b50),
        nanos(b99)
    );
    store.close().await;
    Ok(vec![
        Row::latency(
            "vector_search_p50",
            nanos(o50),
            "raw_usearch_p50",
            nanos(b50),
            "<= 1.3x",
        ),
        Row::latency(
            "vector_search_p99",
            nanos(o99),
            "raw_usearch_p99",
            nanos(b99),
            "report",
        ),
        Row::new(
            "vector_search_recall_at_10",
            "recall",
            recall,
            "exact_brute_force",
            1.0,
            ">= 0.95",
        ),
    ])
}
