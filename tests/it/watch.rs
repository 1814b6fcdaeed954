//! `hybridsync status --watch` in a real terminal: a tmux session on its own socket,
//! driven with `send-keys` and read with `capture-pane`, as a user would see it.

use crate::cli::binary;
use hybridsync_testkit::TempPostgres;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A tmux server of our own, with one 120×45 shell; killed on drop.
struct Terminal {
    socket: String,
}

impl Terminal {
    fn start(dir: &Path) -> Self {
        let socket = format!(
            "hs-watch-{}-{}",
            std::process::id(),
            dir.display().to_string().len()
        );
        let term = Self { socket };
        let status = term
            .tmux()
            .args([
                "new-session",
                "-d",
                "-s",
                "t",
                "-x",
                "120",
                "-y",
                "45",
                "sh",
            ])
            .env_remove("HYBRIDSYNC_DATA_DIR")
            .env_remove("HYBRIDSYNC_CLOUD_URL")
            .env_remove("HYBRIDSYNC_REDIS_URL")
            .status()
            .expect("tmux is installed (cargo xtask test installs it)");
        assert!(status.success());
        term
    }

    fn tmux(&self) -> Command {
        let mut cmd = Command::new("tmux");
        cmd.args(["-L", &self.socket]);
        cmd
    }

    fn keys(&self, keys: &[&str]) {
        let status = self
            .tmux()
            .args(["send-keys", "-t", "t"])
            .args(keys)
            .status()
            .unwrap();
        assert!(status.success());
    }

    fn line(&self, line: &str) {
        self.keys(&[line, "Enter"]);
    }

    /// What the terminal shows now.
    fn screen(&self) -> String {
        let out = self
            .tmux()
            .args(["capture-pane", "-p", "-t", "t"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Waits until the screen satisfies `done`, and returns it.
    fn until(&self, what: &str, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let screen = self.screen();
            if done(&screen) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; the screen:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        let _ = self.tmux().arg("kill-server").status();
    }
}

fn hybridsync(data: &Path, url: &str, args: &[&str]) -> String {
    let out = Command::new(binary())
        .arg("--data-dir")
        .arg(data)
        .arg("--cloud-url")
        .arg(url)
        .args(args)
        .env_remove("HYBRIDSYNC_DATA_DIR")
        .output()
        .unwrap();
    crate::cli::succeeded(out, args)
}

/// The `stty -a` of the terminal's shell, through a file.
fn stty(term: &Terminal, dir: &Path, name: &str) -> String {
    let file: PathBuf = dir.join(name);
    term.line(&format!("stty -a > {}", file.display()));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(text) = std::fs::read_to_string(&file)
            && text.contains("speed")
        {
            return text;
        }
        assert!(Instant::now() < deadline, "stty never wrote {name}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn status_watch_redraws_live_and_q_or_ctrl_c_restore_the_terminal() {
    let pg = TempPostgres::start().unwrap();
    let url = pg.url("postgres");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    hybridsync(&data, &url, &["cloud", "migrate"]);
    hybridsync(&data, &url, &["collections", "create", "notes"]);
    for key in ["a", "b", "c"] {
        hybridsync(&data, &url, &["put", "notes", key, "--json", "{}"]);
    }
    hybridsync(&data, &url, &["sync"]);

    let term = Terminal::start(dir.path());
    let before = stty(&term, dir.path(), "before.txt");
    let watch = format!(
        "{} --data-dir {} --cloud-url {url} status --watch",
        binary().display(),
        data.display()
    );
    term.line(&format!(
        "echo shell-before-watch; {watch}; echo watch-exited-$?"
    ));
    let first = term.until("the dashboard", |s| {
        s.contains("OUTBOX") && s.contains("reachable") && s.contains("circuit closed")
    });
    assert!(first.contains("SYNC HISTORY"), "{first}");
    assert!(
        first.contains("  sync "),
        "the sync run is listed:\n{first}"
    );
    assert!(first.contains("notes"), "{first}");
    assert!(
        !first.contains("shell-before-watch"),
        "on the alternate screen:\n{first}"
    );

    // Another process writes; the next redraw shows it queued at its priority.
    hybridsync(
        &data,
        &url,
        &[
            "put",
            "notes",
            "urgent",
            "--json",
            "{}",
            "--priority",
            "critical",
        ],
    );
    let live = term.until("the new entry", |s| {
        s.lines()
            .any(|l| l.starts_with("pending") && l.split_whitespace().nth(1) == Some("1"))
    });
    eprintln!("status --watch, as tmux capture-pane shows it:\n{live}");

    term.keys(&["q"]);
    let after_q = term.until("the shell again", |s| s.contains("watch-exited-0"));
    assert!(after_q.contains("shell-before-watch"), "{after_q}");
    assert!(
        !after_q.contains("OUTBOX"),
        "the alternate screen is gone:\n{after_q}"
    );
    assert_eq!(
        stty(&term, dir.path(), "after-q.txt"),
        before,
        "terminal mode restored"
    );

    term.line(&format!(
        "clear; echo shell-again; {watch}; echo watch-ended-$?"
    ));
    term.until("the dashboard again", |s| s.contains("OUTBOX"));
    term.keys(&["C-c"]);
    let after_c = term.until("the shell after Ctrl-C", |s| s.contains("watch-ended-0"));
    assert!(after_c.contains("shell-again"), "{after_c}");
    assert!(!after_c.contains("OUTBOX"), "{after_c}");
    assert_eq!(
        stty(&term, dir.path(), "after-c.txt"),
        before,
        "restored after Ctrl-C"
    );
}

#[test]
fn status_watch_without_a_terminal_prints_plain_frames() {
    let dir = tempfile::tempdir().unwrap();
    let child = Command::new(binary())
        .arg("--data-dir")
        .arg(dir.path())
        .args(["status", "--watch"])
        .env_remove("HYBRIDSYNC_CLOUD_URL")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(2_500));
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.matches("OUTBOX").count() >= 2,
        "a frame a second:\n{text}"
    );
    assert!(!text.contains('\x1b'), "no escape codes in a pipe");
    assert!(text.contains("local-only"), "{text}");
}
