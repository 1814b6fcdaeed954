//! Vector search beside the libraries users would pick instead: hnswlib and faiss HNSW
//! (from PyPI, in a venv this bench creates) on the same vectors and queries, one query
//! at a time on one thread, with the same graph parameters (M 16, ef_construction 128);
//! raw usearch (f16, cosine); and our own index searched directly; over the same `ef` values. Skipped, with a note, where Python or PyPI is not available.

use crate::reads::{nanos, percentile};
use crate::report::Row;
use anyhow::{Context, Result};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

const EFS: [usize; 7] = [16, 24, 32, 48, 64, 96, 128];
const GOAL_RECALL: f64 = 0.99;

/// One configuration's figures.
#[derive(Debug, Clone, serde::Deserialize)]
struct Point {
    peer: String,
    ef: usize,
    p50_ns: f64,
    /// One batched call on one thread, per query (peers only): no per-call overhead of
    /// the Python binding.
    #[serde(default)]
    batch_mean_ns: Option<f64>,
    recall: f64,
}

impl Point {
    /// The faster of one-at-a-time and batched: the peer's best case.
    fn best_ns(&self) -> f64 {
        self.batch_mean_ns
            .map_or(self.p50_ns, |b| b.min(self.p50_ns))
    }
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// `target/bench/peers-venv` with faiss-cpu, hnswlib and numpy, made once.
fn venv() -> Result<PathBuf> {
    let dir = root().join("target/bench/peers-venv");
    let python = dir.join("bin/python");
    let ready = || {
        Command::new(&python)
            .args(["-c", "import faiss, hnswlib, numpy"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if ready() {
        return Ok(python);
    }
    println!(
        "  creating {} (faiss-cpu, hnswlib, numpy from PyPI)",
        dir.display()
    );
    let made = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&dir)
        .status()
        .context("python3 -m venv")?;
    anyhow::ensure!(made.success(), "python3 -m venv failed");
    let installed = Command::new(dir.join("bin/pip"))
        .args(["install", "-q", "faiss-cpu", "hnswlib", "numpy"])
        .status()
        .context("pip install")?;
    anyhow::ensure!(
        installed.success() && ready(),
        "pip install of the peers failed"
    );
    Ok(python)
}

fn write_inputs(
    dir: &Path,
    vectors: &[Vec<f32>],
    queries: &[Vec<f32>],
    truths: &[Vec<u64>],
) -> Result<()> {
    let dim = vectors[0].len();
    let mut data = std::io::BufWriter::new(std::fs::File::create(dir.join("data.bin"))?);
    for n in [vectors.len(), queries.len(), dim] {
        data.write_all(&(n as u32).to_le_bytes())?;
    }
    for v in vectors.iter().chain(queries) {
        for x in v {
            data.write_all(&x.to_le_bytes())?;
        }
    }
    data.flush()?;
    let mut truth = std::io::BufWriter::new(std::fs::File::create(dir.join("truth.bin"))?);
    truth.write_all(&(truths.len() as u32).to_le_bytes())?;
    truth.write_all(&(truths[0].len() as u32).to_le_bytes())?;
    for t in truths.iter().flatten() {
        truth.write_all(&t.to_le_bytes())?;
    }
    truth.flush()?;
    Ok(())
}

/// The peers' sweep, from `peers.py`.
fn python_peers(
    vectors: &[Vec<f32>],
    queries: &[Vec<f32>],
    truths: &[Vec<u64>],
) -> Result<Vec<Point>> {
    let python = venv()?;
    let tmp = tempfile::tempdir()?;
    write_inputs(tmp.path(), vectors, queries, truths)?;
    let efs: Vec<String> = EFS.iter().map(usize::to_string).collect();
    let out = Command::new(python)
        .arg(root().join("tests/bench/peers.py"))
        .arg(tmp.path().join("data.bin"))
        .arg(tmp.path().join("truth.bin"))
        .args(["16", "128", &efs.join(",")])
        .output()
        .context("running peers.py")?;
    anyhow::ensure!(
        out.status.success(),
        "peers.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).with_context(|| format!("peers.py said {line:?}")))
        .collect()
}

/// Raw usearch as our f16 cosine index runs it, with usearch's graph defaults (M 16,
/// ef_construction 128), built on two threads; each `ef` in turn.
fn usearch_sweep(
    vectors: &[Vec<f32>],
    queries: &[Vec<f32>],
    truths: &[Vec<u64>],
) -> Result<Vec<Point>> {
    let index = usearch::Index::new(&usearch::IndexOptions {
        dimensions: vectors[0].len(),
        metric: usearch::MetricKind::Cos,
        quantization: usearch::ScalarKind::F16,
        ..Default::default()
    })?;
    index.reserve_capacity_and_threads(vectors.len(), 2)?;
    std::thread::scope(|s| -> Result<()> {
        let parts: Vec<_> = (0..2)
            .map(|part| {
                let index = &index;
                s.spawn(move || -> Result<()> {
                    for i in (part..vectors.len()).step_by(2) {
                        index.add(i as u64, &vectors[i])?;
                    }
                    Ok(())
                })
            })
            .collect();
        for part in parts {
            part.join().expect("build thread")?;
        }
        Ok(())
    })?;
    sweep("usearch_f16_cos", queries, truths, |q, ef| {
        index.change_expansion_search(ef);
        Ok(index.search(q, 10)?.keys)
    })
}

/// Our index as the store runs it (f16, cosine, M 16, ef_construction 128, built on
/// two threads), searched directly at each `ef`.
fn ours_sweep(
    vectors: &[Vec<f32>],
    queries: &[Vec<f32>],
    truths: &[Vec<u64>],
) -> Result<Vec<Point>> {
    use hybridsync_core::{CollectionName, Key, Metric, Precision, VectorCache, VectorSpec};
    let index = hybridsync_vector::HnswCache::new(hybridsync_vector::VectorOptions {
        exact_below: 0,
        build_threads: 2,
        ..Default::default()
    });
    let voices = CollectionName::new("voices")?;
    let spec = VectorSpec::new(vectors[0].len(), Metric::Cosine, Precision::F16)?;
    let rows = vectors
        .iter()
        .enumerate()
        .map(|(i, v)| Ok((i as u64, Key::new(format!("k{i}"))?, v.clone())))
        .collect::<Result<Vec<_>>>()?;
    index.build(&voices, &spec, rows)?;
    sweep("ours_hnsw_f16_cos", queries, truths, |q, ef| {
        Ok(index
            .search_with_ef(&voices, q, 10, ef)?
            .iter()
            .map(|h| h.label)
            .collect())
    })
}

/// p50 and recall@10 of `search` (a query and `ef` → the labels found) at each `ef`.
fn sweep(
    peer: &str,
    queries: &[Vec<f32>],
    truths: &[Vec<u64>],
    mut search: impl FnMut(&[f32], usize) -> Result<Vec<u64>>,
) -> Result<Vec<Point>> {
    let mut points = Vec::new();
    for ef in EFS {
        for q in queries.iter().take(20) {
            std::hint::black_box(search(q, ef)?);
        }
        let (mut times, mut found) = (Vec::new(), 0);
        for (q, truth) in queries.iter().zip(truths) {
            let started = Instant::now();
            let hits = search(q, ef)?;
            times.push(started.elapsed());
            found += hits.iter().filter(|k| truth.contains(k)).count();
        }
        points.push(Point {
            peer: peer.into(),
            ef,
            p50_ns: nanos(percentile(&mut times, 0.5)),
            batch_mean_ns: None,
            recall: found as f64 / (10 * truths.len()) as f64,
        });
    }
    Ok(points)
}

/// The fastest configuration of `peer` at the goal's recall.
fn fastest<'a>(points: &'a [Point], peer: &str) -> Option<&'a Point> {
    points
        .iter()
        .filter(|p| p.peer == peer && p.recall >= GOAL_RECALL)
        .min_by(|a, b| a.best_ns().total_cmp(&b.best_ns()))
}

/// Rows: our default search through the store (`ours_p50` at `ours_recall`), our index's
/// and raw usearch's fastest `ef` at recall@10 ≥ 0.99, each against the fastest peer
/// there.
pub(crate) fn run(
    vectors: &[Vec<f32>],
    queries: &[Vec<f32>],
    truths: &[Vec<u64>],
    ours_p50: f64,
    ours_recall: f64,
) -> Result<Vec<Row>> {
    println!(
        "vector search peers: {} × {}-D cosine, top-10, one thread, M 16, ef_construction 128",
        vectors.len(),
        vectors[0].len()
    );
    let mut points = usearch_sweep(vectors, queries, truths)?;
    points.extend(ours_sweep(vectors, queries, truths)?);
    match python_peers(vectors, queries, truths) {
        Ok(peers) => points.extend(peers),
        Err(e) => {
            println!("  peers skipped: {e:#}");
            return Ok(Vec::new());
        }
    }
    for p in &points {
        println!(
            "  {:<22} ef {:>3}: p50 {:>7.1} µs{}  recall@10 {:.3}",
            p.peer,
            p.ef,
            p.p50_ns / 1e3,
            p.batch_mean_ns
                .map_or(String::new(), |b| format!(" (batched {:>6.1} µs)", b / 1e3)),
            p.recall
        );
    }
    let best = ["hnswlib", "faiss_hnsw"]
        .iter()
        .filter_map(|peer| fastest(&points, peer))
        .min_by(|a, b| a.best_ns().total_cmp(&b.best_ns()))
        .context("no peer reached recall 0.99")?;
    let baseline = format!("{}_ef{}_p50_recall_{:.3}", best.peer, best.ef, best.recall);
    println!(
        "  ours (default): p50 {:.1} µs recall@10 {ours_recall:.3}; fastest peer at ≥ 0.99: {baseline}",
        ours_p50 / 1e3
    );
    let mut rows = vec![Row::latency(
        "vector_search_p50_f16",
        ours_p50,
        &baseline,
        best.best_ns(),
        "<= 1.0x",
    )];
    if let Some(own) = fastest(&points, "ours_hnsw_f16_cos") {
        rows.push(Row::latency(
            &format!("ours_hnsw_f16_ef{}_p50_recall_{:.3}", own.ef, own.recall),
            own.p50_ns,
            &baseline,
            best.best_ns(),
            "<= 1.0x",
        ));
    }
    if let Some(raw) = fastest(&points, "usearch_f16_cos") {
        rows.push(Row::latency(
            &format!("usearch_f16_ef{}_p50_recall_{:.3}", raw.ef, raw.recall),
            raw.p50_ns,
            &baseline,
            best.best_ns(),
            "report",
        ));
    }
    Ok(rows)
}
