//! `cargo xtask release [--dry-run] [--bump patch|minor|major]`: bumps the workspace
//! version in lockstep (the `[workspace.package]` version and every internal
//! `[workspace.dependencies]` entry), writes `CHANGELOG.md` from the commits since the
//! last tag, and runs `cargo package --workspace` (which packages the interdependent,
//! unpublished crates in dependency order). `--dry-run` computes and prints all of it,
//! packages the current tree without verifying builds, and changes nothing in the tree.

use crate::project_root;
use anyhow::{Context, Result, bail};
use std::process::Command;

/// Which part of the version moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bump {
    Patch,
    Minor,
    Major,
}

#[derive(Debug)]
struct Options {
    dry_run: bool,
    bump: Bump,
}

fn parse(args: &[String]) -> Result<Options> {
    let mut options = Options {
        dry_run: false,
        bump: Bump::Patch,
    };
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--dry-run" => options.dry_run = true,
            "--bump" => {
                options.bump = match it.next().map(String::as_str) {
                    Some("patch") => Bump::Patch,
                    Some("minor") => Bump::Minor,
                    Some("major") => Bump::Major,
                    other => bail!("--bump takes patch, minor or major, not {other:?}"),
                }
            }
            other => {
                bail!("unknown argument {other:?}: release [--dry-run] [--bump patch|minor|major]")
            }
        }
    }
    Ok(options)
}

/// `version = "x.y.z"` of `[workspace.package]`.
fn workspace_version(manifest: &str) -> Result<(u64, u64, u64)> {
    let section = manifest
        .split("[workspace.package]")
        .nth(1)
        .context("no [workspace.package] in Cargo.toml")?;
    let line = section
        .lines()
        .find(|l| l.trim_start().starts_with("version"))
        .context("no version in [workspace.package]")?;
    let version = line
        .split('"')
        .nth(1)
        .context("the workspace version is not a quoted string")?;
    let parts: Vec<u64> = version
        .split('.')
        .map(str::parse)
        .collect::<Result<_, _>>()
        .with_context(|| format!("version {version:?} is not x.y.z"))?;
    match parts[..] {
        [major, minor, patch] => Ok((major, minor, patch)),
        _ => bail!("version {version:?} is not x.y.z"),
    }
}

fn bumped((major, minor, patch): (u64, u64, u64), bump: Bump) -> (u64, u64, u64) {
    match bump {
        Bump::Patch => (major, minor, patch + 1),
        Bump::Minor => (major, minor + 1, 0),
        Bump::Major => (major + 1, 0, 0),
    }
}

fn text((major, minor, patch): (u64, u64, u64)) -> String {
    format!("{major}.{minor}.{patch}")
}

/// The manifest with every occurrence of the old version on the workspace's own lines
/// (the package version and the internal dependencies) replaced: all in lockstep.
fn bump_manifest(manifest: &str, old: &str, new: &str) -> String {
    let mut in_package = false;
    let mut out = String::with_capacity(manifest.len());
    for line in manifest.lines() {
        if line.starts_with('[') {
            in_package = line.trim() == "[workspace.package]";
        }
        let package_version = in_package && line.trim_start().starts_with("version");
        let internal = line.starts_with("hybridsync") && line.contains("path = \"crates/");
        if package_version || internal {
            out.push_str(&line.replace(&format!("\"{old}\""), &format!("\"{new}\"")));
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

fn git(args: &[&str]) -> Result<Option<String>> {
    let output = Command::new("git")
        .args(args)
        .current_dir(project_root())
        .output()
        .context("running git")?;
    Ok(output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned()))
}

/// A changelog section for `version`: the subjects of the commits since the last tag.
fn changelog_section(version: &str) -> Result<String> {
    let last_tag = git(&["describe", "--tags", "--abbrev=0"])?;
    let range = last_tag.as_ref().map(|tag| format!("{tag}..HEAD"));
    let mut args = vec!["log", "--no-merges", "--format=%s"];
    if let Some(range) = &range {
        args.push(range);
    }
    let subjects = git(&args)?.unwrap_or_default();
    let date = git(&["log", "-1", "--format=%cs"])?.unwrap_or_default();
    let mut section = format!(
        "## {version} ({date})\n\nChanges since {}:\n\n",
        last_tag.as_deref().unwrap_or("the first commit")
    );
    for subject in subjects.lines().filter(|s| !s.trim().is_empty()) {
        section.push_str(&format!("- {subject}\n"));
    }
    Ok(section)
}

fn package(dry_run: bool) -> Result<()> {
    let mut args = vec![
        "package",
        "--workspace",
        "--exclude",
        "xtask",
        "--exclude",
        "hybridsync-tests",
        "--locked",
    ];
    if dry_run {
        // A dry run checks that every crate packages, in order, with its README and
        // metadata; a release also builds each package from its tarball.
        args.extend(["--no-verify", "--allow-dirty"]);
    }
    eprintln!("$ cargo {}", args.join(" "));
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(&args)
        .current_dir(project_root())
        .status()
        .context("running cargo package")?;
    if !status.success() {
        bail!("cargo package failed ({status})");
    }
    Ok(())
}

pub(crate) fn run(args: &[String]) -> Result<()> {
    let options = parse(args)?;
    let root = project_root();
    let manifest_path = root.join("Cargo.toml");
    let manifest = std::fs::read_to_string(&manifest_path)?;
    let old = workspace_version(&manifest)?;
    let new = bumped(old, options.bump);
    let (old, new) = (text(old), text(new));
    let bumped_manifest = bump_manifest(&manifest, &old, &new);
    let section = changelog_section(&new)?;
    let changelog_path = root.join("CHANGELOG.md");
    let existing = std::fs::read_to_string(&changelog_path).unwrap_or_default();
    let body = existing
        .strip_prefix("# Changelog\n\n")
        .unwrap_or(&existing);
    let changelog = format!("# Changelog\n\n{section}\n{body}");
    let moved = bumped_manifest.matches(&format!("\"{new}\"")).count();
    eprintln!("release: {old} -> {new} ({moved} version fields in lockstep)");
    if options.dry_run {
        eprintln!(
            "dry run: Cargo.toml and CHANGELOG.md left as they are; the changelog would gain:\n{section}"
        );
        return package(true);
    }
    std::fs::write(&manifest_path, bumped_manifest)?;
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["update", "--workspace", "--offline"])
        .current_dir(&root)
        .status()?;
    if !status.success() {
        bail!("cargo update --workspace failed ({status})");
    }
    std::fs::write(&changelog_path, changelog)?;
    package(false)?;
    eprintln!(
        "release {new} prepared: review, then `git commit -am \"release {new}\" && git tag v{new}`"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_move_in_lockstep() {
        let manifest = "[workspace.package]\nversion = \"0.1.0\"\n\n[workspace.dependencies]\nhybridsync-core = { path = \"crates/hybridsync-core\", version = \"0.1.0\" }\nother = { version = \"0.1.0\" }\n";
        assert_eq!(workspace_version(manifest).unwrap(), (0, 1, 0));
        assert_eq!(bumped((0, 1, 0), Bump::Minor), (0, 2, 0));
        assert_eq!(bumped((0, 1, 9), Bump::Patch), (0, 1, 10));
        assert_eq!(bumped((0, 1, 9), Bump::Major), (1, 0, 0));
        let out = bump_manifest(manifest, "0.1.0", "0.2.0");
        assert_eq!(out.matches("\"0.2.0\"").count(), 2, "{out}");
        assert!(
            out.contains("other = { version = \"0.1.0\" }"),
            "third-party versions stay"
        );
        assert!(parse(&["--bump".into(), "huge".into()]).is_err());
    }
}
