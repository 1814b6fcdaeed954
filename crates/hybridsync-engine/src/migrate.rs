//! Migrations (R24): bulk imports from a [`MigrationSource`] into a collection.
//!
//! One task reads the source; each chunk it reads is parsed, mapped and validated on
//! the blocking pool, up to `workers` chunks at a time, and handed on in source order
//! (so the checkpoint is always a prefix of the source). The writer gathers rows into
//! batches whose size follows the observed commit time, and commits each with its
//! checkpoint in one local transaction ([`LocalStore::import_batch`]): a `kill -9`
//! anywhere loses at most the batch in flight, which the next run reads again. Bad
//! rows go to `<id>.rejects.jsonl`, flushed to disk before the checkpoint that counts
//! them commits; a resumed run cuts the file back to the length its checkpoint names,
//! so a reject is listed exactly once too.

use crate::{Engine, Error, Result};
use hybridsync_core::{
    CollectionName, CollectionSpec, Hlc, ImportStep, Key, LocalStore, MigrationCounts,
    MigrationInfo, MigrationSource, MigrationState, Priority, RawRow, Record, SourceRow,
    SourceValue, VectorCache,
};
use hybridsync_telemetry::catalogue;
use serde_json::{Map, Value};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How a source row becomes a record.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Mapping {
    /// The field holding the record key (a string or an integer).
    pub key: String,
    /// The field holding the embedding: an array of numbers, or (from SQLite or
    /// PostgreSQL) a blob of little-endian f32, which arrives as `\x` and hex digits.
    pub embedding: Option<String>,
    /// The fields kept as the JSON payload; empty: every field but the key and the
    /// embedding (`--payload '*'`).
    pub payload: Vec<String>,
}

impl Mapping {
    /// Keys by `key`; every other field but the embedding is the payload.
    pub fn new(key: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            embedding: None,
            payload: Vec::new(),
        }
    }
}

/// How a migration runs (what it reads and maps is its [`MigrationJob`]).
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Chunks parsed at once (default: the core count).
    pub workers: usize,
    /// A fixed batch size; `None` adapts it to the commit time (100 to 20,000 rows,
    /// aiming at [`TARGET_COMMIT`] per commit).
    pub batch_rows: Option<usize>,
    /// Stop (resumably) once more than this many rows were rejected; 0: never stop,
    /// as pgloader carries on, every bad row listed in the rejects file.
    pub max_errors: u64,
    /// Forget the checkpoint of an interrupted run of the same plan whose source
    /// changed, and read the source from the start (rows already present are skipped).
    pub restart: bool,
    /// Re-read the source after the run and compare every imported key's content hash
    /// with the store's.
    pub verify: bool,
    /// With a cloud: ship the outbox within this long after the run, then compare the
    /// collection with the cloud (the consistency checker's digests). `None`: don't.
    pub cloud_check: Option<Duration>,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
            batch_rows: None,
            max_errors: 0,
            restart: false,
            verify: true,
            cloud_check: None,
        }
    }
}

/// What a migration is asked to do.
pub struct MigrationJob {
    pub source: Box<dyn MigrationSource>,
    pub collection: CollectionName,
    pub mapping: Mapping,
    /// The outbox priority of imported rows (default deferred: an import never starves
    /// live writes; soft caps apply as to any write).
    pub priority: Priority,
    /// Everything needed to run it again (the facade's serialised plan, secret-free);
    /// an unfinished migration with the same plan is resumed rather than started anew.
    pub plan: String,
    /// Resume this migration (its plan must be this job's).
    pub resume: Option<String>,
    /// Where the rejects file goes (`<id>.rejects.jsonl`).
    pub rejects_dir: PathBuf,
}

impl std::fmt::Debug for MigrationJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MigrationJob")
            .field("source", &self.source.describe())
            .field("collection", &self.collection)
            .field("mapping", &self.mapping)
            .field("resume", &self.resume)
            .finish_non_exhaustive()
    }
}

/// Where a migration stands, for a progress bar.
#[derive(Debug, Clone, Copy, Default)]
pub struct MigrateProgress {
    /// Counts so far, this run and earlier ones of the same migration.
    pub counts: MigrationCounts,
    /// How far through the source, and its size, when the source knows.
    pub position: Option<(u64, u64)>,
    pub elapsed: Duration,
    /// Rows read per second in this run.
    pub rows_per_sec: f64,
}

/// The source re-read after a run, compared with the store.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceCheck {
    /// Valid source rows compared.
    pub checked: u64,
    /// Keys whose content in the store is the source row's.
    pub matching: u64,
    /// Keys the store lacks or holds with other content (the first 20).
    pub differing: Vec<Key>,
    pub differing_count: u64,
}

/// What a migration run did.
#[derive(Debug, Clone)]
pub struct MigrationReport {
    pub id: String,
    pub collection: CollectionName,
    pub source: String,
    pub state: MigrationState,
    /// Counts of this run.
    pub run: MigrationCounts,
    /// Counts of every run of this migration.
    pub total: MigrationCounts,
    pub duration: Duration,
    /// The rejects file (it exists once a row was rejected).
    pub rejects: PathBuf,
    /// Whether this run continued an earlier one.
    pub resumed: bool,
    pub verified: Option<SourceCheck>,
    /// With a cloud and `cloud_check`: entries still unshipped when the flush timed out
    /// (0: everything reached the cloud), and the checker's comparison afterwards.
    pub unshipped: Option<u64>,
    pub cloud: Option<crate::VerifyReport>,
}

/// What a rollback did.
#[derive(Debug, Clone, Default)]
pub struct RollbackReport {
    pub id: String,
    /// Keys the migration created, now deleted (tombstones that reach the cloud).
    pub deleted: u64,
    /// Keys it overwrote, given their previous content back as a new version.
    pub restored: u64,
    /// Keys changed since the import, kept as they are.
    pub kept: Vec<Key>,
}

/// The batch commit time the adaptive batch size aims at.
pub const TARGET_COMMIT: Duration = Duration::from_millis(100);
const MIN_BATCH: usize = 100;
const MAX_BATCH: usize = 20_000;
const FIRST_BATCH: usize = 1_000;
/// Rows per chunk handed to a parsing worker.
const CHUNK_ROWS: usize = 1_000;
/// Differing keys listed by a check.
const LISTED: usize = 20;

/// The rejects file of migration `id`.
pub fn rejects_path(dir: &Path, id: &str) -> PathBuf {
    dir.join(format!("{id}.rejects.jsonl"))
}

/// A parsed source row: a record to write, or why not.
enum Parsed {
    Row(Record),
    Rejected { line: Vec<u8> },
}

/// One chunk of a source, parsed, with the position after its last row.
struct Chunk {
    rows: Vec<(String, Parsed)>,
}

/// A source row as a JSON object, and the raw text a reject shows.
fn object_of(raw: RawRow) -> std::result::Result<(Map<String, Value>, String), (String, String)> {
    match raw {
        RawRow::Line(bytes) => {
            let text = String::from_utf8_lossy(&bytes).into_owned();
            match serde_json::from_slice::<Value>(&bytes) {
                Ok(Value::Object(map)) => Ok((map, text)),
                Ok(_) => Err(("not a JSON object".into(), text)),
                Err(e) => Err((format!("invalid JSON: {e}"), text)),
            }
        }
        RawRow::Json(text) => match serde_json::from_str::<Value>(&text) {
            Ok(Value::Object(map)) => Ok((map, text)),
            Ok(_) => Err(("not a JSON object".into(), text)),
            Err(e) => Err((format!("invalid JSON: {e}"), text)),
        },
        RawRow::Columns(names, values) => {
            let map: Map<String, Value> = names
                .iter()
                .zip(values)
                .map(|(name, value)| (name.to_string(), json_of(value)))
                .collect();
            let text = Value::Object(map.clone()).to_string();
            Ok((map, text))
        }
    }
}

fn json_of(value: SourceValue) -> Value {
    match value {
        SourceValue::Null => Value::Null,
        SourceValue::Integer(v) => Value::from(v),
        SourceValue::Real(v) => serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number),
        SourceValue::Text(v) => Value::String(v),
        SourceValue::Blob(v) => {
            let mut hex = String::with_capacity(2 + v.len() * 2);
            hex.push_str("\\x");
            for b in v {
                hex.push_str(&format!("{b:02x}"));
            }
            Value::String(hex)
        }
    }
}

fn embedding_of(value: &Value, field: &str) -> std::result::Result<Vec<f32>, String> {
    match value {
        Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                item.as_f64()
                    .map(|v| v as f32)
                    .ok_or_else(|| format!("embedding field {field:?} item {i} is not a number"))
            })
            .collect(),
        Value::String(text) if text.starts_with("\\x") => {
            let bytes = hybridsync_core::decode_hex(&text[2..])
                .ok_or_else(|| format!("embedding field {field:?} is not valid hex"))?;
            if bytes.len() % 4 != 0 {
                return Err(format!(
                    "embedding field {field:?} holds {} bytes, not a whole number of f32",
                    bytes.len()
                ));
            }
            Ok(bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect())
        }
        Value::Null => Err(format!("embedding field {field:?} is null")),
        _ => Err(format!(
            "embedding field {field:?} must be an array of numbers"
        )),
    }
}

/// Maps one source row to a validated record, or the reason it is refused.
fn record_of(
    map: Map<String, Value>,
    mapping: &Mapping,
    spec: &CollectionSpec,
    limits: &hybridsync_core::Limits,
) -> std::result::Result<Record, String> {
    let mut map = map;
    let key = match map.remove(&mapping.key) {
        None | Some(Value::Null) => return Err(format!("missing key field {:?}", mapping.key)),
        Some(Value::String(key)) => key,
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => n.to_string(),
        Some(_) => {
            return Err(format!(
                "key field {:?} must be a string or an integer",
                mapping.key
            ));
        }
    };
    let key = Key::new(key).map_err(|e| e.to_string())?;
    let embedding = match &mapping.embedding {
        None => None,
        Some(field) => match map.remove(field) {
            None => return Err(format!("missing embedding field {field:?}")),
            Some(value) => Some(embedding_of(&value, field)?),
        },
    };
    let payload = if mapping.payload.is_empty() {
        Value::Object(map)
    } else {
        Value::Object(
            mapping
                .payload
                .iter()
                .filter_map(|field| map.remove_entry(field))
                .collect(),
        )
    };
    let payload = serde_json::to_vec(&payload).map_err(|e| e.to_string())?;
    let record = Record::new(
        spec.name.clone(),
        key,
        payload,
        embedding,
        Hlc::default(),
        false,
    );
    record.validate(spec, limits).map_err(|e| e.to_string())?;
    Ok(record)
}

/// Parses one chunk (on a worker thread).
fn parse_chunk(
    rows: Vec<SourceRow>,
    mapping: &Mapping,
    spec: &CollectionSpec,
    limits: &hybridsync_core::Limits,
) -> Chunk {
    let rows = rows
        .into_iter()
        .map(|row| {
            let parsed = match object_of(row.raw) {
                Ok((map, raw)) => match record_of(map, mapping, spec, limits) {
                    Ok(record) => Parsed::Row(record),
                    Err(reason) => rejected(&row.locator, &reason, &raw),
                },
                Err((reason, raw)) => rejected(&row.locator, &reason, &raw),
            };
            (row.position, parsed)
        })
        .collect();
    Chunk { rows }
}

fn rejected(locator: &str, reason: &str, raw: &str) -> Parsed {
    let mut line = serde_json::to_vec(&serde_json::json!({
        "position": locator,
        "reason": reason,
        "raw": raw,
    }))
    .expect("a JSON value serialises");
    line.push(b'\n');
    Parsed::Rejected { line }
}

/// Reads `source` and parses it with `workers` chunks in flight, sending chunks in
/// source order; returns the source when done (or on the first error, sent on).
fn spawn_reader(
    mut source: Box<dyn MigrationSource>,
    mapping: Mapping,
    spec: CollectionSpec,
    limits: hybridsync_core::Limits,
    workers: usize,
    position: Arc<std::sync::Mutex<Option<(u64, u64)>>>,
    chunks: tokio::sync::mpsc::Sender<hybridsync_core::Result<Chunk>>,
) -> tokio::task::JoinHandle<Box<dyn MigrationSource>> {
    let (mapping, spec) = (Arc::new(mapping), Arc::new(spec));
    tokio::spawn(async move {
        let mut parsing = std::collections::VecDeque::new();
        loop {
            let rows = match source.next_rows(CHUNK_ROWS).await {
                Ok(rows) => rows,
                Err(e) => {
                    for parse in parsing.drain(..) {
                        let parse: tokio::task::JoinHandle<Chunk> = parse;
                        if let Ok(chunk) = parse.await {
                            let _ = chunks.send(Ok(chunk)).await;
                        }
                    }
                    let _ = chunks.send(Err(e)).await;
                    return source;
                }
            };
            *position.lock().unwrap_or_else(|p| p.into_inner()) = source.progress();
            if rows.is_empty() {
                break;
            }
            let (mapping, spec) = (mapping.clone(), spec.clone());
            parsing.push_back(tokio::task::spawn_blocking(move || {
                parse_chunk(rows, &mapping, &spec, &limits)
            }));
            if parsing.len() >= workers.max(1) {
                let chunk = parsing.pop_front().expect("not empty").await;
                let sent = match chunk {
                    Ok(chunk) => chunks.send(Ok(chunk)).await,
                    Err(e) => chunks.send(Err(task_failed(e))).await,
                };
                if sent.is_err() {
                    return source;
                }
            }
        }
        for parse in parsing {
            let sent = match parse.await {
                Ok(chunk) => chunks.send(Ok(chunk)).await,
                Err(e) => chunks.send(Err(task_failed(e))).await,
            };
            if sent.is_err() {
                break;
            }
        }
        source
    })
}

fn task_failed(e: tokio::task::JoinError) -> hybridsync_core::Error {
    hybridsync_core::Error::Source {
        retryable: false,
        reason: format!("a parsing worker failed: {e}"),
    }
}

/// The rejects file, open for appending at its checkpointed length.
struct Rejects {
    path: PathBuf,
    file: Option<std::fs::File>,
    len: u64,
    pending: Vec<u8>,
}

impl Rejects {
    fn open(path: PathBuf, len: u64) -> Result<Self> {
        let mut rejects = Self {
            path,
            file: None,
            len,
            pending: Vec::new(),
        };
        if len > 0 || rejects.path.exists() {
            let file = rejects.file()?;
            // A run killed after writing rejects but before its checkpoint committed
            // left lines the next run writes again: cut them.
            file.set_len(len).map_err(|e| rejects.io(e))?;
        }
        Ok(rejects)
    }

    fn io(&self, source: std::io::Error) -> Error {
        Error::Rejects {
            path: self.path.clone(),
            source,
        }
    }

    fn file(&mut self) -> Result<&mut std::fs::File> {
        if self.file.is_none() {
            let mut options = std::fs::OpenOptions::new();
            options.create(true).write(true).truncate(false);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let file = options.open(&self.path).map_err(|e| self.io(e))?;
            self.file = Some(file);
        }
        Ok(self.file.as_mut().expect("opened above"))
    }

    /// Writes the pending lines and syncs them, before the checkpoint that counts them.
    fn flush(&mut self) -> Result<u64> {
        if self.pending.is_empty() {
            return Ok(self.len);
        }
        let pending = std::mem::take(&mut self.pending);
        let len = self.len;
        let io = |e, path: &Path| Error::Rejects {
            path: path.to_owned(),
            source: e,
        };
        let path = self.path.clone();
        let file = self.file()?;
        use std::io::Seek as _;
        file.seek(std::io::SeekFrom::Start(len))
            .map_err(|e| io(e, &path))?;
        file.write_all(&pending).map_err(|e| io(e, &path))?;
        file.sync_data().map_err(|e| io(e, &path))?;
        self.len += pending.len() as u64;
        Ok(self.len)
    }
}

/// A new migration id: the time and a random suffix.
fn new_id(now_ms: u64) -> String {
    format!("m{now_ms}-{:04x}", rand::random::<u16>())
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl<S: LocalStore + ?Sized, V: VectorCache + ?Sized> Engine<S, V> {
    /// Every migration this store knows, oldest first.
    pub async fn migrations(&self) -> Result<Vec<MigrationInfo>> {
        Ok(self.store().migrations().await?)
    }

    /// Runs (or resumes) a migration; see the module docs. `progress` is called after
    /// every batch. A run stopped by `max_errors` or an unreadable source returns the
    /// error and leaves a checkpoint to resume from.
    pub async fn migrate(
        &self,
        mut job: MigrationJob,
        options: &RunOptions,
        progress: &(dyn Fn(&MigrateProgress) + Send + Sync),
    ) -> Result<MigrationReport> {
        let started = Instant::now();
        let spec = self.collection_spec(&job.collection).await?;
        let fingerprint = job.source.fingerprint().await?;
        let (mut info, resumed) = self.claim(&job, &fingerprint, options).await?;
        let rejects = rejects_path(&job.rejects_dir, &info.id);
        crate::snapshot::create_dir(&job.rejects_dir).map_err(|source| Error::Rejects {
            path: job.rejects_dir.clone(),
            source,
        })?;
        let mut rejects_file = Rejects::open(rejects.clone(), info.rejects_bytes)?;
        job.source.seek(&info.position).await?;
        self.store().begin_migration(&info).await?;

        let before = info.counts;
        let imported = self
            .import(
                &mut job,
                &spec,
                &mut info,
                &mut rejects_file,
                options,
                started,
                progress,
            )
            .await;
        let (source, stopped) = imported;
        job.source = source;
        let mut run = info.counts;
        run.read -= before.read;
        run.imported -= before.imported;
        run.rejected -= before.rejected;
        run.skipped -= before.skipped;
        for (outcome, rows) in [
            ("imported", run.imported),
            ("rejected", run.rejected),
            ("skipped", run.skipped),
        ] {
            metrics::counter!(catalogue::MIGRATE_ROWS, "outcome" => outcome).increment(rows);
        }
        let state = if stopped.is_ok() { "done" } else { "failed" };
        metrics::counter!(catalogue::MIGRATE_RUNS, "state" => state).increment(1);
        if let Err(e) = stopped {
            self.store()
                .end_migration(&info.id, MigrationState::Failed, Some(&e.to_string()))
                .await?;
            return Err(e);
        }
        self.store()
            .end_migration(&info.id, MigrationState::Done, None)
            .await?;
        let verified = if options.verify {
            job.source.seek("").await?;
            Some(self.check_source(job, &spec, options).await?)
        } else {
            None
        };
        Ok(MigrationReport {
            id: info.id,
            collection: spec.name,
            source: info.source,
            state: MigrationState::Done,
            run,
            total: info.counts,
            duration: started.elapsed(),
            rejects,
            resumed,
            verified,
            unshipped: None,
            cloud: None,
        })
    }

    async fn collection_spec(&self, collection: &CollectionName) -> Result<CollectionSpec> {
        self.collections()
            .await?
            .into_iter()
            .find(|spec| spec.name == *collection)
            .ok_or_else(|| hybridsync_core::Error::UnknownCollection(collection.to_string()).into())
    }

    /// The migration this job continues (the one it names, or an unfinished one with
    /// the same plan), or a new one. A changed source is refused unless `restart`.
    async fn claim(
        &self,
        job: &MigrationJob,
        fingerprint: &str,
        options: &RunOptions,
    ) -> Result<(MigrationInfo, bool)> {
        let known = self.store().migrations().await?;
        let earlier = match &job.resume {
            Some(id) => Some(
                known
                    .into_iter()
                    .find(|m| m.id == *id)
                    .ok_or_else(|| hybridsync_core::Error::UnknownMigration(id.clone()))?,
            ),
            None => known.into_iter().rev().find(|m| {
                m.plan == job.plan
                    && matches!(
                        m.state,
                        MigrationState::Running
                            | MigrationState::Interrupted
                            | MigrationState::Failed
                    )
            }),
        };
        let now = now_ms();
        let Some(mut earlier) = earlier else {
            return Ok((
                MigrationInfo {
                    id: new_id(now),
                    collection: job.collection.clone(),
                    source: job.source.describe(),
                    plan: job.plan.clone(),
                    fingerprint: fingerprint.to_owned(),
                    position: String::new(),
                    rejects_bytes: 0,
                    state: MigrationState::Running,
                    counts: MigrationCounts::default(),
                    error: None,
                    started_ms: now,
                    updated_ms: now,
                },
                false,
            ));
        };
        match earlier.state {
            MigrationState::Running => {
                return Err(Error::MigrationRunning { id: earlier.id });
            }
            MigrationState::Done | MigrationState::RolledBack => {
                return Err(Error::MigrationFinished {
                    id: earlier.id,
                    state: earlier.state,
                });
            }
            MigrationState::Interrupted | MigrationState::Failed => {}
        }
        if earlier.fingerprint != fingerprint {
            if !options.restart {
                return Err(Error::SourceChanged {
                    id: earlier.id,
                    was: earlier.fingerprint,
                    now: fingerprint.to_owned(),
                });
            }
            earlier.position.clear();
            earlier.rejects_bytes = 0;
            earlier.counts = MigrationCounts::default();
            earlier.fingerprint = fingerprint.to_owned();
        }
        earlier.updated_ms = now;
        earlier.state = MigrationState::Running;
        Ok((earlier, true))
    }

    /// The read–parse–write loop. Returns the source (for the check) and how it ended.
    #[allow(clippy::too_many_arguments)]
    async fn import(
        &self,
        job: &mut MigrationJob,
        spec: &CollectionSpec,
        info: &mut MigrationInfo,
        rejects: &mut Rejects,
        options: &RunOptions,
        started: Instant,
        progress: &(dyn Fn(&MigrateProgress) + Send + Sync),
    ) -> (Box<dyn MigrationSource>, Result<()>) {
        let placeholder: Box<dyn MigrationSource> = Box::new(Drained);
        let source = std::mem::replace(&mut job.source, placeholder);
        let position = Arc::new(std::sync::Mutex::new(None));
        let (send, mut chunks) = tokio::sync::mpsc::channel(options.workers.max(1) + 1);
        let reader = spawn_reader(
            source,
            job.mapping.clone(),
            spec.clone(),
            *self.store().limits(),
            options.workers,
            position.clone(),
            send,
        );
        let mut batch_rows = options.batch_rows.unwrap_or(FIRST_BATCH).max(1);
        let mut batch: Vec<Record> = Vec::with_capacity(batch_rows);
        let mut step = MigrationCounts::default();
        let mut last = info.position.clone();
        let run_read = info.counts.read;
        let mut outcome = Ok(());
        let report = |info: &MigrationInfo| {
            let elapsed = started.elapsed();
            progress(&MigrateProgress {
                counts: info.counts,
                position: *position.lock().unwrap_or_else(|p| p.into_inner()),
                elapsed,
                rows_per_sec: (info.counts.read - run_read) as f64
                    / elapsed.as_secs_f64().max(1e-9),
            });
        };
        'chunks: while let Some(chunk) = chunks.recv().await {
            let chunk = match chunk {
                Ok(chunk) => chunk,
                Err(e) => {
                    outcome = Err(e.into());
                    break;
                }
            };
            for (position, parsed) in chunk.rows {
                step.read += 1;
                last = position;
                match parsed {
                    Parsed::Row(record) => batch.push(record),
                    Parsed::Rejected { line } => {
                        step.rejected += 1;
                        rejects.pending.extend_from_slice(&line);
                    }
                }
                let too_many = options.max_errors > 0
                    && info.counts.rejected + step.rejected > options.max_errors;
                if batch.len() >= batch_rows || too_many {
                    let took = self
                        .commit(job, info, &mut batch, &mut step, &last, rejects)
                        .await;
                    match took {
                        Ok(took) => {
                            if options.batch_rows.is_none() {
                                batch_rows = adapt(batch_rows, took);
                            }
                            report(info);
                        }
                        Err(e) => {
                            outcome = Err(e);
                            break 'chunks;
                        }
                    }
                    if too_many {
                        outcome = Err(Error::TooManyRejects {
                            id: info.id.clone(),
                            rejected: info.counts.rejected,
                            limit: options.max_errors,
                            rejects: rejects.path.clone(),
                        });
                        break 'chunks;
                    }
                }
            }
        }
        if outcome.is_ok() && step.read > 0 {
            outcome = self
                .commit(job, info, &mut batch, &mut step, &last, rejects)
                .await
                .map(|_| ());
            report(info);
        }
        drop(chunks);
        let source = match reader.await {
            Ok(source) => source,
            Err(e) => {
                return (Box::new(Drained), Err(e.into()));
            }
        };
        (source, outcome)
    }

    /// Commits one batch with its checkpoint; returns how long the commit took.
    async fn commit(
        &self,
        job: &MigrationJob,
        info: &mut MigrationInfo,
        batch: &mut Vec<Record>,
        step: &mut MigrationCounts,
        position: &str,
        rejects: &mut Rejects,
    ) -> Result<Duration> {
        let rejects_bytes = rejects.flush()?;
        let records = std::mem::take(batch);
        let priority = self.soft_capped(job.priority, records.len()).await?;
        let started = Instant::now();
        let outcome = self
            .store()
            .import_batch(
                records,
                priority,
                &ImportStep {
                    migration: info.id.clone(),
                    position: position.to_owned(),
                    rejects_bytes,
                    counts: *step,
                },
            )
            .await?;
        let took = started.elapsed();
        step.imported = outcome.receipts.len() as u64;
        step.skipped = outcome.skipped;
        info.counts.add(step);
        info.position = position.to_owned();
        info.rejects_bytes = rejects_bytes;
        *step = MigrationCounts::default();
        self.write_nudge().notify_one();
        self.reflect_receipts(&outcome.receipts)?;
        Ok(took)
    }

    /// Re-reads the source and compares every valid row's content hash with the
    /// store's current row for its key.
    async fn check_source(
        &self,
        job: MigrationJob,
        spec: &CollectionSpec,
        options: &RunOptions,
    ) -> Result<SourceCheck> {
        let (send, mut chunks) = tokio::sync::mpsc::channel(options.workers.max(1) + 1);
        let reader = spawn_reader(
            job.source,
            job.mapping,
            spec.clone(),
            *self.store().limits(),
            options.workers,
            Arc::default(),
            send,
        );
        let mut check = SourceCheck::default();
        while let Some(chunk) = chunks.recv().await {
            let mut expected: std::collections::HashMap<Key, hybridsync_core::ContentHash> =
                std::collections::HashMap::new();
            for (_, parsed) in chunk?.rows {
                if let Parsed::Row(record) = parsed {
                    expected.insert(record.key, record.hash);
                }
            }
            let keys: Vec<Key> = expected.keys().cloned().collect();
            let found: std::collections::HashMap<Key, hybridsync_core::ContentHash> = self
                .store()
                .digests(&spec.name, &keys)
                .await?
                .into_iter()
                .filter(|(digest, _)| !digest.tombstone)
                .map(|(digest, _)| (digest.key, digest.hash))
                .collect();
            for (key, hash) in expected {
                if found.get(&key) == Some(&hash) {
                    check.matching += 1;
                } else {
                    check.differing_count += 1;
                    if check.differing.len() < LISTED {
                        check.differing.push(key);
                    }
                }
            }
        }
        drop(chunks);
        reader.await?;
        // Duplicate keys within one chunk count once; the last row wins, as it did.
        check.checked = check.matching + check.differing_count;
        Ok(check)
    }

    /// Undoes migration `id` (see [`LocalStore::rollback_batch`]), in batches, each
    /// reflected in the index and the hot cache and nudging the drain. Resumable: a
    /// killed rollback continues where its last batch committed.
    pub async fn rollback_migration(
        &self,
        id: &str,
        priority: Priority,
        progress: &(dyn Fn(u64, u64) + Send + Sync),
    ) -> Result<RollbackReport> {
        let info = self
            .store()
            .migration(id)
            .await?
            .ok_or_else(|| hybridsync_core::Error::UnknownMigration(id.to_owned()))?;
        match info.state {
            MigrationState::Running => {
                return Err(Error::MigrationRunning { id: info.id });
            }
            MigrationState::RolledBack => {
                return Err(Error::MigrationFinished {
                    id: info.id,
                    state: info.state,
                });
            }
            _ => {}
        }
        let mut report = RollbackReport {
            id: id.to_owned(),
            ..RollbackReport::default()
        };
        let total = info.counts.imported;
        loop {
            let step = self.store().rollback_batch(id, 5_000, priority).await?;
            for receipt in &step.receipts {
                if receipt.record.tombstone {
                    report.deleted += 1;
                } else {
                    report.restored += 1;
                }
            }
            report.kept.extend(step.kept);
            self.write_nudge().notify_one();
            self.reflect_receipts(&step.receipts)?;
            progress(total.saturating_sub(step.remaining), total);
            if step.remaining == 0 {
                break;
            }
        }
        Ok(report)
    }
}

/// The next batch size: grow while commits are quick, shrink when slow.
fn adapt(rows: usize, took: Duration) -> usize {
    let next = if took < TARGET_COMMIT / 2 {
        rows * 2
    } else if took > TARGET_COMMIT * 2 {
        rows / 2
    } else {
        rows
    };
    next.clamp(MIN_BATCH, MAX_BATCH)
}

/// Stands in for a source while the reader task owns it.
struct Drained;

#[async_trait::async_trait]
impl MigrationSource for Drained {
    fn describe(&self) -> String {
        "(in use)".into()
    }
    async fn fingerprint(&mut self) -> hybridsync_core::Result<String> {
        Ok(String::new())
    }
    async fn seek(&mut self, _: &str) -> hybridsync_core::Result<()> {
        Ok(())
    }
    async fn next_rows(&mut self, _: usize) -> hybridsync_core::Result<Vec<SourceRow>> {
        Ok(Vec::new())
    }
}
