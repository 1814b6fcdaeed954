//! `PostgresSink`: the pool, batch upserts, the change feed and the health check.

use crate::schema::{SCHEMA_VERSION, applied_version};
use crate::{Error, Result};
use hybridsync_core::{
    ChangeBatch, ChangeCursor, CloudSink, CloudUrl, CollectionName, CollectionSpec, ContentHash,
    DeviceId, DeviceInfo, Hlc, Key, Record, VectorSpec,
};
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};
use sqlx::{Postgres, Row, Transaction};
use std::collections::VecDeque;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// How to reach the cloud and how hard to lean on it.
#[derive(Debug, Clone)]
pub struct CloudOptions {
    /// The connection URL (its password is never printed).
    pub url: CloudUrl,
    /// The tenant every row is written and read under (row-level security).
    pub tenant: String,
    /// Hard cap on connections: the pool never holds more, whatever the load.
    pub max_connections: u32,
    pub min_connections: u32,
    /// How long an operation waits for a pooled connection before failing.
    pub acquire_timeout: Duration,
    /// Server-side limit per statement.
    pub statement_timeout: Duration,
    /// Idle connections are closed after this long.
    pub idle_timeout: Duration,
    /// Shown in `pg_stat_activity`, so operators (and tests) can count our connections.
    pub application_name: String,
    /// A row stamped further than this ahead of the server's clock is refused, so a
    /// device whose clock runs far ahead cannot pin a key for everyone.
    pub max_drift: Duration,
}

impl CloudOptions {
    /// Defaults: at most 3 connections (at least 1), 5 s acquire timeout, 10 s
    /// statement timeout, 300 s idle lifetime, application name `hybridsync`.
    pub fn new(url: CloudUrl, tenant: impl Into<String>) -> Self {
        Self {
            url,
            tenant: tenant.into(),
            max_connections: 3,
            min_connections: 1,
            acquire_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            application_name: "hybridsync".into(),
            max_drift: Duration::from_millis(
                hybridsync_core::HlcClock::<hybridsync_core::SystemClock>::DEFAULT_MAX_DRIFT_MS,
            ),
        }
    }
}

/// Load samples kept for the moving average.
const LOAD_WINDOW: usize = 100;

/// The channel every upsert that changed rows notifies, with `"<sink token> <tenant>"`.
const CHANGES_CHANNEL: &str = "hybridsync_changes";

/// How long the change listener waits before listening again after losing its connection.
const RELISTEN: Duration = Duration::from_secs(1);

/// The PostgreSQL [`CloudSink`].
#[derive(Debug)]
pub struct PostgresSink {
    pool: PgPool,
    tenant: String,
    max_connections: u32,
    max_drift_ms: i64,
    load: Mutex<VecDeque<f64>>,
    /// Tells this sink's own notifications from other writers'.
    token: String,
    /// Counts other writers' notifications; see [`CloudSink::next_change`].
    changes: Arc<watch::Sender<u64>>,
    /// The task holding the LISTEN connection, started by the first `next_change`.
    listener: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Whether the listener holds a pooled connection now (not counted as load).
    listening: Arc<AtomicBool>,
}

impl Drop for PostgresSink {
    fn drop(&mut self) {
        self.stop_listening();
    }
}

/// A token unique enough to tell two sinks apart on one server.
fn sink_token() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(std::process::id());
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    format!("{:016x}", hasher.finish())
}

/// Holds one pooled connection in `LISTEN` and counts other writers' changes of this
/// tenant into `changes`. Each time it starts listening (again, after a lost
/// connection) it counts one change, since what was sent before is unknown.
async fn listen_for_changes(
    pool: PgPool,
    tenant: String,
    token: String,
    changes: Arc<watch::Sender<u64>>,
    listening: Arc<AtomicBool>,
) {
    let bump = || changes.send_modify(|n| *n += 1);
    while !pool.is_closed() {
        if let Ok(mut listener) = PgListener::connect_with(&pool).await {
            listening.store(true, Ordering::SeqCst);
            if listener.listen(CHANGES_CHANNEL).await.is_ok() {
                // Whatever was sent before we listened is unknown.
                bump();
                loop {
                    match listener.try_recv().await {
                        Ok(Some(note)) => {
                            let foreign = note
                                .payload()
                                .split_once(' ')
                                .is_some_and(|(from, t)| t == tenant && from != token);
                            if foreign {
                                bump();
                            }
                        }
                        // Reconnected: whatever was sent meanwhile is lost.
                        Ok(None) => bump(),
                        Err(e) => {
                            tracing::debug!(error = %e, "change listener lost its connection");
                            break;
                        }
                    }
                }
            }
            listening.store(false, Ordering::SeqCst);
        }
        tokio::time::sleep(RELISTEN).await;
    }
}

impl PostgresSink {
    /// A sink with a lazily connecting pool: this never waits on the network, so an
    /// application starts the same whether the cloud is up or down. Call it inside a
    /// Tokio runtime (the pool's maintenance task runs there).
    pub fn new(options: CloudOptions) -> Result<Self> {
        let tenant = options.tenant.trim();
        if tenant.is_empty() || tenant.len() > 128 || tenant.chars().any(char::is_control) {
            return Err(Error::Config(format!(
                "tenant {:?} must be 1-128 printable characters",
                options.tenant
            )));
        }
        if options.max_connections == 0 || options.min_connections > options.max_connections {
            return Err(Error::Config(format!(
                "pool bounds min {} / max {} are inconsistent",
                options.min_connections, options.max_connections
            )));
        }
        let connect = PgConnectOptions::from_str(options.url.expose())
            .map_err(|_| Error::Config(format!("cannot parse cloud URL {}", options.url)))?
            .application_name(&options.application_name)
            .options([(
                "statement_timeout",
                options.statement_timeout.as_millis().to_string(),
            )]);
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections)
            .min_connections(options.min_connections)
            .acquire_timeout(options.acquire_timeout)
            .idle_timeout(options.idle_timeout)
            // A connection that died with a server restart is found and replaced here
            // rather than failing the caller's statement.
            .test_before_acquire(true)
            .connect_lazy_with(connect);
        Ok(Self {
            pool,
            tenant: tenant.to_owned(),
            max_connections: options.max_connections,
            max_drift_ms: options.max_drift.as_millis().min(i64::MAX as u128) as i64,
            load: Mutex::new(VecDeque::new()),
            token: sink_token(),
            changes: Arc::new(watch::Sender::new(0)),
            listener: Mutex::new(None),
            listening: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Starts the change listener unless it runs. It holds one of the pool's
    /// connections, so a pool capped at one connection never listens.
    fn ensure_listening(&self) -> bool {
        if self.max_connections < 2 {
            return false;
        }
        let mut listener = self.listener.lock().unwrap_or_else(|e| e.into_inner());
        if listener.is_none() {
            *listener = Some(tokio::spawn(listen_for_changes(
                self.pool.clone(),
                self.tenant.clone(),
                self.token.clone(),
                self.changes.clone(),
                self.listening.clone(),
            )));
        }
        true
    }

    fn stop_listening(&self) {
        if let Some(task) = self
            .listener
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
        {
            task.abort();
        }
    }

    /// Connections currently open (busy or idle); never above the cap.
    pub fn pool_size(&self) -> u32 {
        self.pool.size()
    }

    /// The pool's cap.
    pub fn max_connections(&self) -> u32 {
        self.max_connections
    }

    /// Mean share of the cap in use over the last 100 operations (0.0–1.0).
    pub fn pool_load(&self) -> f64 {
        let samples = self.load.lock().unwrap_or_else(|e| e.into_inner());
        if samples.is_empty() {
            0.0
        } else {
            samples.iter().sum::<f64>() / samples.len() as f64
        }
    }

    /// The share of the cap busy with work now; the listener's connection is not work,
    /// so it counts on neither side.
    pub fn busy_share(&self) -> f64 {
        let held = u32::from(self.listening.load(Ordering::SeqCst));
        let busy = self
            .pool
            .size()
            .saturating_sub(self.pool.num_idle() as u32)
            .saturating_sub(held);
        f64::from(busy) / f64::from(self.max_connections.saturating_sub(held)).max(1.0)
    }

    /// Records [`Self::busy_share`] in the moving window.
    fn sample_load(&self) {
        let share = self.busy_share();
        let mut samples = self.load.lock().unwrap_or_else(|e| e.into_inner());
        if samples.len() == LOAD_WINDOW {
            samples.pop_front();
        }
        samples.push_back(share);
    }

    #[cfg(test)]
    pub(crate) fn pool_for_tests(&self) -> PgPool {
        self.pool.clone()
    }

    /// Fills the load window with `share`, as if every recent operation saw it.
    #[cfg(test)]
    pub(crate) fn fill_load_for_tests(&self, share: f64) {
        let mut samples = self.load.lock().unwrap_or_else(|e| e.into_inner());
        samples.clear();
        samples.extend(std::iter::repeat_n(share, LOAD_WINDOW));
    }

    /// Stops the change listener and closes every connection.
    pub async fn close(&self) {
        self.stop_listening();
        self.pool.close().await;
    }

    /// A transaction scoped to our tenant. `set_config(..., true)` is transaction-local,
    /// so the tenant is gone when the connection returns to the pool.
    async fn begin(&self) -> Result<Transaction<'static, Postgres>> {
        Ok(self.begin_clocked().await?.0)
    }

    /// [`Self::begin`], also returning the server's clock (ms since the epoch), read in
    /// the same round trip.
    async fn begin_clocked(&self) -> Result<(Transaction<'static, Postgres>, i64)> {
        self.sample_load();
        let mut tx = self.pool.begin().await?;
        let server_ms: i64 = sqlx::query_scalar(
            "SELECT (extract(epoch FROM clock_timestamp()) * 1000)::int8 \
             FROM (SELECT set_config('hybridsync.tenant', $1, true)) AS tenant",
        )
        .bind(&self.tenant)
        .fetch_one(&mut *tx)
        .await?;
        Ok((tx, server_ms))
    }

    /// Checks that the server's hybridsync schema is the one this build expects.
    pub async fn verify_schema(&self) -> Result<()> {
        self.sample_load();
        match applied_version(&self.pool).await? {
            SCHEMA_VERSION => Ok(()),
            0 => Err(Error::Schema(
                "the hybridsync schema is not installed (run the cloud migration)".into(),
            )),
            found => Err(Error::Schema(format!(
                "schema version {found}, this build expects {SCHEMA_VERSION}"
            ))),
        }
    }

    async fn upsert(&self, records: &[Record]) -> Result<u64> {
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
            return Err(Error::Rejected {
                code: "clock".into(),
                message: format!(
                    "{}/{} is stamped {} ms ahead of the server clock (limit {} ms); check that device's clock",
                    ahead.collection,
                    ahead.key,
                    ahead.version.physical_ms as i64 - server_ms,
                    self.max_drift_ms
                ),
            });
        }
        // One statement per batch; the WHERE clause makes the upsert monotone. Bound
        // by reference: each value is copied once, into the statement's buffer.
        let embeddings = EmbeddingBytes::of(records);
        let applied = sqlx::query(
            "INSERT INTO hs_records AS r (tenant, collection, key, payload, embedding, hlc, origin, tombstone, hash)
             SELECT current_setting('hybridsync.tenant'), unnest($1::text[]), unnest($2::text[]), unnest($3::bytea[]),
                    unnest($4::bytea[]), unnest($5::int8[]), unnest($6::bytea[]), unnest($7::bool[]), unnest($8::bytea[])
             ON CONFLICT (tenant, collection, key) DO UPDATE SET
                 payload = excluded.payload, embedding = excluded.embedding, hlc = excluded.hlc,
                 origin = excluded.origin, tombstone = excluded.tombstone, hash = excluded.hash,
                 txid = pg_current_xact_id(), seq = nextval('hs_change_seq'), updated_at = now()
             WHERE (excluded.hlc, excluded.origin) > (r.hlc, r.origin)",
        )
        .bind(records.iter().map(|r| r.collection.as_str()).collect::<Vec<_>>())
        .bind(records.iter().map(|r| r.key.as_str()).collect::<Vec<_>>())
        .bind(records.iter().map(|r| r.payload.as_slice()).collect::<Vec<_>>())
        .bind(embeddings.slices())
        .bind(records.iter().map(|r| r.version.packed()).collect::<Vec<_>>())
        .bind(records.iter().map(|r| r.version.origin.0.as_slice()).collect::<Vec<_>>())
        .bind(records.iter().map(|r| r.tombstone).collect::<Vec<_>>())
        .bind(records.iter().map(|r| r.hash.0.as_slice()).collect::<Vec<_>>())
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if applied > 0 {
            // Delivered on commit, to the other devices' change listeners.
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(CHANGES_CHANNEL)
                .bind(format!("{} {}", self.token, self.tenant))
                .execute(&mut *tx)
                .await?;
        }
        hybridsync_core::crash_point("during_batch");
        tx.commit().await?;
        Ok(applied)
    }

    async fn changes(
        &self,
        collection: &CollectionName,
        cursor: &ChangeCursor,
        limit: usize,
    ) -> Result<ChangeBatch> {
        let (after_txid, after_seq) = decode_cursor(cursor)?;
        let mut tx = self.begin().await?;
        // Only rows below the oldest transaction still running are safe to pass: a
        // transaction with a smaller id may still commit a row that sorts before them.
        let rows = sqlx::query(
            "SELECT key, payload, embedding, hlc, origin, tombstone, hash, txid::text::int8, seq
             FROM hs_records
             WHERE tenant = current_setting('hybridsync.tenant') AND collection = $1
               AND (txid, seq) > ($2::text::xid8, $3)
               AND txid < pg_snapshot_xmin(pg_current_snapshot())
             ORDER BY txid, seq
             LIMIT $4",
        )
        .bind(collection.as_str())
        .bind(after_txid.to_string())
        .bind(after_seq)
        .bind(limit.min(i64::MAX as usize) as i64)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let mut next = cursor.clone();
        let mut records = Vec::with_capacity(rows.len());
        for row in rows {
            records.push(record_from_row(collection, &row)?);
            next = encode_cursor(row.try_get::<i64, _>(7)? as u64, row.try_get(8)?);
        }
        Ok(ChangeBatch { records, next })
    }

    async fn count_rows(&self, collection: &CollectionName) -> Result<u64> {
        let mut tx = self.begin().await?;
        let count: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM hs_records WHERE tenant = current_setting('hybridsync.tenant') AND collection = $1",
        )
        .bind(collection.as_str())
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(count as u64)
    }

    /// Publishes collection specs in one transaction; any name known with another spec
    /// rolls it all back.
    async fn publish(&self, specs: &[CollectionSpec]) -> Result<()> {
        if specs.is_empty() {
            return Ok(());
        }
        let (dims, metrics, precisions) = spec_columns(specs);
        let mut tx = self.begin().await?;
        sqlx::query(
            "INSERT INTO hs_collections (tenant, name, dim, metric, precision)
             SELECT current_setting('hybridsync.tenant'), * FROM UNNEST($1::text[], $2::int4[], $3::text[], $4::text[])
             ON CONFLICT (tenant, name) DO NOTHING",
        )
        .bind(specs.iter().map(|s| s.name.as_str().to_owned()).collect::<Vec<_>>())
        .bind(dims)
        .bind(metrics)
        .bind(precisions)
        .execute(&mut *tx)
        .await?;
        let known = read_specs(&mut tx).await?;
        for spec in specs {
            if let Some(other) = known.iter().find(|k| k.name == spec.name && *k != spec) {
                return Err(Error::Rejected {
                    code: "spec".into(),
                    message: format!(
                        "collection {} exists in the cloud with another spec ({}), not {}",
                        spec.name,
                        describe(other),
                        describe(spec)
                    ),
                });
            }
        }
        tx.commit().await?;
        Ok(())
    }

    async fn specs(&self) -> Result<Vec<CollectionSpec>> {
        let mut tx = self.begin().await?;
        let specs = read_specs(&mut tx).await?;
        tx.commit().await?;
        Ok(specs)
    }

    async fn register(&self, id: DeviceId, name: &str) -> Result<()> {
        hybridsync_core::validate_device_name(name).map_err(|e| Error::Config(e.to_string()))?;
        let mut tx = self.begin().await?;
        sqlx::query(
            "INSERT INTO hs_devices (tenant, device_id, name) VALUES (current_setting('hybridsync.tenant'), $1, $2)
             ON CONFLICT (tenant, device_id) DO UPDATE SET name = excluded.name, last_seen = now()",
        )
        .bind(id.to_string())
        .bind(name)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn devices(&self) -> Result<Vec<DeviceInfo>> {
        let mut tx = self.begin().await?;
        let rows = sqlx::query(
            "SELECT device_id, name, (extract(epoch FROM registered_at) * 1000)::int8, (extract(epoch FROM last_seen) * 1000)::int8
             FROM hs_devices WHERE tenant = current_setting('hybridsync.tenant') ORDER BY name, device_id",
        )
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        rows.iter()
            .map(|row| {
                let id: String = row.try_get(0)?;
                Ok(DeviceInfo {
                    id: DeviceId::parse_hex(&id).map_err(|e| Error::BadRow(e.to_string()))?,
                    name: row.try_get(1)?,
                    registered_ms: row.try_get::<i64, _>(2)? as u64,
                    last_seen_ms: row.try_get::<i64, _>(3)? as u64,
                })
            })
            .collect()
    }

    async fn forget(&self, id: DeviceId) -> Result<bool> {
        let mut tx = self.begin().await?;
        let removed = sqlx::query("DELETE FROM hs_devices WHERE tenant = current_setting('hybridsync.tenant') AND device_id = $1")
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(removed > 0)
    }

    async fn touch(&self, id: DeviceId) -> Result<()> {
        let mut tx = self.begin().await?;
        sqlx::query("UPDATE hs_devices SET last_seen = now() WHERE tenant = current_setting('hybridsync.tenant') AND device_id = $1")
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn ping(&self) -> Result<()> {
        self.sample_load();
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}

type SpecColumns = (Vec<Option<i32>>, Vec<Option<String>>, Vec<Option<String>>);

fn spec_columns(specs: &[CollectionSpec]) -> SpecColumns {
    let vector = |f: &dyn Fn(&VectorSpec) -> String| {
        specs
            .iter()
            .map(|s| s.vector.as_ref().map(f))
            .collect::<Vec<_>>()
    };
    (
        specs
            .iter()
            .map(|s| s.vector.map(|v| v.dim.min(i32::MAX as usize) as i32))
            .collect(),
        vector(&|v| v.metric.as_str().to_owned()),
        vector(&|v| v.precision.as_str().to_owned()),
    )
}

fn describe(spec: &CollectionSpec) -> String {
    match &spec.vector {
        None => "no vectors".into(),
        Some(v) => format!("{}-D {} {}", v.dim, v.metric, v.precision),
    }
}

async fn read_specs(tx: &mut Transaction<'static, Postgres>) -> Result<Vec<CollectionSpec>> {
    let rows = sqlx::query(
        "SELECT name, dim, metric, precision FROM hs_collections
         WHERE tenant = current_setting('hybridsync.tenant') ORDER BY name",
    )
    .fetch_all(&mut **tx)
    .await?;
    rows.iter()
        .map(|row| {
            let bad = |e: hybridsync_core::Error| Error::BadRow(e.to_string());
            let name = CollectionName::new(row.try_get::<String, _>(0)?).map_err(bad)?;
            let dim: Option<i32> = row.try_get(1)?;
            let metric: Option<String> = row.try_get(2)?;
            let precision: Option<String> = row.try_get(3)?;
            let vector = match (dim, metric, precision) {
                (None, None, None) => None,
                (Some(dim), Some(metric), Some(precision)) => Some(
                    VectorSpec::new(
                        dim.max(0) as usize,
                        metric.parse().map_err(bad)?,
                        precision.parse().map_err(bad)?,
                    )
                    .map_err(bad)?,
                ),
                _ => {
                    return Err(Error::BadRow(format!(
                        "collection {name}: partial vector spec"
                    )));
                }
            };
            Ok(CollectionSpec { name, vector })
        })
        .collect()
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

/// A feed position: the transaction id and sequence number of the last row passed.
pub(crate) fn encode_cursor(txid: u64, seq: i64) -> ChangeCursor {
    let mut bytes = txid.to_be_bytes().to_vec();
    bytes.extend_from_slice(&seq.to_be_bytes());
    ChangeCursor(bytes)
}

fn decode_cursor(cursor: &ChangeCursor) -> Result<(u64, i64)> {
    match cursor.0.len() {
        0 => Ok((0, 0)),
        16 => {
            let (txid, seq) = cursor.0.split_at(8);
            Ok((
                u64::from_be_bytes(txid.try_into().expect("8 bytes")),
                i64::from_be_bytes(seq.try_into().expect("8 bytes")),
            ))
        }
        n => Err(Error::Config(format!(
            "a change cursor is 0 or 16 bytes, not {n}"
        ))),
    }
}

fn record_from_row(collection: &CollectionName, row: &sqlx::postgres::PgRow) -> Result<Record> {
    let bad = |what: &str| Error::BadRow(format!("{collection}: {what}"));
    let key = Key::new(row.try_get::<String, _>(0)?).map_err(|e| Error::BadRow(e.to_string()))?;
    let embedding: Option<Vec<u8>> = row.try_get(2)?;
    let embedding = match embedding {
        Some(bytes) if bytes.len() % 4 == 0 => Some(
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        ),
        Some(_) => return Err(bad("embedding is not a whole number of f32")),
        None => None,
    };
    let origin: Vec<u8> = row.try_get(4)?;
    let origin = DeviceId(
        origin
            .try_into()
            .map_err(|_| bad("origin is not 16 bytes"))?,
    );
    let hash: Vec<u8> = row.try_get(6)?;
    let record = Record {
        collection: collection.clone(),
        key,
        payload: row.try_get(1)?,
        embedding,
        version: Hlc::from_packed(row.try_get(3)?, origin),
        tombstone: row.try_get(5)?,
        hash: ContentHash::from_slice(&hash).ok_or_else(|| bad("hash is not 32 bytes"))?,
    };
    let expected = Record::new(
        record.collection.clone(),
        record.key.clone(),
        record.payload.clone(),
        record.embedding.clone(),
        record.version,
        record.tombstone,
    )
    .hash;
    if expected != record.hash {
        return Err(bad("content hash does not match the content"));
    }
    Ok(record)
}

#[async_trait::async_trait]
impl CloudSink for PostgresSink {
    async fn upsert_batch(&self, records: &[Record]) -> hybridsync_core::Result<()> {
        self.upsert(records).await?;
        Ok(())
    }

    async fn pull(
        &self,
        collection: &CollectionName,
        cursor: &ChangeCursor,
        limit: usize,
    ) -> hybridsync_core::Result<ChangeBatch> {
        Ok(self.changes(collection, cursor, limit).await?)
    }

    async fn count(&self, collection: &CollectionName) -> hybridsync_core::Result<u64> {
        Ok(self.count_rows(collection).await?)
    }

    async fn publish_collections(&self, specs: &[CollectionSpec]) -> hybridsync_core::Result<()> {
        Ok(self.publish(specs).await?)
    }

    async fn remote_collections(&self) -> hybridsync_core::Result<Vec<CollectionSpec>> {
        Ok(self.specs().await?)
    }

    async fn health_check(&self) -> hybridsync_core::Result<()> {
        Ok(self.ping().await?)
    }

    async fn register_device(&self, id: DeviceId, name: &str) -> hybridsync_core::Result<()> {
        Ok(self.register(id, name).await?)
    }

    async fn list_devices(&self) -> hybridsync_core::Result<Vec<DeviceInfo>> {
        Ok(self.devices().await?)
    }

    async fn deregister_device(&self, id: DeviceId) -> hybridsync_core::Result<bool> {
        Ok(self.forget(id).await?)
    }

    async fn touch_device(&self, id: DeviceId) -> hybridsync_core::Result<()> {
        Ok(self.touch(id).await?)
    }

    async fn next_change(&self, seen: u64) -> u64 {
        if !self.ensure_listening() {
            return std::future::pending().await;
        }
        let mut changes = self.changes.subscribe();
        let now = changes.wait_for(|n| *n > seen).await.map(|n| *n);
        match now {
            Ok(n) => n,
            Err(_) => std::future::pending().await,
        }
    }

    fn load(&self) -> f64 {
        self.pool_load()
    }

    fn busy_now(&self) -> f64 {
        self.busy_share()
    }

    fn pool_size(&self) -> (u32, u32) {
        (PostgresSink::pool_size(self), self.max_connections)
    }
}
