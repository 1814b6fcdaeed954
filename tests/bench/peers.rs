//! Vector search beside the libraries users would pick instead: hnswlib and faiss HNSW
//! (from PyPI, in a venv this bench creates) on the same vectors and queries, one query
//! at a time on one thread, with the same graph parameters (M 16, ef_construction 128);
//! raw usearch (f16, cosine); and our own index searched directly; over the same `ef`
//! values. Each index is built once; then [`ROUNDS`] rounds each sweep usearch, ours and
//! the peers in turn, so all of them meet the machine's swings, and the ratio against
//! the peers is the median of the rounds' own ratios. Skipped, with a note, where Python
//! or PyPI is not available.

use crate::reads::{nanos, percentile};
use crate::report::{Row, median};
use anyhow::{Context, Result};
use std::io::{BufRead as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Instant;

const EFS: [usize; 7] = [16, 24, 32, 48, 64, 96, 128];
const GOAL_RECALL: f64 = 0.99;
/// Rounds of the sweep; each round runs every index's sweep once.
const ROUNDS: usize = 3;

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

/// `peers.py` with both peers' indexes built, waiting for sweeps.
struct Peers {
    child: Child,
    input: ChildStdin,
    output: std::io::BufReader<ChildStdout>,
    _inputs: tempfile::TempDir,
}

impl Peers {
    /// Starts `peers.py` on these vectors and waits until its indexes are built.
    fn start(vectors: &[Vec<f32>], queries: &[Vec<f32>], truths: &[Vec<u64>]) -> Result<Self> {
        let python = venv()?;
        let inputs = tempfile::tempdir()?;
        write_inputs(inputs.path(), vectors, queries, truths)?;
        let efs: Vec<String> = EFS.iter().map(usize::to_string).collect();
        let mut child = Command::new(python)
            .arg(root().join("tests/bench/peers.py"))
            .arg(inputs.path().join("data.bin"))
            .arg(inputs.path().join("truth.bin"))
            .args(["16", "128", &efs.join(",")])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("running peers.py")?;
        let input = child.stdin.take().context("peers.py stdin")?;
        let output = std::io::BufReader::new(child.stdout.take().context("peers.py stdout")?);
        let mut peers = Self {
            child,
            input,
            output,
            _inputs: inputs,
        };
        let ready = peers.line()?;
        anyhow::ensure!(ready == "ready", "peers.py said {ready:?} instead of ready");
        Ok(peers)
    }

    /// One line of `peers.py`'s output; its end is an error.
    fn line(&mut self) -> Result<String> {
        let mut line = String::new();
        let read = self.output.read_line(&mut line)?;
        anyhow::ensure!(read > 0, "peers.py ended early (its error is above)");
        Ok(line.trim_end().to_owned())
    }

    /// One sweep of both peers.
    fn sweep(&mut self) -> Result<Vec<Point>> {
        writeln!(self.input, "sweep")?;
        self.input.flush()?;
        let mut points = Vec::new();
        loop {
            let line = self.line()?;
            if line == "end" {
                return Ok(points);
            }
            points.push(
                serde_json::from_str(&line).with_context(|| format!("peers.py said {line:?}"))?,
            );
        }
    }
}

impl Drop for Peers {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Raw usearch as our f16 cosine index runs it, with usearch's graph defaults (M 16,
/// ef_construction 128), built on two threads.
fn usearch_index(vectors: &[Vec<f32>]) -> Result<usearch::Index> {
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
    Ok(index)
}

/// Our index as the store runs it (f16, cosine, M 16, ef_construction 128, built on
/// two threads), to be searched directly.
fn ours_index(
    vectors: &[Vec<f32>],
) -> Result<(
    hybridsync_vector::HnswCache,
    hybridsync_core::CollectionName,
)> {
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
    Ok((index, voices))
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

/// The median over rounds of each (peer, ef)'s figures.
fn medians(rounds: &[Vec<Point>]) -> Vec<Point> {
    let mut merged: Vec<Point> = Vec::new();
    for point in &rounds[0] {
        let same: Vec<&Point> = rounds
            .iter()
            .flatten()
            .filter(|p| p.peer == point.peer && p.ef == point.ef)
            .collect();
        let mut p50: Vec<f64> = same.iter().map(|p| p.p50_ns).collect();
        let mut batch: Vec<f64> = same.iter().filter_map(|p| p.batch_mean_ns).collect();
        merged.push(Point {
            peer: point.peer.clone(),
            ef: point.ef,
            p50_ns: median(&mut p50),
            batch_mean_ns: (!batch.is_empty()).then(|| median(&mut batch)),
            recall: same.iter().map(|p| p.recall).sum::<f64>() / same.len() as f64,
        });
    }
    merged
}

/// The fastest peer at the goal's recall, by its best case.
fn best_peer(points: &[Point]) -> Option<&Point> {
    ["hnswlib", "faiss_hnsw"]
        .iter()
        .filter_map(|peer| fastest(points, peer))
        .min_by(|a, b| a.best_ns().total_cmp(&b.best_ns()))
}

/// Rows: our default search through the store (`ours_p50` at `ours_recall`), our index's
/// and raw usearch's fastest `ef` at recall@10 ≥ 0.99, each against the fastest peer
/// there (medians over the rounds; our index's ratio is the median of the rounds' own).
pub(crate) fn run(
    vectors: &[Vec<f32>],
    queries: &[Vec<f32>],
    truths: &[Vec<u64>],
    ours_p50: f64,
    ours_recall: f64,
) -> Result<Vec<Row>> {
    println!(
        "vector search peers: {} × {}-D cosine, top-10, one thread, M 16, ef_construction 128, {ROUNDS} rounds",
        vectors.len(),
        vectors[0].len()
    );
    let raw = usearch_index(vectors)?;
    let (own, voices) = ours_index(vectors)?;
    let mut peers = match Peers::start(vectors, queries, truths) {
        Ok(peers) => peers,
        Err(e) => {
            println!("  peers skipped: {e:#}");
            return Ok(Vec::new());
        }
    };
    let mut rounds = Vec::new();
    for _ in 0..ROUNDS {
        let mut points = sweep("usearch_f16_cos", queries, truths, |q, ef| {
            raw.change_expansion_search(ef);
            Ok(raw.search(q, 10)?.keys)
        })?;
        points.extend(sweep("ours_hnsw_f16_cos", queries, truths, |q, ef| {
            Ok(own
                .search_with_ef(&voices, q, 10, ef)?
                .iter()
                .map(|h| h.label)
                .collect())
        })?);
        points.extend(peers.sweep()?);
        rounds.push(points);
    }
    drop(peers);
    let points = medians(&rounds);
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
    let best = best_peer(&points).context("no peer reached recall 0.99")?;
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
        // Each round's fastest of ours and of the peers, paired.
        let (mut ours_rounds, mut peer_rounds) = (Vec::new(), Vec::new());
        for round in &rounds {
            if let (Some(o), Some(p)) = (fastest(round, "ours_hnsw_f16_cos"), best_peer(round)) {
                ours_rounds.push(o.p50_ns);
                peer_rounds.push(p.best_ns());
            }
        }
        rows.push(
            Row::latency(
                &format!("ours_hnsw_f16_ef{}_p50_recall_{:.3}", own.ef, own.recall),
                own.p50_ns,
                &baseline,
                best.best_ns(),
                "<= 1.0x",
            )
            .paired(&ours_rounds, &peer_rounds),
        );
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
