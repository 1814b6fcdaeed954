//! Configuration from a TOML file (or any serde format) and the environment.

use hybridsync_core::CloudUrl;
use std::path::PathBuf;

/// What a deployment configures. Every field is optional; unset fields keep the
/// builder's defaults. Unknown fields are refused, so a typo is an error, not a no-op.
///
/// ```toml
/// data_dir = "/var/lib/myapp/hybridsync"
/// cloud_url = "postgres://app@db.internal/app"   # optional: local-only without it
/// durability = "full"                            # or "normal" (default)
/// [limits]
/// max_key_bytes = 512
/// max_payload_bytes = 1048576
/// [cloud]
/// tenant = "acme"
/// pooler = "pgbouncer-transaction"               # when cloud_url reaches PgBouncer
/// listen_url = "postgres://app@db.internal/app"  # optional direct session for LISTEN
/// [cache]
/// entries = 10000
/// bytes = 67108864
/// [cache.warming]                                # predictive warming (on by default)
/// interval_ms = 60000
/// [vector]
/// index = "hnsw"                                 # or "usearch"
/// ef = 32                                        # search breadth: recall against speed
/// [encryption]                                   # for collections created --encrypted
/// key_file = "/etc/myapp/hybridsync.key"         # 32 raw bytes or 64 hex digits, 0600
/// previous_key_files = []                        # rotated-out keys, still readable
/// [redis]                                        # optional, feature `redis`
/// url = "redis://127.0.0.1:6379"                 # or HYBRIDSYNC_REDIS_URL
/// ```
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub data_dir: Option<PathBuf>,
    pub cloud_url: Option<CloudUrl>,
    pub durability: Option<String>,
    #[serde(default)]
    pub limits: LimitsConfig,
    #[serde(default)]
    pub cache: CacheConfig,
    #[serde(default)]
    pub vector: VectorConfig,
    #[serde(default)]
    pub cloud: CloudConfig,
    #[serde(default)]
    pub sync: SyncSettings,
    #[serde(default)]
    pub encryption: EncryptionConfig,
    #[serde(default)]
    pub redis: RedisConfig,
}

/// `[redis]`: publish this instance's figures to Redis for `hybridsync top` (needs the
/// `redis` feature).
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://[:password@]host[:port][/db]` (the password never appears in logs).
    pub url: Option<CloudUrl>,
    /// Seconds an instance's keys outlive its last publish (default 3600).
    pub ttl_secs: Option<u64>,
}

/// `[encryption]`: the key files of client-side encryption (each 32 raw bytes or 64
/// hex digits, mode 0600). Only collections declared encrypted use them.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncryptionConfig {
    /// The key that seals (and opens).
    pub key_file: Option<PathBuf>,
    /// Keys rotated out, which still open rows they sealed.
    #[serde(default)]
    pub previous_key_files: Vec<PathBuf>,
}

/// `[cloud]`.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloudConfig {
    /// The tenant this device's rows belong to (default `default`).
    pub tenant: Option<String>,
    /// Hard cap on cloud connections (default 3).
    pub max_connections: Option<u32>,
    /// What `cloud_url` reaches: `direct` (default) or `pgbouncer-transaction`.
    pub pooler: Option<String>,
    /// A direct session URL for `LISTEN` when `cloud_url` goes through a pooler.
    pub listen_url: Option<CloudUrl>,
    /// Milliseconds a transaction may sit idle after its upsert (default 5000; 0: the
    /// server's setting).
    pub idle_in_transaction_timeout_ms: Option<u64>,
    /// Milliseconds between looks for other devices' changes when the sink cannot
    /// `LISTEN` (default 2000).
    pub poll_interval_ms: Option<u64>,
}

/// `[sync]`.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyncSettings {
    /// Seconds between drains when no write nudges one (default 30).
    pub interval_secs: Option<f64>,
    /// Starting batch size (default 50; adapts to latency).
    pub batch_size: Option<usize>,
    /// Attempts before an entry is parked as failed (default 5).
    pub max_attempts: Option<u32>,
}

/// `[limits]`.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    pub max_key_bytes: Option<usize>,
    pub max_payload_bytes: Option<usize>,
}

/// `[vector]`: the index of vector collections.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VectorConfig {
    /// `hnsw` (ours, the default) or `usearch`.
    pub index: Option<String>,
    /// Breadth of a search's walk (0 or unset: the index's default).
    pub ef: Option<usize>,
}

/// `[cache]`.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    pub entries: Option<usize>,
    pub bytes: Option<usize>,
    #[serde(default)]
    pub warming: WarmingSettings,
}

/// `[cache.warming]`: predictive warming of the hot cache.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WarmingSettings {
    pub enabled: Option<bool>,
    pub interval_ms: Option<u64>,
    pub threshold: Option<f64>,
    pub top_k: Option<usize>,
    pub max_keys: Option<usize>,
}

/// One configuration setting as `docs/configuration.md` lists it (generated by
/// `cargo xtask codegen`, which checks that the keys are exactly the ones
/// [`Config`] deserializes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    /// The TOML key, `section.field` for a table's field.
    pub key: &'static str,
    /// The environment variable that overrides it, if any.
    pub env: &'static str,
    /// The `hybridsync` flag that overrides it, if any.
    pub flag: &'static str,
    pub default: &'static str,
    pub meaning: &'static str,
}

/// Every setting of [`Config`], in file order.
pub const SETTINGS: &[Setting] = &[
    Setting {
        key: "data_dir",
        env: "HYBRIDSYNC_DATA_DIR",
        flag: "--data-dir",
        default: "`./hybridsync-data`",
        meaning: "where the SQLite file lives (created 0700)",
    },
    Setting {
        key: "cloud_url",
        env: "HYBRIDSYNC_CLOUD_URL",
        flag: "--cloud-url",
        default: "none",
        meaning: "cloud PostgreSQL; without it the store is local-only and the outbox waits",
    },
    Setting {
        key: "durability",
        env: "HYBRIDSYNC_DURABILITY",
        flag: "",
        default: "`normal`",
        meaning: "`normal` (WAL, synchronous=NORMAL: survives process crashes) or `full` (flush every commit)",
    },
    Setting {
        key: "limits.max_key_bytes",
        env: "",
        flag: "",
        default: "512",
        meaning: "longest key, UTF-8 bytes",
    },
    Setting {
        key: "limits.max_payload_bytes",
        env: "",
        flag: "",
        default: "1 MiB",
        meaning: "largest encoded payload",
    },
    Setting {
        key: "cache.entries",
        env: "",
        flag: "",
        default: "10000",
        meaning: "hot-record cache entries",
    },
    Setting {
        key: "cache.bytes",
        env: "",
        flag: "",
        default: "64 MiB",
        meaning: "hot-record cache bytes (approximate)",
    },
    Setting {
        key: "cache.warming.enabled",
        env: "",
        flag: "",
        default: "true",
        meaning: "learn when each key is read and load the reads predicted for the next interval into the hot cache ahead of them (`docs/architecture.md`, predictive warming)",
    },
    Setting {
        key: "cache.warming.interval_ms",
        env: "",
        flag: "",
        default: "60000",
        meaning: "milliseconds between warming rounds, and how far ahead each looks (reads are digested at least every 250 ms)",
    },
    Setting {
        key: "cache.warming.threshold",
        env: "",
        flag: "",
        default: "0.7",
        meaning: "least confidence (0–1) that a key is read within the next interval for it to be prefetched",
    },
    Setting {
        key: "cache.warming.top_k",
        env: "",
        flag: "",
        default: "10",
        meaning: "most keys prefetched per round, most confident first",
    },
    Setting {
        key: "cache.warming.max_keys",
        env: "",
        flag: "",
        default: "4096",
        meaning: "most keys with an access history (about 200 bytes each, plus a 256 KiB access ring)",
    },
    Setting {
        key: "vector.index",
        env: "",
        flag: "",
        default: "`hnsw`",
        meaning: "the index of vector collections: `hnsw` (ours: prefetching walk, f16 and i8 read directly) or `usearch`",
    },
    Setting {
        key: "vector.ef",
        env: "",
        flag: "",
        default: "32 (`hnsw`), usearch's own (`usearch`)",
        meaning: "breadth of a search's walk: wider finds more of the true nearest, slower (`docs/benchmarks.md` has recall at each)",
    },
    Setting {
        key: "cloud.tenant",
        env: "HYBRIDSYNC_TENANT",
        flag: "",
        default: "`default`",
        meaning: "the tenant this device's cloud rows belong to (row-level security); also the Redis key prefix",
    },
    Setting {
        key: "cloud.max_connections",
        env: "",
        flag: "",
        default: "3",
        meaning: "hard cap on cloud connections",
    },
    Setting {
        key: "cloud.pooler",
        env: "HYBRIDSYNC_POOLER",
        flag: "",
        default: "`direct`",
        meaning: "`direct`, or `pgbouncer-transaction` when `cloud_url` reaches PgBouncer in transaction pooling mode (unnamed statements, no session state, no `LISTEN` through it)",
    },
    Setting {
        key: "cloud.listen_url",
        env: "HYBRIDSYNC_LISTEN_URL",
        flag: "",
        default: "none",
        meaning: "a direct session to PostgreSQL for `LISTEN` (one per device) when `cloud_url` goes through a pooler; without it the device polls every `cloud.poll_interval_ms`",
    },
    Setting {
        key: "cloud.idle_in_transaction_timeout_ms",
        env: "",
        flag: "",
        default: "5000",
        meaning: "after a batch's upsert, the server ends the session if its transaction sits idle this long (a device gone before its COMMIT stops holding back the others' feed); 0 keeps the server's setting",
    },
    Setting {
        key: "cloud.poll_interval_ms",
        env: "",
        flag: "",
        default: "2000",
        meaning: "how often a device that cannot `LISTEN` looks for other devices' changes (the propagation delay it adds, at most)",
    },
    Setting {
        key: "sync.interval_secs",
        env: "",
        flag: "`serve --sync-interval`",
        default: "30",
        meaning: "seconds between drains when no write nudges one",
    },
    Setting {
        key: "sync.batch_size",
        env: "",
        flag: "",
        default: "50",
        meaning: "starting batch size (grows while fast, shrinks when slow)",
    },
    Setting {
        key: "sync.max_attempts",
        env: "",
        flag: "",
        default: "5",
        meaning: "attempts before an entry is parked as failed (kept, retryable)",
    },
    Setting {
        key: "encryption.key_file",
        env: "HYBRIDSYNC_ENCRYPTION_KEY_FILE",
        flag: "",
        default: "none",
        meaning: "the key that seals collections created `--encrypted` (32 raw bytes or 64 hex digits; keep it 0600)",
    },
    Setting {
        key: "encryption.previous_key_files",
        env: "",
        flag: "",
        default: "`[]`",
        meaning: "keys rotated out: they no longer seal, and still open rows they sealed",
    },
    Setting {
        key: "redis.url",
        env: "HYBRIDSYNC_REDIS_URL",
        flag: "",
        default: "none",
        meaning: "publish this instance's figures to Redis while it `serve`s, for `hybridsync top` (feature `redis`; the password is never shown)",
    },
    Setting {
        key: "redis.ttl_secs",
        env: "",
        flag: "",
        default: "3600",
        meaning: "seconds an instance's Redis keys outlive its last publish (a dead instance disappears)",
    },
];

impl Config {
    /// Overrides fields from `HYBRIDSYNC_DATA_DIR`, `HYBRIDSYNC_CLOUD_URL`,
    /// `HYBRIDSYNC_DURABILITY`, `HYBRIDSYNC_TENANT`, `HYBRIDSYNC_POOLER`,
    /// `HYBRIDSYNC_LISTEN_URL`, `HYBRIDSYNC_ENCRYPTION_KEY_FILE` and
    /// `HYBRIDSYNC_REDIS_URL` where they are set.
    pub fn with_env(mut self) -> Self {
        if let Some(dir) = std::env::var_os("HYBRIDSYNC_DATA_DIR") {
            self.data_dir = Some(dir.into());
        }
        if let Ok(url) = std::env::var("HYBRIDSYNC_CLOUD_URL") {
            self.cloud_url = Some(CloudUrl::new(url));
        }
        if let Ok(durability) = std::env::var("HYBRIDSYNC_DURABILITY") {
            self.durability = Some(durability);
        }
        if let Ok(tenant) = std::env::var("HYBRIDSYNC_TENANT") {
            self.cloud.tenant = Some(tenant);
        }
        if let Ok(pooler) = std::env::var("HYBRIDSYNC_POOLER") {
            self.cloud.pooler = Some(pooler);
        }
        if let Ok(url) = std::env::var("HYBRIDSYNC_LISTEN_URL") {
            self.cloud.listen_url = Some(CloudUrl::new(url));
        }
        if let Some(path) = std::env::var_os("HYBRIDSYNC_ENCRYPTION_KEY_FILE") {
            self.encryption.key_file = Some(path.into());
        }
        if let Ok(url) = std::env::var("HYBRIDSYNC_REDIS_URL") {
            self.redis.url = Some(CloudUrl::new(url));
        }
        self
    }
}
