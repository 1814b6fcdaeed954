//! The sink's error type and the mapping from `sqlx::Error` by SQLSTATE.

/// Errors of the cloud sink. [`Error::is_retryable`] decides whether the engine retries.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The server cannot be reached or will not serve us right now: refused or reset
    /// connections, pool acquire timeouts, no free slots (53300), admin shutdown (57P01),
    /// a session ended by the server's idle-in-transaction timeout (25P03).
    #[error("cloud unavailable: {0}")]
    Unavailable(String),
    /// A transient failure of one statement: serialization failure (40001), deadlock
    /// (40P01), statement timeout (57014), lock not available (55P03).
    #[error("cloud transient failure (SQLSTATE {code}): {message}")]
    Transient { code: String, message: String },
    /// The server refused the data or the statement (classes 22, 23, 42 and others):
    /// retrying the same thing will fail the same way.
    #[error("cloud rejected the request (SQLSTATE {code}): {message}")]
    Rejected { code: String, message: String },
    /// A record stamped further ahead of the server's clock than the sink allows (a
    /// device clock running far ahead would otherwise pin the key for everyone).
    #[error(
        "{record} is stamped {ahead_ms} ms ahead of the server clock (limit {limit_ms} ms); check that device's clock"
    )]
    ClockAhead {
        record: String,
        ahead_ms: i64,
        limit_ms: i64,
    },
    /// The login role is not a member of the tenant it claims (`cloud grant`): it reads
    /// nothing and writes nothing there. Permanent, so queued writes are parked as
    /// failed rather than retried forever.
    #[error(
        "this login role may not act for tenant {tenant:?} (an administrator grants it: hybridsync cloud grant ROLE --tenant TENANT)"
    )]
    TenantDenied { tenant: String },
    /// A collection the cloud already knows with another spec.
    #[error("collection {collection} exists in the cloud with another spec ({cloud}), not {local}")]
    SpecConflict {
        collection: String,
        cloud: String,
        local: String,
    },
    /// The server's schema is not one this build knows.
    #[error("unexpected cloud schema: {0}")]
    Schema(String),
    /// The configuration is unusable (bad URL, tenant or role name).
    #[error("invalid cloud configuration: {0}")]
    Config(String),
    /// A row from the server that does not fit the data model.
    #[error("unreadable row from the cloud: {0}")]
    BadRow(String),
}

impl Error {
    /// Whether the same request may succeed later.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Unavailable(_) | Error::Transient { .. })
    }
}

/// SQLSTATE classes and codes that mean "the server is not serving us now".
fn unavailable_code(code: &str) -> bool {
    code.starts_with("08") // connection exception
        || code.starts_with("57P") // admin/crash shutdown, cannot connect now
        || code == "53300" // too many connections
        || code == "53000" // insufficient resources
        || code == "25006" // read-only transaction (failover in progress)
        || code == "25P03" // idle_in_transaction_session_timeout ended the session
        || code == "25P04" // transaction_timeout ended the session
}

fn transient_code(code: &str) -> bool {
    matches!(
        code,
        "40001" | "40P01" | "57014" | "55P03" | "53200" | "53100"
    )
}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        match e {
            sqlx::Error::Database(db) => {
                let code = db.code().map(|c| c.into_owned()).unwrap_or_default();
                let message = db.message().to_owned();
                if code == "HS403" {
                    // The schema's hs_select_tenant names the tenant in its detail.
                    let tenant = db
                        .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
                        .and_then(|e| e.detail())
                        .unwrap_or_default()
                        .to_owned();
                    Error::TenantDenied { tenant }
                } else if (code == "42P01" && message.contains("\"hs_"))
                    || (code == "42883" && message.contains(" hs_"))
                {
                    // One of our tables or functions is missing: the schema was never
                    // installed here, or is older than this build's.
                    Error::Schema(format!(
                        "{message} (SQLSTATE {code}): this database has no hybridsync schema, or an older one than this build's (version {}); an administrator installs or upgrades it with `hybridsync --cloud-url ADMIN_URL cloud migrate --grant ROLE --tenant TENANT`",
                        crate::SCHEMA_VERSION
                    ))
                } else if message.contains("unsupported startup parameter") {
                    // PgBouncer refuses the session settings a direct sink sends.
                    Error::Config(format!(
                        "{message}: the cloud URL reaches a pooler; set [cloud] pooler = \"pgbouncer-transaction\""
                    ))
                } else if unavailable_code(&code) {
                    Error::Unavailable(format!("SQLSTATE {code}: {message}"))
                } else if transient_code(&code) {
                    Error::Transient { code, message }
                } else {
                    Error::Rejected { code, message }
                }
            }
            sqlx::Error::Io(io) => Error::Unavailable(format!("i/o: {io}")),
            sqlx::Error::Tls(tls) => Error::Unavailable(format!("tls: {tls}")),
            sqlx::Error::PoolTimedOut => {
                Error::Unavailable("timed out waiting for a pooled connection".into())
            }
            sqlx::Error::PoolClosed => Error::Unavailable("the connection pool is closed".into()),
            sqlx::Error::WorkerCrashed => {
                Error::Unavailable("the connection worker crashed".into())
            }
            sqlx::Error::Protocol(p) => Error::Unavailable(format!("protocol: {p}")),
            sqlx::Error::Configuration(_) => {
                Error::Config("the connection settings were refused".into())
            }
            sqlx::Error::ColumnDecode { .. }
            | sqlx::Error::ColumnNotFound(_)
            | sqlx::Error::Decode(_) => Error::Schema(e.to_string()),
            other => Error::Unavailable(other.to_string()),
        }
    }
}

impl From<sqlx::migrate::MigrateError> for Error {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        match e {
            sqlx::migrate::MigrateError::Execute(inner) => inner.into(),
            other => Error::Schema(other.to_string()),
        }
    }
}

impl From<Error> for hybridsync_core::Error {
    fn from(e: Error) -> Self {
        hybridsync_core::Error::Cloud {
            retryable: e.is_retryable(),
            source: Box::new(e),
        }
    }
}

/// `Result` with the sink's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
