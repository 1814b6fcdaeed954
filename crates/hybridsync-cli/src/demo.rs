//! `hybridsync demo`: the voice-profile scenario behind a screen-unlock path.
//!
//! Enrol speakers (192-D voiceprints plus acoustic features), then authenticate many
//! times by similarity search and by key, and show what each costs, all locally, with
//! every change durably queued for the cloud.

use crate::stats::{fmt_duration, percentiles};
use crate::voiceprint::Voices;
use anyhow::{Context, Result};
use hybridsync::{Config, HybridStore, Metric, Precision, Priority, VectorSpec, WriteOptions};
use std::collections::BTreeMap;
use std::time::Instant;

#[derive(Debug, clap::Args)]
pub(crate) struct DemoArgs {
    /// Speakers to enrol
    #[arg(long, default_value_t = 50)]
    speakers: usize,
    /// Embedding dimension (ECAPA-TDNN voiceprints are 192-D)
    #[arg(long, default_value_t = 192)]
    dim: usize,
    /// Authentication attempts
    #[arg(long, default_value_t = 1_000)]
    attempts: usize,
}

/// What the demo stores per speaker.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct VoiceProfile {
    speaker_name: String,
    acoustic_features: BTreeMap<String, f32>,
    samples: u32,
}

const COLLECTION: &str = "voice_profiles";

pub(crate) async fn run(args: &DemoArgs, mut config: Config) -> Result<()> {
    anyhow::ensure!(
        args.speakers > 0 && args.attempts > 0,
        "--speakers and --attempts must be positive"
    );
    // Without an explicit data dir the demo runs in a fresh temp dir and leaves nothing behind.
    let temp;
    let dir = match &config.data_dir {
        Some(dir) => dir.clone(),
        None => {
            temp = tempfile::Builder::new()
                .prefix("hybridsync-demo-")
                .tempdir()?;
            temp.path().to_path_buf()
        }
    };
    config.data_dir = Some(dir.clone());
    if let Some(url) = &config.cloud_url {
        // The demo sets up its own cloud schema and lets its own login act for its
        // tenant; production runs `hybridsync cloud migrate` and `cloud grant`.
        hybridsync::cloud::migrate(url, None)
            .await
            .context("preparing the cloud schema for the demo")?;
        let tenant = config.cloud.tenant.as_deref().unwrap_or("default");
        hybridsync::cloud::grant_tenant(url, None, tenant)
            .await
            .context("granting the demo's login its tenant")?;
    }
    let store = HybridStore::builder(&dir)
        .config(&config)?
        .open()
        .await
        .context("opening the demo store")?;
    let spec = VectorSpec::new(args.dim, Metric::Cosine, Precision::F16)?;
    store.create_collection(COLLECTION, Some(spec)).await?;
    let profiles = store.collection::<VoiceProfile>(COLLECTION)?;

    say!(
        "hybridsync demo: voice unlock, {} speakers, {}-D voiceprints",
        args.speakers,
        args.dim
    )?;
    say!("data dir: {}", dir.display())?;
    say!(
        "cloud:    {}",
        if store.cloud_configured() {
            "configured (changes queue in the outbox)"
        } else {
            "none (local-only; changes wait in the outbox)"
        }
    )?;

    let mut voices = Voices::new(0x5eed, args.speakers, args.dim, 0.3);
    let mut enrol = Vec::with_capacity(args.speakers);
    for speaker in 0..args.speakers {
        let profile = VoiceProfile {
            speaker_name: format!("Speaker {speaker}"),
            acoustic_features: BTreeMap::from([
                (
                    "pitch_mean_hz".to_owned(),
                    110.0 + (speaker % 40) as f32 * 3.5,
                ),
                (
                    "formant_f1_hz".to_owned(),
                    500.0 + (speaker % 17) as f32 * 11.0,
                ),
                (
                    "speaking_rate_wps".to_owned(),
                    2.0 + (speaker % 5) as f32 * 0.3,
                ),
            ]),
            samples: 5,
        };
        let embedding = voices.utterance(speaker);
        let started = Instant::now();
        profiles
            .put_with(
                &speaker_key(speaker),
                &profile,
                WriteOptions::default()
                    .embedding(embedding)
                    .priority(Priority::High),
            )
            .await?;
        enrol.push(started.elapsed());
    }

    let (mut by_search, mut by_key) = (
        Vec::with_capacity(args.attempts),
        Vec::with_capacity(args.attempts),
    );
    let mut accepted = 0;
    for attempt in 0..args.attempts {
        let speaker = attempt % args.speakers;
        let utterance = voices.utterance(speaker);
        let started = Instant::now();
        let best = profiles.search(&utterance, 1).await?;
        by_search.push(started.elapsed());
        let started = Instant::now();
        let profile = profiles.get(&speaker_key(speaker)).await?;
        by_key.push(started.elapsed());
        if best.first().map(|h| h.key.as_str()) == Some(speaker_key(speaker).as_str())
            && profile.is_some()
        {
            accepted += 1;
        }
    }

    let status = store.status().await?;
    say!()?;
    say!(
        "{:<28} {:>10} {:>10} {:>8}",
        "operation",
        "p50",
        "p99",
        "count"
    )?;
    for (label, samples) in [
        ("enrol (durable write)", &mut enrol),
        ("authenticate (search k=1)", &mut by_search),
        ("read profile by key", &mut by_key),
    ] {
        let count = samples.len();
        let (p50, p99) = percentiles(samples);
        say!(
            "{label:<28} {:>10} {:>10} {count:>8}",
            fmt_duration(p50),
            fmt_duration(p99)
        )?;
    }
    say!()?;
    say!(
        "authenticated {accepted}/{} attempts as the right speaker",
        args.attempts
    )?;
    let depth: u64 = status.outbox.by_priority.values().sum();
    say!(
        "outbox: {depth} changes queued ({}), {} failed",
        status
            .outbox
            .by_priority
            .iter()
            .map(|(p, n)| format!("{p}: {n}"))
            .collect::<Vec<_>>()
            .join(", "),
        status.outbox.failed
    )?;
    say!(
        "hot cache: {} hits, {} misses",
        status.cache.hits,
        status.cache.misses
    )?;
    if store.cloud_configured() {
        let started = Instant::now();
        let left = store.flush(std::time::Duration::from_secs(60)).await?;
        let elapsed = started.elapsed();
        if left == 0 {
            say!(
                "cloud: the backlog of {depth} changes reached the cloud in {}",
                fmt_duration(elapsed)
            )?;
        } else {
            say!(
                "cloud: {left} of {depth} changes still queued after {} (cloud unreachable?)",
                fmt_duration(elapsed)
            )?;
        }
        store.shutdown(std::time::Duration::from_secs(5)).await?;
    }
    store.close().await;
    anyhow::ensure!(
        accepted * 10 >= args.attempts * 9,
        "only {accepted}/{} authentications matched",
        args.attempts
    );
    Ok(())
}

fn speaker_key(speaker: usize) -> String {
    format!("speaker-{speaker:05}")
}
