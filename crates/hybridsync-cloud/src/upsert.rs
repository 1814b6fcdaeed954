//! Batch upserts: one statement per batch, the batch's columns bound by reference as
//! arrays and unnested in the select list (which PostgreSQL streams rather than
//! materialising), monotone in `(hlc, origin)`. A sealed row (client-side encryption)
//! is stored as it came, with the id of the key that sealed it beside it. Each row also
//! carries its bucket and leaf in the consistency checker's tree.

use crate::pool::CHANGES_CHANNEL;
use crate::{Error, PostgresSink, Result};
use hybridsync_core::{CollectionName, Key, Record, sealed_key_id};
use sqlx::{Postgres, Transaction};

/// The upsert; the `WHERE` clause makes it monotone, so replays and reordering cannot
/// move a row backwards. It also tightens the transaction's idle timeout (`$12`; NULL
/// keeps what it was): from the moment the transaction holds an id, and with it the
/// other devices' change-feed horizon, a device that vanishes before its `COMMIT`
/// loses its session within that timeout. Tightened here rather than at `BEGIN` (which
/// sets a looser one), so a slow link uploading a large batch is not mistaken for a
/// vanished one. When it changed any row and `$14` is not NULL, it notifies `$14` on
/// channel `$13`, delivered to the other devices' change listeners on commit: in the
/// same round trip, which is on the path of every change to the other devices.
const UPSERT: &str = "WITH changed AS (
     INSERT INTO hs_records AS r (tenant, collection, key, payload, embedding, hlc, origin, tombstone, hash, key_id, bucket, leaf)
     SELECT current_setting('hybridsync.tenant'), unnest($1::text[]), unnest($2::text[]), unnest($3::bytea[]),
            unnest($4::bytea[]), unnest($5::int8[]), unnest($6::bytea[]), unnest($7::bool[]), unnest($8::bytea[]),
            unnest($9::text[]), unnest($10::int8[]), unnest($11::int8[])
     FROM (SELECT set_config('idle_in_transaction_session_timeout',
                             coalesce($12, current_setting('idle_in_transaction_session_timeout')), true)) AS armed
     ON CONFLICT (tenant, collection, key) DO UPDATE SET
         payload = excluded.payload, embedding = excluded.embedding, hlc = excluded.hlc,
         origin = excluded.origin, tombstone = excluded.tombstone, hash = excluded.hash,
         key_id = excluded.key_id, bucket = excluded.bucket, leaf = excluded.leaf,
         txid = pg_current_xact_id(), seq = nextval('hs_change_seq'), updated_at = now()
     WHERE (excluded.hlc, excluded.origin) > (r.hlc, r.origin)
     RETURNING 1),
   counted AS (SELECT count(*) AS n FROM changed)
   SELECT n, CASE WHEN n > 0 AND $14::text IS NOT NULL THEN pg_notify($13, $14)::text END
   FROM counted";

impl PostgresSink {
    /// Upserts a batch in one statement, monotone in `(hlc, origin)`; returns how many
    /// rows changed.
    pub(crate) async fn upsert_batch(&self, records: &[Record]) -> Result<u64> {
        if records.is_empty() {
            return Ok(0);
        }
        // A key twice in one batch keeps its newest version. Done here rather than with
        // DISTINCT ON in SQL, which sorts the wide rows and cost ~30% more server time.
        let deduped;
        let records = if has_duplicate_keys(records) {
            deduped = newest_per_key(records);
            &deduped[..]
        } else {
            records
        };
        let (mut tx, server_ms) = self.begin_clocked().await?;
        let limit_ms = server_ms.saturating_add(self.max_drift_ms);
        if let Some(ahead) = records
            .iter()
            .find(|r| r.version.physical_ms.min(i64::MAX as u64) as i64 > limit_ms)
        {
            return Err(Error::ClockAhead {
                record: format!("{}/{}", ahead.collection, ahead.key),
                ahead_ms: ahead.version.physical_ms as i64 - server_ms,
                limit_ms: self.max_drift_ms,
            });
        }
        let signal = format!("{} {}", self.token, self.tenant);
        let applied = self.upsert_rows(&mut tx, records, Some(&signal)).await?;
        hybridsync_core::crash_point("during_batch");
        self.commit(tx).await?;
        Ok(applied)
    }

    /// The upsert statement itself, in `tx` (which it leaves open, its idle timeout
    /// armed); returns how many rows changed. If any did, `signal` (when given) is
    /// notified on the changes channel at commit.
    pub(crate) async fn upsert_rows(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        records: &[Record],
        signal: Option<&str>,
    ) -> Result<u64> {
        // One statement per batch; the WHERE clause makes the upsert monotone. Bound
        // by reference: each value is copied once, into the statement's buffer.
        let embeddings = EmbeddingBytes::of(records);
        let (buckets, leaves): (Vec<i64>, Vec<i64>) = records.iter().map(tree_digests).unzip();
        let (applied,): (i64,) = sqlx::query_as(UPSERT)
            .persistent(self.persistent)
            .bind(
                records
                    .iter()
                    .map(|r| r.collection.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(records.iter().map(|r| r.key.as_str()).collect::<Vec<_>>())
            .bind(
                records
                    .iter()
                    .map(|r| r.payload.as_slice())
                    .collect::<Vec<_>>(),
            )
            .bind(embeddings.slices())
            .bind(
                records
                    .iter()
                    .map(|r| r.version.packed())
                    .collect::<Vec<_>>(),
            )
            .bind(
                records
                    .iter()
                    .map(|r| r.version.origin.0.as_slice())
                    .collect::<Vec<_>>(),
            )
            .bind(records.iter().map(|r| r.tombstone).collect::<Vec<_>>())
            .bind(
                records
                    .iter()
                    .map(|r| r.hash.0.as_slice())
                    .collect::<Vec<_>>(),
            )
            .bind(
                records
                    .iter()
                    .map(|r| sealed_key_id(&r.payload).map(|id| id.to_string()))
                    .collect::<Vec<_>>(),
            )
            .bind(buckets)
            .bind(leaves)
            .bind(self.idle_in_transaction_ms.as_deref())
            .bind(CHANGES_CHANNEL)
            .bind(signal)
            .fetch_one(self.counted(&mut **tx))
            .await?;
        Ok(applied as u64)
    }
}

/// A row's bucket and leaf in the checker's tree, as the cloud stores them: a sealed
/// live row's leaf leaves its hash out (the device hashes the plaintext).
fn tree_digests(record: &Record) -> (i64, i64) {
    let sealed = !record.tombstone && sealed_key_id(&record.payload).is_some();
    let (bucket, leaf) = hybridsync_core::tree_digests(record, sealed);
    (i64::from(bucket), leaf as i64)
}

fn has_duplicate_keys(records: &[Record]) -> bool {
    let mut seen = std::collections::HashSet::with_capacity(records.len());
    !records.iter().all(|r| seen.insert((&r.collection, &r.key)))
}

fn newest_per_key(records: &[Record]) -> Vec<Record> {
    let mut newest: std::collections::HashMap<(&CollectionName, &Key), &Record> =
        std::collections::HashMap::new();
    for record in records {
        let slot = newest
            .entry((&record.collection, &record.key))
            .or_insert(record);
        if record.version > slot.version {
            *slot = record;
        }
    }
    newest.into_values().cloned().collect()
}

/// A batch's embeddings as little-endian f32 bytes, in one buffer.
struct EmbeddingBytes {
    bytes: Vec<u8>,
    /// Each record's range in `bytes`; `None` without an embedding.
    ranges: Vec<Option<std::ops::Range<usize>>>,
}

impl EmbeddingBytes {
    fn of(records: &[Record]) -> Self {
        let total = records
            .iter()
            .map(|r| r.embedding.as_ref().map_or(0, Vec::len) * 4)
            .sum();
        let mut bytes = Vec::with_capacity(total);
        let ranges = records
            .iter()
            .map(|r| {
                r.embedding.as_ref().map(|embedding| {
                    let start = bytes.len();
                    bytes.extend(embedding.iter().flat_map(|v| v.to_le_bytes()));
                    start..bytes.len()
                })
            })
            .collect();
        Self { bytes, ranges }
    }

    fn slices(&self) -> Vec<Option<&[u8]>> {
        self.ranges
            .iter()
            .map(|range| range.clone().map(|r| &self.bytes[r]))
            .collect()
    }
}
