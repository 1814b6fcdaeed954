//! A migration source reading a PostgreSQL table or `SELECT` in keyset pages on the
//! key column (`WHERE key > last ORDER BY key LIMIT n`): never one huge result set, and
//! the position is the last key read, so a resumed run (or a reconnect after a dropped
//! connection) continues exactly after it. Each row arrives as `row_to_json` text. The
//! session is read-only (`default_transaction_read_only`), on one connection of its
//! own, apart from the sink's pool; a connection lost mid-run is reopened with backoff.

use crate::Error;
use hybridsync_core::{CloudUrl, MigrationSource, RawRow, SourceRow};
use sqlx::Connection as _;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use std::str::FromStr;

/// Rows per keyset page (PowerSync's initial copy uses 10,000).
const PAGE_ROWS: usize = 5_000;
/// Attempts at a page before the error is returned (about 6 s of retries; the run
/// then stops, resumable).
const ATTEMPTS: u32 = 6;

/// What to read from PostgreSQL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PostgresSelection {
    /// A table (optionally `schema.table`).
    Table(String),
    /// A `SELECT`; it is wrapped as a subquery and paged on the key column.
    Query(String),
}

/// Reads rows from PostgreSQL (see the module docs).
#[derive(Debug)]
pub struct PostgresSource {
    url: CloudUrl,
    selection: PostgresSelection,
    key: String,
    conn: Option<PgConnection>,
    /// The key column's type, as the server names it (for the keyset cast).
    key_type: Option<String>,
    after: Option<String>,
    done: bool,
    read: u64,
    total: Option<u64>,
}

/// A SQL identifier, quoted; `a.b` quotes each part.
fn quoted(name: &str) -> String {
    name.split('.')
        .map(|part| format!("\"{}\"", part.replace('"', "\"\"")))
        .collect::<Vec<_>>()
        .join(".")
}

fn source_error(e: Error) -> hybridsync_core::Error {
    hybridsync_core::Error::Source {
        retryable: e.is_retryable(),
        reason: format!("postgres: {e}"),
    }
}

impl PostgresSource {
    /// A source over `selection` at `url`, paged on column `key`. Nothing connects
    /// until the first read.
    pub fn new(url: CloudUrl, selection: PostgresSelection, key: impl Into<String>) -> Self {
        Self {
            url,
            selection,
            key: key.into(),
            conn: None,
            key_type: None,
            after: None,
            done: false,
            read: 0,
            total: None,
        }
    }

    fn inner(&self) -> String {
        match &self.selection {
            PostgresSelection::Table(table) => format!("SELECT * FROM {}", quoted(table)),
            PostgresSelection::Query(query) => query.clone(),
        }
    }

    async fn connect(&mut self) -> Result<&mut PgConnection, Error> {
        if self.conn.is_none() {
            let options = PgConnectOptions::from_str(self.url.expose())
                .map_err(|_| Error::Config(format!("cannot parse source URL {}", self.url)))?
                .application_name("hybridsync-migrate")
                .options([("default_transaction_read_only", "on")]);
            let conn = tokio::time::timeout(
                std::time::Duration::from_secs(10),
                PgConnection::connect_with(&options),
            )
            .await
            .map_err(|_| Error::Unavailable("timed out connecting to the source".into()))??;
            self.conn = Some(conn);
        }
        Ok(self.conn.as_mut().expect("connected above"))
    }

    /// One page after `self.after`, as (key, row JSON) pairs. The statements hold the
    /// operator's own query on their own database (the point of `--query`), in a
    /// read-only session, with every identifier we add quoted: nothing here reaches
    /// the cloud's tables.
    async fn page(&mut self) -> Result<Vec<(String, String)>, Error> {
        let inner = self.inner();
        let key = quoted(&self.key);
        if self.key_type.is_none() {
            let sql = format!("SELECT pg_typeof(q.{key})::text FROM ({inner}) q LIMIT 1");
            let counted = self.total.is_some();
            let conn = self.connect().await?;
            let found: Option<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                .fetch_optional(&mut *conn)
                .await?;
            if !counted {
                let total: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                    "SELECT COUNT(*) FROM ({inner}) q"
                )))
                .fetch_one(&mut *conn)
                .await?;
                self.total = Some(total as u64);
            }
            match found {
                None => return Ok(Vec::new()),
                Some(found) => self.key_type = Some(found),
            }
        }
        let key_type = self.key_type.clone().expect("found above");
        let after = self.after.clone();
        let conn = self.connect().await?;
        let rows = match after {
            None => {
                let sql = format!(
                    "SELECT q.{key}::text, row_to_json(q)::text FROM ({inner}) q \
                     WHERE q.{key} IS NOT NULL ORDER BY q.{key} LIMIT {PAGE_ROWS}"
                );
                sqlx::query_as(sqlx::AssertSqlSafe(sql))
                    .fetch_all(&mut *conn)
                    .await?
            }
            Some(after) => {
                // The type comes from the server's own `pg_typeof` (a regtype, quoted
                // as needed), never from the user.
                let sql = format!(
                    "SELECT q.{key}::text, row_to_json(q)::text FROM ({inner}) q \
                     WHERE q.{key} > CAST($1 AS {key_type}) ORDER BY q.{key} LIMIT {PAGE_ROWS}"
                );
                sqlx::query_as(sqlx::AssertSqlSafe(sql))
                    .bind(after)
                    .fetch_all(&mut *conn)
                    .await?
            }
        };
        Ok(rows)
    }
}

#[async_trait::async_trait]
impl MigrationSource for PostgresSource {
    fn describe(&self) -> String {
        match &self.selection {
            PostgresSelection::Table(table) => format!("postgres {} table {table}", self.url),
            PostgresSelection::Query(query) => format!("postgres {} query {query}", self.url),
        }
    }

    async fn fingerprint(&mut self) -> hybridsync_core::Result<String> {
        let selection = match &self.selection {
            PostgresSelection::Table(table) => format!("table {table}"),
            PostgresSelection::Query(query) => format!("query {query}"),
        };
        Ok(format!("postgres {selection} key {}", self.key))
    }

    async fn seek(&mut self, position: &str) -> hybridsync_core::Result<()> {
        self.after = (!position.is_empty()).then(|| position.to_owned());
        self.done = false;
        Ok(())
    }

    async fn next_rows(&mut self, _max: usize) -> hybridsync_core::Result<Vec<SourceRow>> {
        if self.done {
            return Ok(Vec::new());
        }
        let mut attempt = 0;
        let rows = loop {
            match self.page().await {
                Ok(rows) => break rows,
                Err(e) if e.is_retryable() && attempt + 1 < ATTEMPTS => {
                    attempt += 1;
                    tracing::warn!(error = %e, attempt, "migration source read failed; reconnecting");
                    self.conn = None;
                    let delay = 100u64 << attempt.min(6);
                    tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
                }
                Err(e) => {
                    self.conn = None;
                    return Err(source_error(e));
                }
            }
        };
        if rows.len() < PAGE_ROWS {
            self.done = true;
        }
        if let Some((last, _)) = rows.last() {
            self.after = Some(last.clone());
        }
        self.read += rows.len() as u64;
        Ok(rows
            .into_iter()
            .map(|(key, json)| SourceRow {
                locator: format!("key {key}"),
                position: key,
                raw: RawRow::Json(json),
            })
            .collect())
    }

    fn progress(&self) -> Option<(u64, u64)> {
        self.total.map(|total| (self.read.min(total), total))
    }
}
