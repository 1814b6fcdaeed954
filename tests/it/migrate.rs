//! `hybridsync migrate` as a user runs it: JSON Lines killed with SIGABRT at crash points
//! again and again (and compared row for row with an uninterrupted run), every kind of
//! bad row, a changed source, rollback against a real PostgreSQL, SQLite and PostgreSQL
//! sources (one cut by the fault proxy mid-run), and memory over a million rows.

use crate::cli::binary;
use hybridsync::migrate::{MigrateOptions, Select, Source};
use hybridsync_testkit::{Fault, FaultProxy, TempPostgres};
use std::io::Write as _;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

/// Runs `hybridsync --data-dir DIR args...` with `env`.
fn hybridsync(data: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(binary());
    cmd.arg("--data-dir").arg(data).args(args);
    cmd.env_remove("HYBRIDSYNC_DATA_DIR")
        .env_remove("HYBRIDSYNC_CLOUD_URL")
        .env_remove("HYBRIDSYNC_CRASH_POINT")
        .env_remove("RUST_BACKTRACE");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn ok(data: &Path, args: &[&str]) -> String {
    let out = hybridsync(data, args, &[]);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The bad rows of [`write_source`], by line number and the reason's gist.
fn bad_rows() -> Vec<(String, &'static str)> {
    let huge = "x".repeat((1 << 20) + 10);
    vec![
        ("{not json".into(), "invalid JSON"),
        (
            r#"{"name":"no key","vec":[1,2,3,4,5,6,7,8]}"#.into(),
            "missing key field",
        ),
        (
            format!(r#"{{"id":"{}","vec":[1,2,3,4,5,6,7,8]}}"#, "k".repeat(600)),
            "longer than the key limit",
        ),
        (r#"{"id":"bad-dim","vec":[1,2,3]}"#.into(), "8-dimensional"),
        (
            r#"{"id":"bad-inf","vec":[1e300,2,3,4,5,6,7,8]}"#.into(),
            "non-finite",
        ),
        (
            format!(r#"{{"id":"bad-huge","blob":"{huge}","vec":[1,2,3,4,5,6,7,8]}}"#),
            "exceeds the limit",
        ),
        (
            r#"{"id":"bad-type","vec":"abc"}"#.into(),
            "must be an array",
        ),
        (
            r#"{"id":{"nested":1},"vec":[1,2,3,4,5,6,7,8]}"#.into(),
            "must be a string or an integer",
        ),
        (r#"[1,2,3]"#.into(), "not a JSON object"),
    ]
}

/// `rows` good rows (8-D), with the bad rows spread through them; returns the line
/// numbers of the bad rows with their expected reasons.
fn write_source(path: &Path, rows: usize) -> Vec<(u64, &'static str)> {
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let bad = bad_rows();
    let every = rows / bad.len();
    let mut line = 0u64;
    let mut expected = Vec::new();
    let mut bad = bad.into_iter();
    for i in 0..rows {
        if i % every == every / 2
            && let Some((text, reason)) = bad.next()
        {
            line += 1;
            writeln!(file, "{text}").unwrap();
            expected.push((line, reason));
        }
        line += 1;
        let v: Vec<f32> = (0..8).map(|j| ((i * 7 + j) % 13) as f32 + 0.5).collect();
        writeln!(
            file,
            r#"{{"id":"k{i:06}","name":"user {i}","group":{},"vec":{:?}}}"#,
            i % 17,
            v
        )
        .unwrap();
    }
    file.flush().unwrap();
    expected
}

/// Every record of the store, row for row (versions aside), and the outbox size.
/// A stored record: key, payload, embedding, tombstone.
type Row = (String, Vec<u8>, Option<Vec<u8>>, bool);

fn contents(data: &Path) -> (Vec<Row>, i64) {
    let conn = rusqlite::Connection::open(data.join(hybridsync_store_db())).unwrap();
    let rows = conn
        .prepare("SELECT key, payload, embedding, tombstone FROM records ORDER BY collection, key")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .collect::<rusqlite::Result<Vec<_>>>()
        .unwrap();
    let outbox: i64 = conn
        .query_row("SELECT COUNT(*) FROM outbox", [], |r| r.get(0))
        .unwrap();
    (rows, outbox)
}

fn hybridsync_store_db() -> &'static str {
    "hybridsync.db"
}

fn migrations(data: &Path) -> serde_json::Value {
    serde_json::from_str(&ok(data, &["migrate", "list", "--json"])).unwrap()
}

fn rejects(data: &Path, id: &str) -> Vec<serde_json::Value> {
    let path = data.join("migrations").join(format!("{id}.rejects.jsonl"));
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

const IMPORT: [&str; 13] = [
    "--collection",
    "people",
    "--key",
    "id",
    "--embedding",
    "vec",
    "--create",
    "--dim",
    "8",
    "--batch-rows",
    "1000",
    "--cloud-timeout",
    "0",
];

fn import_args<'a>(source: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["migrate", "jsonl", source];
    args.extend(IMPORT);
    args.extend(extra);
    args
}

#[test]
fn an_import_killed_twenty_times_ends_as_one_uninterrupted_run_row_for_row() {
    let tmp = tempfile::tempdir().unwrap();
    let source = tmp.path().join("people.jsonl");
    let bad = write_source(&source, 100_000);
    let source = source.to_str().unwrap();

    let reference = tmp.path().join("reference");
    ok(&reference, &import_args(source, &["--no-verify"]));

    let crashed = tmp.path().join("crashed");
    let points = [
        "migrate_mid_batch",
        "migrate_before_commit",
        "migrate_after_commit",
    ];
    let mut crashes = 0;
    let mut seen_interrupted = false;
    for run in 0..60 {
        let point = format!("{}:{}", points[run % 3], 1 + (run * 7) % 4);
        let out = hybridsync(
            &crashed,
            &import_args(source, &["--no-verify"]),
            &[("HYBRIDSYNC_CRASH_POINT", &point)],
        );
        if out.status.success() {
            break;
        }
        assert_eq!(
            out.status.signal(),
            Some(6),
            "run {run} ({point}) failed instead of crashing: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        crashes += 1;
        if !seen_interrupted {
            let listed = migrations(&crashed);
            assert_eq!(listed[0]["state"], "interrupted", "{listed}");
            seen_interrupted = true;
        }
        if crashes >= 20 {
            break;
        }
    }
    assert!(crashes >= 20, "only {crashes} crashes");
    // The last run, uninterrupted, checks the source against the store.
    let report = ok(&crashed, &import_args(source, &[]));
    assert!(report.contains("(resumed)"), "{report}");
    assert!(
        report.contains("source check: 100000 of 100000 rows match"),
        "{report}"
    );

    let (want, want_outbox) = contents(&reference);
    let (got, got_outbox) = contents(&crashed);
    assert_eq!(want.len(), 100_000);
    assert!(got == want, "the crashed store differs from the reference");
    assert_eq!(
        got_outbox, want_outbox,
        "duplicated or missing outbox entries"
    );
    assert_eq!(got_outbox, 100_000);

    let listed = migrations(&crashed);
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    let m = &listed[0];
    assert_eq!(m["state"], "done");
    assert_eq!(m["read"], 100_000 + bad.len() as u64);
    assert_eq!(m["imported"], 100_000);
    assert_eq!(m["rejected"], bad.len() as u64);
    // Every bad row exactly once, in order, with its position and reason.
    let listed_rejects = rejects(&crashed, m["id"].as_str().unwrap());
    assert_eq!(listed_rejects.len(), bad.len(), "{listed_rejects:?}");
    for (reject, (line, reason)) in listed_rejects.iter().zip(&bad) {
        assert_eq!(reject["position"], format!("line {line}"));
        let said = reject["reason"].as_str().unwrap();
        assert!(
            said.contains(reason),
            "line {line}: {said:?} lacks {reason:?}"
        );
        assert!(reject["raw"].as_str().is_some_and(|raw| !raw.is_empty()));
    }
    // None of them was written, not even in part.
    assert!(
        got.iter()
            .all(|(key, ..)| key.starts_with('k') && key.len() == 7)
    );
}

#[test]
fn a_changed_source_is_refused_on_resume_unless_restarted() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("people.jsonl");
    write_source(&path, 5_000);
    let source = path.to_str().unwrap();
    let data = tmp.path().join("data");
    let out = hybridsync(
        &data,
        &import_args(source, &[]),
        &[("HYBRIDSYNC_CRASH_POINT", "migrate_after_commit:2")],
    );
    assert_eq!(out.status.signal(), Some(6));
    std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap()
        .write_all(b"{\"id\":\"late\",\"vec\":[1,2,3,4,5,6,7,8]}\n")
        .unwrap();
    let refused = hybridsync(&data, &import_args(source, &[]), &[]);
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        said.contains("changed since it started") && said.contains("--restart"),
        "{said}"
    );
    let id = migrations(&data)[0]["id"].as_str().unwrap().to_owned();
    let by_id = hybridsync(&data, &["migrate", "resume", &id], &[]);
    assert!(!by_id.status.success(), "resume by id must refuse it too");
    let report = ok(&data, &import_args(source, &["--restart"]));
    assert!(report.contains("already present"), "{report}");
    let (rows, _) = contents(&data);
    assert_eq!(rows.len(), 5_001);
}

#[test]
fn max_errors_stops_the_run_resumably() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("people.jsonl");
    let bad = write_source(&path, 9_000);
    let data = tmp.path().join("data");
    let out = hybridsync(
        &data,
        &import_args(path.to_str().unwrap(), &["--max-errors", "2"]),
        &[],
    );
    assert_eq!(out.status.code(), Some(1));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("more than the limit of 2") && said.contains("migrate resume"),
        "{said}"
    );
    let m = &migrations(&data)[0];
    assert_eq!(m["state"], "failed");
    assert_eq!(m["rejected"], 3);
    let id = m["id"].as_str().unwrap().to_owned();
    // Resumed without the limit, it finishes; every reject is listed once.
    let report = ok(&data, &["migrate", "resume", &id]);
    assert!(report.contains("(resumed)"), "{report}");
    assert_eq!(rejects(&data, &id).len(), bad.len());
    assert_eq!(contents(&data).0.len(), 9_000);
}

/// A cloud with the schema and a role `app` that may act for tenant `default`.
fn cloud() -> TempPostgres {
    let pg = TempPostgres::start().unwrap();
    pg.psql("postgres", "CREATE ROLE app LOGIN").unwrap();
    let admin = pg.url("postgres");
    let out = Command::new(binary())
        .args([
            "--cloud-url",
            &admin,
            "cloud",
            "migrate",
            "--grant",
            "app",
            "--tenant",
            "default",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    pg
}

#[test]
fn rollback_restores_untouched_keys_and_keeps_changed_ones_in_the_cloud_too() {
    let pg = cloud();
    let app = format!("postgres://app@127.0.0.1:{}/postgres", pg.port());
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let with_cloud = |args: &[&str]| {
        let mut all = vec!["--cloud-url", app.as_str()];
        all.extend(args);
        ok(&data, &all)
    };
    with_cloud(&["collections", "create", "notes"]);
    with_cloud(&["put", "notes", "old", "--json", r#"{"v":"before"}"#]);
    with_cloud(&["put", "notes", "gone", "--json", r#"{"v":"was deleted"}"#]);
    with_cloud(&["delete", "notes", "gone"]);
    with_cloud(&["put", "notes", "same", "--json", r#"{"v":"same"}"#]);
    let path = tmp.path().join("notes.jsonl");
    std::fs::write(
        &path,
        "{\"id\":\"old\",\"v\":\"imported\"}\n{\"id\":\"gone\",\"v\":\"imported\"}\n\
         {\"id\":\"same\",\"v\":\"same\"}\n{\"id\":\"new1\",\"v\":\"imported\"}\n\
         {\"id\":\"new2\",\"v\":\"imported\"}\n",
    )
    .unwrap();
    let report = with_cloud(&[
        "migrate",
        "jsonl",
        path.to_str().unwrap(),
        "--collection",
        "notes",
        "--key",
        "id",
    ]);
    assert!(
        report.contains("4 imported") && report.contains("1 skipped"),
        "{report}"
    );
    assert!(
        report.contains("cloud check: consistent (0 unshipped)"),
        "{report}"
    );
    let cloud_rows = |sql: &str| pg.psql("postgres", sql).unwrap();
    assert_eq!(
        cloud_rows("SELECT count(*) FROM hs_records WHERE NOT tombstone AND convert_from(payload, 'UTF8') LIKE '%imported%'").trim(),
        "4"
    );
    // Someone changes new2 after the import.
    with_cloud(&["put", "notes", "new2", "--json", r#"{"v":"edited"}"#]);
    let id = migrations(&data)[0]["id"].as_str().unwrap().to_owned();
    let undone = with_cloud(&["migrate", "rollback", &id]);
    assert!(
        undone.contains("2 keys deleted, 1 restored, 1 changed since and kept"),
        "{undone}"
    );
    assert!(undone.contains("kept: new2"), "{undone}");
    assert_eq!(
        with_cloud(&["get", "notes", "old"]).trim(),
        r#"{"v":"before"}"#
    );
    assert_eq!(
        with_cloud(&["get", "notes", "same"]).trim(),
        r#"{"v":"same"}"#
    );
    assert_eq!(
        with_cloud(&["get", "notes", "new2"]).trim(),
        r#"{"v":"edited"}"#
    );
    assert!(
        !hybridsync(&data, &["get", "notes", "new1"], &[])
            .status
            .success()
    );
    assert!(
        !hybridsync(&data, &["get", "notes", "gone"], &[])
            .status
            .success()
    );
    assert_eq!(migrations(&data)[0]["state"], "rolled_back");
    // The undo reaches the cloud as new versions.
    with_cloud(&["flush", "--timeout", "30"]);
    let live = cloud_rows(
        "SELECT string_agg(key || '=' || convert_from(payload, 'UTF8'), ' ' ORDER BY key) FROM hs_records WHERE NOT tombstone",
    );
    assert_eq!(
        live.trim(),
        r#"new2={"v":"edited"} old={"v":"before"} same={"v":"same"}"#
    );
    // A second rollback is refused.
    assert!(
        !hybridsync(&data, &["migrate", "rollback", &id], &[])
            .status
            .success()
    );
}

#[test]
fn a_sqlite_table_and_query_import_with_blob_embeddings() {
    let tmp = tempfile::tempdir().unwrap();
    let db = tmp.path().join("app.db");
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute_batch(
            "CREATE TABLE voices (speaker TEXT NOT NULL, enrolled INTEGER, print BLOB)",
        )
        .unwrap();
        let mut insert = conn
            .prepare("INSERT INTO voices VALUES (?1, ?2, ?3)")
            .unwrap();
        for i in 0..3_000 {
            let print: Vec<u8> = (0..4)
                .flat_map(|j| ((i + j) as f32 + 0.25).to_le_bytes())
                .collect();
            insert
                .execute(rusqlite::params![format!("s{i:05}"), i, print])
                .unwrap();
        }
    }
    let data = tmp.path().join("data");
    let db = db.to_str().unwrap();
    let report = ok(
        &data,
        &[
            "migrate",
            "sqlite",
            db,
            "--table",
            "voices",
            "--collection",
            "voices",
            "--key",
            "speaker",
            "--embedding",
            "print",
            "--create",
            "--dim",
            "4",
            "--batch-rows",
            "500",
        ],
    );
    assert!(
        report.contains("3000 imported") && report.contains("3000 of 3000 rows match"),
        "{report}"
    );
    assert_eq!(
        ok(&data, &["get", "voices", "s00042"]).trim(),
        r#"{"enrolled":42}"#
    );
    // The query form, killed once and resumed by rerunning it.
    let args = [
        "migrate",
        "sqlite",
        db,
        "--query",
        "SELECT speaker, enrolled FROM voices WHERE enrolled % 2 = 0 ORDER BY speaker",
        "--collection",
        "even",
        "--key",
        "speaker",
        "--create",
        "--batch-rows",
        "200",
    ];
    let out = hybridsync(
        &data,
        &args,
        &[("HYBRIDSYNC_CRASH_POINT", "migrate_after_commit:3")],
    );
    assert_eq!(out.status.signal(), Some(6));
    let report = ok(&data, &args);
    assert!(
        report.contains("900 imported") && report.contains("(resumed)"),
        "{report}"
    );
    let (rows, _) = contents(&data);
    assert_eq!(rows.len(), 4_500);
    // A table that is not there is a clear error.
    let out = hybridsync(
        &data,
        &[
            "migrate",
            "sqlite",
            db,
            "--table",
            "nope",
            "--collection",
            "voices",
            "--key",
            "speaker",
        ],
        &[],
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("no such table"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_source_cut_mid_run_reconnects_or_resumes() {
    let pg = TempPostgres::start().unwrap();
    pg.psql(
        "postgres",
        "CREATE TABLE enrolled (id integer PRIMARY KEY, name text, print real[]); \
         INSERT INTO enrolled SELECT i, 'user ' || i, ARRAY[i, 1, 2, 3]::real[] FROM generate_series(1, 30000) i",
    )
    .unwrap();
    let proxy = std::sync::Arc::new(FaultProxy::start(([127, 0, 0, 1], pg.port()).into()).unwrap());
    let url = hybridsync::CloudUrl::new(format!(
        "postgres://postgres@127.0.0.1:{}/postgres",
        proxy.port()
    ));
    let tmp = tempfile::tempdir().unwrap();
    let store = hybridsync::HybridStore::builder(tmp.path())
        .open()
        .await
        .unwrap();
    store
        .create_collection(
            "enrolled",
            Some(
                hybridsync::VectorSpec::new(
                    4,
                    hybridsync::Metric::Cosine,
                    hybridsync::Precision::F32,
                )
                .unwrap(),
            ),
        )
        .await
        .unwrap();
    let source = || Source::Postgres {
        url: url.clone(),
        select: Select::Table("enrolled".into()),
    };
    let options = || {
        let mut options = MigrateOptions::new("enrolled", "id");
        options.mapping.embedding = Some("print".into());
        options.run.batch_rows = Some(1_000);
        options
    };
    // A short cut: the source reconnects and carries on.
    let cut = std::sync::atomic::AtomicBool::new(false);
    let blip = proxy.clone();
    let report = store
        .migrate(source(), options(), move |p| {
            if p.counts.read >= 6_000 && !cut.swap(true, std::sync::atomic::Ordering::SeqCst) {
                blip.set(Fault::Down);
                let back = blip.clone();
                std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_millis(800));
                    back.set(Fault::None);
                });
            }
        })
        .await
        .unwrap();
    assert_eq!(report.run.imported, 30_000);
    assert_eq!(report.verified.as_ref().unwrap().matching, 30_000);
    assert!(proxy.connections() >= 2, "the cut never happened");

    // A long cut: the run fails at its checkpoint; once the source is back, the same
    // import resumes with no duplicates and no gaps.
    pg.psql("postgres", "INSERT INTO enrolled SELECT i, 'late ' || i, ARRAY[i, 1, 2, 3]::real[] FROM generate_series(30001, 50000) i").unwrap();
    let down = proxy.clone();
    let cut = std::sync::atomic::AtomicBool::new(false);
    let failed = store
        .migrate(source(), options(), move |p| {
            if p.counts.read >= 10_000 && !cut.swap(true, std::sync::atomic::Ordering::SeqCst) {
                down.set(Fault::Down);
            }
        })
        .await;
    let e = failed.expect_err("a source down for good fails the run");
    assert!(e.to_string().contains("migration source"), "{e}");
    let listed = store.migrations().await.unwrap();
    assert_eq!(
        listed.last().unwrap().state,
        hybridsync::migrate::MigrationState::Failed
    );
    proxy.set(Fault::None);
    let resumed = store.migrate(source(), options(), |_| {}).await.unwrap();
    assert!(resumed.resumed);
    assert_eq!(resumed.total.read, 50_000);
    assert_eq!(resumed.total.imported + resumed.total.skipped, 50_000);
    assert_eq!(resumed.total.skipped, 30_000);
    assert_eq!(resumed.verified.as_ref().unwrap().matching, 50_000);
    assert_eq!(store.status().await.unwrap().collections[0].records, 50_000);
    store.close().await;
}

/// Peak anonymous resident memory (heap and stacks: `RssAnon`) of a child process,
/// sampled until it exits. File-backed pages (SQLite maps the database file, up to
/// 256 MiB per connection) are the kernel's page cache, reclaimable, and not counted.
fn peak_rss_kib(mut child: std::process::Child) -> (u64, std::process::ExitStatus) {
    let status_path = PathBuf::from(format!("/proc/{}/status", child.id()));
    let mut peak = 0;
    loop {
        if let Ok(status) = std::fs::read_to_string(&status_path)
            && let Some(line) = status.lines().find(|l| l.starts_with("RssAnon:"))
        {
            peak = line
                .split_whitespace()
                .nth(1)
                .and_then(|v| v.parse().ok())
                .unwrap_or(peak)
                .max(peak);
        }
        if let Some(status) = child.try_wait().unwrap() {
            return (peak, status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn memory_stays_bounded_over_a_million_rows() {
    let tmp = tempfile::tempdir().unwrap();
    let peak = |rows: usize| {
        let path = tmp.path().join(format!("{rows}.jsonl"));
        let mut file = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
        for i in 0..rows {
            writeln!(
                file,
                r#"{{"id":"n{i}","title":"note {i}","body":"{}"}}"#,
                "b".repeat(64)
            )
            .unwrap();
        }
        file.flush().unwrap();
        drop(file);
        let data = tmp.path().join(format!("data{rows}"));
        let child = Command::new(binary())
            .arg("--data-dir")
            .arg(&data)
            .args([
                "migrate",
                "jsonl",
                path.to_str().unwrap(),
                "--collection",
                "notes",
                "--key",
                "id",
                "--create",
                "--no-verify",
                "--cloud-timeout",
                "0",
            ])
            .env("MALLOC_ARENA_MAX", "2")
            .env_remove("HYBRIDSYNC_CRASH_POINT")
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let (peak, status) = peak_rss_kib(child);
        assert!(status.success());
        std::fs::remove_file(&path).unwrap();
        peak
    };
    let small = peak(10_000);
    let large = peak(1_000_000);
    // The bound: 100 MiB of growth from ten thousand rows to a million (the hot cache
    // filling to its cap and the largest adaptive batch included), where holding the
    // rows would take over 250 MiB. glibc's arenas are capped at two, as a service
    // would (each thread's arena otherwise keeps freed batches).
    assert!(
        large < small + 100 * 1024,
        "peak RSS {large} KiB for a million rows against {small} KiB for ten thousand"
    );
}
