//! The sink itself: its options, the capped pool and its load, the tenant-scoped
//! transaction every operation runs in, and the `LISTEN` connection that tells auto-sync
//! about other writers' changes.

use crate::schema::{SCHEMA_VERSION, applied_version};
use crate::{Error, Result};
use hybridsync_core::CloudUrl;
use hybridsync_core::MutexExt;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};
use sqlx::{Postgres, Transaction};
use std::collections::VecDeque;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// The health check's round trip.
const PING: &str = "SELECT 1";

/// Opens a transaction's tenant scope (`set_config(..., true)` is transaction-local)
/// and reads the server's clock in the same round trip.
/// Also says whether the login role may act for the tenant (a member of it, or a role
/// that bypasses row-level security anyway), so a device claiming another tenant gets a
/// typed refusal instead of empty reads and policy violations.
const BEGIN_FOR_TENANT: &str = "SELECT (extract(epoch FROM clock_timestamp()) * 1000)::int8, \
     EXISTS (SELECT 1 FROM hs_tenant_members m WHERE m.tenant = $1 \
             AND pg_has_role(current_user, m.member, 'MEMBER')) \
     OR (SELECT rolsuper OR rolbypassrls FROM pg_roles WHERE rolname = current_user) \
     FROM (SELECT set_config('hybridsync.tenant', $1, true)) AS tenant";

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
pub(crate) const CHANGES_CHANNEL: &str = "hybridsync_changes";

/// How long the change listener waits before listening again after losing its connection.
const RELISTEN: Duration = Duration::from_secs(1);

/// The PostgreSQL [`CloudSink`].
#[derive(Debug)]
pub struct PostgresSink {
    pub(crate) pool: PgPool,
    pub(crate) tenant: String,
    pub(crate) max_connections: u32,
    pub(crate) max_drift_ms: i64,
    load: Mutex<VecDeque<f64>>,
    /// Tells this sink's own notifications from other writers'.
    pub(crate) token: String,
    /// Counts other writers' notifications; see `CloudSink::next_change`.
    pub(crate) changes: Arc<watch::Sender<u64>>,
    /// The task holding the LISTEN connection, started by the first `next_change`.
    listener: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Whether the listener holds a pooled connection now (not counted as load).
    listening: Arc<AtomicBool>,
    /// Pool takes and statements sent, for metrics (`CloudSink::pool_stats`).
    acquires: AtomicU64,
    acquire_errors: AtomicU64,
    acquire_wait_ns: AtomicU64,
    queries: AtomicU64,
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
    // RandomState is seeded randomly per process; the id and a counter tell apart
    // two sinks of one process.
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    hasher.write_u32(std::process::id());
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
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

/// A tenant name as stored: 1–128 printable characters, trimmed.
pub(crate) fn validate_tenant(tenant: &str) -> Result<&str> {
    let trimmed = tenant.trim();
    if trimmed.is_empty() || trimmed.len() > 128 || trimmed.chars().any(char::is_control) {
        return Err(Error::Config(format!(
            "tenant {tenant:?} must be 1-128 printable characters"
        )));
    }
    Ok(trimmed)
}

impl PostgresSink {
    /// A sink with a lazily connecting pool: this never waits on the network, so an
    /// application starts the same whether the cloud is up or down. Call it inside a
    /// Tokio runtime (the pool's maintenance task runs there).
    pub fn new(options: CloudOptions) -> Result<Self> {
        let tenant = validate_tenant(&options.tenant)?;
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
            acquires: AtomicU64::new(0),
            acquire_errors: AtomicU64::new(0),
            acquire_wait_ns: AtomicU64::new(0),
            queries: AtomicU64::new(0),
        })
    }

    /// Starts the change listener unless it runs. It holds one of the pool's
    /// connections, so a pool capped at one connection never listens.
    pub(crate) fn ensure_listening(&self) -> bool {
        if self.max_connections < 2 {
            return false;
        }
        let mut listener = self.listener.lock_or_recover();
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
        if let Some(task) = self.listener.lock_or_recover().take() {
            task.abort();
        }
    }

    /// Mean share of the cap in use over the last 100 operations (0.0–1.0).
    pub(crate) fn pool_load(&self) -> f64 {
        let samples = self.load.lock_or_recover();
        if samples.is_empty() {
            0.0
        } else {
            samples.iter().sum::<f64>() / samples.len() as f64
        }
    }

    /// The share of the cap busy with work now; the listener's connection is not work,
    /// so it counts on neither side.
    pub(crate) fn busy_share(&self) -> f64 {
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
        let mut samples = self.load.lock_or_recover();
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
        let mut samples = self.load.lock_or_recover();
        samples.clear();
        samples.extend(std::iter::repeat_n(share, LOAD_WINDOW));
    }

    /// Stops the change listener and closes every connection.
    pub(crate) async fn close(&self) {
        self.stop_listening();
        self.pool.close().await;
    }

    /// A transaction scoped to our tenant. `set_config(..., true)` is transaction-local,
    /// so the tenant is gone when the connection returns to the pool.
    pub(crate) async fn begin(&self) -> Result<Transaction<'static, Postgres>> {
        Ok(self.begin_clocked().await?.0)
    }

    /// [`Self::begin`], also returning the server's clock (ms since the epoch), read in
    /// the same round trip.
    pub(crate) async fn begin_clocked(&self) -> Result<(Transaction<'static, Postgres>, i64)> {
        self.sample_load();
        let started = std::time::Instant::now();
        let began = self.pool.begin().await;
        self.acquire_wait_ns
            .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        let mut tx = match began {
            Ok(tx) => {
                self.acquires.fetch_add(1, Ordering::Relaxed);
                self.counted(tx)
            }
            Err(e) => {
                self.acquire_errors.fetch_add(1, Ordering::Relaxed);
                return Err(e.into());
            }
        };
        let (server_ms, member): (i64, Option<bool>) = sqlx::query_as(BEGIN_FOR_TENANT)
            .bind(&self.tenant)
            .fetch_one(self.counted(&mut *tx))
            .await?;
        if member != Some(true) {
            return Err(Error::TenantDenied {
                tenant: self.tenant.clone(),
            });
        }
        Ok((tx, server_ms))
    }

    /// Counts one statement sent through `executor` (for `queries_total`) and hands it
    /// back: `query.execute(self.counted(&mut *tx))`.
    pub(crate) fn counted<E>(&self, executor: E) -> E {
        self.queries.fetch_add(1, Ordering::Relaxed);
        executor
    }

    /// Commits `tx`, counting the `COMMIT`.
    pub(crate) async fn commit(&self, tx: Transaction<'static, Postgres>) -> Result<()> {
        self.counted(tx).commit().await?;
        Ok(())
    }

    /// The pool's and statements' counters so far.
    pub(crate) fn pool_stats(&self) -> hybridsync_core::PoolStats {
        hybridsync_core::PoolStats {
            acquires: self.acquires.load(Ordering::Relaxed),
            acquire_errors: self.acquire_errors.load(Ordering::Relaxed),
            acquire_wait_secs: self.acquire_wait_ns.load(Ordering::Relaxed) as f64 / 1e9,
            queries: self.queries.load(Ordering::Relaxed),
        }
    }

    /// Checks that the server's hybridsync schema is the one this build expects.
    pub(crate) async fn verify_schema(&self) -> Result<()> {
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

    /// A cheap round trip that proves the server answers.
    pub(crate) async fn health_check(&self) -> Result<()> {
        self.sample_load();
        sqlx::query(PING).execute(self.counted(&self.pool)).await?;
        Ok(())
    }
}
