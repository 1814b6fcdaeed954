//! `hybridsync migrate`: bulk imports from JSON Lines, SQLite and PostgreSQL, resumable,
//! verified and reversible (R24). Progress on stderr (a bar on a terminal, a line per
//! 10 % otherwise), the report on stdout.

use crate::CollectionFlags;
use anyhow::{Result, bail};
use hybridsync::migrate::{
    MigrateOptions, MigrateProgress, MigrationInfo, MigrationState, Select, Source,
};
use hybridsync::{HybridStore, MigrationReport, Priority};
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Mutex;

#[derive(Debug, clap::Subcommand)]
pub(crate) enum MigrateCommand {
    /// Import a JSON Lines file (one object per line; `-` reads standard input)
    Jsonl {
        path: PathBuf,
        #[command(flatten)]
        mapping: MappingFlags,
        #[command(flatten)]
        run: RunFlags,
    },
    /// Import a table or a SELECT of another SQLite database (opened read-only)
    Sqlite {
        path: PathBuf,
        #[command(flatten)]
        select: SelectFlags,
        #[command(flatten)]
        mapping: MappingFlags,
        #[command(flatten)]
        run: RunFlags,
    },
    /// Import a table or a SELECT of a PostgreSQL database, in keyset pages on --key
    Postgres {
        url: hybridsync::CloudUrl,
        #[command(flatten)]
        select: SelectFlags,
        #[command(flatten)]
        mapping: MappingFlags,
        #[command(flatten)]
        run: RunFlags,
    },
    /// Continue an interrupted or failed migration from its checkpoint
    Resume {
        id: String,
        /// The PostgreSQL source's full URL, when it holds a password (never stored)
        #[arg(long)]
        source_url: Option<hybridsync::CloudUrl>,
        #[command(flatten)]
        run: RunFlags,
    },
    /// Migrations with their state, counts and source
    List {
        #[arg(long)]
        json: bool,
    },
    /// Undo a migration: delete keys it created, restore keys it overwrote; keys
    /// changed since are kept and listed
    Rollback { id: String },
}

#[derive(Debug, clap::Args)]
#[group(required = true, multiple = false)]
pub(crate) struct SelectFlags {
    /// The table to read
    #[arg(long)]
    table: Option<String>,
    /// A SELECT to read (from SQLite, give it an ORDER BY so a resumed run sees the same order)
    #[arg(long)]
    query: Option<String>,
}

impl SelectFlags {
    fn select(&self) -> Select {
        match (&self.table, &self.query) {
            (Some(table), _) => Select::Table(table.clone()),
            (None, Some(query)) => Select::Query(query.clone()),
            (None, None) => unreachable!("clap requires one"),
        }
    }
}

#[derive(Debug, clap::Args)]
pub(crate) struct MappingFlags {
    /// The collection rows go to
    #[arg(long)]
    collection: String,
    /// The field holding each record's key (a string or an integer)
    #[arg(long)]
    key: String,
    /// The field holding the embedding (an array of numbers, or a blob of little-endian f32)
    #[arg(long)]
    embedding: Option<String>,
    /// The fields kept as the JSON payload, comma-separated; `*` keeps every other field
    #[arg(long, default_value = "*")]
    payload: String,
    /// Create the collection first (with the spec flags below; an existing one must match)
    #[arg(long)]
    create: bool,
    #[command(flatten)]
    spec: CollectionFlags,
    /// Outbox priority of imported rows (deferred never starves live writes)
    #[arg(long, default_value = "deferred")]
    priority: Priority,
}

#[derive(Debug, clap::Args)]
pub(crate) struct RunFlags {
    /// Parsing workers [default: the core count]
    #[arg(long)]
    workers: Option<usize>,
    /// A fixed batch size [default: adapted to the commit time]
    #[arg(long)]
    batch_rows: Option<usize>,
    /// Stop (resumably, exit 1) once more rows than this were rejected; 0 never stops
    #[arg(long, default_value_t = 0)]
    max_errors: u64,
    /// Start over when the source of an unfinished run of this import changed
    #[arg(long)]
    restart: bool,
    /// Skip re-reading the source afterwards to compare it with the store
    #[arg(long)]
    no_verify: bool,
    /// With a cloud: seconds to ship the import and compare with the cloud (0: leave it
    /// to the background drain)
    #[arg(long, default_value_t = 300.0)]
    cloud_timeout: f64,
}

impl RunFlags {
    fn apply(&self, options: &mut MigrateOptions) {
        let run = &mut options.run;
        if let Some(workers) = self.workers {
            run.workers = workers.max(1);
        }
        run.batch_rows = self.batch_rows;
        run.max_errors = self.max_errors;
        run.restart = self.restart;
        run.verify = !self.no_verify;
        run.cloud_check = (self.cloud_timeout > 0.0)
            .then(|| std::time::Duration::from_secs_f64(self.cloud_timeout));
    }
}

/// Reports progress: a bar with rows/s, rejects and an ETA on a terminal, a line per
/// 10 % otherwise.
fn reporter() -> Box<dyn Fn(&MigrateProgress) + Send + Sync> {
    let text = |p: &MigrateProgress| {
        format!(
            "{} rows read, {} imported, {} rejected, {} already present, {:.0} rows/s",
            p.counts.read, p.counts.imported, p.counts.rejected, p.counts.skipped, p.rows_per_sec
        )
    };
    if std::io::stderr().is_terminal() {
        let bar = ProgressBar::new(100);
        if let Ok(style) = ProgressStyle::with_template("{bar:30} {percent:>3}% eta {eta} {msg}") {
            bar.set_style(style);
        }
        Box::new(move |p| {
            if let Some((done, total)) = p.position {
                bar.set_length(total.max(1));
                bar.set_position(done);
            }
            bar.set_message(text(p));
        })
    } else {
        let last = Mutex::new(-10.0f64);
        Box::new(move |p| {
            let Some((done, total)) = p.position else {
                return;
            };
            let percent = 100.0 * done as f64 / total.max(1) as f64;
            let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
            if percent - *last >= 10.0 {
                *last = percent;
                eprintln!("{percent:5.1}% {}", text(p));
            }
        })
    }
}

pub(crate) async fn run(store: &HybridStore, command: &MigrateCommand) -> Result<()> {
    let (source, mapping, run) = match command {
        MigrateCommand::List { json } => return list(store, *json).await,
        MigrateCommand::Rollback { id } => return rollback(store, id).await,
        MigrateCommand::Resume {
            id,
            source_url,
            run,
        } => {
            let mut options = MigrateOptions::new("", "");
            run.apply(&mut options);
            let report = store
                .resume_migration(id, source_url.clone(), options, reporter())
                .await?;
            return finish(&report);
        }
        MigrateCommand::Jsonl { path, mapping, run } => {
            (Source::JsonLines(Some(path.clone())), mapping, run)
        }
        MigrateCommand::Sqlite {
            path,
            select,
            mapping,
            run,
        } => (
            Source::Sqlite {
                path: path.clone(),
                select: select.select(),
            },
            mapping,
            run,
        ),
        MigrateCommand::Postgres {
            url,
            select,
            mapping,
            run,
        } => (
            Source::Postgres {
                url: url.clone(),
                select: select.select(),
            },
            mapping,
            run,
        ),
    };
    if mapping.create {
        mapping.spec.create(store, &mapping.collection).await?;
    }
    let mut options = MigrateOptions::new(&mapping.collection, &mapping.key);
    options.mapping.embedding = mapping.embedding.clone();
    options.mapping.payload = match mapping.payload.trim() {
        "*" => Vec::new(),
        fields => fields
            .split(',')
            .map(|f| f.trim().to_owned())
            .filter(|f| !f.is_empty())
            .collect(),
    };
    options.priority = mapping.priority;
    run.apply(&mut options);
    let report = store.migrate(source, options, reporter()).await?;
    finish(&report)
}

/// Prints the report; fails when the check afterwards found differences.
fn finish(report: &MigrationReport) -> Result<()> {
    let run = &report.run;
    say!(
        "migration {} {}: {} rows read, {} imported, {} rejected, {} skipped as already present, in {:.1} s{}",
        report.id,
        report.state,
        run.read,
        run.imported,
        run.rejected,
        run.skipped,
        report.duration.as_secs_f64(),
        if report.resumed { " (resumed)" } else { "" }
    )?;
    say!("rejects: {}", report.rejects.display())?;
    let mut differing = 0;
    if let Some(check) = &report.verified {
        say!(
            "source check: {} of {} rows match the store",
            check.matching,
            check.checked
        )?;
        differing += check.differing_count;
        for key in &check.differing {
            say!("  differs: {key}")?;
        }
    }
    if let Some(cloud) = &report.cloud {
        say!(
            "cloud check: {} ({} unshipped)",
            if cloud.consistent() {
                "consistent".to_owned()
            } else {
                format!("{} rows differ", cloud.differences())
            },
            report.unshipped.unwrap_or(0)
        )?;
        differing += cloud.differences();
    }
    if differing > 0 {
        bail!("{differing} imported rows do not match their source or the cloud");
    }
    Ok(())
}

fn state_text(info: &MigrationInfo) -> &'static str {
    info.state.as_str()
}

async fn list(store: &HybridStore, json: bool) -> Result<()> {
    let migrations = store.migrations().await?;
    if json {
        let rows: Vec<serde_json::Value> = migrations
            .iter()
            .map(|m| {
                serde_json::json!({
                    "id": m.id,
                    "state": state_text(m),
                    "collection": m.collection.as_str(),
                    "source": m.source,
                    "read": m.counts.read,
                    "imported": m.counts.imported,
                    "rejected": m.counts.rejected,
                    "skipped": m.counts.skipped,
                    "error": m.error,
                    "started_ms": m.started_ms,
                    "updated_ms": m.updated_ms,
                })
            })
            .collect();
        say!("{}", serde_json::to_string_pretty(&rows)?)?;
        return Ok(());
    }
    if migrations.is_empty() {
        say!("no migrations")?;
    }
    for m in &migrations {
        say!(
            "{}\t{}\t{}\tread {} imported {} rejected {} skipped {}\t{}",
            m.id,
            state_text(m),
            m.collection,
            m.counts.read,
            m.counts.imported,
            m.counts.rejected,
            m.counts.skipped,
            m.source
        )?;
    }
    Ok(())
}

async fn rollback(store: &HybridStore, id: &str) -> Result<()> {
    let Some(info) = store.migration(id).await? else {
        bail!("unknown migration {id} (see hybridsync migrate list)");
    };
    if info.state == MigrationState::Running {
        bail!("migration {id} is running; stop it before rolling it back");
    }
    let report = store.rollback_migration(id, |_, _| {}).await?;
    say!(
        "migration {id} rolled back: {} keys deleted, {} restored, {} changed since and kept",
        report.deleted,
        report.restored,
        report.kept.len()
    )?;
    for key in &report.kept {
        say!("  kept: {key}")?;
    }
    Ok(())
}
