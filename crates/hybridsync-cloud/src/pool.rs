//! The sink itself: its options, the capped pool and its load, the tenant-scoped
//! transaction every operation runs in, and the `LISTEN` connection that tells auto-sync
//! about other writers' changes.

use crate::schema::{SCHEMA_VERSION, applied_version};
use crate::{Error, Result};
use hybridsync_core::MutexExt;
use hybridsync_core::{CloudUrl, Pooler};
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};
use sqlx::{Postgres, Row, Transaction};
use std::collections::VecDeque;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// The health check's round trip.
const PING: &str = "SELECT 1";

/// Opens a transaction's tenant scope and its statement timeout (`set_config(..., true)`
/// is transaction-local, so nothing outlives the transaction: the sink keeps no session
/// state, which is what lets it run behind a transaction-pooling PgBouncer).
/// `hs_select_tenant` refuses (SQLSTATE HS403, [`Error::TenantDenied`]) a login role
/// that may not act for the tenant (not a member of it, nor a role that bypasses
/// row-level security anyway), so a device claiming another tenant gets a typed
/// refusal instead of empty reads and policy violations.
const BEGIN_FOR_TENANT: &str = "SELECT hs_select_tenant($1) \
     FROM (SELECT set_config('statement_timeout', $2, true), \
                  set_config('idle_in_transaction_session_timeout', \
                             coalesce($3, current_setting('idle_in_transaction_session_timeout')), true)) AS scope";

/// A pooled connection idle this long is checked with a round trip before use.
const CHECK_IDLE_AFTER: Duration = Duration::from_secs(1);

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
    /// Direct, or through a transaction-pooling PgBouncer.
    pub pooler: Pooler,
    /// Once a batch's upsert has run, the server ends the session if the transaction
    /// then sits idle this long (`idle_in_transaction_session_timeout`): a device whose
    /// network vanished before its `COMMIT` would otherwise keep its transaction, and
    /// with it the other devices' change-feed horizon, until TCP gives up (about two
    /// hours by default). Zero leaves the server's setting alone.
    pub idle_in_transaction_timeout: Duration,
    /// Direct sessions ask the server to probe an idle client after this long (TCP
    /// keepalives, then every second, three probes), so a vanished device's backend is
    /// found dead in seconds. Behind PgBouncer its own `tcp_keepalive` settings apply.
    /// Zero leaves the server's settings alone.
    pub tcp_keepalive: Duration,
    /// A direct session connection for `LISTEN` (one per sink), when [`Self::url`]
    /// goes through a transaction-pooling PgBouncer, which cannot carry `LISTEN`.
    /// Without it such a sink polls the feed's position every [`Self::poll_interval`].
    pub listen_url: Option<CloudUrl>,
    /// How often a sink that cannot listen checks for other writers' changes.
    pub poll_interval: Duration,
}

impl CloudOptions {
    /// Defaults: at most 3 connections (at least 1), 5 s acquire timeout, 10 s
    /// statement timeout, 300 s idle lifetime, application name `hybridsync`, direct
    /// to PostgreSQL, a 5 s idle-in-transaction timeout after each upsert, TCP
    /// keepalives after 5 s, polling every 2 s when the sink cannot listen.
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
            pooler: Pooler::Direct,
            idle_in_transaction_timeout: Duration::from_secs(5),
            tcp_keepalive: Duration::from_secs(5),
            listen_url: None,
            poll_interval: Duration::from_secs(2),
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
    /// Whether statements are prepared once and cached per connection (direct) or sent
    /// unnamed every time (behind a transaction-pooling PgBouncer).
    pub(crate) persistent: bool,
    /// `statement_timeout`, in milliseconds, as text for `set_config`.
    statement_timeout_ms: String,
    /// `idle_in_transaction_session_timeout` armed by each upsert (`None`: not armed).
    pub(crate) idle_in_transaction_ms: Option<String>,
    /// The looser one every transaction starts with (see [`Self::begin_with`]).
    begin_idle_ms: Option<String>,
    /// Where the change listener's session comes from, if anywhere.
    listen: ListenSource,
    poll_interval: Duration,
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
    /// Set once the server refused a feed page as a transaction of its own (its default
    /// isolation is not `READ COMMITTED`); pages are then read inside transactions.
    pub(crate) feed_in_transaction: AtomicBool,
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

/// Where a sink's `LISTEN` session comes from.
#[derive(Debug)]
enum ListenSource {
    /// One of the sink's own pooled connections (direct, with a cap of 2 or more).
    Pooled,
    /// A pool of one session connection of its own ([`CloudOptions::listen_url`]).
    Separate(PgPool),
    /// Nowhere: the sink polls for changes instead.
    Polling,
}

/// Holds one connection of `pool` in `LISTEN` and counts other writers' changes of this
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

/// How to connect to `url`: named for `pg_stat_activity`, and without the
/// `extra_float_digits` startup parameter, which PgBouncer 1.18 refuses (nothing here
/// reads floating-point text).
fn connect_options(url: &CloudUrl, application_name: &str) -> Result<PgConnectOptions> {
    Ok(PgConnectOptions::from_str(url.expose())
        .map_err(|_| Error::Config(format!("cannot parse cloud URL {url}")))?
        .application_name(application_name)
        .extra_float_digits(None))
}

/// The feed's latest position anywhere in the database (any tenant's change moves it).
/// No parameters: a simple-protocol statement, which PgBouncer passes as it is.
const FEED_POSITION: &str = "SELECT pg_sequence_last_value('hs_change_seq')";

/// Without a session to `LISTEN` on, looks at the feed's position every `interval` and
/// counts a change into `changes` whenever it moved (and once at the start, since what
/// happened before is unknown). A failed look is skipped: the next one tells.
async fn poll_for_changes(pool: PgPool, interval: Duration, changes: Arc<watch::Sender<u64>>) {
    let mut last: Option<Option<i64>> = None;
    while !pool.is_closed() {
        let row = sqlx::raw_sql(FEED_POSITION).fetch_one(&pool).await;
        if let Ok(position) = row.and_then(|row| row.try_get::<Option<i64>, _>(0)) {
            if last != Some(position) {
                last = Some(position);
                changes.send_modify(|n| *n += 1);
            }
        }
        tokio::time::sleep(interval).await;
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
        let direct = options.pooler == Pooler::Direct;
        let connect = connect_options(&options.url, &options.application_name)?;
        // A direct session also gets the statement timeout as its default (each
        // transaction sets it again, for the pooler's sake) and TCP keepalives, both
        // session settings. PgBouncer refuses the `options` startup parameter and keeps
        // keepalives of its own, and behind it nothing may be cached on a server
        // connection.
        let connect = if direct {
            let mut settings = vec![(
                "statement_timeout",
                options.statement_timeout.as_millis().to_string(),
            )];
            let keepalive = options.tcp_keepalive.as_secs();
            if keepalive > 0 {
                settings.extend([
                    ("tcp_keepalives_idle", keepalive.to_string()),
                    ("tcp_keepalives_interval", "1".to_owned()),
                    ("tcp_keepalives_count", "3".to_owned()),
                ]);
            }
            connect.options(settings)
        } else {
            connect.statement_cache_capacity(0)
        };
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections)
            .min_connections(options.min_connections)
            .acquire_timeout(options.acquire_timeout)
            .idle_timeout(options.idle_timeout)
            // A connection that died with a server restart is found and replaced here
            // rather than failing the caller's statement: checked with a round trip if
            // it sat idle for a while, where a dead one hides. One in steady use goes
            // straight to work (the check would add a round trip to every transaction,
            // on the path of every change to the other devices); should it have died
            // meanwhile, the statement fails and is retried as any failure is.
            .test_before_acquire(false)
            .before_acquire(|conn, meta| {
                Box::pin(async move {
                    if meta.idle_for >= CHECK_IDLE_AFTER {
                        sqlx::Connection::ping(conn).await?;
                    }
                    Ok(true)
                })
            })
            .connect_lazy_with(connect);
        let listen = match &options.listen_url {
            Some(url) => ListenSource::Separate(
                PgPoolOptions::new()
                    .max_connections(1)
                    .min_connections(0)
                    .acquire_timeout(options.acquire_timeout)
                    .connect_lazy_with(connect_options(url, &options.application_name)?),
            ),
            None if direct && options.max_connections >= 2 => ListenSource::Pooled,
            None => ListenSource::Polling,
        };
        let millis = |d: Duration| d.as_millis().min(i32::MAX as u128).to_string();
        Ok(Self {
            pool,
            tenant: tenant.to_owned(),
            max_connections: options.max_connections,
            max_drift_ms: options.max_drift.as_millis().min(i64::MAX as u128) as i64,
            persistent: direct,
            statement_timeout_ms: millis(options.statement_timeout),
            idle_in_transaction_ms: (!options.idle_in_transaction_timeout.is_zero())
                .then(|| millis(options.idle_in_transaction_timeout)),
            begin_idle_ms: (!options.idle_in_transaction_timeout.is_zero()).then(|| {
                millis(
                    3 * options
                        .idle_in_transaction_timeout
                        .max(options.statement_timeout),
                )
            }),
            listen,
            poll_interval: options.poll_interval.max(Duration::from_millis(10)),
            load: Mutex::new(VecDeque::new()),
            token: sink_token(),
            changes: Arc::new(watch::Sender::new(0)),
            listener: Mutex::new(None),
            listening: Arc::new(AtomicBool::new(false)),
            acquires: AtomicU64::new(0),
            acquire_errors: AtomicU64::new(0),
            acquire_wait_ns: AtomicU64::new(0),
            queries: AtomicU64::new(0),
            feed_in_transaction: AtomicBool::new(false),
        })
    }

    /// Starts the change listener unless it runs: `LISTEN` on a session when the sink
    /// has one to spare, otherwise a poll of the feed's position every
    /// [`CloudOptions::poll_interval`].
    pub(crate) fn ensure_listening(&self) {
        let mut listener = self.listener.lock_or_recover();
        if listener.is_some() {
            return;
        }
        let changes = self.changes.clone();
        let (pool, listening) = match &self.listen {
            ListenSource::Polling => {
                *listener = Some(tokio::spawn(poll_for_changes(
                    self.pool.clone(),
                    self.poll_interval,
                    changes,
                )));
                return;
            }
            // A borrowed pooled connection is not work: it counts on neither side of the
            // load, so the sink tracks it.
            ListenSource::Pooled => (self.pool.clone(), self.listening.clone()),
            ListenSource::Separate(pool) => (pool.clone(), Arc::new(AtomicBool::new(false))),
        };
        *listener = Some(tokio::spawn(listen_for_changes(
            pool,
            self.tenant.clone(),
            self.token.clone(),
            changes,
            listening,
        )));
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
        if let ListenSource::Separate(pool) = &self.listen {
            pool.close().await;
        }
        self.pool.close().await;
    }

    /// A transaction scoped to our tenant. `set_config(..., true)` is transaction-local,
    /// so the tenant is gone when the connection returns to the pool.
    pub(crate) async fn begin(&self) -> Result<Transaction<'static, Postgres>> {
        self.begin_with(None).await
    }

    /// [`Self::begin`] with a `BEGIN` statement of the caller's (`None`: plain
    /// `BEGIN`). Every transaction starts with a loose idle-in-transaction timeout
    /// (three times the larger of the idle and statement timeouts, 30 s by default): a
    /// device that vanishes mid-transaction before any upsert holds no transaction id
    /// and so nobody's feed, but it holds a server session, behind PgBouncer one of the
    /// pool's few, which it gives back within that time. A slow link uploading a batch
    /// has that long; the upsert then tightens it.
    pub(crate) async fn begin_with(
        &self,
        statement: Option<&'static str>,
    ) -> Result<Transaction<'static, Postgres>> {
        self.sample_load();
        let started = std::time::Instant::now();
        let began = match statement {
            Some(statement) => self.pool.begin_with(statement).await,
            None => self.pool.begin().await,
        };
        // BEGIN is a statement sent.
        let mut tx = self.counted(self.acquired(started, began)?);
        sqlx::query(BEGIN_FOR_TENANT)
            .persistent(self.persistent)
            .bind(&self.tenant)
            .bind(&self.statement_timeout_ms)
            .bind(self.begin_idle_ms.as_deref())
            .execute(self.counted(&mut *tx))
            .await?;
        Ok(tx)
    }

    /// A pooled connection for one statement that runs as its own transaction (and
    /// scopes itself to the tenant, as the schema's `hs_feed_page` does).
    pub(crate) async fn connection(&self) -> Result<PoolConnection<Postgres>> {
        self.sample_load();
        let started = std::time::Instant::now();
        let acquired = self.pool.acquire().await;
        self.acquired(started, acquired)
    }

    /// Counts a pool take that began at `started`, and its outcome.
    fn acquired<T>(&self, started: std::time::Instant, result: sqlx::Result<T>) -> Result<T> {
        self.acquire_wait_ns
            .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        match result {
            Ok(taken) => {
                self.acquires.fetch_add(1, Ordering::Relaxed);
                Ok(taken)
            }
            Err(e) => {
                self.acquire_errors.fetch_add(1, Ordering::Relaxed);
                Err(e.into())
            }
        }
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
        // No parameters, so the simple protocol: one message, which a transaction
        // pooler passes outside a transaction as well.
        sqlx::raw_sql(PING)
            .execute(self.counted(&self.pool))
            .await?;
        Ok(())
    }
}
