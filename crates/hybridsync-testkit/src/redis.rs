//! A throwaway Redis server.

use crate::{Error, Result, free_port};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `redis-server` child on a free loopback port, persisting nothing, killed on drop.
#[derive(Debug)]
pub struct TempRedis {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

impl TempRedis {
    /// Starts a server and waits until it answers `PING`.
    pub fn start() -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("hybridsync-redis-")
            .tempdir()?;
        let mut server = Self {
            child: None,
            port: free_port()?,
            dir,
        };
        server.start_again()?;
        Ok(server)
    }

    /// Starts the server again (after [`TempRedis::kill`]) on the same port.
    pub fn start_again(&mut self) -> Result<()> {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| Error::NotInstalled {
                what: "redis-server",
                hint: e.to_string(),
            })?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.ping() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(Error::NotReady {
            what: "redis-server",
            seconds: 10,
        })
    }

    /// True when the server answers `PING` with `PONG`.
    pub fn ping(&self) -> bool {
        let attempt = || -> std::io::Result<bool> {
            let mut stream = TcpStream::connect(("127.0.0.1", self.port))?;
            stream.set_read_timeout(Some(Duration::from_millis(500)))?;
            stream.write_all(b"PING\r\n")?;
            let mut buf = [0u8; 7];
            stream.read_exact(&mut buf)?;
            Ok(&buf == b"+PONG\r\n")
        };
        attempt().unwrap_or(false)
    }

    /// Kills the server (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The loopback port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A `redis://` URL.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
}

impl Drop for TempRedis {
    fn drop(&mut self) {
        self.kill();
    }
}
