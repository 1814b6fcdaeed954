//! The store on its own: write a record, read it back, and see its outbox entry.

use hybridsync_core::{CollectionName, CollectionSpec, Key, LocalStore, Priority, WriteRequest};
use hybridsync_store::{SqliteStore, StoreOptions};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let store = SqliteStore::open(StoreOptions::new(dir.path())).await?;
    let notes = CollectionName::new("notes")?;
    store
        .create_collection(&CollectionSpec {
            name: notes.clone(),
            vector: None,
            encrypted: false,
        })
        .await?;
    let write = WriteRequest::put(notes.clone(), Key::new("hello")?, b"world".to_vec(), None);
    let receipt = store
        .write(vec![write.with_priority(Priority::High)])
        .await?;
    println!("stored at {}", receipt[0].record.version);
    println!(
        "read back: {:?}",
        store
            .get(&notes, &Key::new("hello")?)
            .await?
            .map(|r| r.payload)
    );
    println!("outbox: {:?}", store.outbox_stats().await?);
    store.close().await;
    Ok(())
}
