//! A throwaway PgBouncer in front of a [`TempPostgres`](crate::TempPostgres).

use crate::process::{give_to_service_user, run, service_command};
use crate::{Error, Result};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Settings of a [`TempPgBouncer`].
#[derive(Debug, Clone)]
pub struct TempPgBouncerOptions {
    /// Server connections per database and user pair (`default_pool_size`).
    pub default_pool_size: u32,
    /// Client connections it accepts in all (`max_client_conn`).
    pub max_client_conn: u32,
    /// Login roles it lets through (trust authentication, as the server's).
    pub users: Vec<String>,
    /// Extra `name = value` lines for the `[pgbouncer]` section.
    pub settings: Vec<(String, String)>,
}

impl Default for TempPgBouncerOptions {
    fn default() -> Self {
        Self {
            default_pool_size: 20,
            max_client_conn: 1000,
            users: vec!["postgres".into(), "app".into()],
            settings: Vec::new(),
        }
    }
}

/// A `pgbouncer` from the installed binary, in transaction pooling mode, on a free
/// loopback port, with its config, log and pid file in a temp directory, in front of
/// one PostgreSQL port (every database). Runs as the `postgres` user when we are root
/// (it refuses root). Stopped on drop.
#[derive(Debug)]
pub struct TempPgBouncer {
    dir: tempfile::TempDir,
    port: u16,
    server_port: u16,
    options: TempPgBouncerOptions,
}

/// The installed `pgbouncer` binary.
fn binary() -> Result<PathBuf> {
    if let Ok(path) = std::env::var("HYBRIDSYNC_PGBOUNCER") {
        return Ok(PathBuf::from(path));
    }
    ["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .ok_or_else(|| Error::NotInstalled {
            what: "pgbouncer",
            hint: "install the pgbouncer package (1.18 or later) or set HYBRIDSYNC_PGBOUNCER"
                .into(),
        })
}

impl TempPgBouncer {
    /// Starts a pooler in front of the PostgreSQL listening on `server_port`.
    pub fn start(server_port: u16, options: TempPgBouncerOptions) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("hybridsync-pgbouncer-")
            .tempdir()?;
        give_to_service_user(dir.path())?;
        let mut bouncer = Self {
            dir,
            port: 0,
            server_port,
            options,
        };
        bouncer.port = crate::start_on_a_free_port(|port| {
            bouncer.port = port;
            bouncer.start_again()
        })?;
        Ok(bouncer)
    }

    fn config(&self) -> String {
        let dir = self.dir.path().display();
        let mut ini = format!(
            "[databases]\n* = host=127.0.0.1 port={server}\n\n[pgbouncer]\n\
             listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
             auth_type = trust\nauth_file = {dir}/userlist.txt\n\
             admin_users = postgres\nstats_users = postgres\n\
             pool_mode = transaction\ndefault_pool_size = {pool}\nmax_client_conn = {clients}\n\
             logfile = {dir}/pgbouncer.log\npidfile = {dir}/pgbouncer.pid\n",
            server = self.server_port,
            port = self.port,
            pool = self.options.default_pool_size,
            clients = self.options.max_client_conn,
        );
        for (name, value) in &self.options.settings {
            let _ = writeln!(ini, "{name} = {value}");
        }
        ini
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Starts the pooler (again, after [`Self::stop`] or [`Self::kill`]) on the same
    /// port, and waits until it accepts connections.
    pub fn start_again(&self) -> Result<()> {
        let users: String = self
            .options
            .users
            .iter()
            .map(|u| format!("\"{u}\" \"\"\n"))
            .collect();
        std::fs::write(self.path("userlist.txt"), users)?;
        std::fs::write(self.path("pgbouncer.ini"), self.config())?;
        for file in ["userlist.txt", "pgbouncer.ini"] {
            give_to_service_user(&self.path(file))?;
        }
        // Every client and server connection is a file descriptor: under the usual soft
        // limit of 1024 PgBouncer stops accepting at about a thousand clients, and the
        // rest hang in the listen queue. Raise it to the hard limit first.
        let mut cmd = service_command(Path::new("/bin/sh"));
        cmd.arg("-c")
            .arg("ulimit -n \"$(ulimit -Hn)\" 2>/dev/null; exec \"$0\" -d \"$1\"")
            .arg(binary()?)
            .arg(self.path("pgbouncer.ini"));
        run(cmd)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
                && self.pid().is_some()
            {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(Error::NotReady {
            what: "pgbouncer",
            seconds: 10,
        })
    }

    fn pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.path("pgbouncer.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    fn signal(&self, signal: &str) {
        let Some(pid) = self.pid() else { return };
        let _ = std::process::Command::new("kill")
            .args([signal, &pid.to_string()])
            .output();
        // Wait for it to go, so the port is free for the next start.
        let deadline = Instant::now() + Duration::from_secs(10);
        while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = std::fs::remove_file(self.path("pgbouncer.pid"));
    }

    /// Stops the pooler at once (SIGTERM): clients and servers are dropped.
    pub fn stop(&self) {
        self.signal("-TERM");
    }

    /// Kills the pooler (SIGKILL), as a crash would.
    pub fn kill(&self) {
        self.signal("-KILL");
    }

    /// Stops and starts the pooler on the same port.
    pub fn restart(&self) -> Result<()> {
        self.stop();
        self.start_again()
    }

    /// The loopback port clients connect to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A connection URL through the pooler.
    pub fn url(&self, user: &str, database: &str) -> String {
        format!("postgres://{user}@127.0.0.1:{}/{database}", self.port)
    }

    /// Runs an admin console command (`SHOW POOLS`, `SHOW STATS`, ...) and returns its
    /// rows, each a map from column name to value.
    pub fn admin(&self, command: &str) -> Result<Vec<BTreeMap<String, String>>> {
        let psql = crate::postgres::find_bin_dir()?.join("psql");
        let mut cmd = std::process::Command::new(psql);
        cmd.args([
            "-X",
            "-A",
            "-P",
            "footer=off",
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
        ])
        .args([
            "-p",
            &self.port.to_string(),
            "-d",
            "pgbouncer",
            "-c",
            command,
        ]);
        let out = run(cmd)?;
        let text = String::from_utf8_lossy(&out.stdout);
        let mut lines = text.lines();
        let header: Vec<&str> = lines.next().unwrap_or_default().split('|').collect();
        Ok(lines
            .map(|line| {
                header
                    .iter()
                    .zip(line.split('|'))
                    .map(|(k, v)| ((*k).to_owned(), v.to_owned()))
                    .collect()
            })
            .collect())
    }

    /// The pooler's log so far, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.path("pgbouncer.log")).unwrap_or_default()
    }
}

impl Drop for TempPgBouncer {
    fn drop(&mut self) {
        self.kill();
    }
}
