//! Bulk imports (R24): the sources a migration reads, the options it runs with and the
//! plan stored with it, from which `resume` rebuilds it. The pipeline is the engine's
//! (`hybridsync_engine::Engine::migrate`).

use crate::{CloudUrl, HybridStore, Priority, Result};
use hybridsync_core::{CollectionName, MigrationSource};
use hybridsync_engine::{MigrationJob, MigrationReport, RollbackReport};
use std::path::PathBuf;
use std::time::Duration;

pub use hybridsync_core::{MigrationCounts, MigrationInfo, MigrationState};
pub use hybridsync_engine::{Mapping, MigrateProgress, RunOptions, SourceCheck};

/// What to read from a SQL source.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Select {
    /// Every row of a table.
    Table(String),
    /// The rows of one `SELECT` (from SQLite, ordered by `ORDER BY`: its position is a
    /// row count; from PostgreSQL, paged on the key column).
    Query(String),
}

/// Where a migration reads.
#[derive(Debug, Clone)]
pub enum Source {
    /// A JSON Lines file; `None` (or `-`) reads standard input.
    JsonLines(Option<PathBuf>),
    /// Another SQLite database, opened read-only.
    Sqlite { path: PathBuf, select: Select },
    /// A PostgreSQL database, read in keyset pages on the key column in a read-only
    /// session (needs the `cloud-postgres` feature).
    Postgres { url: CloudUrl, select: Select },
}

/// What a migration imports into, and how it runs.
#[derive(Debug, Clone)]
pub struct MigrateOptions {
    /// The collection rows go to (it must exist).
    pub collection: String,
    pub mapping: Mapping,
    /// Outbox priority of imported rows; default deferred, so an import never starves
    /// live writes (soft caps still apply; nothing is dropped).
    pub priority: Priority,
    /// Workers, batch size, error limit, restart, and the checks afterwards. The facade
    /// asks for the cloud check by default (5 minutes to ship, then compare).
    pub run: RunOptions,
}

impl MigrateOptions {
    /// Rows into `collection`, keyed by field `key`, every other field the payload.
    pub fn new(collection: impl Into<String>, key: impl Into<String>) -> Self {
        Self {
            collection: collection.into(),
            mapping: Mapping::new(key),
            priority: Priority::Deferred,
            run: RunOptions {
                cloud_check: Some(Duration::from_secs(300)),
                ..RunOptions::default()
            },
        }
    }
}

/// The plan stored with a migration: enough to run it again, and nothing secret (a
/// PostgreSQL URL is kept redacted; its password is given again on resume).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct Plan {
    source: PlanSource,
    collection: String,
    mapping: Mapping,
    priority: Priority,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
enum PlanSource {
    Jsonl { path: Option<PathBuf> },
    Sqlite { path: PathBuf, select: Select },
    Postgres { url: String, select: Select },
}

fn absolute(path: &std::path::Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_owned())
}

impl PlanSource {
    fn of(source: &Source) -> Self {
        match source {
            Source::JsonLines(path) => PlanSource::Jsonl {
                path: path
                    .as_ref()
                    .filter(|p| p.as_os_str() != "-")
                    .map(|p| absolute(p)),
            },
            Source::Sqlite { path, select } => PlanSource::Sqlite {
                path: absolute(path),
                select: select.clone(),
            },
            Source::Postgres { url, select } => PlanSource::Postgres {
                url: url.redacted(),
                select: select.clone(),
            },
        }
    }
}

fn invalid(what: &'static str, value: impl Into<String>) -> crate::Error {
    hybridsync_core::Error::Parse {
        what,
        value: value.into(),
    }
    .into()
}

/// The concrete reader of `source`, keyed (for PostgreSQL) by `key`.
fn open_source(source: Source, key: &str) -> Result<Box<dyn MigrationSource>> {
    Ok(match source {
        Source::JsonLines(path) => Box::new(hybridsync_engine::JsonLinesSource::new(path)),
        Source::Sqlite { path, select } => Box::new(hybridsync_store::SqliteSource::new(
            path,
            match select {
                Select::Table(t) => hybridsync_store::SqliteSelection::Table(t),
                Select::Query(q) => hybridsync_store::SqliteSelection::Query(q),
            },
        )),
        #[cfg(feature = "cloud-postgres")]
        Source::Postgres { url, select } => Box::new(hybridsync_cloud::PostgresSource::new(
            url,
            match select {
                Select::Table(t) => hybridsync_cloud::PostgresSelection::Table(t),
                Select::Query(q) => hybridsync_cloud::PostgresSelection::Query(q),
            },
            key,
        )),
        #[cfg(not(feature = "cloud-postgres"))]
        Source::Postgres { url, .. } => {
            let _ = key;
            return Err(crate::Error::CloudUnavailable {
                url: url.redacted(),
            });
        }
    })
}

impl HybridStore {
    /// Imports `source` into `options.collection` (R24): rows are parsed on worker
    /// threads, written in batches through the store's batch path, each batch with its
    /// checkpoint in one local transaction, bad rows listed in
    /// `<data dir>/migrations/<id>.rejects.jsonl`. Running the same import again after
    /// a crash continues where the last batch committed; a source that changed
    /// meanwhile is refused unless `options.restart`. Imported rows reach the cloud
    /// through the outbox like any write.
    pub async fn migrate(
        &self,
        source: Source,
        options: MigrateOptions,
        progress: impl Fn(&MigrateProgress) + Send + Sync,
    ) -> Result<MigrationReport> {
        self.run_migration(source, options, None, &progress).await
    }

    /// Continues migration `id` from its checkpoint, with the source, collection,
    /// mapping and priority of its plan (the rest of `options` applies). A PostgreSQL
    /// source whose URL held a password needs it again: pass the full URL as
    /// `source_url` (it must name the same server and database).
    pub async fn resume_migration(
        &self,
        id: &str,
        source_url: Option<CloudUrl>,
        options: MigrateOptions,
        progress: impl Fn(&MigrateProgress) + Send + Sync,
    ) -> Result<MigrationReport> {
        let info = self
            .migration(id)
            .await?
            .ok_or_else(|| hybridsync_core::Error::UnknownMigration(id.to_owned()))?;
        let plan: Plan = serde_json::from_str(&info.plan)
            .map_err(|_| invalid("migration plan", info.plan.clone()))?;
        let source = match plan.source {
            PlanSource::Jsonl { path } => Source::JsonLines(path),
            PlanSource::Sqlite { path, select } => Source::Sqlite { path, select },
            PlanSource::Postgres { url, select } => {
                let url = match source_url {
                    Some(given) if given.redacted() == url => given,
                    Some(given) => {
                        return Err(invalid(
                            "source URL (not the migration's source)",
                            given.redacted(),
                        ));
                    }
                    None if url.contains("***") => {
                        return Err(invalid(
                            "resume without the source's password (give the full source URL again)",
                            url,
                        ));
                    }
                    None => CloudUrl::new(url),
                };
                Source::Postgres { url, select }
            }
        };
        let options = MigrateOptions {
            collection: plan.collection,
            mapping: plan.mapping,
            priority: plan.priority,
            ..options
        };
        self.run_migration(source, options, Some(id.to_owned()), &progress)
            .await
    }

    async fn run_migration(
        &self,
        source: Source,
        options: MigrateOptions,
        resume: Option<String>,
        progress: &(dyn Fn(&MigrateProgress) + Send + Sync),
    ) -> Result<MigrationReport> {
        let collection = CollectionName::new(&options.collection)?;
        let plan = Plan {
            source: PlanSource::of(&source),
            collection: options.collection.clone(),
            mapping: options.mapping.clone(),
            priority: options.priority,
        };
        let plan = serde_json::to_string(&plan).expect("a plan serialises");
        let job = MigrationJob {
            source: open_source(source, &options.mapping.key)?,
            collection,
            mapping: options.mapping,
            priority: options.priority,
            plan,
            resume,
            rejects_dir: self.migrations_dir(),
        };
        Ok(self.runtime().migrate(job, &options.run, progress).await?)
    }

    /// Where rejects files go: `<data dir>/migrations`.
    fn migrations_dir(&self) -> PathBuf {
        self.data_dir().join("migrations")
    }

    /// Every migration of this store, oldest first, with its state and counts.
    pub async fn migrations(&self) -> Result<Vec<MigrationInfo>> {
        Ok(self.runtime().engine().migrations().await?)
    }

    /// One migration.
    pub async fn migration(&self, id: &str) -> Result<Option<MigrationInfo>> {
        Ok(self.migrations().await?.into_iter().find(|m| m.id == id))
    }

    /// Undoes migration `id`: keys it created are deleted (tombstones, which reach the
    /// cloud and other devices), keys it overwrote get their previous content back as
    /// a new version, and keys changed since the import are kept and listed.
    /// `progress` gets (done, total).
    pub async fn rollback_migration(
        &self,
        id: &str,
        progress: impl Fn(u64, u64) + Send + Sync,
    ) -> Result<RollbackReport> {
        let info = self
            .migration(id)
            .await?
            .ok_or_else(|| hybridsync_core::Error::UnknownMigration(id.to_owned()))?;
        let priority = serde_json::from_str::<Plan>(&info.plan)
            .map_or(Priority::Deferred, |plan| plan.priority);
        Ok(self
            .runtime()
            .engine()
            .rollback_migration(id, priority, &progress)
            .await?)
    }
}
