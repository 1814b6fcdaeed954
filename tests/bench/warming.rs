//! Predictive warming: hit rate and read latency with warming on and off on a periodic
//! workload whose working set is five times the cache, the same on a random workload
//! (no pattern to learn) with the CPU it costs, and what recording a read costs.

use crate::reads::{nanos, percentile};
use crate::report::{Row, median};
use anyhow::Result;
use hybridsync::{HybridStore, WarmingConfig, WarmingStats, WriteOptions};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::hint::black_box;
use std::time::{Duration, Instant};

const PAYLOAD: usize = 256;

/// Paired trials of the random workload, warming off and on.
const RANDOM_TRIALS: usize = 11;

/// Paired trials of the periodic workload, warming off and on.
const PERIODIC_TRIALS: usize = 3;

/// The workload's scale: keys, cache entries (a fifth of the keys), and how long the
/// periodic run lasts (half of it learning, half measured).
struct Scale {
    keys: usize,
    cache: usize,
    run: Duration,
    random_reads: usize,
}

/// Warming at the workload's time scale: the default predictor (threshold 0.7), with
/// rounds every 100 ms and room for the reads due in one. The defaults (60 s, top 10)
/// are the same ratio of due reads to `top_k` at a scale of minutes.
fn warming(on: bool) -> WarmingConfig {
    WarmingConfig {
        enabled: on,
        interval: Duration::from_millis(100),
        top_k: 128,
        ..WarmingConfig::default()
    }
}

fn key(i: usize) -> String {
    format!("user-{i:06}")
}

/// A store with `keys` records of 256 bytes and a hot cache of `cache` entries, empty
/// of them (written, then pushed out by reads of other keys).
async fn store(dir: &std::path::Path, scale: &Scale, on: bool) -> Result<HybridStore> {
    let store = HybridStore::builder(dir)
        .hot_cache(scale.cache, usize::MAX)
        .warming(warming(on))?
        .open()
        .await?;
    store.create_collection("profiles", None).await?;
    let raw = store.raw("profiles")?;
    let keys: Vec<usize> = (0..scale.keys).collect();
    for chunk in keys.chunks(1_000) {
        raw.put_many(
            chunk
                .iter()
                .map(|&i| {
                    (
                        key(i),
                        vec![(i % 251) as u8; PAYLOAD],
                        WriteOptions::default(),
                    )
                })
                .collect(),
        )
        .await?;
    }
    Ok(store)
}

/// The CPU time this process has used (every thread, user and system), to the
/// nanosecond: `/proc/self/stat` counts in 10 ms ticks, a percent of a trial.
fn cpu_time() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ProcessCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// One periodic run: every key is read every 2, 3 or 4 s (by key), each read jittered
/// by up to ±5 % of its period, from a random phase. Returns the hit rate, p50, p90
/// and p99 of the reads in the second half, warming's figures, and those reads in order.
async fn periodic(scale: &Scale, on: bool) -> Result<Periodic> {
    let tmp = tempfile::tempdir()?;
    let store = store(tmp.path(), scale, on).await?;
    let raw = store.raw("profiles")?;
    let mut rng = StdRng::seed_from_u64(19);
    let mut events: Vec<(Duration, usize)> = Vec::new();
    for i in 0..scale.keys {
        let period = [2.0, 3.0, 4.0][i % 3];
        let mut at = rng.random_range(0.0..period);
        while at < scale.run.as_secs_f64() {
            let jitter = rng.random_range(-0.05..0.05) * period;
            events.push((Duration::from_secs_f64((at + jitter).max(0.0)), i));
            at += period;
        }
    }
    events.sort();
    let measured_from = scale.run / 2;
    let mut reads = Vec::new();
    let started = tokio::time::Instant::now();
    for (at, i) in events {
        tokio::time::sleep_until(started + at).await;
        let before = store.cache_stats().hits;
        let t = Instant::now();
        black_box(raw.get(&key(i)).await?);
        let took = t.elapsed();
        if at >= measured_from {
            reads.push((took, store.cache_stats().hits > before));
        }
    }
    let (stats, cache_bytes) = (store.warming_stats(), store.cache_stats().bytes);
    store.close().await;
    let mut latencies: Vec<Duration> = reads.iter().map(|&(took, _)| took).collect();
    let hits = reads.iter().filter(|&&(_, hit)| hit).count();
    Ok(Periodic {
        hit_rate: hits as f64 / reads.len() as f64,
        quantiles: [0.5, 0.9, 0.99].map(|q| percentile(&mut latencies, q)),
        stats,
        cache_bytes,
        reads,
    })
}

/// One periodic run's figures.
struct Periodic {
    hit_rate: f64,
    /// p50, p90 and p99 of the measured reads.
    quantiles: [Duration; 3],
    stats: WarmingStats,
    /// The hot cache's bytes at the end.
    cache_bytes: usize,
    /// The measured reads in order: how long each took, and whether it hit.
    reads: Vec<(Duration, bool)>,
}

/// The p50 and p90 of the misses, by how many hits came just before each: a miss after
/// a run of hits finds the store's read path cold in the CPU's caches, so it is slower
/// than one after a miss, with warming on or off (`tests/bench/measures.md`). Over the
/// trials of one side, each counted from its own start.
fn misses_by_hits_before(trials: &[Vec<(Duration, bool)>]) -> String {
    let mut groups: [Vec<Duration>; 4] = Default::default();
    for reads in trials {
        let mut run = 0;
        for &(took, hit) in reads {
            if hit {
                run += 1;
                continue;
            }
            groups[match run {
                0 => 0,
                1..=2 => 1,
                3..=6 => 2,
                _ => 3,
            }]
            .push(took);
            run = 0;
        }
    }
    ["0", "1-2", "3-6", "7+"]
        .into_iter()
        .zip(groups)
        .filter(|(_, misses)| !misses.is_empty())
        .map(|(name, mut misses)| {
            let n = misses.len();
            let p50 = nanos(percentile(&mut misses, 0.5)) / 1e3;
            let p90 = nanos(percentile(&mut misses, 0.9)) / 1e3;
            format!("after {name} hits: {n} misses, p50 {p50:.1} us, p90 {p90:.1} us")
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Uniform random reads as fast as they go: the hit rate and the CPU they take.
async fn random(scale: &Scale, on: bool) -> Result<(f64, Duration)> {
    let tmp = tempfile::tempdir()?;
    let store = store(tmp.path(), scale, on).await?;
    let raw = store.raw("profiles")?;
    let mut rng = StdRng::seed_from_u64(7);
    let keys: Vec<String> = (0..scale.random_reads)
        .map(|_| key(rng.random_range(0..scale.keys)))
        .collect();
    let before = store.cache_stats().hits;
    let cpu = cpu_time();
    for k in &keys {
        black_box(raw.get(k).await?);
    }
    let cpu = cpu_time() - cpu;
    let hits = store.cache_stats().hits - before;
    store.close().await;
    Ok((hits as f64 / keys.len() as f64, cpu))
}

/// The cached read p50 of one store, every read a hit.
async fn cached_read_p50(on: bool, iterations: usize) -> Result<Duration> {
    let tmp = tempfile::tempdir()?;
    let scale = Scale {
        keys: 1_000,
        cache: 2_000,
        run: Duration::ZERO,
        random_reads: 0,
    };
    let store = store(tmp.path(), &scale, on).await?;
    let raw = store.raw("profiles")?;
    let keys: Vec<String> = (0..scale.keys).map(key).collect();
    let mut samples = Vec::with_capacity(iterations);
    for i in 0..iterations {
        let k = &keys[i % keys.len()];
        let t = Instant::now();
        black_box(raw.get(k).await?);
        samples.push(t.elapsed());
    }
    store.close().await;
    Ok(percentile(&mut samples, 0.5))
}

/// Batches of the record-cost loop: a batch lasts milliseconds, so one interruption by
/// the other core's work (a store's background threads left from the runs before) moves
/// a single batch, not the median.
const RECORD_BATCHES: usize = 11;

/// What recording one read costs the read path: `Warmer::record`, as the engine calls
/// it, on a thousand keys in turn; the per-record time of each batch of `iterations`.
fn record_cost(iterations: usize) -> Vec<f64> {
    let warmer = hybridsync_engine::Warmer::new(WarmingConfig::default());
    let collection = hybridsync::CollectionName::new("profiles").expect("a valid name");
    let keys: Vec<String> = (0..1_000).map(key).collect();
    let at = Instant::now();
    (0..RECORD_BATCHES)
        .map(|_| {
            let started = Instant::now();
            for k in keys.iter().cycle().take(iterations) {
                warmer.record(black_box(&collection), black_box(k), black_box(at));
            }
            started.elapsed().as_nanos() as f64 / iterations as f64
        })
        .collect()
}

pub(crate) async fn run(quick: bool) -> Result<Vec<Row>> {
    let scale = if quick {
        Scale {
            keys: 300,
            cache: 60,
            run: Duration::from_secs(10),
            random_reads: 20_000,
        }
    } else {
        Scale {
            keys: 1_000,
            cache: 200,
            run: Duration::from_secs(30),
            random_reads: 200_000,
        }
    };
    println!(
        "warming: {} keys read every 2-4 s (±5 %), cache of {} entries, {} s (the second half measured)",
        scale.keys,
        scale.cache,
        scale.run.as_secs()
    );
    // Paired trials, in the order off-on, on-off, …: one run's tail is a few slow reads,
    // and a swing of the machine between two single runs moved the p99 ratio 1.03-1.65x.
    let mut runs: [Vec<(f64, [Duration; 3])>; 2] = [Vec::new(), Vec::new()];
    let (mut stats, mut cache_bytes) = (WarmingStats::default(), 0);
    let mut traces: [Vec<Vec<(Duration, bool)>>; 2] = [Vec::new(), Vec::new()];
    for trial in 0..PERIODIC_TRIALS {
        for on in [trial % 2 == 1, trial % 2 == 0] {
            let run = periodic(&scale, on).await?;
            if on {
                (stats, cache_bytes) = (run.stats, run.cache_bytes);
            }
            runs[usize::from(on)].push((run.hit_rate, run.quantiles));
            traces[usize::from(on)].push(run.reads);
        }
    }
    let rate_of = |side: usize| runs[side].iter().map(|r| r.0).collect::<Vec<f64>>();
    let lat_of = |side: usize, at: usize| {
        runs[side]
            .iter()
            .map(|r| nanos(r.1[at]))
            .collect::<Vec<f64>>()
    };
    let (off_rates, on_rates) = (rate_of(0), rate_of(1));
    let [off_rate, on_rate] = [off_rates.clone(), on_rates.clone()].map(|mut v| median(&mut v));
    let off_lat: [Vec<f64>; 3] = [0, 1, 2].map(|at| lat_of(0, at));
    let on_lat: [Vec<f64>; 3] = [0, 1, 2].map(|at| lat_of(1, at));
    let off_med = off_lat.clone().map(|mut v| median(&mut v));
    let on_med = on_lat.clone().map(|mut v| median(&mut v));
    println!(
        "  periodic, off: hit rate {off_rate:.3}  p50 {:>6.0} ns  p90 {:>6.0} ns  p99 {:>6.0} ns (medians of {PERIODIC_TRIALS}; p99s {:?})",
        off_med[0], off_med[1], off_med[2], off_lat[2]
    );
    println!(
        "  periodic, on:  hit rate {on_rate:.3}  p50 {:>6.0} ns  p90 {:>6.0} ns  p99 {:>6.0} ns (medians of {PERIODIC_TRIALS}; p99s {:?})",
        on_med[0], on_med[1], on_med[2], on_lat[2]
    );
    println!("  warming: {stats:?}");
    println!("  misses, off: {}", misses_by_hits_before(&traces[0]));
    println!("  misses, on:  {}", misses_by_hits_before(&traces[1]));
    // Paired trials, in the order off-on, on-off, … so a drift of the machine's load
    // weighs on both sides alike.
    let (mut rates, mut cpus) = ([Vec::new(), Vec::new()], [Vec::new(), Vec::new()]);
    for trial in 0..RANDOM_TRIALS {
        for on in [trial % 2 == 1, trial % 2 == 0] {
            let (rate, cpu) = random(&scale, on).await?;
            rates[usize::from(on)].push(rate);
            cpus[usize::from(on)].push(cpu.as_secs_f64() * 1e3);
        }
    }
    let [random_off, random_on] = rates.clone().map(|mut v| median(&mut v));
    let [cpu_off, cpu_on] = cpus.clone().map(|mut v| median(&mut v));
    println!(
        "  random, {} reads x {RANDOM_TRIALS} trials: hit rate off {random_off:.3} on {random_on:.3}; CPU ms off {:.0?} on {:.0?}",
        scale.random_reads, cpus[0], cpus[1]
    );
    let iterations = if quick { 20_000 } else { 200_000 };
    let read_off = cached_read_p50(false, iterations).await?;
    let read_on = cached_read_p50(true, iterations).await?;
    let mut batches = record_cost(iterations * 5);
    let record = median(&mut batches);
    println!(
        "  cached read p50: off {:.0} ns, on {:.0} ns; recording a read {record:.1} ns (batches {batches:.1?})",
        nanos(read_off),
        nanos(read_on),
    );
    Ok(vec![
        Row::new(
            "periodic_hit_rate_warming_on",
            "hit rate",
            on_rate,
            "periodic_hit_rate_warming_off",
            off_rate,
            ">= +0.20",
        ),
        Row::latency(
            "periodic_read_p50_warming_on",
            on_med[0],
            "periodic_read_p50_warming_off",
            off_med[0],
            "report",
        )
        .paired(&on_lat[0], &off_lat[0]),
        Row::latency(
            "periodic_read_p90_warming_on",
            on_med[1],
            "periodic_read_p90_warming_off",
            off_med[1],
            "report",
        )
        .paired(&on_lat[1], &off_lat[1]),
        Row::latency(
            "periodic_read_p99_warming_on",
            on_med[2],
            "periodic_read_p99_warming_off",
            off_med[2],
            "< 1x",
        )
        .paired(&on_lat[2], &off_lat[2]),
        Row::new(
            "warming_accuracy",
            "hit rate",
            stats.accuracy,
            "every_prefetch_read",
            1.0,
            "report",
        ),
        Row::new(
            "warming_state_bytes_1000_keys",
            "bytes",
            stats.memory_bytes as f64,
            "hot_cache_bytes_200_entries",
            cache_bytes as f64,
            "report",
        ),
        Row::new(
            "random_hit_rate_warming_on",
            "hit rate",
            random_on,
            "random_hit_rate_warming_off",
            random_off,
            "~1x (no loss)",
        )
        .paired(&rates[1], &rates[0]),
        Row::new(
            "random_cpu_warming_on",
            "ms",
            cpu_on,
            "random_cpu_warming_off",
            cpu_off,
            "<= 1.05x",
        )
        .paired(&cpus[1], &cpus[0]),
        Row::latency(
            "cached_read_p50_warming_on",
            nanos(read_on),
            "cached_read_p50_warming_off",
            nanos(read_off),
            "report",
        ),
        Row::latency(
            "warming_record_access",
            record,
            "cached_read_p50_warming_off",
            nanos(read_off),
            "report",
        )
        .spread(&batches, "batches"),
    ])
}
