//! Opening a store: the data directory, file permissions, integrity and schema checks,
//! migrations (through sqlx's migrator), device identity and crash recovery of the
//! outbox.

use crate::{Error, Result, SqliteStore};
use hybridsync_core::{Clock, DeviceId, Hlc, HlcClock, Limits, SystemClock};
use sqlx::Row;
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// The database file's name inside the data directory.
pub const DB_FILE: &str = "hybridsync.db";

/// How hard a commit waits for the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// `synchronous=NORMAL` in WAL mode: a commit survives a process crash; a power
    /// loss may drop the last few commits, never corrupt the file.
    #[default]
    Normal,
    /// `synchronous=FULL`: every commit is flushed before it is acknowledged.
    Full,
}

impl std::str::FromStr for Durability {
    type Err = hybridsync_core::Error;
    fn from_str(s: &str) -> hybridsync_core::Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "normal" => Ok(Durability::Normal),
            "full" => Ok(Durability::Full),
            _ => Err(hybridsync_core::Error::Parse {
                what: "durability",
                value: s.to_owned(),
            }),
        }
    }
}

/// How to open a [`SqliteStore`].
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// The data directory; created with mode 0700 if missing.
    pub data_dir: PathBuf,
    pub durability: Durability,
    pub limits: Limits,
    /// Physical time for version stamps (injectable for tests).
    pub clock: Arc<dyn Clock>,
    /// How far ahead of the local clock a remote version may be.
    pub max_drift_ms: u64,
    /// Reader connections (WAL lets them run beside the writer).
    pub readers: u32,
    /// How long a write waits for another process holding the write lock.
    pub busy_timeout: Duration,
    /// WAL pages from which a checkpoint runs in the background, off the commit path
    /// (default 1,000, SQLite's own threshold).
    pub checkpoint_pages: u32,
    /// WAL pages from which the committing write checkpoints inline: the bound on the
    /// WAL when background checkpoints fall behind (default 16,384, 64 MiB of 4 KiB
    /// pages).
    pub wal_cap_pages: u32,
}

impl StoreOptions {
    /// Defaults for a data directory.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            durability: Durability::Normal,
            limits: Limits::default(),
            clock: Arc::new(SystemClock),
            max_drift_ms: HlcClock::<SystemClock>::DEFAULT_MAX_DRIFT_MS,
            readers: 4,
            busy_timeout: Duration::from_secs(5),
            checkpoint_pages: crate::connections::DEFAULT_CHECKPOINT_PAGES,
            wal_cap_pages: crate::connections::DEFAULT_WAL_CAP_PAGES,
        }
    }
}

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
            "outbox claims",
            include_str!("../migrations/0002_outbox_claims.sql"),
        ),
        migration(
            3,
            "sync state",
            include_str!("../migrations/0003_sync_state.sql"),
        ),
        migration(
            4,
            "drain order",
            include_str!("../migrations/0004_drain_order.sql"),
        ),
        migration(
            5,
            "encrypted collections",
            include_str!("../migrations/0005_encrypted_collections.sql"),
        ),
        migration(
            6,
            "verify tree",
            include_str!("../migrations/0006_verify_tree.sql"),
        ),
        migration(
            7,
            "migrations",
            include_str!("../migrations/0007_migrations.sql"),
        ),
    ]);
    migrator.set_locking(false);
    migrator
}

/// Maps a connect or query failure on open to [`Error::Corrupt`] when SQLite says the
/// file is damaged or not a database.
fn corrupt_or(path: &Path, e: sqlx::Error) -> Error {
    if let sqlx::Error::Database(db) = &e {
        let primary = db
            .code()
            .and_then(|c| c.parse::<i32>().ok())
            .map(|c| c & 0xff);
        // SQLITE_CORRUPT (11) and SQLITE_NOTADB (26).
        if matches!(primary, Some(11 | 26)) {
            return Error::Corrupt {
                path: path.to_owned(),
                detail: db.message().to_owned(),
            };
        }
    }
    Error::Sqlite(e)
}

fn prepare_files(dir: &Path, db: &Path) -> Result<()> {
    fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
        move |source| Error::Io {
            path: path.to_owned(),
            source,
        }
    }
    if !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io(dir))?;
    }
    if db.exists() {
        // Tighten a file another tool created too loosely. SQLite gives the -wal and
        // -shm files the main file's mode.
        fs::set_permissions(db, fs::Permissions::from_mode(0o600)).map_err(io(db))?;
    } else {
        let created = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(db);
        match created {
            // Another process created it first: fine.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            other => drop(other.map_err(io(db))?),
        }
    }
    Ok(())
}

/// An exclusive lock on `hybridsync.lock` in the data directory, held while a store is
/// set up (WAL mode, schema checks, migrations, device identity), so processes opening
/// a new directory at the same moment do not race: switching to WAL can fail with
/// "database is locked" without waiting, and both would apply the same migration.
/// Released when dropped.
async fn setup_lock(dir: &Path) -> Result<fs::File> {
    let path = dir.join("hybridsync.lock");
    let io = |source| Error::Io {
        path: path.clone(),
        source,
    };
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(io)?;
    // Waits only while another opener sets up, which takes milliseconds (a quick check
    // of a large file, longer). Polled, so a single-threaded runtime opening two stores
    // at once does not deadlock.
    use rustix::fs::{FlockOperation, flock};
    loop {
        match flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => return Ok(file),
            Err(e) if e == rustix::io::Errno::WOULDBLOCK => {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            Err(e) => return Err(io(e.into())),
        }
    }
}

impl SqliteStore {
    /// Opens (or creates) the store in `options.data_dir`.
    ///
    /// Refuses a corrupted or truncated file ([`Error::Corrupt`]) and a schema newer
    /// than this build ([`Error::SchemaTooNew`]) without modifying the file. Outbox
    /// entries left in flight by a crash return to pending.
    pub async fn open(options: StoreOptions) -> Result<Self> {
        let path = options.data_dir.join(DB_FILE);
        prepare_files(&options.data_dir, &path)?;
        let synchronous = match options.durability {
            Durability::Normal => SqliteSynchronous::Normal,
            Durability::Full => SqliteSynchronous::Full,
        };
        let connect = SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(false)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(synchronous)
            .busy_timeout(options.busy_timeout)
            .foreign_keys(true)
            .pragma("temp_store", "memory")
            .pragma(
                "cache_size",
                format!("-{}", crate::connections::READ_CACHE_KIB),
            )
            .pragma("mmap_size", crate::connections::MMAP_BYTES.to_string());
        // Held until the identity is settled: see `setup_lock`.
        let lock = setup_lock(&options.data_dir).await?;
        // Setting up goes through sqlx (its migrator); writes after that go through
        // the one writer connection.
        let setup = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .connect_with(connect.clone())
            .await
            .map_err(|e| corrupt_or(&path, e))?;
        check_integrity(&setup, &path).await?;
        check_schema_version(&setup, &path).await?;
        migrator().run(&setup).await?;

        let readers = SqlitePoolOptions::new()
            .max_connections(options.readers.max(1))
            .connect_with(
                connect
                    .pragma("query_only", "ON")
                    .pragma("mmap_size", "0")
                    .pragma(
                        "cache_size",
                        format!("-{}", crate::connections::POOL_CACHE_KIB),
                    ),
            )
            .await
            .map_err(|e| corrupt_or(&path, e))?;

        let (device, high_water) = load_identity(&setup).await?;
        setup.close().await;
        let writer = crate::connections::Writer::open(
            &path,
            options.durability,
            options.busy_timeout,
            options.checkpoint_pages,
            options.wal_cap_pages,
        )?;
        drop(lock);
        let hlc = HlcClock::new(options.clock, device, high_water, options.max_drift_ms);
        let point = crate::connections::PointReaders::new(
            path.clone(),
            options.busy_timeout,
            options.readers as usize,
        );
        let store = Self {
            path,
            writer,
            readers,
            point,
            hlc,
            limits: options.limits,
            catalogue: RwLock::new(HashMap::new()),
        };
        store.reload_catalogue().await?;
        store.backfill_tree().await?;
        let recovered = store.requeue_in_flight().await.map_err(Error::from_core)?;
        if recovered > 0 {
            tracing::info!(
                recovered,
                "outbox entries in flight at the last stop returned to pending"
            );
        }
        Ok(store)
    }
}

async fn check_integrity(pool: &SqlitePool, path: &Path) -> Result<()> {
    let rows = sqlx::query("PRAGMA quick_check")
        .fetch_all(pool)
        .await
        .map_err(|e| corrupt_or(path, e))?;
    let messages: Vec<String> = rows
        .iter()
        .filter_map(|r| r.try_get::<String, _>(0).ok())
        .collect();
    if messages.len() == 1 && messages[0] == "ok" {
        return Ok(());
    }
    Err(Error::Corrupt {
        path: path.to_owned(),
        detail: messages.join("; "),
    })
}

async fn check_schema_version(pool: &SqlitePool, path: &Path) -> Result<()> {
    let supported = migrator().iter().map(|m| m.version).max().unwrap_or(0);
    let has_table: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations')",
    )
    .fetch_one(pool)
    .await?;
    if !has_table {
        return Ok(());
    }
    let found: Option<i64> = sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations")
        .fetch_one(pool)
        .await?;
    match found {
        Some(found) if found > supported => Err(Error::SchemaTooNew {
            path: path.to_owned(),
            found,
            supported,
        }),
        _ => Ok(()),
    }
}

/// Reads (or creates on first open) the device id and the HLC high-water mark.
async fn load_identity(pool: &SqlitePool) -> Result<(DeviceId, Option<Hlc>)> {
    let fresh = DeviceId(rand::random());
    sqlx::query(
        "INSERT INTO meta (key, value) VALUES ('device_id', ?1), ('hlc_high_water', 0) ON CONFLICT (key) DO NOTHING",
    )
    .bind(fresh.0.to_vec())
    .execute(pool)
    .await?;
    let bytes: Vec<u8> = sqlx::query_scalar("SELECT value FROM meta WHERE key = 'device_id'")
        .fetch_one(pool)
        .await?;
    let device = DeviceId(bytes.try_into().map_err(|_| Error::BadRow {
        table: "meta",
        detail: "device_id is not 16 bytes".into(),
    })?);
    let packed: i64 = sqlx::query_scalar("SELECT value FROM meta WHERE key = 'hlc_high_water'")
        .fetch_one(pool)
        .await?;
    Ok((
        device,
        (packed > 0).then(|| Hlc::from_packed(packed, device)),
    ))
}
