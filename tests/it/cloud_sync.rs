//! The `hybridsync` binary against a real PostgreSQL: flush, status, serve, and a
//! crash drill that kills the draining process with SIGKILL again and again.

use crate::cli::{binary, succeeded, wait_for};
use hybridsync_testkit::{ShutdownMode, TempPostgres};
use std::collections::BTreeMap;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

struct Cloud {
    /// Shared by every device of a test.
    pg: std::sync::Arc<TempPostgres>,
    data: tempfile::TempDir,
}

impl Cloud {
    /// A server with the schema installed by `hybridsync cloud migrate` and a
    /// non-owner role `app` for the sync.
    fn new() -> Self {
        let pg = TempPostgres::start().unwrap();
        pg.psql("postgres", "CREATE ROLE app LOGIN").unwrap();
        let cloud = Self {
            pg: std::sync::Arc::new(pg),
            data: tempfile::tempdir().unwrap(),
        };
        let admin = cloud.pg.url("postgres");
        cloud.ok_with(
            &admin,
            &["cloud", "migrate", "--grant", "app", "--tenant", "default"],
        );
        cloud.ok(&["collections", "create", "notes"]);
        cloud
    }

    fn app_url(&self) -> String {
        format!("postgres://app@127.0.0.1:{}/postgres", self.pg.port())
    }

    fn command(&self, url: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new(binary());
        cmd.arg("--data-dir")
            .arg(self.data.path())
            .arg("--cloud-url")
            .arg(url)
            .args(args);
        cmd.env_remove("HYBRIDSYNC_DATA_DIR")
            .env_remove("RUST_BACKTRACE");
        cmd
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(&self.app_url(), args).output().unwrap()
    }

    fn ok_with(&self, url: &str, args: &[&str]) -> String {
        succeeded(self.command(url, args).output().unwrap(), args)
    }

    fn ok(&self, args: &[&str]) -> String {
        self.ok_with(&self.app_url(), args)
    }

    fn status(&self) -> serde_json::Value {
        serde_json::from_str(&self.ok(&["status", "--json"])).unwrap()
    }

    /// Payloads in the cloud by key.
    fn cloud_rows(&self) -> BTreeMap<String, String> {
        let rows = self
            .pg
            .psql("postgres", "SELECT key || '=' || convert_from(payload, 'UTF8') FROM hs_records WHERE NOT tombstone")
            .unwrap();
        rows.lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }
}

#[test]
fn flush_ships_the_outbox_and_status_reports_the_cloud() {
    let cloud = Cloud::new();
    for i in 0..3 {
        cloud.ok(&[
            "put",
            "notes",
            &format!("k{i}"),
            "--json",
            &format!("{{\"v\":{i}}}"),
        ]);
    }
    let before = cloud.status();
    assert_eq!(before["outbox"]["pending"], 3);
    assert_eq!(before["cloud"]["configured"], true);
    assert_eq!(before["cloud"]["reachable"], true);
    assert_eq!(before["cloud"]["circuit"], "closed");
    assert!(!before["cloud"]["url"].as_str().unwrap().is_empty());
    assert_eq!(before["sync"]["last_sync_ms"], serde_json::Value::Null);

    assert!(
        cloud
            .ok(&["flush", "--timeout", "30"])
            .contains("nothing pending")
    );
    let after = cloud.status();
    assert_eq!(after["outbox"]["pending"], 0);
    assert_eq!(after["sync"]["synced_total"], 3);
    assert!(after["sync"]["last_sync_ms"].as_u64().is_some());
    assert_eq!(cloud.cloud_rows().len(), 3);
    assert_eq!(cloud.cloud_rows()["k1"], "{\"v\":1}");
}

#[test]
fn with_the_cloud_down_writes_and_status_still_answer_and_flush_reports_what_is_left() {
    let cloud = Cloud::new();
    cloud.pg.stop(ShutdownMode::Fast).unwrap();
    let started = Instant::now();
    cloud.ok(&["put", "notes", "offline", "--json", "{}"]);
    let status = cloud.status();
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "put and status must not hang on a dead cloud"
    );
    assert_eq!(status["cloud"]["reachable"], false);
    assert_eq!(status["outbox"]["pending"], 1);
    let out = cloud.run(&["flush", "--timeout", "1"]);
    assert!(
        !out.status.success(),
        "flush must fail while the cloud is down"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not ready"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    cloud.pg.start_again().unwrap();
    cloud.ok(&["flush", "--timeout", "30"]);
    assert_eq!(cloud.cloud_rows()["offline"], "{}");
}

fn serve(cloud: &Cloud, metrics_port: u16) -> Child {
    cloud
        .command(
            &cloud.app_url(),
            &[
                "serve",
                "--sync-interval",
                "0.2",
                "--metrics-addr",
                &format!("127.0.0.1:{metrics_port}"),
            ],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

#[test]
fn serve_drains_writes_from_other_processes_and_stops_cleanly_on_sigterm() {
    let cloud = Cloud::new();
    let port = hybridsync_testkit::free_port().unwrap();
    let started = Instant::now();
    let mut daemon = serve(&cloud, port);
    for i in 0..5 {
        cloud.ok(&["put", "notes", &format!("p{i}"), "--json", "{}"]);
    }
    wait_for(
        "serve to drain the CLI's writes",
        Duration::from_secs(30),
        || cloud.cloud_rows().len() == 5,
    );
    // The runtime refreshes the gauges every second: a scrape sees the current uptime
    // and the drained queue, not the values of the first second.
    std::thread::sleep(
        Duration::from_millis(2_500)
            .saturating_sub(started.elapsed())
            .max(Duration::from_millis(1_200)),
    );
    let metrics = crate::metrics_endpoint::scrape(([127, 0, 0, 1], port).into());
    assert!(
        metrics.contains("hybridsync_records_synced_total"),
        "{metrics}"
    );
    let gauge = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("missing {name:?} in:\n{metrics}"))
    };
    assert!(
        gauge("hybridsync_uptime_seconds") >= 1.0,
        "uptime is stale: {metrics}"
    );
    assert_eq!(gauge("hybridsync_queue_size{priority=\"normal\"}"), 0.0);
    let pid = daemon.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = daemon.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "serve did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "serve exited with {status}");
}

/// `serve`'s endpoint as an operator's Prometheus and Kubernetes see it: `/metrics`
/// passes `promtool check metrics` and carries the pool, statement and age metrics;
/// `/healthz` and `/readyz` answer 200 with JSON; with the cloud stopped the circuit
/// opens and readiness still passes (the body says the cloud is unreachable); other
/// paths and methods get 404 and 405.
#[test]
fn serve_metrics_pass_promtool_and_probes_stay_ready_without_the_cloud() {
    use crate::metrics_endpoint::{get, promtool_check_metrics, request};
    let cloud = Cloud::new();
    let port = hybridsync_testkit::free_port().unwrap();
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    let mut daemon = serve(&cloud, port);
    wait_for("the endpoint", Duration::from_secs(30), || {
        request(addr, "GET", "/healthz").is_ok()
    });
    cloud.ok(&["put", "notes", "a", "--json", "{}"]);
    wait_for("the drain", Duration::from_secs(30), || {
        cloud.cloud_rows().len() == 1
    });
    std::thread::sleep(Duration::from_millis(1_500)); // one gauge refresh after it
    let (status, metrics) = get(addr, "/metrics");
    assert_eq!(status, 200);
    let said = promtool_check_metrics(&metrics)
        .unwrap_or_else(|e| panic!("promtool check metrics refused the scrape:\n{e}\n{metrics}"));
    assert!(said.trim().is_empty(), "promtool lint: {said}");
    for name in [
        "hybridsync_queries_total ",
        "hybridsync_pool_acquires_total ",
        "hybridsync_pool_acquire_errors_total ",
        "hybridsync_pool_acquire_wait_seconds ",
        "hybridsync_connection_pool_max 3",
        "hybridsync_last_sync_age_seconds ",
        "hybridsync_records_synced_total ",
    ] {
        assert!(metrics.contains(name), "missing {name:?} in:\n{metrics}");
    }
    let (status, live) = get(addr, "/healthz");
    assert_eq!(
        (status, live.trim()),
        (200, r#"{"live":true,"status":"ok"}"#)
    );
    let (status, ready) = get(addr, "/readyz");
    let ready: serde_json::Value = serde_json::from_str(&ready).unwrap();
    assert_eq!(status, 200, "{ready}");
    assert_eq!(ready["ready"], true);
    assert_eq!(ready["cloud"]["circuit"], "closed");

    cloud
        .pg
        .stop(hybridsync_testkit::ShutdownMode::Immediate)
        .unwrap();
    for i in 0..20 {
        cloud.ok(&["put", "notes", &format!("down{i}"), "--json", "{}"]);
    }
    let mut last = serde_json::Value::Null;
    wait_for("the circuit to open", Duration::from_secs(90), || {
        let (status, body) = get(addr, "/readyz");
        assert_eq!(
            status, 200,
            "readiness must not depend on the cloud: {body}"
        );
        last = serde_json::from_str(&body).unwrap();
        last["cloud"]["circuit"] == "open"
    });
    assert_eq!(last["ready"], true);
    assert_eq!(last["cloud"]["reachable"], false);
    assert_eq!(get(addr, "/healthz").0, 200);
    assert_eq!(get(addr, "/nowhere").0, 404);
    let post = request(addr, "POST", "/metrics").unwrap();
    assert!(post.starts_with("HTTP/1.1 405"), "{post}");
    let (_, metrics) = get(addr, "/metrics");
    assert!(metrics.contains("hybridsync_circuit_state 2"), "{metrics}");
    promtool_check_metrics(&metrics).unwrap();

    Command::new("kill")
        .args(["-TERM", &daemon.id().to_string()])
        .status()
        .unwrap();
    daemon.wait().unwrap();
    assert!(
        request(addr, "GET", "/healthz").is_err(),
        "gone with the process"
    );
}

/// A real Prometheus (1 s scrape and evaluation, the generated `alerts.yml`) scrapes
/// `serve`; the cloud goes away, and the breaker-open alert reaches `firing` in
/// Prometheus's own HTTP API.
#[test]
fn prometheus_fires_the_generated_breaker_alert_when_serve_loses_its_cloud() {
    use crate::metrics_endpoint::{get, request};
    let cloud = Cloud::new();
    let port = hybridsync_testkit::free_port().unwrap();
    let mut daemon = serve(&cloud, port);
    let target: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    wait_for("the endpoint", Duration::from_secs(30), || {
        request(target, "GET", "/healthz").is_ok()
    });

    let dir = tempfile::tempdir().unwrap();
    let config = crate::generate::prometheus_yml("1s", &[&target.to_string()]);
    std::fs::write(dir.path().join("prometheus.yml"), config).unwrap();
    std::fs::copy(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/prometheus/alerts.yml"
        ),
        dir.path().join("alerts.yml"),
    )
    .unwrap();
    let web: std::net::SocketAddr =
        ([127, 0, 0, 1], hybridsync_testkit::free_port().unwrap()).into();
    let mut prometheus = Command::new("prometheus")
        .arg(format!(
            "--config.file={}",
            dir.path().join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address={web}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus is installed (cargo xtask test installs it)");
    let alerts = || get(web, "/api/v1/alerts").1;
    // The state of the breaker alert, from Prometheus's JSON.
    let breaker = || -> Option<String> {
        let body: serde_json::Value = serde_json::from_str(&alerts()).ok()?;
        body["data"]["alerts"]
            .as_array()?
            .iter()
            .find(|a| a["labels"]["alertname"] == "HybridsyncCircuitOpen")
            .and_then(|a| a["state"].as_str().map(str::to_owned))
    };
    wait_for(
        "Prometheus to scrape serve",
        Duration::from_secs(60),
        || {
            request(web, "GET", "/api/v1/query?query=hybridsync_circuit_state")
                .is_ok_and(|r| r.contains("\"value\""))
        },
    );
    assert_eq!(breaker(), None, "{}", alerts());

    cloud.pg.stop(ShutdownMode::Immediate).unwrap();
    for i in 0..20 {
        cloud.ok(&["put", "notes", &format!("cut{i}"), "--json", "{}"]);
    }
    let started = Instant::now();
    let mut pending_seen = false;
    wait_for("the alert to fire", Duration::from_secs(240), || {
        let state = breaker();
        pending_seen |= state.as_deref() == Some("pending");
        state.as_deref() == Some("firing")
    });
    eprintln!(
        "HybridsyncCircuitOpen firing {:.0} s after the cloud stopped (pending seen first: {pending_seen}):\n{}",
        started.elapsed().as_secs_f64(),
        alerts()
    );
    assert!(pending_seen, "it waits out its `for: 1m` as pending first");
    let _ = prometheus.kill();
    let _ = prometheus.wait();
    let _ = daemon.kill();
    let _ = daemon.wait();
}

/// Jepsen-style set check: the draining process is SIGKILLed at random moments, many
/// times, while writes keep being acknowledged. After a final flush every acknowledged
/// write must be in PostgreSQL with its latest value: lost = acknowledged but absent = 0.
#[test]
fn no_acknowledged_write_is_lost_when_the_drainer_is_killed_repeatedly() {
    let cloud = Cloud::new();
    let mut acknowledged: BTreeMap<String, String> = BTreeMap::new();
    let mut seed = 0x2545_f491_u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for round in 0..12 {
        let port = hybridsync_testkit::free_port().unwrap();
        let mut daemon = serve(&cloud, port);
        for write in 0..4 {
            let key = format!("key{}", next() % 12); // overlapping keys: later values must win
            let value = format!("{{\"round\":{round},\"write\":{write}}}");
            if cloud
                .run(&["put", "notes", &key, "--json", &value])
                .status
                .success()
            {
                acknowledged.insert(key, value);
            }
        }
        std::thread::sleep(Duration::from_millis(next() % 250));
        daemon.kill().unwrap(); // SIGKILL, wherever it is
        daemon.wait().unwrap();
    }
    cloud.ok(&["flush", "--timeout", "60"]);
    let rows = cloud.cloud_rows();
    let lost: Vec<&String> = acknowledged
        .keys()
        .filter(|k| !rows.contains_key(*k))
        .collect();
    let stale: Vec<&String> = acknowledged
        .iter()
        .filter(|(k, v)| rows.get(*k).is_some_and(|r| r != *v))
        .map(|(k, _)| k)
        .collect();
    assert!(lost.is_empty(), "lost acknowledged writes: {lost:?}");
    assert!(stale.is_empty(), "cloud holds an older value for {stale:?}");
    assert!(
        acknowledged.len() >= 8,
        "the drill acknowledged too few writes to mean anything"
    );
    let status = cloud.status();
    assert_eq!(
        (
            status["outbox"]["pending"].as_u64(),
            status["outbox"]["in_flight"].as_u64()
        ),
        (Some(0), Some(0))
    );
}

#[test]
fn the_cloud_password_never_reaches_output_or_logs() {
    let cloud = Cloud::new();
    let url = format!(
        "postgres://app:hunter2-secret@127.0.0.1:{}/no_such_database",
        cloud.pg.port()
    );
    cloud.ok_with(&url, &["put", "notes", "k", "--json", "{}"]);
    for args in [
        &["status", "--json"][..],
        &["status"],
        &["flush", "--timeout", "1"],
        &["queue", "stats"],
    ] {
        let out = cloud
            .command(&url, args)
            .env("RUST_LOG", "trace")
            .output()
            .unwrap();
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            !all.contains("hunter2"),
            "{args:?} printed the password:\n{all}"
        );
        assert!(!all.is_empty());
    }
    let status: serde_json::Value = serde_json::from_slice(
        &cloud
            .command(&url, &["status", "--json"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert_eq!(
        status["cloud"]["url"],
        format!(
            "postgres://app:***@127.0.0.1:{}/no_such_database",
            cloud.pg.port()
        )
    );
    assert_eq!(status["cloud"]["reachable"], false);
}

#[test]
fn devices_register_list_and_deregister_and_sync_marks_them_seen() {
    let cloud = Cloud::new();
    let out = cloud.ok(&["devices", "register", "kitchen tablet"]);
    let id = out.split_whitespace().nth(1).unwrap().to_owned();
    let listed = cloud.ok(&["devices", "list"]);
    assert!(
        listed.contains(&id)
            && listed.contains("kitchen tablet")
            && listed.contains("(this device)"),
        "{listed}"
    );
    // Printed for people: a UTC time and an age, not raw milliseconds.
    assert!(
        listed.contains(" UTC (") && listed.contains(" s ago)"),
        "{listed}"
    );
    let seen = || -> u64 {
        let listing: serde_json::Value =
            serde_json::from_str(&cloud.ok(&["devices", "list", "--json"])).unwrap();
        listing[0]["last_seen_ms"].as_u64().unwrap()
    };
    let before = seen();
    std::thread::sleep(Duration::from_millis(20));
    cloud.ok(&["put", "notes", "k", "--json", "{}"]);
    cloud.ok(&["flush", "--timeout", "30"]);
    assert!(seen() > before, "a sync updates last-seen");
    assert!(
        cloud
            .ok(&["devices", "deregister", &id])
            .contains("deregistered")
    );
    assert!(!cloud.ok(&["devices", "list"]).contains(&id));
    let out = cloud.run(&["devices", "deregister", &id]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("no device"));
    let out = cloud.run(&["devices", "deregister", "not-hex"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid device id"));
}

/// A device that only syncs (never `devices register`) appears in `devices list` under
/// its host name, a rename sticks across later syncs, and a deregistered device that
/// syncs again comes back.
#[test]
fn a_syncing_device_registers_itself_under_its_host_name() {
    let cloud = Cloud::new();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_owned();
    assert!(
        cloud.ok(&["devices", "list"]).is_empty(),
        "nobody registered yet"
    );
    cloud.ok(&["sync"]);
    let listing: serde_json::Value =
        serde_json::from_str(&cloud.ok(&["devices", "list", "--json"])).unwrap();
    assert_eq!(listing.as_array().unwrap().len(), 1, "{listing}");
    assert_eq!(listing[0]["name"], host.as_str());
    assert_eq!(listing[0]["this_device"], true);
    let id = listing[0]["id"].as_str().unwrap().to_owned();

    cloud.ok(&["devices", "register", "front desk"]);
    cloud.ok(&["put", "notes", "k", "--json", "{}"]);
    cloud.ok(&["flush", "--timeout", "30"]);
    cloud.ok(&["sync"]);
    let listed = cloud.ok(&["devices", "list"]);
    assert!(
        listed.contains("front desk") && !listed.contains(&format!("\t{host}\t")),
        "a rename sticks: {listed}"
    );
    cloud.ok(&["devices", "deregister", &id]);
    cloud.ok(&["sync"]);
    assert!(
        cloud.ok(&["devices", "list"]).contains(&id),
        "it comes back on contact"
    );
}

/// Device A seeds 20,000 records; `hybridsync hydrate` on a fresh device B is killed
/// (SIGKILL) after its first progress line and run again: it resumes from the persisted
/// cursor, pulling exactly the rest (no gap, nothing twice). Then `sync` moves a change
/// from B back to A, and `status` shows the history.
#[test]
fn seed_hydrate_sync_from_the_cli_and_a_killed_hydrate_resumes() {
    use std::io::BufRead;
    const ROWS: usize = 20_000;
    let a = Cloud::new();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let store = hybridsync::HybridStore::builder(a.data.path())
            .open()
            .await
            .unwrap();
        let notes = store.raw("notes").unwrap();
        let items = (0..ROWS)
            .map(|i| {
                (
                    format!("n{i:05}"),
                    format!("\"note {i}\"").into_bytes(),
                    Default::default(),
                )
            })
            .collect();
        notes.put_many(items).await.unwrap();
        store.close().await;
    });
    let seeded = a.ok(&["seed"]);
    assert!(seeded.contains("20000 pushed"), "{seeded}");

    let b = Cloud {
        pg: a.pg.clone(),
        data: tempfile::tempdir().unwrap(),
    };
    let mut hydrate = b
        .command(&b.app_url(), &["hydrate"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = std::io::BufReader::new(hydrate.stderr.take().unwrap()).lines();
    let first = lines
        .map(Result::unwrap)
        .find(|line| line.contains("pulled"))
        .expect("a progress line");
    assert!(first.contains('%'), "{first}");
    hydrate.kill().unwrap();
    hydrate.wait().unwrap();
    let partial = b.status()["collections"]["notes"]["records"]
        .as_u64()
        .unwrap() as usize;
    assert!(
        partial < ROWS,
        "the hydrate was interrupted ({partial} rows in)"
    );

    let resumed = b.ok(&["hydrate"]);
    assert!(
        resumed.contains(&format!("{} pulled", ROWS - partial)),
        "resumes after the {partial} rows already in: {resumed}"
    );
    assert_eq!(
        b.status()["collections"]["notes"]["records"].as_u64(),
        Some(ROWS as u64)
    );
    assert_eq!(b.ok(&["get", "notes", "n12345"]).trim(), "\"note 12345\"");

    b.ok(&["put", "notes", "n00001", "--json", "\"edited on b\""]);
    b.ok(&["sync", "--strategy", "newest"]);
    let synced = a.ok(&["sync", "--collection", "notes"]);
    assert!(synced.contains("1 pulled"), "{synced}");
    assert_eq!(a.ok(&["get", "notes", "n00001"]).trim(), "\"edited on b\"");
    let history = a.status()["sync"]["history"].clone();
    assert_eq!(history[0]["operation"], "sync");
    assert_eq!(history[1]["operation"], "seed");
    let bad = b.run(&["sync", "--strategy", "loudest"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown strategy"));
}

/// A fresh device hydrates 100,000 voiceprints (192-D) seeded by another device: every
/// record arrives with its embedding, nothing is queued back, and its vector search
/// finds the same neighbours as the origin's.
#[test]
fn a_new_device_hydrates_100k_voiceprints_and_finds_the_same_neighbours() {
    const ROWS: usize = 100_000;
    const DIM: usize = 192;
    const QUERIES: usize = 100;
    let cloud = Cloud::new();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let open = |dir: &std::path::Path| {
            hybridsync::HybridStore::builder(dir)
                .cloud_url(cloud.app_url())
                .open()
        };
        let a = open(cloud.data.path()).await.unwrap();
        let spec = hybridsync::VectorSpec::new(
            DIM,
            hybridsync::Metric::Cosine,
            hybridsync::Precision::F16,
        )
        .unwrap();
        a.create_collection("voices", Some(spec)).await.unwrap();
        let voices = a.raw("voices").unwrap();
        let mut speakers = hybridsync_testkit::workload::Clustered::new(7, 2_000, DIM, 0.1);
        for chunk in (0..ROWS).collect::<Vec<_>>().chunks(5_000) {
            let items = chunk
                .iter()
                .map(|&i| {
                    (
                        format!("v{i:06}"),
                        format!("speaker {}", i % 2_000).into_bytes(),
                        hybridsync::WriteOptions::default().embedding(speakers.sample(i)),
                    )
                })
                .collect();
            voices.put_many(items).await.unwrap();
        }
        let seeded = a.seed(&["voices"], |_, _| {}).await.unwrap();
        assert_eq!(seeded.pushed, ROWS as u64, "{seeded:?}");

        let fresh = tempfile::tempdir().unwrap();
        let b = open(fresh.path()).await.unwrap();
        let hydrated = b.hydrate(&[], |_, _| {}).await.unwrap();
        assert_eq!(hydrated.pulled, ROWS as u64, "{hydrated:?}");
        let status = b.status().await.unwrap();
        let restored = status
            .collections
            .iter()
            .find(|c| c.name.as_str() == "voices")
            .unwrap();
        assert_eq!((restored.records, restored.indexed), (ROWS as u64, ROWS));
        assert_eq!(
            status.outbox.pending + status.outbox.in_flight,
            0,
            "pulled rows are not pushed back"
        );
        let b_voices = b.raw("voices").unwrap();
        let sample = b_voices.get_record("v031337").await.unwrap().unwrap();
        assert_eq!(
            sample.embedding.as_deref(),
            voices
                .get_record("v031337")
                .await
                .unwrap()
                .unwrap()
                .embedding
                .as_deref(),
            "embeddings travel bit for bit"
        );

        // HNSW is approximate and the two indexes were built in different orders (in
        // parallel, so the order varies run to run), so compare as recall: B's nearest
        // among A's first three (near-ties swap places: 97 to 100 of 100 in our runs),
        // and B's top 10 against A's. A lost or damaged row costs far more than that.
        let (mut near_first, mut shared) = (0, 0);
        for q in 0..QUERIES {
            let query = speakers.sample(q * 17);
            let ours = voices.search(&query, 10).await.unwrap();
            let theirs = b_voices.search(&query, 10).await.unwrap();
            assert_eq!(ours.len(), 10);
            near_first += usize::from(ours[..3].iter().any(|o| o.key == theirs[0].key));
            shared += theirs
                .iter()
                .filter(|h| ours.iter().any(|o| o.key == h.key))
                .count();
        }
        let overlap = shared as f64 / (QUERIES * 10) as f64;
        assert!(
            near_first >= QUERIES * 95 / 100,
            "B's nearest neighbour among A's first three for {near_first} of {QUERIES}"
        );
        assert!(overlap >= 0.95, "top-10 overlap {overlap:.3}");
        a.close().await;
        b.close().await;
    });
}

/// Encryption from the command line: a generated key file, an encrypted collection, a
/// cloud holding only ciphertext, a device without the key refused with a clear error,
/// one with it restoring and searching, and a rotation through the config file.
#[test]
fn encrypted_collections_key_files_and_rotation_from_the_cli() {
    use std::os::unix::fs::PermissionsExt;
    let keys = tempfile::tempdir().unwrap();
    let (k1, k2) = (keys.path().join("k1.key"), keys.path().join("k2.key"));
    let a = Cloud::new();
    let generated = a.ok(&["keys", "generate", k1.to_str().unwrap()]);
    assert!(generated.contains("written to"), "{generated}");
    let meta = std::fs::metadata(&k1).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(meta.len(), 65, "64 hex digits and a newline");
    let again = a.run(&["keys", "generate", k1.to_str().unwrap()]);
    assert!(
        !again.status.success(),
        "an existing key file is never replaced"
    );
    a.ok(&["keys", "generate", k2.to_str().unwrap()]);

    let with_key = |cloud: &Cloud, key: &std::path::Path, args: &[&str]| {
        let out = cloud
            .command(&cloud.app_url(), args)
            .env("HYBRIDSYNC_ENCRYPTION_KEY_FILE", key)
            .output()
            .unwrap();
        succeeded(out, args)
    };
    let k1_id = with_key(&a, &k1, &["keys", "list"]);
    let k1_id = k1_id.split('\t').next().unwrap().to_owned();
    assert_eq!(k1_id.len(), 16, "{k1_id}");
    with_key(
        &a,
        &k1,
        &[
            "collections",
            "create",
            "voices",
            "--dim",
            "4",
            "--encrypted",
        ],
    );
    assert!(
        a.ok(&["collections", "list"])
            .contains("voices\tdim=4 metric=cosine precision=f32\tencrypted")
    );
    with_key(
        &a,
        &k1,
        &[
            "put",
            "voices",
            "alice",
            "--json",
            r#"{"pin":"PIN-SECRET"}"#,
            "--embedding",
            "0.1,0.2,0.3,0.4",
        ],
    );
    with_key(
        &a,
        &k1,
        &[
            "put",
            "voices",
            "bob",
            "--json",
            r#"{"pin":"PIN-OTHER"}"#,
            "--embedding",
            "0.4,0.3,0.2,0.1",
        ],
    );
    with_key(&a, &k1, &["sync"]);
    let raw = a.pg.psql("postgres", "SELECT encode(payload, 'escape') || coalesce(encode(embedding, 'hex'), '') FROM hs_records WHERE collection = 'voices'").unwrap();
    assert!(!raw.contains("PIN-"), "{raw}");
    let ids =
        a.pg.psql(
            "postgres",
            "SELECT DISTINCT key_id FROM hs_records WHERE collection = 'voices'",
        )
        .unwrap();
    assert_eq!(ids, k1_id);

    // A device without the key: a clear error, nothing applied.
    let b = Cloud {
        pg: a.pg.clone(),
        data: tempfile::tempdir().unwrap(),
    };
    let refused = b.run(&["hydrate"]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("encrypted and this device has no encryption key"),
        "{stderr}"
    );
    assert_eq!(
        b.status()["collections"]["voices"]["records"].as_u64(),
        Some(0)
    );
    // With the key: everything, searchable.
    with_key(&b, &k1, &["hydrate"]);
    assert_eq!(
        b.ok(&["get", "voices", "alice"]).trim(),
        r#"{"pin":"PIN-SECRET"}"#
    );
    let hits = b.ok(&[
        "search",
        "voices",
        "--embedding",
        "0.1,0.2,0.3,0.4",
        "-k",
        "1",
    ]);
    assert!(hits.starts_with("alice\t"), "{hits}");

    // Rotation: k2 seals, k1 still opens; afterwards every row is under k2.
    let config = keys.path().join("rotated.toml");
    std::fs::write(
        &config,
        format!(
            "[encryption]\nkey_file = {:?}\nprevious_key_files = [{:?}]\n",
            k2.to_str().unwrap(),
            k1.to_str().unwrap()
        ),
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let listed = b.ok(&["--config", config, "keys", "list"]);
    assert!(
        listed.ends_with(&format!("{k1_id}\tprevious\n")),
        "{listed}"
    );
    let rotated = b.ok(&["--config", config, "keys", "rotate"]);
    assert!(
        rotated.contains("reencrypt: 1 collections, 2 pushed"),
        "{rotated}"
    );
    let k2_id = listed.split('\t').next().unwrap();
    let ids =
        a.pg.psql(
            "postgres",
            "SELECT DISTINCT key_id FROM hs_records WHERE collection = 'voices'",
        )
        .unwrap();
    assert_eq!(ids, k2_id);
    // Device A, still on k1 alone, now meets rows it cannot open.
    let out = a
        .command(&a.app_url(), &["sync"])
        .env("HYBRIDSYNC_ENCRYPTION_KEY_FILE", &k1)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("sealed with key {k2_id}")),
        "{stderr}"
    );

    // A key file that is not a key: a typed error that never quotes the file.
    let bad = keys.path().join("bad.key");
    std::fs::write(&bad, "not-a-key-SECRETISH").unwrap();
    let out = a
        .command(&a.app_url(), &["status"])
        .env("HYBRIDSYNC_ENCRYPTION_KEY_FILE", &bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("encryption key file") && stderr.contains("64 hex digits"),
        "{stderr}"
    );
    assert!(!stderr.contains("SECRETISH"), "{stderr}");
}

/// `hybridsync verify` from the command line: consistent after a sync (status 0), a row
/// deleted from the cloud behind the device's back reported by kind and key (status 1,
/// the JSON saying the same), then mended by `--repair` and confirmed.
#[test]
fn verify_reports_a_difference_and_repair_mends_it() {
    let a = Cloud::new();
    for i in 0..50 {
        a.ok(&[
            "put",
            "notes",
            &format!("n{i:02}"),
            "--json",
            &format!("\"note {i}\""),
        ]);
    }
    a.ok(&["flush"]);
    let clean = a.ok(&["verify"]);
    assert!(
        clean.contains("notes: consistent (50 rows here, 50 in the cloud"),
        "{clean}"
    );
    a.pg.psql("postgres", "DELETE FROM hs_records WHERE key = 'n07'")
        .unwrap();
    let out = a.run(&["verify"]);
    assert!(!out.status.success(), "a difference is a failure");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("missing_remote") && stdout.contains("n07"),
        "{stdout}"
    );
    let json = a.run(&["verify", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(report["consistent"], false);
    assert_eq!(
        report["report"]["collections"][0]["found"]["missing_remote"]["keys"][0],
        "n07"
    );
    let repaired = a.ok(&["verify", "--repair"]);
    assert!(
        repaired.contains("repaired 1") && repaired.contains("after repair: consistent"),
        "{repaired}"
    );
    assert_eq!(a.cloud_rows()["n07"], "\"note 7\"");
    assert!(a.ok(&["verify", "--deep"]).contains("notes: consistent"));
    let bad = a.run(&["verify", "--sample", "1.5"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not a fraction"));
}

#[test]
fn sync_hydrate_and_seed_without_the_schema_say_to_run_cloud_migrate() {
    let pg = TempPostgres::start().unwrap();
    let data = tempfile::tempdir().unwrap();
    for local in [
        &["collections", "create", "notes"][..],
        &["put", "notes", "k", "--json", "{}"],
    ] {
        let out = Command::new(binary())
            .arg("--data-dir")
            .arg(data.path())
            .args(local)
            .env_remove("HYBRIDSYNC_DATA_DIR")
            .env_remove("HYBRIDSYNC_CLOUD_URL")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for command in [&["sync"][..], &["hydrate"], &["seed"]] {
        let out = Command::new(binary())
            .arg("--data-dir")
            .arg(data.path())
            .arg("--cloud-url")
            .arg(pg.url("postgres"))
            .args(command)
            .env_remove("HYBRIDSYNC_DATA_DIR")
            .output()
            .unwrap();
        assert!(
            !out.status.success(),
            "{command:?} succeeded without a schema"
        );
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(
            said.contains("hybridsync schema") && said.contains("cloud migrate"),
            "{command:?}: {said}"
        );
    }
}
