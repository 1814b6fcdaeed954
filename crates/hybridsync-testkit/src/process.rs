//! Running helper commands, as the `postgres` user when we are root.

use crate::{Error, Result};
use std::path::Path;
use std::process::{Command, Output};

/// The account PostgreSQL runs under when the tests run as root (it refuses root).
const SERVICE_USER: &str = "postgres";

fn id(args: &[&str]) -> Option<u32> {
    let out = Command::new("id").args(args).output().ok()?;
    String::from_utf8(out.stdout).ok()?.trim().parse().ok()
}

/// True when this process runs as root.
pub(crate) fn is_root() -> bool {
    id(&["-u"]) == Some(0)
}

/// Hands `path` to the service user when running as root.
pub(crate) fn give_to_service_user(path: &Path) -> Result<()> {
    if !is_root() {
        return Ok(());
    }
    let (uid, gid) = match (id(&["-u", SERVICE_USER]), id(&["-g", SERVICE_USER])) {
        (Some(uid), Some(gid)) => (uid, gid),
        _ => {
            return Err(Error::NotInstalled {
                what: "the postgres user",
                hint: "running as root needs a `postgres` account to run the server".into(),
            });
        }
    };
    std::os::unix::fs::chown(path, Some(uid), Some(gid))?;
    Ok(())
}

/// A command that runs as the service user when we are root, as ourselves otherwise.
pub(crate) fn service_command(program: &Path) -> Command {
    if is_root() {
        let mut cmd = Command::new("runuser");
        cmd.args(["-u", SERVICE_USER, "--"]).arg(program);
        cmd
    } else {
        Command::new(program)
    }
}

/// Runs `cmd`, turning a non-zero exit into an error that carries its output.
pub(crate) fn run(mut cmd: Command) -> Result<Output> {
    let output = cmd.output()?;
    if output.status.success() {
        return Ok(output);
    }
    Err(Error::Command {
        command: format!("{cmd:?}"),
        status: output.status.to_string(),
        output: format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    })
}
