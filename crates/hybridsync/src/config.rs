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
/// [cache]
/// entries = 10000
/// bytes = 67108864
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

/// `[cache]`.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    pub entries: Option<usize>,
    pub bytes: Option<usize>,
}

impl Config {
    /// Overrides fields from `HYBRIDSYNC_DATA_DIR`, `HYBRIDSYNC_CLOUD_URL`,
    /// `HYBRIDSYNC_DURABILITY`, `HYBRIDSYNC_TENANT` and
    /// `HYBRIDSYNC_ENCRYPTION_KEY_FILE` and `HYBRIDSYNC_REDIS_URL` where they are set.
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
        if let Some(path) = std::env::var_os("HYBRIDSYNC_ENCRYPTION_KEY_FILE") {
            self.encryption.key_file = Some(path.into());
        }
        if let Ok(url) = std::env::var("HYBRIDSYNC_REDIS_URL") {
            self.redis.url = Some(CloudUrl::new(url));
        }
        self
    }
}
