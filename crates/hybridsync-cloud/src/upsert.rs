//! Batch upserts: one statement per batch, the batch's columns bound by reference as
//! arrays and unnested in the select list (which PostgreSQL streams rather than
//! materialising), monotone in `(hlc, origin)`. A sealed row (client-side encryption)
//! is stored as it came, with the id of the key that sealed it beside it. Each row also
//! carries its bucket and leaf in the consistency checker's tree.

use crate::pool::CHANGES_CHANNEL;
use crate::{Error, PostgresSink, Result};
use hybridsync_core::{CollectionName, Key, Record, sealed_key_id};
use sqlx::PgConnection;

/// The upsert: the schema's `hs_ship` (version 9) scopes the statement to the tenant
/// after checking that the login role may act for it (SQLSTATE `HS403` if not),
/// refuses a batch stamped too far ahead of the server's clock (`changed` is then
/// NULL), and upserts the batch's columns, bound by reference as arrays and unnested in
/// the select list (which PostgreSQL streams rather than materialising); its `WHERE`
/// clause makes it monotone, so replays and reordering cannot move a row backwards.
/// Inside a transaction (behind PgBouncer) it also tightens the transaction's idle
/// timeout (`$4`; NULL keeps what it was): from the moment the transaction holds an id,
/// and with it the other devices' change-feed horizon, a device that vanishes before
/// its `COMMIT` loses its session within that timeout. Tightened here rather than at
/// `BEGIN` (which sets a looser one), so a slow link uploading a large batch is not
/// mistaken for a vanished one. When it changed any row and `$6` is not NULL, it
/// notifies `$6` on channel `$5`, delivered to the other devices' change listeners on
/// commit: in the same round trip, which is on the path of every change to the other
/// devices.
const SHIP: &str = "SELECT changed, server_ms FROM hs_ship($1, $2, $3, $4, $5, $6, \
     $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)";

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
        let signal = format!("{} {}", self.token, self.tenant);
        // Direct, the shipment is one statement (and one round trip) that the server
        // commits on its own: `hs_ship` checks the tenant, and the session carries the
        // statement timeout. Behind PgBouncer it is a transaction of its own, whose
        // statement and idle timeouts are set at `BEGIN`.
        if self.persistent {
            let mut conn = self.connection().await?;
            return self.ship_rows(&mut conn, records, Some(&signal)).await;
        }
        let mut tx = self.begin().await?;
        let applied = self.ship_rows(&mut tx, records, Some(&signal)).await?;
        hybridsync_core::crash_point("during_batch");
        self.commit(tx).await?;
        Ok(applied)
    }

    /// The upsert statement itself, on `conn`: a transaction (which it leaves open, its
    /// idle timeout armed) or a direct session (where it commits on its own); returns
    /// how many rows changed. If any did, `signal` (when given) is notified on the
    /// changes channel at commit. A batch holding a record stamped further ahead of the
    /// server's clock than the sink allows writes nothing and is refused
    /// ([`Error::ClockAhead`]).
    pub(crate) async fn ship_rows(
        &self,
        conn: &mut PgConnection,
        records: &[Record],
        signal: Option<&str>,
    ) -> Result<u64> {
        // One statement per batch; the WHERE clause makes the upsert monotone. Bound
        // by reference: each value is copied once, into the statement's buffer.
        let embeddings = EmbeddingBytes::of(records);
        let (buckets, leaves): (Vec<i64>, Vec<i64>) = records.iter().map(tree_digests).unzip();
        let Some(newest) = records.iter().max_by_key(|r| r.version.physical_ms) else {
            return Ok(0);
        };
        let newest_ms = newest.version.physical_ms.min(i64::MAX as u64) as i64;
        let (changed, server_ms): (Option<i64>, i64) = sqlx::query_as(SHIP)
            .persistent(self.persistent)
            .bind(&self.tenant)
            .bind(newest_ms)
            .bind(self.max_drift_ms)
            .bind(self.idle_in_transaction_ms.as_deref())
            .bind(CHANGES_CHANNEL)
            .bind(signal)
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
            .fetch_one(self.counted(conn))
            .await?;
        match changed {
            Some(changed) => Ok(changed as u64),
            None => Err(Error::ClockAhead {
                record: format!("{}/{}", newest.collection, newest.key),
                ahead_ms: newest_ms.saturating_sub(server_ms),
                limit_ms: self.max_drift_ms,
            }),
        }
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
