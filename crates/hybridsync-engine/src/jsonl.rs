//! A migration source reading JSON Lines from a file or standard input. The position
//! is the byte offset after a line (and its line number), so a resumed run seeks to it.
//! A file's fingerprint is its size, modification time and a hash of its first 64 KiB;
//! standard input cannot be fingerprinted, so a resumed run over it skips the bytes
//! already read and trusts that the same stream was piped again.

use hybridsync_core::{MigrationSource, RawRow, SourceRow};
use sha2::Digest as _;
use std::io::{BufRead, Read, Seek};
use std::path::PathBuf;

/// Lines per read.
const LINES_PER_READ: usize = 1000;
/// How much of a file's head its fingerprint hashes.
const HEAD_BYTES: u64 = 64 << 10;

/// Reads JSON Lines (see the module docs).
pub struct JsonLinesSource {
    /// `None`: standard input.
    path: Option<PathBuf>,
    reader: Option<Box<dyn BufRead + Send>>,
    offset: u64,
    line: u64,
    size: Option<u64>,
}

impl std::fmt::Debug for JsonLinesSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JsonLinesSource")
            .field("path", &self.path)
            .field("offset", &self.offset)
            .finish_non_exhaustive()
    }
}

fn refused(reason: String) -> hybridsync_core::Error {
    hybridsync_core::Error::Source {
        retryable: false,
        reason,
    }
}

impl JsonLinesSource {
    /// Lines of the file at `path`, or of standard input for `None` (or `-`).
    pub fn new(path: Option<PathBuf>) -> Self {
        let path = path.filter(|p| p.as_os_str() != "-");
        Self {
            path,
            reader: None,
            offset: 0,
            line: 0,
            size: None,
        }
    }

    fn name(&self) -> String {
        self.path
            .as_ref()
            .map_or("standard input".into(), |p| p.display().to_string())
    }

    fn io(&self, e: &std::io::Error) -> hybridsync_core::Error {
        refused(format!("{}: {e}", self.name()))
    }

    /// Opens the input at the current offset.
    fn open(&mut self) -> hybridsync_core::Result<()> {
        let reader: Box<dyn BufRead + Send> = match &self.path {
            Some(path) => {
                let mut file = std::fs::File::open(path).map_err(|e| self.io(&e))?;
                self.size = Some(file.metadata().map_err(|e| self.io(&e))?.len());
                file.seek(std::io::SeekFrom::Start(self.offset))
                    .map_err(|e| self.io(&e))?;
                Box::new(std::io::BufReader::with_capacity(1 << 20, file))
            }
            None => {
                let mut stdin = std::io::BufReader::with_capacity(1 << 20, std::io::stdin());
                let skipped =
                    std::io::copy(&mut (&mut stdin).take(self.offset), &mut std::io::sink())
                        .map_err(|e| self.io(&e))?;
                if skipped < self.offset {
                    return Err(refused(format!(
                        "standard input ended after {skipped} bytes, before the {} already imported",
                        self.offset
                    )));
                }
                Box::new(stdin)
            }
        };
        self.reader = Some(reader);
        Ok(())
    }
}

/// Reads up to `LINES_PER_READ` non-empty lines from `offset`/`line`.
fn read_lines(
    reader: &mut (dyn BufRead + Send),
    offset: &mut u64,
    line: &mut u64,
) -> std::io::Result<Vec<SourceRow>> {
    let mut rows = Vec::with_capacity(LINES_PER_READ);
    while rows.len() < LINES_PER_READ {
        let mut buf = Vec::new();
        let n = reader.read_until(b'\n', &mut buf)?;
        if n == 0 {
            break;
        }
        *offset += n as u64;
        *line += 1;
        while buf.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            buf.pop();
        }
        if buf.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        rows.push(SourceRow {
            position: format!("{offset}:{line}"),
            locator: format!("line {line}"),
            raw: RawRow::Line(buf),
        });
    }
    Ok(rows)
}

#[async_trait::async_trait]
impl MigrationSource for JsonLinesSource {
    fn describe(&self) -> String {
        format!(
            "jsonl {}",
            self.path
                .as_ref()
                .map_or("-".into(), |p| p.display().to_string())
        )
    }

    async fn fingerprint(&mut self) -> hybridsync_core::Result<String> {
        let Some(path) = self.path.clone() else {
            return Ok("jsonl stdin".into());
        };
        let name = self.name();
        tokio::task::spawn_blocking(move || {
            let io = |e: std::io::Error| refused(format!("{name}: {e}"));
            let file = std::fs::File::open(&path).map_err(io)?;
            let meta = file.metadata().map_err(io)?;
            let mtime = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos());
            let mut head = Vec::new();
            file.take(HEAD_BYTES).read_to_end(&mut head).map_err(io)?;
            let digest = sha2::Sha256::digest(&head);
            let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
            Ok(format!(
                "jsonl size {} mtime {mtime} head {hex}",
                meta.len()
            ))
        })
        .await
        .map_err(|e| refused(e.to_string()))?
    }

    async fn seek(&mut self, position: &str) -> hybridsync_core::Result<()> {
        let (offset, line) = if position.is_empty() {
            (0, 0)
        } else {
            let parsed = position
                .split_once(':')
                .and_then(|(o, l)| Some((o.parse().ok()?, l.parse().ok()?)));
            parsed.ok_or_else(|| refused(format!("not a JSON Lines position: {position:?}")))?
        };
        self.offset = offset;
        self.line = line;
        self.reader = None;
        Ok(())
    }

    async fn next_rows(&mut self, _max: usize) -> hybridsync_core::Result<Vec<SourceRow>> {
        if self.reader.is_none() {
            self.open()?;
        }
        let mut reader = self.reader.take().expect("opened above");
        let (mut offset, mut line) = (self.offset, self.line);
        let (reader, read, offset, line) = tokio::task::spawn_blocking(move || {
            let read = read_lines(reader.as_mut(), &mut offset, &mut line);
            (reader, read, offset, line)
        })
        .await
        .map_err(|e| refused(e.to_string()))?;
        self.reader = Some(reader);
        (self.offset, self.line) = (offset, line);
        read.map_err(|e| self.io(&e))
    }

    fn progress(&self) -> Option<(u64, u64)> {
        self.size.map(|size| (self.offset.min(size), size))
    }
}
