//! The Redis publisher: every instance's figures under `hybridsync:{tenant}:{device}:…`,
//! for `hybridsync top` and any dashboard that reads Redis.
//!
//! Per instance, on every snapshot (once a second by default):
//! - `…:{device}:gauges`: a hash of current values (queue depth by priority, circuit,
//!   pool, hit rate, ages, shipped entries kept, the instance's name, pid and version,
//!   `published_ms`), with a TTL (1 h by default), so a dead instance disappears;
//! - `…:{device}:counters`: a hash of counters, raised with `HINCRBY` by what changed
//!   since the last acknowledged publish (a publish that fails is carried into the
//!   next; a reply lost after Redis applied it may count twice), same TTL;
//! - `…:{device}:series`: a stream capped with `MAXLEN ~ 1000`, one entry per publish;
//! - `hybridsync:{tenant}:instances`: a sorted set of devices by last publish time.
//!
//! The publisher never sits on the read or write path: the store hands it the latest
//! snapshot through a `watch` channel (the newest replaces one not yet sent), and one
//! task sends it with a short timeout. With Redis absent, refusing or dying, publishes
//! fail and are counted (`hybridsync_redis_publishes_total{outcome="error"}`), and the
//! connection manager reconnects when it comes back.

use crate::{Error, Result, SyncMetrics, catalogue};
use hybridsync_core::{CloudUrl, Priority};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

/// Who publishes: the key prefix is `hybridsync:{tenant}:{device}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub tenant: String,
    /// The device id (hex), unique per data directory.
    pub device: String,
    /// A human name (the host name by default).
    pub name: String,
}

/// How the publisher runs.
#[derive(Debug, Clone, PartialEq)]
pub struct RedisOptions {
    /// How long an instance's keys outlive its last publish (default 1 h).
    pub ttl: Duration,
    /// The approximate cap of each instance's stream (default 1000 entries).
    pub series_len: usize,
    /// How long one publish or one connection attempt may take (default 1 s).
    pub timeout: Duration,
}

impl Default for RedisOptions {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(3600),
            series_len: 1000,
            timeout: Duration::from_secs(1),
        }
    }
}

fn prefix(tenant: &str) -> String {
    format!("hybridsync:{tenant}")
}

fn index_key(tenant: &str) -> String {
    format!("{}:instances", prefix(tenant))
}

fn instance_key(tenant: &str, device: &str, what: &str) -> String {
    format!("{}:{device}:{what}", prefix(tenant))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn client(url: &CloudUrl) -> Result<redis::Client> {
    redis::Client::open(url.expose()).map_err(|e| Error::Redis {
        url: url.redacted(),
        reason: e.to_string(),
    })
}

/// Checks that `url` is a Redis URL the client accepts, without connecting.
pub fn check_redis_url(url: &CloudUrl) -> Result<()> {
    client(url).map(drop)
}

fn connection(url: &CloudUrl, timeout: Duration) -> Result<ConnectionManager> {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
        .set_number_of_retries(1)
        .set_max_delay(timeout);
    ConnectionManager::new_lazy_with_config(client(url)?, config).map_err(|e| Error::Redis {
        url: url.redacted(),
        reason: e.to_string(),
    })
}

/// The counters of a snapshot, by field name: each only grows within a process, so
/// what changed since the last acknowledged publish is the delta to add.
fn counters(m: &SyncMetrics) -> [(&'static str, u64); 5] {
    [
        ("cache_hits", m.cache_hits),
        ("cache_misses", m.cache_misses),
        ("pool_acquires", m.pool_stats.acquires),
        ("pool_acquire_errors", m.pool_stats.acquire_errors),
        ("queries", m.pool_stats.queries),
    ]
}

/// The current values of a snapshot, by field name.
fn gauges(m: &SyncMetrics, instance: &Instance, published_ms: u64) -> Vec<(String, String)> {
    let mut out = vec![
        ("name".to_owned(), instance.name.clone()),
        ("pid".to_owned(), std::process::id().to_string()),
        ("version".to_owned(), env!("CARGO_PKG_VERSION").to_owned()),
        ("published_ms".to_owned(), published_ms.to_string()),
        ("uptime_secs".to_owned(), format!("{:.1}", m.uptime_secs)),
        (
            "cache_hit_rate".to_owned(),
            format!("{:.4}", m.cache_hit_rate),
        ),
        ("cache_entries".to_owned(), m.cache_entries.to_string()),
        (
            "queue".to_owned(),
            m.queue.values().sum::<u64>().to_string(),
        ),
        ("failed".to_owned(), m.failed.to_string()),
        // Shipped entries the outbox keeps as history: trimmed by `clear_done`, so a
        // current value, not a counter.
        ("synced".to_owned(), m.synced_total.to_string()),
        (
            "circuit".to_owned(),
            m.circuit.map_or("none", |c| c.as_str()).to_owned(),
        ),
        ("pool_size".to_owned(), m.pool_size.to_string()),
        ("pool_max".to_owned(), m.pool_max.to_string()),
        ("pool_load".to_owned(), format!("{:.3}", m.pool_load)),
    ];
    for priority in Priority::ALL {
        let depth = m.queue.get(&priority).copied().unwrap_or(0);
        out.push((format!("queue_{}", priority.as_str()), depth.to_string()));
    }
    for (field, age) in [
        ("last_sync_age_secs", m.last_sync_age_secs),
        ("health_check_age_secs", m.health_check_age_secs),
    ] {
        if let Some(age) = age {
            out.push((field.to_owned(), format!("{age:.1}")));
        }
    }
    out
}

/// A running publisher. Dropping it stops the task; [`RedisPublisher::stop`] also
/// removes this instance from Redis at once instead of leaving it to the TTL.
#[derive(Debug)]
pub struct RedisPublisher {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    status: watch::Receiver<PublisherStatus>,
}

/// What the publisher has done so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublisherStatus {
    pub published: u64,
    pub failed: u64,
    /// The last failure's message (cleared by a success).
    pub last_error: Option<String>,
}

impl RedisPublisher {
    /// Starts publishing every snapshot `snapshots` receives, as `instance`, to the
    /// Redis at `url`. Returns at once: the connection is made (and remade) in the
    /// background. Only a malformed URL is an error. Call it inside a Tokio runtime.
    pub fn start(
        url: &CloudUrl,
        instance: Instance,
        options: RedisOptions,
        snapshots: watch::Receiver<Option<SyncMetrics>>,
    ) -> Result<Self> {
        let conn = connection(url, options.timeout)?;
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let (status_tx, status) = watch::channel(PublisherStatus::default());
        let task = tokio::spawn(run(conn, instance, options, snapshots, stopped, status_tx));
        Ok(Self {
            stop: Some(stop),
            task: Some(task),
            status,
        })
    }

    /// Publishes so far, and the last error.
    pub fn status(&self) -> PublisherStatus {
        self.status.borrow().clone()
    }

    /// Stops the task and removes this instance's keys (within the publish timeout).
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for RedisPublisher {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

async fn run(
    mut conn: ConnectionManager,
    instance: Instance,
    options: RedisOptions,
    mut snapshots: watch::Receiver<Option<SyncMetrics>>,
    mut stopped: tokio::sync::oneshot::Receiver<()>,
    status: watch::Sender<PublisherStatus>,
) {
    let Instance { tenant, device, .. } = &instance;
    let (gauges_key, counters_key, series_key, index) = (
        instance_key(tenant, device, "gauges"),
        instance_key(tenant, device, "counters"),
        instance_key(tenant, device, "series"),
        index_key(tenant),
    );
    let ttl = options.ttl.as_secs().max(1) as i64;
    // What Redis has acknowledged of each counter.
    let mut acked: HashMap<&'static str, u64> = HashMap::new();
    let mut failing = false;
    loop {
        tokio::select! {
            changed = snapshots.changed() => if changed.is_err() { break },
            _ = &mut stopped => break,
        }
        let Some(snapshot) = snapshots.borrow_and_update().clone() else {
            continue;
        };
        let published_ms = now_ms();
        let mut pipe = redis::pipe();
        pipe.atomic();
        let current = counters(&snapshot);
        for (field, value) in current {
            let delta = value.saturating_sub(acked.get(field).copied().unwrap_or(0));
            pipe.hincr(&counters_key, field, delta).ignore();
        }
        pipe.hset_multiple(&gauges_key, &gauges(&snapshot, &instance, published_ms))
            .ignore();
        let total: u64 = snapshot.queue.values().sum();
        pipe.xadd_maxlen(
            &series_key,
            redis::streams::StreamMaxlen::Approx(options.series_len),
            "*",
            &[
                ("queue", total.to_string()),
                ("failed", snapshot.failed.to_string()),
                ("synced", snapshot.synced_total.to_string()),
                ("cache_hit_rate", format!("{:.4}", snapshot.cache_hit_rate)),
                ("pool_load", format!("{:.3}", snapshot.pool_load)),
                (
                    "circuit",
                    snapshot.circuit.map_or("none", |c| c.as_str()).to_owned(),
                ),
            ],
        )
        .ignore();
        pipe.zadd(&index, device, published_ms).ignore();
        pipe.zrembyscore(
            &index,
            "-inf",
            published_ms.saturating_sub(options.ttl.as_millis() as u64),
        )
        .ignore();
        for key in [&gauges_key, &counters_key, &series_key, &index] {
            pipe.expire(key, ttl).ignore();
        }
        let sent = tokio::time::timeout(options.timeout, pipe.query_async::<()>(&mut conn)).await;
        let outcome = match sent {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {:?}", options.timeout)),
        };
        match outcome {
            Ok(()) => {
                for (field, value) in current {
                    acked.insert(field, value);
                }
                if failing {
                    tracing::info!(tenant, device, "redis publishing resumed");
                    failing = false;
                }
                metrics::counter!(catalogue::REDIS_PUBLISHES, "outcome" => "ok").increment(1);
                status.send_modify(|s| {
                    s.published += 1;
                    s.last_error = None;
                });
            }
            Err(reason) => {
                if !failing {
                    tracing::warn!(tenant, device, %reason, "redis publishing failed; retrying on every snapshot");
                    failing = true;
                }
                metrics::counter!(catalogue::REDIS_PUBLISHES, "outcome" => "error").increment(1);
                status.send_modify(|s| {
                    s.failed += 1;
                    s.last_error = Some(reason);
                });
            }
        }
    }
    let mut pipe = redis::pipe();
    pipe.del(&[&gauges_key, &counters_key, &series_key])
        .ignore();
    pipe.zrem(&index, device).ignore();
    let _ = tokio::time::timeout(options.timeout, pipe.query_async::<()>(&mut conn)).await;
}

/// One live instance as Redis holds it: its current values and its counters.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct InstanceView {
    pub device: String,
    /// The `gauges` hash (see the module docs for the fields).
    pub gauges: BTreeMap<String, String>,
    /// The `counters` hash.
    pub counters: BTreeMap<String, u64>,
    /// Seconds since it last published, by this machine's clock.
    pub age_secs: f64,
}

impl InstanceView {
    /// A current value, parsed.
    pub fn gauge<T: std::str::FromStr>(&self, field: &str) -> Option<T> {
        self.gauges.get(field).and_then(|v| v.parse().ok())
    }
}

/// Every instance of `tenant` that published within the TTL and whose keys have not
/// expired, most recent first.
pub async fn redis_instances(
    url: &CloudUrl,
    tenant: &str,
    timeout: Duration,
) -> Result<Vec<InstanceView>> {
    let failed = |e: String| Error::Redis {
        url: url.redacted(),
        reason: e,
    };
    let client = client(url)?;
    let read = async {
        let mut conn = client.get_multiplexed_async_connection().await?;
        let devices: Vec<(String, f64)> = redis::cmd("ZREVRANGE")
            .arg(index_key(tenant))
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES")
            .query_async(&mut conn)
            .await?;
        let mut out = Vec::new();
        let now = now_ms();
        for (device, published_ms) in devices {
            let gauges: BTreeMap<String, String> = redis::cmd("HGETALL")
                .arg(instance_key(tenant, &device, "gauges"))
                .query_async(&mut conn)
                .await?;
            if gauges.is_empty() {
                continue; // expired
            }
            let counters: BTreeMap<String, u64> = redis::cmd("HGETALL")
                .arg(instance_key(tenant, &device, "counters"))
                .query_async(&mut conn)
                .await?;
            out.push(InstanceView {
                device,
                gauges,
                counters,
                age_secs: now.saturating_sub(published_ms as u64) as f64 / 1000.0,
            });
        }
        Ok::<_, redis::RedisError>(out)
    };
    match tokio::time::timeout(timeout, read).await {
        Ok(result) => result.map_err(|e| failed(e.to_string())),
        Err(_) => Err(failed(format!("no answer within {timeout:?}"))),
    }
}
