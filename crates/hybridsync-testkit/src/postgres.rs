//! A throwaway PostgreSQL cluster.

use crate::process::{give_to_service_user, run, service_command};
use crate::{Error, Result};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How `pg_ctl` stops the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownMode {
    /// Disconnect clients, checkpoint, stop.
    Fast,
    /// Stop without a checkpoint, like a crash: recovery runs at the next start.
    Immediate,
}

impl ShutdownMode {
    fn as_str(self) -> &'static str {
        match self {
            ShutdownMode::Fast => "fast",
            ShutdownMode::Immediate => "immediate",
        }
    }
}

/// Settings of a [`TempPostgres`].
#[derive(Debug, Clone)]
pub struct TempPostgresOptions {
    pub max_connections: u32,
    /// Extra `-c name=value` server settings.
    pub settings: Vec<(String, String)>,
}

impl Default for TempPostgresOptions {
    fn default() -> Self {
        Self {
            max_connections: 50,
            settings: Vec::new(),
        }
    }
}

/// A PostgreSQL cluster in a temp directory on a free loopback port, initialised with
/// `initdb` and run with `pg_ctl` from the installed binaries (as the `postgres` user
/// when we are root). Trust authentication for the `postgres` superuser; stopped and
/// removed on drop.
#[derive(Debug)]
pub struct TempPostgres {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    options: TempPostgresOptions,
}

/// The newest installed PostgreSQL's `bin` directory.
pub(crate) fn find_bin_dir() -> Result<PathBuf> {
    if let Ok(dir) = std::env::var("HYBRIDSYNC_PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let mut candidates: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    candidates.sort();
    candidates.pop().map(|(_, bin)| bin).ok_or_else(|| Error::NotInstalled {
        what: "PostgreSQL server binaries",
        hint: "install postgresql (initdb, pg_ctl under /usr/lib/postgresql/N/bin) or set HYBRIDSYNC_PG_BIN".into(),
    })
}

impl TempPostgres {
    /// Initialises and starts a cluster with default options.
    pub fn start() -> Result<Self> {
        Self::with_options(TempPostgresOptions::default())
    }

    /// Initialises and starts a cluster.
    pub fn with_options(options: TempPostgresOptions) -> Result<Self> {
        let bin = find_bin_dir()?;
        let dir = tempfile::Builder::new()
            .prefix("hybridsync-pg-")
            .tempdir()?;
        give_to_service_user(dir.path())?;
        let mut initdb = service_command(&bin.join("initdb"));
        initdb.arg("-D").arg(dir.path().join("data")).args([
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
            "--locale=C",
        ]);
        run(initdb)?;
        let mut server = Self {
            bin,
            dir,
            port: 0,
            options,
        };
        server.port = crate::start_on_a_free_port(|port| {
            server.port = port;
            server.start_server()
        })?;
        Ok(server)
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn start_server(&self) -> Result<()> {
        let mut opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections={} -c fsync=off -c full_page_writes=off",
            self.port,
            self.dir.path().display(),
            self.options.max_connections,
        );
        for (name, value) in &self.options.settings {
            opts.push_str(&format!(" -c {name}={value}"));
        }
        let mut cmd = service_command(&self.bin.join("pg_ctl"));
        cmd.arg("-D")
            .arg(self.data_dir())
            .arg("-l")
            .arg(self.dir.path().join("server.log"))
            .args(["-o", &opts, "-w", "-t", "60", "start"]);
        run(cmd).map(drop)
    }

    /// Starts a stopped server on the same port.
    pub fn start_again(&self) -> Result<()> {
        self.start_server()
    }

    /// Stops the server.
    pub fn stop(&self, mode: ShutdownMode) -> Result<()> {
        let mut cmd = service_command(&self.bin.join("pg_ctl"));
        cmd.arg("-D")
            .arg(self.data_dir())
            .args(["-m", mode.as_str(), "-w", "-t", "60", "stop"]);
        run(cmd).map(drop)
    }

    /// Stops and starts the server.
    pub fn restart(&self, mode: ShutdownMode) -> Result<()> {
        self.stop(mode)?;
        self.start_server()
    }

    /// The loopback port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A connection URL for `database` as the superuser.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// The server log so far, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// Runs SQL with `psql` as the superuser and returns its unaligned output.
    pub fn psql(&self, database: &str, sql: &str) -> Result<String> {
        let mut cmd = std::process::Command::new(self.bin.join("psql"));
        // A server that stops answering must not hang the caller for ever.
        cmd.env("PGCONNECT_TIMEOUT", "10");
        cmd.args([
            "-X",
            "-At",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
        ])
        .args(["-p", &self.port.to_string(), "-d", database, "-c", sql]);
        let out = run(cmd)?;
        Ok(String::from_utf8_lossy(&out.stdout).trim_end().to_owned())
    }

    /// The temp directory holding the cluster.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for TempPostgres {
    fn drop(&mut self) {
        let _ = self.stop(ShutdownMode::Immediate);
        // Give the postmaster a moment to release the directory before it is removed.
        std::thread::sleep(Duration::from_millis(20));
    }
}
