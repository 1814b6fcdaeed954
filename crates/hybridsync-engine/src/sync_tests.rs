//! The drain, proven against both the in-memory sink and the real PostgreSQL sink by
//! one shared suite (`sync_suite!`), plus memory-only fault drills.

use crate::{BreakerConfig, SyncConfig, Syncer};
use hybridsync_core::{
    ChangeCursor, CircuitState, CloudSink, CloudUrl, CollectionName, CollectionSpec, Key,
    LocalStore, Priority, Record, SyncEvent, WriteRequest,
};
use hybridsync_testkit::MemorySink;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// A cloud a test can take down and bring back.
pub(crate) trait TestCloud: Send + Sync {
    type Sink: CloudSink;
    fn sink(&self) -> Arc<Self::Sink>;
    /// A sink of its own, as another device (another process) would have.
    fn own_sink(&self) -> Arc<Self::Sink>;
    fn down(&self);
    fn up(&self);
    /// Replaces a stored row behind the sink's back, as someone with write access to
    /// the cloud could: the new row is what every device pulls next.
    fn overwrite(&self, record: &Record);
    /// Deletes a stored row behind the sink's back (no tombstone).
    fn delete_row(&self, collection: &CollectionName, key: &Key);
    /// Drops a collection's definition from the cloud's catalogue behind the sink's
    /// back; its rows stay.
    fn forget_collection(&self, collection: &CollectionName);
}

pub(crate) struct MemoryCloud(Arc<MemorySink>);

impl TestCloud for MemoryCloud {
    type Sink = MemorySink;
    fn sink(&self) -> Arc<MemorySink> {
        self.0.clone()
    }
    fn own_sink(&self) -> Arc<MemorySink> {
        self.0.clone()
    }
    fn down(&self) {
        self.0.set_down(true);
    }
    fn up(&self) {
        self.0.set_down(false);
    }
    fn overwrite(&self, record: &Record) {
        self.0.overwrite(record.clone());
    }
    fn delete_row(&self, collection: &CollectionName, key: &Key) {
        self.0.delete_row(collection, key);
    }
    fn forget_collection(&self, collection: &CollectionName) {
        self.0.forget_collection(collection);
    }
}

pub(crate) fn memory_cloud() -> MemoryCloud {
    MemoryCloud(Arc::new(MemorySink::new()))
}

pub(crate) struct PgCloud {
    sink: Arc<hybridsync_cloud::PostgresSink>,
    options: hybridsync_cloud::CloudOptions,
    /// The pooler the sink goes through, if any (dropped before the server).
    bouncer: Option<hybridsync_testkit::TempPgBouncer>,
    server: hybridsync_testkit::TempPostgres,
}

impl TestCloud for PgCloud {
    type Sink = hybridsync_cloud::PostgresSink;
    fn sink(&self) -> Arc<Self::Sink> {
        self.sink.clone()
    }
    fn own_sink(&self) -> Arc<Self::Sink> {
        Arc::new(hybridsync_cloud::PostgresSink::new(self.options.clone()).unwrap())
    }
    /// The server stops; behind a pooler, the pooler stops (a PgBouncer restart).
    fn down(&self) {
        match &self.bouncer {
            Some(bouncer) => bouncer.stop(),
            None => self
                .server
                .stop(hybridsync_testkit::ShutdownMode::Fast)
                .unwrap(),
        }
    }
    fn up(&self) {
        match &self.bouncer {
            Some(bouncer) => bouncer.start_again().unwrap(),
            None => self.server.start_again().unwrap(),
        }
    }
    fn overwrite(&self, r: &Record) {
        let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
        let embedding = r.embedding.as_ref().map_or("NULL".to_owned(), |e| {
            let bytes: Vec<u8> = e.iter().flat_map(|v| v.to_le_bytes()).collect();
            format!("'\\x{}'::bytea", hex(&bytes))
        });
        self.server
            .psql(
                "postgres",
                &format!(
                    "UPDATE hs_records SET payload = '\\x{}'::bytea, embedding = {embedding}, hash = '\\x{}'::bytea, \
                     hlc = {}, origin = '\\x{}'::bytea, tombstone = {}, txid = pg_current_xact_id(), seq = nextval('hs_change_seq'), \
                     leaf = {} WHERE collection = '{}' AND key = '{}'",
                    hex(&r.payload),
                    hex(&r.hash.0),
                    r.version.packed(),
                    hex(&r.version.origin.0),
                    r.tombstone,
                    // The row's leaf as the sink would store it: a forger with SQL
                    // access can keep it right (a careless UPDATE of the bytes alone
                    // leaves it as it was, which only a deep check sees).
                    hybridsync_core::leaf_of(
                        &r.collection,
                        &hybridsync_core::RowDigest::of(r),
                        !r.tombstone && hybridsync_core::sealed_key_id(&r.payload).is_some()
                    ) as i64,
                    r.collection,
                    r.key
                ),
            )
            .unwrap();
    }
    fn delete_row(&self, collection: &CollectionName, key: &Key) {
        self.server
            .psql(
                "postgres",
                &format!(
                    "DELETE FROM hs_records WHERE collection = '{collection}' AND key = '{key}'"
                ),
            )
            .unwrap();
    }
    fn forget_collection(&self, collection: &CollectionName) {
        self.server
            .psql(
                "postgres",
                &format!("DELETE FROM hs_collections WHERE name = '{collection}'"),
            )
            .unwrap();
    }
}

impl PgCloud {
    /// The server, for raw SQL and its files.
    pub(crate) fn server(&self) -> &hybridsync_testkit::TempPostgres {
        &self.server
    }
}

pub(crate) async fn pg_cloud() -> PgCloud {
    let (server, options) = pg_server().await;
    let url = CloudUrl::new(format!(
        "postgres://app@127.0.0.1:{}/postgres",
        server.port()
    ));
    let options = hybridsync_cloud::CloudOptions { url, ..options };
    let sink = Arc::new(hybridsync_cloud::PostgresSink::new(options.clone()).unwrap());
    PgCloud {
        server,
        options,
        sink,
        bouncer: None,
    }
}

/// The same cloud behind a PgBouncer in transaction pooling mode (a pool of 4 server
/// connections): the sink keeps no session state and prepares nothing by name, and
/// without a `LISTEN` session it polls for changes.
pub(crate) async fn pgbouncer_cloud() -> PgCloud {
    let (server, options) = pg_server().await;
    let bouncer = hybridsync_testkit::TempPgBouncer::start(
        server.port(),
        hybridsync_testkit::TempPgBouncerOptions {
            default_pool_size: 4,
            ..Default::default()
        },
    )
    .unwrap();
    let options = hybridsync_cloud::CloudOptions {
        url: CloudUrl::new(bouncer.url("app", "postgres")),
        pooler: hybridsync_core::Pooler::PgBouncerTransaction,
        poll_interval: Duration::from_millis(100),
        ..options
    };
    let sink = Arc::new(hybridsync_cloud::PostgresSink::new(options.clone()).unwrap());
    PgCloud {
        server,
        options,
        sink,
        bouncer: Some(bouncer),
    }
}

/// A migrated server with the role `app` granted the tenant `tenant`, and the sink
/// options the tests share (the URL is the caller's to set).
async fn pg_server() -> (
    hybridsync_testkit::TempPostgres,
    hybridsync_cloud::CloudOptions,
) {
    let server = hybridsync_testkit::TempPostgres::start().unwrap();
    server.psql("postgres", "CREATE ROLE app LOGIN").unwrap();
    let admin = CloudUrl::new(server.url("postgres"));
    hybridsync_cloud::migrate(&admin, Some("app"))
        .await
        .unwrap();
    hybridsync_cloud::grant_tenant(&admin, Some("app"), "tenant")
        .await
        .unwrap();
    let url = CloudUrl::new(server.url("postgres"));
    let mut options = hybridsync_cloud::CloudOptions::new(url, "tenant");
    options.acquire_timeout = Duration::from_secs(1);
    (server, options)
}

pub(crate) fn fast_config() -> SyncConfig {
    SyncConfig {
        interval: Duration::from_millis(50),
        batch_size: 10,
        min_batch: 5,
        max_batch: 200,
        retry_initial: Duration::from_millis(10),
        retry_max: Duration::from_millis(40),
        breaker: BreakerConfig {
            failure_threshold: 3,
            open_for: Duration::from_millis(200),
            half_open_successes: 2,
        },
        health_interval: Duration::from_millis(50),
        ..SyncConfig::default()
    }
}

type LocalEngine = crate::tests::TestEngine;

/// A syncer draining `engine`'s store to `sink`, nudged by the engine's writes.
fn syncer_for<C: CloudSink>(
    engine: &LocalEngine,
    sink: Arc<C>,
    config: SyncConfig,
) -> Syncer<hybridsync_store::SqliteStore, C> {
    Syncer::new(engine.store().clone(), sink, config, engine.write_nudge())
}

async fn local(dir: &std::path::Path) -> LocalEngine {
    crate::tests::open_engine(
        dir,
        CollectionSpec {
            name: notes(),
            vector: None,
            encrypted: false,
        },
    )
    .await
}

/// A local engine in a fresh directory and an empty in-memory cloud.
async fn local_with_memory_cloud() -> (tempfile::TempDir, LocalEngine, Arc<MemorySink>) {
    let tmp = tempfile::tempdir().unwrap();
    let engine = local(tmp.path()).await;
    (tmp, engine, Arc::new(MemorySink::new()))
}

pub(crate) fn notes() -> CollectionName {
    CollectionName::new("notes").unwrap()
}

fn write(key: &str, value: &str, priority: Priority) -> WriteRequest {
    WriteRequest::put(
        notes(),
        Key::new(key).unwrap(),
        value.as_bytes().to_vec(),
        None,
    )
    .with_priority(priority)
}

pub(crate) async fn cloud_rows<C: CloudSink>(sink: &C) -> BTreeMap<String, Record> {
    cloud_rows_of(sink, &notes()).await
}

/// Every row the cloud holds for `collection`, as the cloud holds it, by key.
pub(crate) async fn cloud_rows_of<C: CloudSink>(
    sink: &C,
    collection: &CollectionName,
) -> BTreeMap<String, Record> {
    let (mut cursor, mut rows) = (ChangeCursor::default(), BTreeMap::new());
    loop {
        let batch = sink.pull(collection, &cursor, 500).await.unwrap();
        if batch.records.is_empty() {
            return rows;
        }
        for record in batch.records {
            rows.insert(record.key.to_string(), record);
        }
        cursor = batch.next;
    }
}

/// Every live local record (and tombstone) is in the cloud at exactly its local version.
async fn assert_converged<C: CloudSink>(engine: &LocalEngine, sink: &C, keys: &[String]) {
    let cloud = cloud_rows(sink).await;
    for key in keys {
        let local = engine
            .store()
            .get(&notes(), &Key::new(key.as_str()).unwrap())
            .await
            .unwrap()
            .unwrap();
        let remote = cloud
            .get(key)
            .unwrap_or_else(|| panic!("{key} never reached the cloud"));
        assert_eq!(remote, &local, "{key}: cloud differs from local");
    }
    let stats = engine.store().outbox_stats().await.unwrap();
    assert_eq!(
        (stats.pending, stats.in_flight, stats.failed),
        (0, 0, 0),
        "{stats:?}"
    );
}

async fn ships_everything_most_urgent_first<T: TestCloud>(cloud: T) {
    let tmp = tempfile::tempdir().unwrap();
    let engine = local(tmp.path()).await;
    let mut keys = Vec::new();
    let classes = [
        Priority::Deferred,
        Priority::Low,
        Priority::Normal,
        Priority::High,
        Priority::Critical,
    ];
    for (i, priority) in classes.iter().cycle().take(100).enumerate() {
        keys.push(format!("k{i:03}"));
        engine
            .put(write(&keys[i], &format!("v{i}"), *priority))
            .await
            .unwrap();
    }
    // One lane, so batches land in the order they were claimed (with several, a
    // later batch may land first).
    let config = SyncConfig {
        lanes: 1,
        ..fast_config()
    };
    let syncer = syncer_for(&engine, cloud.sink(), config);
    let mut events = syncer.subscribe();
    let report = syncer.drain_until_idle().await.unwrap();
    assert_eq!(report.shipped, 100, "{report:?}");
    assert_converged(&engine, &*cloud.sink(), &keys).await;
    let mut order = Vec::new();
    while let Ok(event) = events.try_recv() {
        if let SyncEvent::RecordSynced { key, .. } = event {
            let i: usize = key.as_str()[1..].parse().unwrap();
            order.push(classes[i % 5]);
        }
    }
    assert_eq!(order.len(), 100);
    assert!(
        order.windows(2).all(|w| w[0] <= w[1]),
        "most urgent first: {order:?}"
    );
}

async fn survives_an_outage_and_converges<T: TestCloud>(cloud: T) {
    let tmp = tempfile::tempdir().unwrap();
    let engine = Arc::new(local(tmp.path()).await);
    let syncer = Arc::new(syncer_for(&engine, cloud.sink(), fast_config()));
    let mut events = syncer.subscribe();
    let handle = syncer.start();
    let mut keys: Vec<String> = (0..20).map(|i| format!("k{i}")).collect();
    for key in &keys {
        engine
            .put(write(key, "before", Priority::Normal))
            .await
            .unwrap();
    }

    cloud.down();
    for (i, key) in keys.iter().enumerate() {
        // Writes and reads keep working locally while the cloud is away.
        engine
            .put(write(key, &format!("during-{i}"), Priority::High))
            .await
            .unwrap();
        assert!(engine.get(&notes(), key.as_str()).await.unwrap().is_some());
    }
    for i in 0..20 {
        keys.push(format!("new{i}"));
        engine
            .put(write(&format!("new{i}"), "during", Priority::Low))
            .await
            .unwrap();
    }
    engine
        .delete(notes(), Key::new("k0").unwrap(), Priority::Critical)
        .await
        .unwrap();
    let opened = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if let Ok(SyncEvent::CircuitStateChanged {
                to: CircuitState::Open,
                ..
            }) = events.recv().await
            {
                return;
            }
        }
    })
    .await;
    assert!(opened.is_ok(), "the circuit never opened during the outage");

    cloud.up();
    let converged = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let stats = engine.store().outbox_stats().await.unwrap();
            if stats.pending + stats.in_flight == 0
                && syncer.status().circuit == CircuitState::Closed
            {
                return stats;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the backlog drained after the cloud came back");
    assert_eq!(converged.failed, 0);
    handle.shutdown().await;
    assert_converged(&engine, &*cloud.sink(), &keys).await;
    assert!(
        cloud_rows(&*cloud.sink()).await["k0"].tombstone,
        "the delete reached the cloud"
    );
}

/// With a one-hour open period, only a health check can end the outage early.
async fn a_healthy_check_drains_the_backlog_before_the_open_period_ends<T: TestCloud>(cloud: T) {
    let tmp = tempfile::tempdir().unwrap();
    let engine = local(tmp.path()).await;
    let mut config = fast_config();
    config.interval = Duration::from_secs(3600);
    config.breaker.open_for = Duration::from_secs(3600);
    let syncer = Arc::new(syncer_for(&engine, cloud.sink(), config));
    cloud.down();
    let handle = syncer.start();
    let keys: Vec<String> = (0..30).map(|i| format!("k{i}")).collect();
    for key in &keys {
        engine.put(write(key, "v", Priority::Normal)).await.unwrap();
    }
    tokio::time::timeout(Duration::from_secs(20), async {
        while syncer.status().circuit != CircuitState::Open {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the circuit opens during the outage");
    cloud.up();
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let stats = engine.store().outbox_stats().await.unwrap();
            if stats.pending + stats.in_flight == 0
                && syncer.status().circuit == CircuitState::Closed
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the backlog drained long before the open period ended");
    handle.shutdown().await;
    assert_converged(&engine, &*cloud.sink(), &keys).await;
}

/// A failed shipment is tried again when its backoff ends, not at the next interval
/// (an hour here) or the next write: nothing else wakes the drain in this test.
async fn a_failed_shipment_is_retried_when_its_backoff_ends<T: TestCloud>(cloud: T) {
    let tmp = tempfile::tempdir().unwrap();
    let engine = local(tmp.path()).await;
    let mut config = fast_config();
    config.interval = Duration::from_secs(3600);
    config.health_interval = Duration::from_secs(3600);
    config.retry_initial = Duration::from_millis(100);
    config.retry_max = Duration::from_millis(200);
    config.max_attempts = 1_000;
    // The circuit stays closed: no health check or state change nudges the drain.
    config.breaker.failure_threshold = 1_000;
    let syncer = Arc::new(syncer_for(&engine, cloud.sink(), config));
    cloud.down();
    let handle = syncer.start();
    engine.put(write("a", "1", Priority::Normal)).await.unwrap();
    // The write's nudge makes the first attempt, which fails (PostgreSQL's pool gives
    // up connecting after its 1 s acquire timeout).
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let stats = engine.store().outbox_stats().await.unwrap();
    assert_eq!(stats.pending + stats.in_flight, 1);
    assert_eq!(syncer.status().shipped_total, 0);
    assert_eq!(syncer.status().circuit, CircuitState::Closed);
    cloud.up();
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let stats = engine.store().outbox_stats().await.unwrap();
            if stats.pending + stats.in_flight == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the retry ran when its backoff ended");
    handle.shutdown().await;
    assert_converged(&engine, &*cloud.sink(), &["a".to_owned()]).await;
}

async fn shutdown_stops_the_loops<T: TestCloud>(cloud: T) {
    let tmp = tempfile::tempdir().unwrap();
    let engine = local(tmp.path()).await;
    let syncer = Arc::new(syncer_for(&engine, cloud.sink(), fast_config()));
    let handle = syncer.start();
    engine.put(write("a", "1", Priority::Normal)).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), async {
        while engine.store().outbox_stats().await.unwrap().pending > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("a nudged write drains well before the interval");
    tokio::time::timeout(Duration::from_secs(5), handle.shutdown())
        .await
        .expect("shutdown returns promptly");
    engine.put(write("b", "2", Priority::Normal)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        engine.store().outbox_stats().await.unwrap().pending,
        1,
        "nothing drains after shutdown"
    );
    assert_eq!(
        syncer.flush(Duration::from_secs(10)).await.unwrap(),
        0,
        "flush ships the rest"
    );
    assert_converged(&engine, &*cloud.sink(), &["a".to_owned(), "b".to_owned()]).await;
}

macro_rules! sync_suite {
    ($module:ident, $cloud:expr) => {
        mod $module {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn ships_everything_most_urgent_first() {
                super::ships_everything_most_urgent_first($cloud).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn survives_an_outage_and_converges() {
                super::survives_an_outage_and_converges($cloud).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_healthy_check_drains_the_backlog_before_the_open_period_ends() {
                super::a_healthy_check_drains_the_backlog_before_the_open_period_ends($cloud).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_failed_shipment_is_retried_when_its_backoff_ends() {
                super::a_failed_shipment_is_retried_when_its_backoff_ends($cloud).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn shutdown_stops_the_loops() {
                super::shutdown_stops_the_loops($cloud).await;
            }
        }
    };
}

sync_suite!(memory, memory_cloud());
sync_suite!(postgres, pg_cloud().await);
sync_suite!(pgbouncer, pgbouncer_cloud().await);

#[tokio::test]
async fn a_poisonous_record_is_parked_and_the_rest_ship() {
    let (_tmp, engine, sink) = local_with_memory_cloud().await;
    sink.reject_key("poison");
    let keys: Vec<String> = (0..30).map(|i| format!("k{i}")).collect();
    for key in keys.iter().take(15) {
        engine.put(write(key, "v", Priority::Normal)).await.unwrap();
    }
    engine
        .put(write("poison", "v", Priority::Critical))
        .await
        .unwrap();
    for key in keys.iter().skip(15) {
        engine.put(write(key, "v", Priority::Normal)).await.unwrap();
    }
    let syncer = syncer_for(&engine, sink.clone(), fast_config());
    let report = syncer.drain_until_idle().await.unwrap();
    assert_eq!((report.shipped, report.failed), (30, 1), "{report:?}");
    let stats = engine.store().outbox_stats().await.unwrap();
    assert_eq!(
        (stats.pending, stats.failed),
        (0, 1),
        "the poison is parked, visible, and blocks nothing"
    );
    assert_eq!(sink.all().len(), 30);
    // Once the cloud accepts it, retrying the failed entry ships it.
    let fixed = Arc::new(MemorySink::new());
    let syncer = syncer_for(&engine, fixed.clone(), fast_config());
    assert_eq!(engine.store().retry_failed().await.unwrap(), 1);
    assert_eq!(syncer.drain_until_idle().await.unwrap().shipped, 1);
}

/// A device whose login role was not granted the tenant it claims: the cloud refuses
/// every batch for good, so the drain parks the entries as failed at once instead of
/// retrying them forever, and nothing reaches the tenant.
#[tokio::test]
async fn writes_for_a_tenant_the_role_was_not_granted_are_parked_not_retried() {
    let cloud = pg_cloud().await;
    let mut options = cloud.options.clone();
    options.tenant = "not-granted".into();
    let stranger = Arc::new(hybridsync_cloud::PostgresSink::new(options).unwrap());
    let tmp = tempfile::tempdir().unwrap();
    let engine = local(tmp.path()).await;
    for i in 0..3 {
        engine
            .put(write(&format!("k{i}"), "v", Priority::Normal))
            .await
            .unwrap();
    }
    let syncer = syncer_for(&engine, stranger, fast_config());
    let report = syncer.drain_until_idle().await.unwrap();
    assert_eq!(
        (report.shipped, report.retried, report.failed),
        (0, 0, 3),
        "{report:?}"
    );
    let stats = engine.store().outbox_stats().await.unwrap();
    assert_eq!((stats.pending, stats.failed), (0, 3));
    assert_eq!(
        cloud
            .server
            .psql("postgres", "SELECT count(*) FROM hs_records")
            .unwrap(),
        "0"
    );
}

#[tokio::test]
async fn retries_back_off_and_give_up_after_max_attempts() {
    let (_tmp, engine, sink) = local_with_memory_cloud().await;
    let mut config = fast_config();
    config.max_attempts = 3;
    config.breaker.failure_threshold = 100;
    config.retry_initial = Duration::from_millis(1);
    config.retry_max = Duration::from_millis(2);
    let syncer = syncer_for(&engine, sink.clone(), config);
    engine.put(write("k", "v", Priority::Normal)).await.unwrap();
    sink.set_down(true);
    let mut total_failed = 0;
    for _ in 0..20 {
        total_failed += syncer.drain_once().await.unwrap().failed;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(total_failed, 1);
    let stats = engine.store().outbox_stats().await.unwrap();
    assert_eq!(
        (stats.pending, stats.failed),
        (0, 1),
        "parked after 3 attempts, kept"
    );
    assert_eq!(sink.calls(), 3, "exactly max_attempts tries");
    sink.set_down(false);
    engine.store().retry_failed().await.unwrap();
    assert_eq!(syncer.drain_until_idle().await.unwrap().shipped, 1);
}

#[tokio::test]
async fn under_pool_pressure_only_critical_and_high_drain() {
    let (_tmp, engine, sink) = local_with_memory_cloud().await;
    sink.set_load(0.9);
    for (key, priority) in [
        ("c", Priority::Critical),
        ("h", Priority::High),
        ("n", Priority::Normal),
        ("l", Priority::Low),
    ] {
        engine.put(write(key, "v", priority)).await.unwrap();
    }
    let syncer = syncer_for(&engine, sink.clone(), fast_config());
    assert_eq!(syncer.drain_until_idle().await.unwrap().shipped, 2);
    assert_eq!(
        engine.store().outbox_stats().await.unwrap().pending,
        2,
        "normal and low wait, kept"
    );
    sink.set_load(0.1);
    assert_eq!(syncer.drain_until_idle().await.unwrap().shipped, 2);
}

#[tokio::test]
async fn soft_caps_downgrade_new_entries_but_never_critical() {
    let tmp = tempfile::tempdir().unwrap();
    let engine = local(tmp.path()).await;
    let batch: Vec<_> = (0..60)
        .map(|i| write(&format!("d{i}"), "v", Priority::Deferred))
        .collect();
    engine.write(batch).await.unwrap();
    let highs: Vec<_> = (0..510)
        .map(|i| write(&format!("h{i}"), "v", Priority::High))
        .collect();
    engine.write(highs).await.unwrap();
    let crit: Vec<_> = (0..1100)
        .map(|i| write(&format!("c{i}"), "v", Priority::Critical))
        .collect();
    engine.write(crit).await.unwrap();
    let stats = engine.store().outbox_stats().await.unwrap();
    assert_eq!(stats.by_priority[&Priority::High], 500);
    assert_eq!(
        stats.by_priority[&Priority::Normal],
        10,
        "the overflow of high went one class down"
    );
    assert_eq!(
        stats.by_priority[&Priority::Critical],
        1100,
        "critical is never downgraded"
    );
    assert_eq!(
        stats.by_priority[&Priority::Deferred],
        60,
        "nothing is dropped at the bottom"
    );
    assert_eq!(stats.pending, 1670);
}

#[test]
fn breaker_opens_half_opens_and_closes() {
    use crate::CircuitBreaker;
    let config = BreakerConfig {
        failure_threshold: 5,
        open_for: Duration::from_secs(60),
        half_open_successes: 2,
    };
    let mut breaker = CircuitBreaker::new(config);
    let t0 = 1_000_000u64;
    for _ in 0..4 {
        assert_eq!(breaker.on_failure(t0), None);
    }
    assert_eq!(
        breaker.on_failure(t0),
        Some((CircuitState::Closed, CircuitState::Open))
    );
    assert!(!breaker.allow(t0 + 59_000).0, "open for 60 s");
    assert_eq!(
        breaker.allow(t0 + 60_000),
        (true, Some((CircuitState::Open, CircuitState::HalfOpen)))
    );
    assert_eq!(
        breaker.on_failure(t0 + 61_000),
        Some((CircuitState::HalfOpen, CircuitState::Open))
    );
    let t1 = t0 + 121_000;
    assert!(breaker.allow(t1).0);
    assert_eq!(breaker.on_success(t1), None);
    assert_eq!(
        breaker.on_success(t1),
        Some((CircuitState::HalfOpen, CircuitState::Closed))
    );
    // A success in between resets the count of consecutive failures.
    for _ in 0..4 {
        breaker.on_failure(t1);
    }
    breaker.on_success(t1);
    assert_eq!(breaker.on_failure(t1), None);
}

#[test]
fn a_healthy_check_ends_an_open_period_early() {
    use crate::CircuitBreaker;
    let mut breaker = CircuitBreaker::new(BreakerConfig::default());
    let t0 = 1_000_000u64;
    for _ in 0..5 {
        breaker.on_failure(t0);
    }
    let t1 = t0 + 10_000;
    assert_eq!(breaker.on_health(false, t1), None, "still sick: stays open");
    assert!(!breaker.allow(t1).0);
    assert_eq!(
        breaker.on_health(true, t1),
        Some((CircuitState::Open, CircuitState::HalfOpen)),
        "healthy after 10 s: probes go through without waiting 60 s"
    );
    assert!(breaker.allow(t1).0);
    assert_eq!(breaker.on_health(true, t1), None, "one probe so far");
    assert_eq!(
        breaker.on_success(t1),
        Some((CircuitState::HalfOpen, CircuitState::Closed))
    );
    assert_eq!(
        breaker.on_health(false, t1),
        None,
        "closed: health is not asked"
    );
    for _ in 0..5 {
        breaker.on_failure(t1);
    }
    breaker.on_health(true, t1);
    assert_eq!(
        breaker.on_health(false, t1),
        Some((CircuitState::HalfOpen, CircuitState::Open)),
        "a failed check while half-open opens it again"
    );
}

#[test]
fn retry_delays_double_to_the_cap_with_equal_jitter() {
    let (initial, max) = (Duration::from_secs(1), Duration::from_secs(60));
    for (attempt, full_secs) in (1..=8).zip([1u64, 2, 4, 8, 16, 32, 60, 60]) {
        let full = Duration::from_secs(full_secs);
        let delays: Vec<Duration> = (0..400)
            .map(|_| crate::retry_delay(attempt, initial, max))
            .collect();
        let (low, high) = (*delays.iter().min().unwrap(), *delays.iter().max().unwrap());
        // Equal jitter: half fixed, half random, never above the doubled (capped) delay.
        assert!(
            low >= full / 2 - Duration::from_millis(1) && high <= full,
            "attempt {attempt}: {low:?}..{high:?} outside {:?}..{full:?}",
            full / 2
        );
        assert!(
            low < full.mul_f64(0.6) && high > full.mul_f64(0.9),
            "attempt {attempt}: jitter should spread over the range, saw {low:?}..{high:?}"
        );
    }
}

/// Time is injected: a manual clock walks the breaker through its 60 s open period
/// (and the entry through its retry schedule) without the test sleeping.
#[tokio::test]
async fn a_manual_clock_steps_the_breaker_through_its_open_period() {
    use hybridsync_core::{Clock, ManualClock};
    let (_tmp, engine, sink) = local_with_memory_cloud().await;
    let clock = Arc::new(ManualClock::new(1_000_000));
    let step = |ms: u64| clock.set(clock.now_ms() + ms);
    let config = SyncConfig {
        retry_initial: Duration::from_secs(1),
        retry_max: Duration::from_secs(60),
        breaker: BreakerConfig {
            failure_threshold: 2,
            open_for: Duration::from_secs(60),
            half_open_successes: 2,
        },
        ..SyncConfig::default()
    };
    let syncer = syncer_for(&engine, sink.clone(), config).with_clock(clock.clone());
    let started = std::time::Instant::now();
    engine.put(write("a", "v", Priority::Normal)).await.unwrap();
    sink.set_down(true);
    assert_eq!(syncer.drain_once().await.unwrap().retried, 1);
    assert_eq!(
        syncer.drain_once().await.unwrap().claimed,
        0,
        "the retry is not due before its backoff ends"
    );
    step(1_000);
    assert_eq!(syncer.drain_once().await.unwrap().retried, 1);
    assert_eq!(syncer.status().circuit, CircuitState::Open);
    sink.set_down(false);
    let calls = sink.calls();
    step(59_999);
    let report = syncer.drain_once().await.unwrap();
    assert!(report.circuit_open && report.claimed == 0, "{report:?}");
    assert_eq!(sink.calls(), calls, "nothing reaches the cloud while open");
    step(1);
    let report = syncer.drain_once().await.unwrap();
    assert_eq!(
        report.shipped, 1,
        "60 s after opening, the backlog is the probe"
    );
    assert_eq!(syncer.status().circuit, CircuitState::HalfOpen);
    engine.put(write("b", "v", Priority::Normal)).await.unwrap();
    assert_eq!(syncer.drain_once().await.unwrap().shipped, 1);
    assert_eq!(syncer.status().circuit, CircuitState::Closed);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "61 s of clock time took {:?} of real time",
        started.elapsed()
    );
}

#[tokio::test]
async fn batch_size_grows_while_fast_and_shrinks_when_slow() {
    let (_tmp, engine, sink) = local_with_memory_cloud().await;
    let mut config = fast_config();
    config.target_batch_latency = Duration::from_millis(50);
    let syncer = syncer_for(&engine, sink.clone(), config);
    let batch: Vec<_> = (0..400)
        .map(|i| write(&format!("k{i}"), "v", Priority::Normal))
        .collect();
    engine.write(batch).await.unwrap();
    assert_eq!(syncer.status().batch_size, 10);
    syncer.drain_until_idle().await.unwrap();
    let grown = syncer.status().batch_size;
    assert!(grown >= 80, "fast batches should grow the batch: {grown}");

    sink.set_latency(Duration::from_millis(150));
    let batch: Vec<_> = (0..400)
        .map(|i| write(&format!("s{i}"), "v", Priority::Normal))
        .collect();
    engine.write(batch).await.unwrap();
    syncer.drain_once().await.unwrap();
    let shrunk = syncer.status().batch_size;
    assert!(
        shrunk < grown,
        "slow batches should shrink the batch: {grown} -> {shrunk}"
    );
    syncer.drain_until_idle().await.unwrap();
    let slowest = syncer.status().batch_size;
    assert!(
        slowest < shrunk,
        "keeps shrinking while slow: {shrunk} -> {slowest}"
    );
}

#[tokio::test]
async fn a_successful_drain_marks_this_device_seen() {
    let (_tmp, engine, sink) = local_with_memory_cloud().await;
    let me = engine.store().device_id();
    sink.register_device(me, "me").await.unwrap();
    let registered = sink.list_devices().await.unwrap()[0].last_seen_ms;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let syncer = syncer_for(&engine, sink.clone(), fast_config());
    engine.put(write("k", "v", Priority::Normal)).await.unwrap();
    syncer.drain_until_idle().await.unwrap();
    assert!(sink.list_devices().await.unwrap()[0].last_seen_ms > registered);
}
