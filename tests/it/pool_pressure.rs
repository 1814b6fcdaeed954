//! The connection cap under hostile servers: slots exhausted by other clients, our
//! backends terminated mid-flight, and a crash restart. The pool never exceeds its cap,
//! reads keep working, and the backlog drains once the server lets us in.

use hybridsync::{CloudUrl, HybridStore, Priority, SyncConfig, WriteOptions};
use hybridsync_testkit::{ShutdownMode, TempPostgres, TempPostgresOptions};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn our_connections(pg: &TempPostgres) -> u32 {
    pg.psql(
        "postgres",
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'hybridsync'",
    )
    .map(|n| n.parse().unwrap_or(0))
    .unwrap_or(0)
}

/// Holds one connection slot until killed.
fn hog(pg: &TempPostgres) -> Child {
    Command::new("psql")
        .args([
            "-X",
            "-h",
            "127.0.0.1",
            "-U",
            "app",
            "-d",
            "postgres",
            "-p",
            &pg.port().to_string(),
        ])
        .args(["-c", "SELECT pg_sleep(600)"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn fast_sync() -> SyncConfig {
    let mut config = SyncConfig {
        interval: Duration::from_millis(100),
        ..SyncConfig::default()
    };
    config.retry_initial = Duration::from_millis(20);
    config.retry_max = Duration::from_millis(200);
    config.max_attempts = 1_000;
    config.breaker.open_for = Duration::from_millis(300);
    config.health_interval = Duration::from_millis(100);
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slot_exhaustion_terminated_backends_and_restarts_never_break_the_cap_or_reads() {
    // 8 slots, 3 reserved for superusers: 5 for everyone else.
    let options = TempPostgresOptions {
        max_connections: 8,
        ..Default::default()
    };
    let pg = TempPostgres::with_options(options).unwrap();
    pg.psql("postgres", "CREATE ROLE app LOGIN").unwrap();
    let admin = CloudUrl::new(pg.url("postgres"));
    hybridsync::cloud::migrate(&admin, Some("app"))
        .await
        .unwrap();
    hybridsync::cloud::grant_tenant(&admin, Some("app"), "default")
        .await
        .unwrap();

    let tmp = tempfile::tempdir().unwrap();
    let store = HybridStore::builder(tmp.path())
        .cloud_url(format!("postgres://app@127.0.0.1:{}/postgres", pg.port()))
        .sync_config(fast_sync())
        .open()
        .await
        .unwrap();
    store.create_collection("notes", None).await.unwrap();
    let notes = store.raw("notes").unwrap();
    store.start_sync().await.unwrap();

    // Fill every non-superuser slot. Our pool holds some of them (between min and max
    // connections, changing as it works), so hogs that were refused are replaced until
    // no slot is left.
    let mut hogs: Vec<Child> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let taken: usize = pg
            .psql(
                "postgres",
                "SELECT count(*) FROM pg_stat_activity WHERE usename = 'app'",
            )
            .unwrap()
            .parse()
            .unwrap();
        if taken >= 5 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the non-superuser slots never filled up ({taken} of 5)"
        );
        hogs.retain_mut(|h| matches!(h.try_wait(), Ok(None)));
        let ours = our_connections(&pg) as usize;
        for _ in (hogs.len() + ours)..5 {
            hogs.push(hog(&pg));
        }
        std::thread::sleep(Duration::from_millis(100));
    }

    let mut max_seen = 0;
    for i in 0..60 {
        let priority = if i % 10 == 0 {
            Priority::Critical
        } else {
            Priority::Normal
        };
        notes
            .put(
                &format!("k{i}"),
                vec![i as u8],
                WriteOptions::default().priority(priority),
            )
            .await
            .unwrap();
        assert_eq!(
            notes.get(&format!("k{i}")).await.unwrap(),
            Some(vec![i as u8]),
            "reads work while slots are gone"
        );
        max_seen = max_seen.max(our_connections(&pg));
        if i == 20 {
            // Free the slots; then kill our backends and crash-restart the server mid-drain.
            for hog in &mut hogs {
                let _ = hog.kill(); // a hog refused a slot has already exited
                let _ = hog.wait();
            }
        }
        if i == 30 {
            pg.psql("postgres", "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'hybridsync'").unwrap();
        }
        if i == 40 {
            pg.restart(ShutdownMode::Immediate).unwrap();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        max_seen = max_seen.max(our_connections(&pg));
        let outbox = store.status().await.unwrap().outbox;
        if outbox.pending + outbox.in_flight == 0 {
            assert_eq!(outbox.failed, 0);
            break;
        }
        assert!(Instant::now() < deadline, "the queue got stuck: {outbox:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        max_seen <= 3,
        "the pool went above its cap of 3: {max_seen}"
    );
    assert_eq!(
        pg.psql("postgres", "SELECT count(*) FROM hs_records")
            .unwrap(),
        "60"
    );
    store.shutdown(Duration::from_secs(5)).await.unwrap();
}
