//! The cloud schema: embedded migrations, applied by an administrative connection,
//! and the grants that let the sink's (non-owner) role use it.

use crate::{Error, Result};
use sqlx::Executor;
use sqlx::migrate::{Migration, MigrationType, Migrator};

use sqlx::postgres::PgPoolOptions;

/// The schema version this build writes and expects.
pub const SCHEMA_VERSION: i64 = 2;

/// The table recording applied migrations; our own name, so we never collide with an
/// application's `_sqlx_migrations`.
pub(crate) const MIGRATIONS_TABLE: &str = "_hybridsync_migrations";

fn migrator() -> Migrator {
    let migration = |version, description: &'static str, sql: &'static str| {
        Migration::new(
            version,
            description.into(),
            MigrationType::Simple,
            sqlx::SqlStr::from_static(sql),
            false,
        )
    };
    let mut migrator = Migrator::with_migrations(vec![
        migration(1, "init", include_str!("../migrations/0001_init.sql")),
        migration(
            2,
            "collections",
            include_str!("../migrations/0002_collections.sql"),
        ),
    ]);
    migrator.dangerous_set_table_name(MIGRATIONS_TABLE);
    migrator
}

/// True for a plain lowercase SQL identifier (`[a-z_][a-z0-9_]{0,62}`), the only form
/// we ever splice into SQL.
pub(crate) fn is_identifier(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// Applies the cloud schema through `admin_url` (a role that may create tables) and,
/// if given, grants the sink's role `app_role` the DML it needs. The app role does not
/// own the tables, so row-level security applies to it.
///
/// Refuses a database whose hybridsync schema is newer than this build.
pub async fn migrate(admin_url: &hybridsync_core::CloudUrl, app_role: Option<&str>) -> Result<()> {
    if let Some(role) = app_role {
        if !is_identifier(role) {
            return Err(Error::Config(format!(
                "role name {role:?} is not a plain lowercase identifier"
            )));
        }
    }
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect(admin_url.expose())
        .await
        .map_err(Error::from)?;
    let found = applied_version(&pool).await?;
    if found > SCHEMA_VERSION {
        return Err(Error::Schema(format!(
            "schema version {found} is newer than the {SCHEMA_VERSION} this build knows"
        )));
    }
    migrator().run(&pool).await?;
    if let Some(role) = app_role {
        let grants = format!(
            "GRANT SELECT, INSERT, UPDATE ON hs_records, hs_devices, hs_collections TO {role};\n\
             GRANT DELETE ON hs_devices TO {role};\n\
             GRANT USAGE ON SEQUENCE hs_change_seq TO {role};\n\
             GRANT SELECT ON {MIGRATIONS_TABLE} TO {role};"
        );
        pool.execute(sqlx::AssertSqlSafe(grants))
            .await
            .map_err(Error::from)?;
    }
    pool.close().await;
    Ok(())
}

const HAS_MIGRATIONS: &str = "SELECT to_regclass('_hybridsync_migrations') IS NOT NULL";

const APPLIED: &str = "SELECT max(version) FROM _hybridsync_migrations WHERE success";

/// The highest successfully applied hybridsync migration, 0 when none.
pub(crate) async fn applied_version(pool: &sqlx::PgPool) -> Result<i64> {
    let exists: bool = sqlx::query_scalar(HAS_MIGRATIONS)
        .fetch_one(pool)
        .await
        .map_err(Error::from)?;
    if !exists {
        return Ok(0);
    }
    let version: Option<i64> = sqlx::query_scalar(APPLIED)
        .fetch_one(pool)
        .await
        .map_err(Error::from)?;
    Ok(version.unwrap_or(0))
}
