//! The cloud schema: embedded migrations, applied by an administrative connection,
//! and the grants that let the sink's (non-owner) role use it.

use crate::{Error, Result};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{Executor, Row};

use sqlx::postgres::PgPoolOptions;

/// The schema version this build writes and expects.
pub const SCHEMA_VERSION: i64 = 9;

/// The table recording applied migrations; our own name, so we never collide with an
/// application's `_sqlx_migrations`.
pub(crate) const MIGRATIONS_TABLE: &str = "_hybridsync_migrations";

fn migrator() -> Migrator {
    migrator_until(SCHEMA_VERSION)
}

/// The migrations up to schema version `last` (tests build older schemas with it).
pub(crate) fn migrator_until(last: i64) -> Migrator {
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
        migration(
            3,
            "tenant members",
            include_str!("../migrations/0003_tenant_members.sql"),
        ),
        migration(
            4,
            "encryption",
            include_str!("../migrations/0004_encryption.sql"),
        ),
        migration(5, "verify", include_str!("../migrations/0005_verify.sql")),
        migration(
            6,
            "writer horizon",
            include_str!("../migrations/0006_writer_horizon.sql"),
        ),
        migration(
            7,
            "acting tenant in plpgsql",
            include_str!("../migrations/0007_acting_tenant_plpgsql.sql"),
        ),
        migration(
            8,
            "one-statement ship and feed page",
            include_str!("../migrations/0008_one_statement_ship_and_pull.sql"),
        ),
        migration(
            9,
            "ship checks the tenant",
            include_str!("../migrations/0009_ship_checks_tenant.sql"),
        ),
    ]);
    migrator.migrations = std::borrow::Cow::Owned(
        migrator
            .migrations
            .iter()
            .filter(|m| m.version <= last)
            .cloned()
            .collect(),
    );
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
/// own the tables, so row-level security applies to it, and it acts for no tenant
/// until [`grant_tenant`] makes it a member of one. An older schema is upgraded in
/// place, rows kept.
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
             GRANT SELECT ON {MIGRATIONS_TABLE} TO {role};\n\
             GRANT SELECT ON hs_tenant_members TO {role};"
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
    // Parameterless statements in the simple protocol, which a transaction pooler
    // passes outside a transaction.
    let exists: bool = sqlx::raw_sql(HAS_MIGRATIONS)
        .fetch_one(pool)
        .await
        .and_then(|row| row.try_get(0))
        .map_err(Error::from)?;
    if !exists {
        return Ok(0);
    }
    let version: Option<i64> = sqlx::raw_sql(APPLIED)
        .fetch_one(pool)
        .await
        .and_then(|row| row.try_get(0))
        .map_err(Error::from)?;
    Ok(version.unwrap_or(0))
}

/// One membership: `role` (or a role that belongs to it) may act for `tenant`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantMember {
    pub role: String,
    pub tenant: String,
    pub granted_ms: u64,
}

const GRANT_MEMBER: &str = "INSERT INTO hs_tenant_members (member, tenant) VALUES ($1::regrole, $2) \
     ON CONFLICT DO NOTHING";

const GRANT_SELF: &str = "INSERT INTO hs_tenant_members (member, tenant) \
     VALUES (current_user::text::regrole, $1) ON CONFLICT DO NOTHING";

const REVOKE_MEMBER: &str =
    "DELETE FROM hs_tenant_members WHERE member = $1::regrole AND tenant = $2";

const MEMBERS: &str = "SELECT member::text, tenant, (extract(epoch FROM granted_at) * 1000)::int8 \
     FROM hs_tenant_members ORDER BY tenant, member::text";

/// An administrative connection for membership changes.
async fn admin_pool(admin_url: &hybridsync_core::CloudUrl) -> Result<sqlx::PgPool> {
    PgPoolOptions::new()
        .max_connections(1)
        .connect(admin_url.expose())
        .await
        .map_err(Error::from)
}

fn checked_role(role: &str) -> Result<&str> {
    if is_identifier(role) {
        Ok(role)
    } else {
        Err(Error::Config(format!(
            "role name {role:?} is not a plain lowercase identifier"
        )))
    }
}

/// Lets `role` act for `tenant` (idempotent), through an administrative connection.
/// `None`: the administrative URL's own login (for a single-role setup such as the
/// demo). An unknown role is refused.
pub async fn grant_tenant(
    admin_url: &hybridsync_core::CloudUrl,
    role: Option<&str>,
    tenant: &str,
) -> Result<()> {
    let tenant = crate::pool::validate_tenant(tenant)?;
    let pool = admin_pool(admin_url).await?;
    let granted = match role {
        Some(role) => {
            sqlx::query(GRANT_MEMBER)
                .bind(checked_role(role)?)
                .bind(tenant)
                .execute(&pool)
                .await
        }
        None => sqlx::query(GRANT_SELF).bind(tenant).execute(&pool).await,
    };
    pool.close().await;
    granted.map_err(Error::from)?;
    Ok(())
}

/// Takes `tenant` away from `role`; false when it was not a member. Its connections
/// lose access at their next transaction.
pub async fn revoke_tenant(
    admin_url: &hybridsync_core::CloudUrl,
    role: &str,
    tenant: &str,
) -> Result<bool> {
    let pool = admin_pool(admin_url).await?;
    let revoked = sqlx::query(REVOKE_MEMBER)
        .bind(checked_role(role)?)
        .bind(tenant)
        .execute(&pool)
        .await;
    pool.close().await;
    Ok(revoked.map_err(Error::from)?.rows_affected() > 0)
}

/// Every membership, by tenant.
pub async fn tenant_members(admin_url: &hybridsync_core::CloudUrl) -> Result<Vec<TenantMember>> {
    let pool = admin_pool(admin_url).await?;
    let rows: std::result::Result<Vec<(String, String, i64)>, _> =
        sqlx::query_as(MEMBERS).fetch_all(&pool).await;
    pool.close().await;
    Ok(rows
        .map_err(Error::from)?
        .into_iter()
        .map(|(role, tenant, ms)| TenantMember {
            role,
            tenant,
            granted_ms: ms.max(0) as u64,
        })
        .collect())
}
