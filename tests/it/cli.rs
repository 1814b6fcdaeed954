//! The `hybridsync` binary, run as a child process the way a user runs it.

use anyhow::{Context, Result};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The binary cargo built beside this test executable (`cargo test --workspace` builds it).
pub(crate) fn binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps");
    let bin = dir.join("hybridsync");
    assert!(
        bin.exists(),
        "{} missing: build it first: `cargo build -p hybridsync-cli` (`cargo xtask test` does)",
        bin.display()
    );
    bin
}

/// The stdout of a finished command, failing the test with `what` and its stderr
/// unless it succeeded.
pub(crate) fn succeeded(out: Output, what: impl std::fmt::Debug) -> String {
    assert!(
        out.status.success(),
        "{what:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// Polls `done` every 50 ms until it holds, failing the test after `timeout`.
pub(crate) fn wait_for(what: &str, timeout: std::time::Duration, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + timeout;
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

struct Cli {
    data_dir: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Cli {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        Self {
            data_dir: tmp.path().join("data"),
            _tmp: tmp,
        }
    }

    /// Runs `hybridsync --data-dir DIR args...` under umask 022 with a clean environment.
    fn run(&self, args: &[&str]) -> Output {
        Command::new("sh")
            .arg("-c")
            .arg("umask 022; exec \"$@\"")
            .arg("sh")
            .arg(binary())
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(args)
            .env_remove("HYBRIDSYNC_DATA_DIR")
            .env_remove("HYBRIDSYNC_CLOUD_URL")
            .env_remove("RUST_BACKTRACE")
            .output()
            .expect("spawn hybridsync")
    }

    fn ok(&self, args: &[&str]) -> String {
        succeeded(self.run(args), args)
    }

    /// Runs a command that must fail and returns its stderr.
    fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            !out.status.success(),
            "hybridsync {args:?} should have failed"
        );
        String::from_utf8(out.stderr).unwrap()
    }

    fn status(&self) -> serde_json::Value {
        serde_json::from_str(&self.ok(&["status", "--json"])).unwrap()
    }
}

#[test]
fn demo_runs_on_the_embedded_default_and_reports_latencies() {
    let out = Command::new(binary())
        .args(["demo", "--speakers", "20", "--attempts", "200"])
        .env_remove("HYBRIDSYNC_DATA_DIR")
        .env_remove("HYBRIDSYNC_CLOUD_URL")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for expected in [
        "enrol (durable write)",
        "authenticate (search k=1)",
        "read profile by key",
        "p50",
        "p99",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }
    assert!(stdout.contains("authenticated 200/200"), "{stdout}");
    assert!(
        stdout.contains("outbox: 20 changes queued (high: 20)"),
        "{stdout}"
    );
}

#[test]
fn collections_put_get_search_delete_and_status() -> Result<()> {
    let cli = Cli::new();
    cli.ok(&[
        "collections",
        "create",
        "voices",
        "--dim",
        "3",
        "--metric",
        "l2",
        "--precision",
        "f32",
    ]);
    cli.ok(&["collections", "create", "notes"]);
    assert_eq!(
        cli.ok(&["collections", "list"]),
        "notes\nvoices\tdim=3 metric=l2 precision=f32\n"
    );
    cli.ok(&[
        "put",
        "voices",
        "alice",
        "--json",
        r#"{"name":"Alice"}"#,
        "--embedding",
        "1,0,0",
        "--priority",
        "critical",
    ]);
    cli.ok(&[
        "put",
        "voices",
        "bob",
        "--json",
        r#"{"name":"Bob"}"#,
        "--embedding",
        "0,1,0",
    ]);
    cli.ok(&["put", "notes", "n1", "--json", r#"{"text":"hello"}"#]);
    assert_eq!(
        cli.ok(&["get", "voices", "alice"]).trim(),
        r#"{"name":"Alice"}"#
    );
    let hits = cli.ok(&["search", "voices", "--embedding", "0.9,0.1,0", "-k", "2"]);
    let keys: Vec<&str> = hits
        .lines()
        .map(|l| l.split('\t').next().unwrap())
        .collect();
    assert_eq!(keys, ["alice", "bob"]);

    cli.ok(&["delete", "voices", "bob"]);
    assert!(
        cli.fails(&["get", "voices", "bob"])
            .contains("no record voices/bob")
    );
    let status = cli.status();
    assert_eq!(status["collections"]["voices"]["records"], 1);
    assert_eq!(status["collections"]["voices"]["indexed"], 1);
    assert_eq!(status["collections"]["notes"]["records"], 1);
    assert_eq!(status["outbox"]["pending"], 3, "alice, bob's tombstone, n1");
    assert_eq!(status["outbox"]["in_flight"], 0);
    assert_eq!(status["outbox"]["failed"], 0);
    assert_eq!(status["outbox"]["by_priority"]["critical"], 1);
    assert_eq!(status["outbox"]["by_priority"]["normal"], 2);
    assert_eq!(status["cloud"]["configured"], false);
    Ok(())
}

#[test]
fn list_pages_a_collections_keys_by_prefix() {
    let cli = Cli::new();
    cli.ok(&["collections", "create", "notes"]);
    for key in [
        "user", "user/1", "user/10", "user/2", "userx", "zeta", "abc", "user/3",
    ] {
        cli.ok(&[
            "put",
            "notes",
            key,
            "--json",
            &format!(r#"{{"k":"{key}"}}"#),
        ]);
    }
    cli.ok(&["delete", "notes", "user/3"]);
    assert_eq!(
        cli.ok(&["list", "notes"]),
        "abc\nuser\nuser/1\nuser/10\nuser/2\nuserx\nzeta\n",
        "every live key in key order, tombstones left out"
    );
    assert_eq!(
        cli.ok(&["list", "notes", "--prefix", "user/"]),
        "user/1\nuser/10\nuser/2\n"
    );
    assert_eq!(
        cli.ok(&["list", "notes", "--prefix", "user"]),
        "user\nuser/1\nuser/10\nuser/2\nuserx\n",
        "the prefix itself is a key too"
    );
    assert_eq!(
        cli.ok(&["list", "notes", "--prefix", "user", "--limit", "2"]),
        "user\nuser/1\n"
    );
    assert_eq!(cli.ok(&["list", "notes", "--prefix", "nobody"]), "");
    let json: serde_json::Value =
        serde_json::from_str(&cli.ok(&["list", "notes", "--prefix", "zeta", "--json"])).unwrap();
    assert_eq!(
        json,
        serde_json::json!([{"key": "zeta", "bytes": 12, "value": {"k": "zeta"}}])
    );
    assert!(cli.fails(&["list", "nosuch"]).contains("nosuch"));
    assert!(
        cli.fails(&["list", "notes", "--limit", "x"])
            .contains("invalid value")
    );
}

/// `status --json` only ever gains fields: every field scripts may read today is
/// still there, under the same name.
#[test]
fn status_json_keeps_every_documented_field() {
    let cli = Cli::new();
    cli.ok(&["collections", "create", "notes"]);
    let status = cli.status();
    for path in [
        "/device_id",
        "/data_dir",
        "/outbox/pending",
        "/outbox/in_flight",
        "/outbox/failed",
        "/outbox/done",
        "/outbox/by_priority",
        "/collections/notes/records",
        "/collections/notes/indexed",
        "/collections/notes/index_restored",
        "/collections/notes/vector",
        "/collections/notes/encrypted",
        "/encryption/key_ids",
        "/cache/entries",
        "/cache/bytes",
        "/cache/hits",
        "/cache/misses",
        "/cloud/configured",
        "/cloud/url",
        "/cloud/reachable",
        "/cloud/circuit",
        "/cloud/pool",
        "/sync/last_sync_ms",
        "/sync/synced_total",
        "/sync/failed_total",
        "/sync/history",
    ] {
        assert!(
            status.pointer(path).is_some(),
            "status --json lost {path}: {status}"
        );
    }
}

#[test]
fn bad_input_gets_a_clear_error_and_changes_nothing() {
    let cli = Cli::new();
    cli.ok(&["collections", "create", "voices", "--dim", "3"]);
    cli.ok(&[
        "put",
        "voices",
        "alice",
        "--json",
        "{}",
        "--embedding",
        "1,0,0",
    ]);
    let before = cli.status();
    let cases: &[(&[&str], &str)] = &[
        (
            &["put", "voices", "x", "--json", "{}", "--embedding", "1,0"],
            "expects 3-dimensional embeddings, got 2",
        ),
        (
            &[
                "put",
                "voices",
                "x",
                "--json",
                "{}",
                "--embedding",
                "1,NaN,0",
            ],
            "non-finite component at index 1",
        ),
        (
            &[
                "put",
                "voices",
                "x",
                "--json",
                "{}",
                "--embedding",
                "1,inf,0",
            ],
            "non-finite component",
        ),
        (&["put", "voices", "x", "--json", "{bad"], "not valid JSON"),
        (
            &["put", "voices;drop table records", "x", "--json", "{}"],
            "invalid collection name",
        ),
        (
            &["put", "\"voices\"", "x", "--json", "{}"],
            "invalid collection name",
        ),
        (
            &["put", &"v".repeat(64), "x", "--json", "{}"],
            "at most 63 bytes",
        ),
        (
            &["put", "missing", "x", "--json", "{}"],
            "unknown collection missing",
        ),
        (
            &["put", "voices", &"k".repeat(600), "--json", "{}"],
            "longer than the key limit",
        ),
        (
            &["search", "voices", "--embedding", "1,2"],
            "expects 3-dimensional",
        ),
        (
            &["collections", "create", "voices", "--dim", "4"],
            "already exists with a different spec",
        ),
    ];
    for (args, message) in cases {
        let stderr = cli.fails(args);
        assert!(
            stderr.contains(message),
            "{args:?}: expected {message:?} in {stderr:?}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
    assert_eq!(cli.status()["outbox"], before["outbox"]);
    assert_eq!(cli.status()["collections"], before["collections"]);
}

#[test]
fn oversized_payloads_are_refused_by_configured_limits() {
    let cli = Cli::new();
    let config = cli._tmp.path().join("hybridsync.toml");
    std::fs::write(&config, "[limits]\nmax_payload_bytes = 32\n").unwrap();
    let config = config.to_str().unwrap();
    cli.ok(&["--config", config, "collections", "create", "notes"]);
    let big = format!(r#"{{"text":"{}"}}"#, "x".repeat(64));
    assert!(
        cli.fails(&["--config", config, "put", "notes", "k", "--json", &big])
            .contains("exceeds the limit of 32 bytes")
    );
    cli.ok(&[
        "--config",
        config,
        "put",
        "notes",
        "k",
        "--json",
        r#"{"a":1}"#,
    ]);
    std::fs::write(cli._tmp.path().join("typo.toml"), "dat_dir = \"/x\"\n").unwrap();
    let typo = cli._tmp.path().join("typo.toml");
    assert!(
        cli.fails(&["--config", typo.to_str().unwrap(), "status"])
            .contains("unknown field")
    );
}

#[test]
fn files_are_private_under_umask_022() {
    let cli = Cli::new();
    cli.ok(&["collections", "create", "notes"]);
    cli.ok(&["put", "notes", "k", "--json", "{}"]);
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&cli.data_dir), 0o700);
    assert_eq!(mode(&cli.data_dir.join("hybridsync.db")), 0o600);
    // A WAL left by a live writer gets the same mode: hold a store open in-process.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = hybridsync::HybridStore::builder(&cli.data_dir)
            .open()
            .await
            .unwrap();
        store
            .raw("notes")
            .unwrap()
            .put("k2", b"{}".to_vec(), Default::default())
            .await
            .unwrap();
        for file in ["hybridsync.db-wal", "hybridsync.db-shm"] {
            assert_eq!(mode(&cli.data_dir.join(file)), 0o600, "{file}");
        }
        store.close().await;
    });
}

#[test]
fn a_corrupted_database_is_refused_and_left_as_it_was() -> Result<()> {
    let cli = Cli::new();
    cli.ok(&["collections", "create", "notes"]);
    for i in 0..50 {
        cli.ok(&[
            "put",
            "notes",
            &format!("k{i}"),
            "--json",
            &format!(r#"{{"pad":"{}"}}"#, "p".repeat(500)),
        ]);
    }
    let db = cli.data_dir.join("hybridsync.db");
    let bytes = std::fs::read(&db).context("db file")?;
    let truncated = &bytes[..bytes.len() / 2];
    std::fs::write(&db, truncated)?;
    let stderr = cli.fails(&["status"]);
    assert!(stderr.contains("corrupted or truncated"), "{stderr}");
    assert_eq!(
        std::fs::read(&db)?,
        truncated,
        "the damaged file must not be rewritten"
    );
    Ok(())
}

/// `hybridsync status --json | head -c 10`: a reader that goes away ends the command
/// quietly, with the closed-pipe status, no panic and no backtrace.
#[test]
fn a_closed_stdout_ends_the_command_quietly() {
    let cli = Cli::new();
    cli.ok(&["collections", "create", "notes"]);
    // A pipe whose reader is already gone: every write to it fails with EPIPE.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(binary())
        .arg("--data-dir")
        .arg(&cli.data_dir)
        .args(["status", "--json"])
        .env("RUST_BACKTRACE", "1")
        .stdout(writer)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(141), "{out:?}");
    assert!(
        out.stderr.is_empty(),
        "nothing on stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
