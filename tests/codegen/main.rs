//! `hybridsync-codegen [--check] [--root DIR]`: writes the files generated from the
//! metric catalogue and the configuration types (`cargo xtask codegen` runs it), or,
//! with `--check`, fails naming each file that is missing or stale.

mod generate;

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut check = false;
    let mut root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--check" => check = true,
            "--root" => match args.next() {
                Some(dir) => root = dir.into(),
                None => return usage("--root needs a directory"),
            },
            other => return usage(&format!("unknown argument {other:?}")),
        }
    }
    let mut stale = Vec::new();
    let files = generate::files();
    for (path, content) in &files {
        let file = root.join(path);
        let current = std::fs::read_to_string(&file).ok();
        if current.as_deref() == Some(content.as_str()) {
            continue;
        }
        if check {
            stale.push(if current.is_none() {
                format!("{path} (missing)")
            } else {
                (*path).to_owned()
            });
            continue;
        }
        let written = file
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::write(&file, content));
        if let Err(e) = written {
            eprintln!("codegen: writing {}: {e}", file.display());
            return ExitCode::FAILURE;
        }
        eprintln!("codegen: wrote {path}");
    }
    if !stale.is_empty() {
        eprintln!(
            "codegen: {} generated file(s) out of date; run `cargo xtask codegen`:\n  {}",
            stale.len(),
            stale.join("\n  ")
        );
        return ExitCode::FAILURE;
    }
    if check {
        eprintln!("codegen: {} generated files up to date", files.len());
    }
    ExitCode::SUCCESS
}

fn usage(problem: &str) -> ExitCode {
    eprintln!("hybridsync-codegen: {problem}\nusage: hybridsync-codegen [--check] [--root DIR]");
    ExitCode::from(2)
}
