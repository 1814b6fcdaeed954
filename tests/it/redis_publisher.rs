//! The Redis publisher against a real `redis-server`: it publishes every instance's
//! figures, and the store never notices Redis being absent, refusing, killed mid-run
//! or restarted.

use hybridsync::{CloudUrl, HybridStore, InstanceView, WriteOptions};
use hybridsync_testkit::TempRedis;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

async fn instances(url: &str) -> Vec<InstanceView> {
    hybridsync::redis_instances(&CloudUrl::new(url), "default", Duration::from_secs(2))
        .await
        .unwrap_or_default()
}

/// Waits until `device` is (or, with `present` false, is no longer) among the live
/// instances in Redis, and returns what Redis holds of it.
async fn until_listed(url: &str, device: &str, present: bool) -> Option<InstanceView> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let found = instances(url)
            .await
            .into_iter()
            .find(|i| i.device == device);
        if found.is_some() == present {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "device {device} never {} Redis",
            if present { "appeared in" } else { "left" }
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A writer and reader that never stop until told: counts what succeeded and what
/// failed.
struct Load {
    ops: Arc<AtomicU64>,
    errors: Arc<AtomicU64>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Load {
    fn start(store: &HybridStore) -> Self {
        let (ops, errors) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let notes = store.raw("notes").unwrap();
        let task = tokio::spawn({
            let (ops, errors, stop) = (ops.clone(), errors.clone(), stop.clone());
            async move {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("k{}", i % 500);
                    let wrote = notes
                        .put(&key, i.to_le_bytes().to_vec(), WriteOptions::default())
                        .await;
                    let read = notes.get(&key).await;
                    match (wrote, read) {
                        (Ok(_), Ok(Some(_))) => ops.fetch_add(1, Ordering::Relaxed),
                        _ => errors.fetch_add(1, Ordering::Relaxed),
                    };
                    i += 1;
                }
            }
        });
        Self {
            ops,
            errors,
            stop,
            task,
        }
    }

    fn ops(&self) -> u64 {
        self.ops.load(Ordering::Relaxed)
    }

    /// Operations per second over `window`.
    async fn rate(&self, window: Duration) -> f64 {
        let before = self.ops();
        tokio::time::sleep(window).await;
        (self.ops() - before) as f64 / window.as_secs_f64()
    }

    async fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap();
        self.errors.load(Ordering::Relaxed)
    }
}

async fn store(dir: &std::path::Path, redis_url: &str) -> HybridStore {
    let store = HybridStore::builder(dir)
        .redis_url(redis_url)
        .open()
        .await
        .unwrap();
    store.create_collection("notes", None).await.unwrap();
    store
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_keeps_serving_while_redis_is_killed_and_restarted_under_load() {
    let mut redis = TempRedis::start().unwrap();
    let url = redis.url();
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path(), &url).await;
    let device = store.device_id().to_string();
    let load = Load::start(&store);

    let seen = until_listed(&url, &device, true).await.unwrap();
    assert_eq!(seen.gauges["pid"], std::process::id().to_string());
    assert_eq!(seen.gauges["circuit"], "none", "local-only: no cloud");
    for field in [
        "queue_high",
        "queue_normal",
        "queue_low",
        "uptime_secs",
        "name",
    ] {
        assert!(seen.gauges.contains_key(field), "{field} in {seen:?}");
    }
    let up = load.rate(Duration::from_secs(2)).await;
    let counted = until_listed(&url, &device, true).await.unwrap();
    assert!(
        counted.counters["cache_hits"] > 0,
        "reads are counted: {counted:?}"
    );
    assert!(
        !counted.counters.contains_key("synced"),
        "history is a current value, not a counter"
    );

    redis.kill();
    let down = load.rate(Duration::from_secs(3)).await;
    let status = store.redis_status().unwrap();
    assert!(
        status.failed > 0,
        "publishes fail while Redis is down: {status:?}"
    );
    assert!(status.last_error.is_some());

    redis.start_again().unwrap();
    let back = until_listed(&url, &device, true).await.unwrap();
    assert!(back.age_secs < 5.0, "{back:?}");
    let again = load.rate(Duration::from_secs(2)).await;
    assert_eq!(store.redis_status().unwrap().last_error, None);
    eprintln!("reads+writes/s: Redis up {up:.0}, killed {down:.0}, restarted {again:.0}");
    // The read and write paths never touch Redis: an outage must not stall them. (A
    // loose bound, for a loaded 2-core runner; the figures are printed above.)
    assert!(
        down > up * 0.25,
        "work slowed while Redis was down: {up:.0}/s -> {down:.0}/s"
    );
    assert_eq!(load.finish().await, 0, "no read or write failed");

    // A clean shutdown removes the instance at once (a crash leaves it to the TTL).
    store.shutdown(Duration::from_secs(1)).await.unwrap();
    until_listed(&url, &device, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_absent_at_open_is_used_once_it_comes_up() {
    let mut redis = TempRedis::start().unwrap();
    redis.kill();
    let url = redis.url();
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path(), &url).await;
    let load = Load::start(&store);
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert!(load.ops() > 0);
    assert!(store.redis_status().unwrap().failed > 0);
    redis.start_again().unwrap();
    until_listed(&url, &store.device_id().to_string(), true).await;
    assert_eq!(load.finish().await, 0);
    store.close().await;
}

/// A server that answers every connection with an error and hangs up: a Redis that
/// refuses us (wrong password, protected mode), or something else on the port.
fn refusing_server() -> u16 {
    use std::io::Write;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let _ = conn.write_all(b"-NOAUTH Authentication required.\r\n");
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusing_redis_costs_nothing_and_its_password_is_never_shown() {
    let port = refusing_server();
    let url = format!("redis://:s3cret-pw@127.0.0.1:{port}");
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path(), &url).await;
    let load = Load::start(&store);
    let deadline = Instant::now() + Duration::from_secs(30);
    while store.redis_status().unwrap().failed < 2 {
        assert!(Instant::now() < deadline, "{:?}", store.redis_status());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(load.finish().await, 0);
    let status = store.redis_status().unwrap();
    let shown = format!("{status:?} {store:?}");
    assert!(!shown.contains("s3cret-pw"), "{shown}");
    assert!(status.last_error.is_some());
    // Reading refuses with a typed error that names the URL without its password.
    let err = hybridsync::redis_instances(&CloudUrl::new(&url), "default", Duration::from_secs(2))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("***") && !err.contains("s3cret-pw"), "{err}");
    store.close().await;
}

#[tokio::test]
async fn a_malformed_redis_url_is_refused_before_anything_is_created() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let err = HybridStore::builder(&data)
        .redis_url("http://127.0.0.1:6379")
        .open()
        .await
        .unwrap_err();
    assert!(
        matches!(err, hybridsync::Error::Telemetry(_)),
        "a typed telemetry error: {err:?}"
    );
    assert!(err.to_string().contains("redis"), "{err}");
    assert!(!data.exists(), "nothing was created");
}

/// `hybridsync serve` with `[redis] url`, local-only, in its own data dir.
fn serve(data: &std::path::Path, config: &std::path::Path) -> std::process::Child {
    std::process::Command::new(crate::cli::binary())
        .arg("--config")
        .arg(config)
        .arg("--data-dir")
        .arg(data)
        .args(["serve", "--metrics-addr", "127.0.0.1:0"])
        .env_remove("HYBRIDSYNC_DATA_DIR")
        .env_remove("HYBRIDSYNC_CLOUD_URL")
        .env_remove("HYBRIDSYNC_REDIS_URL")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

fn top(config: &std::path::Path, json: bool) -> String {
    let mut cmd = std::process::Command::new(crate::cli::binary());
    cmd.arg("--config").arg(config).arg("top");
    if json {
        cmd.arg("--json");
    }
    crate::cli::succeeded(
        cmd.env_remove("HYBRIDSYNC_REDIS_URL").output().unwrap(),
        "top",
    )
}

fn live(config: &std::path::Path) -> Vec<serde_json::Value> {
    serde_json::from_str(&top(config, true)).unwrap()
}

fn wait_until(what: &str, done: impl FnMut() -> bool) {
    crate::cli::wait_for(what, Duration::from_secs(30), done);
}

#[test]
fn top_shows_every_live_serve_of_the_tenant_and_forgets_the_dead() {
    let redis = TempRedis::start().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("hybridsync.toml");
    // A short TTL, so the instance killed with SIGKILL expires within the test.
    std::fs::write(
        &config,
        format!("[redis]\nurl = \"{}\"\nttl_secs = 3\n", redis.url()),
    )
    .unwrap();
    let mut first = serve(&dir.path().join("a"), &config);
    let mut second = serve(&dir.path().join("b"), &config);
    wait_until("two instances", || live(&config).len() == 2);
    let table = top(&config, false);
    eprintln!("{table}");
    assert!(
        table.starts_with("tenant default: 2 live instances"),
        "{table}"
    );
    for child in [&first, &second] {
        assert!(
            table.contains(&format!(" {} ", child.id())),
            "pid {} in:\n{table}",
            child.id()
        );
    }
    assert!(
        table.contains("DEVICE") && table.contains("CIRCUIT"),
        "{table}"
    );

    // SIGTERM: the instance removes itself on the way out.
    std::process::Command::new("kill")
        .args(["-TERM", &first.id().to_string()])
        .status()
        .unwrap();
    first.wait().unwrap();
    assert_eq!(live(&config).len(), 1, "a clean stop leaves at once");

    // SIGKILL: nothing is removed, and the TTL makes it disappear.
    second.kill().unwrap();
    second.wait().unwrap();
    wait_until("the killed instance to expire", || live(&config).is_empty());
    assert!(top(&config, false).starts_with("tenant default: 0 live instances"));
}

#[test]
fn top_without_redis_says_what_to_set() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(crate::cli::binary())
        .arg("--data-dir")
        .arg(dir.path())
        .arg("top")
        .env_remove("HYBRIDSYNC_REDIS_URL")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("HYBRIDSYNC_REDIS_URL"), "{said}");
}
