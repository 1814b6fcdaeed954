//! Enrol two speakers and authenticate a new utterance by similarity search.

use hybridsync::{HybridStore, Metric, Precision, VectorSpec, WriteOptions};

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct VoiceProfile {
    name: String,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> hybridsync::Result<()> {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = HybridStore::builder(dir.path()).open().await?;
    store
        .create_collection(
            "voices",
            Some(VectorSpec::new(4, Metric::Cosine, Precision::F32)?),
        )
        .await?;
    let voices = store.collection::<VoiceProfile>("voices")?;
    voices
        .put_with(
            "alice",
            &VoiceProfile {
                name: "Alice".into(),
            },
            WriteOptions::default().embedding(vec![0.9, 0.1, 0.0, 0.1]),
        )
        .await?;
    voices
        .put_with(
            "bob",
            &VoiceProfile { name: "Bob".into() },
            WriteOptions::default().embedding(vec![0.0, 0.2, 0.9, 0.1]),
        )
        .await?;
    let utterance = [0.85, 0.15, 0.05, 0.1];
    let best = &voices.search(&utterance, 1).await?[0];
    let profile = voices.get(best.key.as_str()).await?.expect("enrolled");
    println!(
        "unlocked for {} (distance {:.3})",
        profile.name, best.distance
    );
    println!(
        "outbox: {} changes waiting for the cloud",
        store.status().await?.outbox.pending
    );
    store.close().await;
    Ok(())
}
