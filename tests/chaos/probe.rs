//! The propagation probe: two sinks of a tenant of their own, one writing a row, the
//! other pulling the change feed until the row arrives. It measures what the feed's
//! horizon governs, apart from the writers' own sync timing.

use anyhow::Result;
use hybridsync::cloud::{CloudOptions, PostgresSink};
use hybridsync_core::{ChangeCursor, CloudSink, CollectionName, DeviceId, Hlc, Key, Record};
use std::time::{Duration, Instant};

pub(crate) struct Probe {
    writer: PostgresSink,
    reader: PostgresSink,
    cursor: ChangeCursor,
    sent: u64,
}

impl Probe {
    /// Two sinks at `url` for `tenant` (call inside the runtime).
    pub(crate) fn new(url: &str, tenant: &str) -> Result<Self> {
        let sink = || -> Result<PostgresSink> {
            Ok(PostgresSink::new(CloudOptions::new(
                hybridsync::CloudUrl::new(url),
                tenant,
            ))?)
        };
        Ok(Self {
            writer: sink()?,
            reader: sink()?,
            cursor: ChangeCursor::default(),
            sent: 0,
        })
    }

    /// Writes one row and pulls until it arrives; the time that took, or `None` after
    /// `give_up`.
    pub(crate) async fn propagate(&mut self, give_up: Duration) -> Result<Option<Duration>> {
        let collection = CollectionName::new("probe")?;
        self.sent += 1;
        let key = format!("p{:08}", self.sent);
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis() as u64;
        let record = Record::new(
            collection.clone(),
            Key::new(&key)?,
            b"probe".to_vec(),
            None,
            Hlc {
                physical_ms: now_ms,
                logical: 0,
                origin: DeviceId([0x9e; 16]),
            },
            false,
        );
        let started = Instant::now();
        self.writer.upsert_batch(&[record]).await?;
        while started.elapsed() < give_up {
            let page = self.reader.pull(&collection, &self.cursor, 100).await?;
            self.cursor = page.next;
            if page.records.iter().any(|r| r.key.as_str() == key) {
                return Ok(Some(started.elapsed()));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(None)
    }
}
