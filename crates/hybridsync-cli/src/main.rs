//! The `hybridsync` command-line tool: manage a local store, inspect its outbox, and
//! run the voice-profile demo. Every command that writes returns as soon as the local
//! commit is done; none waits on the cloud.
#![forbid(unsafe_code)]

/// `println!` that reports a closed stdout (`hybridsync status --json | head`) as an
/// error, which `main` turns into a quiet exit, instead of panicking.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)
    }};
}

mod demo;
mod migrate;
mod replicate;
mod serve;
mod stats;
mod time;
mod top;
mod voiceprint;
mod watch;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use hybridsync::{Config, HybridStore, Metric, Precision, Priority, VectorSpec, WriteOptions};
use std::path::PathBuf;

/// Local-first persistence with background cloud sync.
#[derive(Debug, Parser)]
#[command(name = "hybridsync", version, about)]
struct Cli {
    /// Data directory [env: HYBRIDSYNC_DATA_DIR] [default: ./hybridsync-data]
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// Cloud PostgreSQL URL; without one the store runs local-only [env: HYBRIDSYNC_CLOUD_URL]
    #[arg(long, global = true)]
    cloud_url: Option<hybridsync::CloudUrl>,
    /// TOML configuration file (flags and environment override it)
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create or list collections
    #[command(subcommand)]
    Collections(CollectionsCommand),
    /// Bulk-import JSON Lines, SQLite or PostgreSQL rows (resumable after a crash,
    /// checked against the source, reversible with `migrate rollback`)
    #[command(subcommand)]
    Migrate(migrate::MigrateCommand),
    /// Write a JSON record (durable locally at once, queued for the cloud)
    Put {
        collection: String,
        key: String,
        /// The record, as JSON
        #[arg(long)]
        json: String,
        /// Comma-separated embedding, for vector collections
        #[arg(long)]
        embedding: Option<String>,
        #[arg(long, default_value = "normal")]
        priority: Priority,
    },
    /// Print a record's JSON
    Get { collection: String, key: String },
    /// List a collection's live keys in key order (one per line, or `--json` with
    /// each record's size and JSON value)
    List {
        collection: String,
        /// Only keys starting with this
        #[arg(long, default_value = "")]
        prefix: String,
        /// At most this many keys
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// Delete a record (a tombstone that reaches the cloud)
    Delete {
        collection: String,
        key: String,
        #[arg(long, default_value = "normal")]
        priority: Priority,
    },
    /// Nearest neighbours of an embedding
    Search {
        collection: String,
        /// Comma-separated query embedding
        #[arg(long)]
        embedding: String,
        #[arg(short, default_value_t = 5)]
        k: usize,
    },
    /// Records per collection, outbox depth, cloud configuration (`--watch`: a live
    /// dashboard, redrawn every second; q or Ctrl-C quits)
    Status {
        #[arg(long, conflicts_with = "watch")]
        json: bool,
        #[arg(long)]
        watch: bool,
    },
    /// Every live instance of the tenant, from Redis (`[redis] url` or
    /// HYBRIDSYNC_REDIS_URL; instances publish while they `serve`)
    Top {
        #[arg(long)]
        json: bool,
    },
    /// The voice-profile scenario: enrol speakers, authenticate by similarity search
    Demo(demo::DemoArgs),
    /// Run the background drain and the metrics endpoint until SIGINT or SIGTERM
    Serve {
        /// Address of the Prometheus `/metrics` endpoint
        #[arg(long, default_value = hybridsync::DEFAULT_METRICS_ADDR)]
        metrics_addr: std::net::SocketAddr,
        /// Seconds between drains when no write nudges one
        #[arg(long)]
        sync_interval: Option<f64>,
        /// Seconds between two-way syncs of every collection (0 turns auto-sync off)
        #[arg(long, default_value_t = 30.0)]
        auto_sync: f64,
    },
    /// Push every local record and collection definition to the cloud (one-way backup)
    Seed(replicate::Selection),
    /// Pull every remote record (and collection definition) into this store; resumes
    /// where an interrupted run stopped
    Hydrate(replicate::Selection),
    /// Pull remote changes (settling conflicts), then push local ones
    Sync {
        #[command(flatten)]
        selection: replicate::Selection,
        /// Conflict strategy: newest (by version), local or remote
        #[arg(long, default_value = "newest", value_parser = parse_strategy)]
        strategy: hybridsync::Strategy,
    },
    /// Ship the outbox to the cloud now; fails if anything is left when the timeout passes
    Flush {
        #[arg(long, default_value_t = 60.0)]
        timeout: f64,
    },
    /// Inspect and manage the outbox
    #[command(subcommand)]
    Queue(QueueCommand),
    /// Cloud administration
    #[command(subcommand)]
    Cloud(CloudCommand),
    /// Devices of this tenant in the cloud
    #[command(subcommand)]
    Devices(DevicesCommand),
    /// Client-side encryption keys
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Prove this device and the cloud hold the same data (a Merkle tree compared
    /// top-down); exits non-zero when differences remain
    Verify {
        #[command(flatten)]
        selection: replicate::Selection,
        /// Mend what differs (push device-newer rows, pull cloud-newer ones, settle damage)
        #[arg(long)]
        repair: bool,
        /// Also recompute every content hash from the stored bytes on both sides
        #[arg(long)]
        deep: bool,
        /// Check only this fraction (0-1] of the buckets, and estimate the rest
        #[arg(long, value_parser = parse_fraction)]
        sample: Option<f64>,
        /// Who wins when both sides hold intact, different content at one version
        #[arg(long, default_value = "newest", value_parser = parse_strategy)]
        strategy: hybridsync::Strategy,
        #[arg(long)]
        json: bool,
    },
}

/// A fraction in (0, 1].
fn parse_fraction(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(f) if f > 0.0 && f <= 1.0 => Ok(f),
        _ => Err(format!("{s:?} is not a fraction in (0, 1]")),
    }
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Write a new random key (64 hex digits, mode 0600) to a file that does not exist yet
    Generate { path: PathBuf },
    /// The ids of the keys this device holds (the one that seals first)
    List,
    /// Re-encrypt every encrypted collection under the current key: pull, rewrite each
    /// record as a new version, push. Keep the old key as a previous key until done
    Rotate,
}

#[derive(Debug, Subcommand)]
enum DevicesCommand {
    /// List devices (id, name, last seen as a UTC time and an age)
    List {
        /// As JSON (`last_seen_ms`: milliseconds since the Unix epoch)
        #[arg(long)]
        json: bool,
    },
    /// Register this device under a name (or rename it)
    Register { name: String },
    /// Remove a device from the list
    Deregister { id: String },
}

#[derive(Debug, Subcommand)]
enum QueueCommand {
    /// Entries per state and priority
    Stats,
    /// Move every failed entry back to pending
    RetryFailed,
    /// Delete failed entries (their changes will never reach the cloud)
    ClearFailed,
    /// Delete shipped entries older than the given age (history only)
    ClearDone {
        #[arg(long, default_value_t = 24.0)]
        older_than_hours: f64,
    },
}

#[derive(Debug, Subcommand)]
enum CloudCommand {
    /// Install or upgrade the cloud schema through --cloud-url (an administrative role)
    Migrate {
        /// Grant the sink's (non-owner) login role access, so row-level security applies to it
        #[arg(long)]
        grant: Option<String>,
        /// Also make the --grant role a member of this tenant (repeatable)
        #[arg(long = "tenant", value_name = "TENANT", requires = "grant")]
        tenants: Vec<String>,
    },
    /// Let a login role act for a tenant (through --cloud-url, an administrative role)
    Grant {
        role: String,
        #[arg(long)]
        tenant: String,
    },
    /// Take a tenant away from a login role
    Revoke {
        role: String,
        #[arg(long)]
        tenant: String,
    },
    /// List which login roles may act for which tenants
    Members,
}

#[derive(Debug, Subcommand)]
enum CollectionsCommand {
    /// Declare a collection (with --dim for a vector collection)
    Create {
        name: String,
        #[command(flatten)]
        spec: CollectionFlags,
    },
    /// List collections
    List,
}

/// A collection's spec, as `collections create` and `migrate --create` take it.
#[derive(Debug, clap::Args)]
struct CollectionFlags {
    /// Embedding dimension (a vector collection)
    #[arg(long)]
    dim: Option<usize>,
    #[arg(long, default_value = "cosine", requires = "dim")]
    metric: Metric,
    #[arg(long, default_value = "f32", requires = "dim")]
    precision: Precision,
    /// Encrypt payloads and embeddings on this device before they leave it
    /// (needs an encryption key to sync: [encryption] key_file)
    #[arg(long)]
    encrypted: bool,
}

impl CollectionFlags {
    /// Declares collection `name` with this spec (idempotent for the same spec).
    async fn create(&self, store: &HybridStore, name: &str) -> Result<()> {
        let vector = self
            .dim
            .map(|dim| VectorSpec::new(dim, self.metric, self.precision))
            .transpose()?;
        if self.encrypted {
            store.create_encrypted_collection(name, vector).await?;
        } else {
            store.create_collection(name, vector).await?;
        }
        Ok(())
    }
}

/// File, then environment, then flags.
fn load_config(cli: &Cli) -> Result<Config> {
    let mut config = match &cli.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?
        }
        None => Config::default(),
    }
    .with_env();
    if let Some(dir) = &cli.data_dir {
        config.data_dir = Some(dir.clone());
    }
    if let Some(url) = &cli.cloud_url {
        config.cloud_url = Some(url.clone());
    }
    Ok(config)
}

async fn open(config: &Config) -> Result<HybridStore> {
    let dir = config
        .data_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("hybridsync-data"));
    let store = HybridStore::builder(&dir).config(config)?.open().await;
    store.with_context(|| format!("opening the store in {}", dir.display()))
}

/// `hybridsync cloud ...`, through an administrative URL.
async fn cloud_admin(command: &CloudCommand, url: &hybridsync::CloudUrl) -> Result<()> {
    use hybridsync::cloud;
    match command {
        CloudCommand::Migrate { grant, tenants } => {
            cloud::migrate(url, grant.as_deref()).await?;
            for tenant in tenants {
                cloud::grant_tenant(url, grant.as_deref(), tenant).await?;
            }
            say!("cloud schema {} ready at {url}", cloud::SCHEMA_VERSION)?;
        }
        CloudCommand::Grant { role, tenant } => {
            cloud::grant_tenant(url, Some(role), tenant).await?;
            say!("{role} may act for tenant {tenant}")?;
        }
        CloudCommand::Revoke { role, tenant } => {
            let revoked = cloud::revoke_tenant(url, role, tenant).await?;
            say!(
                "{role} {} tenant {tenant}",
                if revoked {
                    "no longer acts for"
                } else {
                    "was not a member of"
                }
            )?;
        }
        CloudCommand::Members => {
            for member in cloud::tenant_members(url).await? {
                say!("{:<24} {}", member.tenant, member.role)?;
            }
        }
    }
    Ok(())
}

/// `hybridsync keys generate PATH`: a new key, readable by its owner only, never
/// replacing a file that exists.
fn generate_key(path: &std::path::Path) -> Result<()> {
    use std::io::Write;
    let (key, hex) = hybridsync::EncryptionKey::generate();
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(hex.as_bytes())
        .and_then(|()| file.write_all(b"\n"))
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", path.display()))?;
    say!("key {} written to {}", key.id(), path.display())?;
    Ok(())
}

/// `--strategy newest|local|remote` (the names are `Strategy`'s own).
fn parse_strategy(s: &str) -> Result<hybridsync::Strategy, String> {
    s.parse()
        .map_err(|_| format!("unknown strategy {s:?} (newest, local or remote)"))
}

fn parse_embedding(csv: &str) -> Result<Vec<f32>> {
    csv.split(',')
        .map(|v| {
            v.trim()
                .parse::<f32>()
                .with_context(|| format!("embedding component {v:?} is not a number"))
        })
        .collect()
}

/// `hybridsync list`: pages through the collection from the prefix on (keys sort as
/// bytes, so every key with the prefix follows the prefix itself) until `limit` keys
/// or the first key past the prefix.
async fn list(
    store: &HybridStore,
    collection: &str,
    prefix: &str,
    limit: usize,
    json: bool,
) -> Result<()> {
    const PAGE: usize = 500;
    let raw = store.raw(collection)?;
    let mut found: Vec<(String, Vec<u8>)> = Vec::new();
    if !prefix.is_empty() {
        if let Some(payload) = raw.get(prefix).await? {
            found.push((prefix.to_owned(), payload));
        }
    }
    let mut after = (!prefix.is_empty()).then(|| prefix.to_owned());
    'pages: while found.len() < limit {
        let page = raw
            .list(after.as_deref(), PAGE.min(limit - found.len()))
            .await?;
        let full = page.len() == PAGE.min(limit - found.len());
        for (key, payload) in page {
            if !key.as_str().starts_with(prefix) {
                break 'pages;
            }
            after = Some(key.as_str().to_owned());
            found.push((key.into(), payload));
        }
        if !full {
            break;
        }
    }
    if json {
        let rows: Vec<serde_json::Value> = found
            .iter()
            .map(|(key, payload)| {
                serde_json::json!({
                    "key": key,
                    "bytes": payload.len(),
                    "value": serde_json::from_slice::<serde_json::Value>(payload).ok(),
                })
            })
            .collect();
        say!("{}", serde_json::to_string_pretty(&rows)?)?;
    } else {
        for (key, _) in &found {
            say!("{key}")?;
        }
    }
    Ok(())
}

/// The exit status of a process whose reader went away (128 + SIGPIPE), as `ls | head`.
const CLOSED_PIPE: u8 = 141;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match real_main().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) if closed_pipe(&e) => std::process::ExitCode::from(CLOSED_PIPE),
        Err(e) => {
            eprintln!("error: {}", causes(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

/// Whether `e` is stdout closing under us (the reader of a pipe exited).
fn closed_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Every cause of `e` once, outermost first. Layers that wrap an error often repeat
/// their source's message in their own; a cause already said is not said again.
fn causes(e: &anyhow::Error) -> String {
    let mut said: Vec<String> = Vec::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !said.iter().any(|outer| outer.contains(&text)) {
            said.push(text);
        }
    }
    said.join(": ")
}

async fn real_main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let mut config = load_config(&cli)?;
    if let Command::Top { json } = &cli.command {
        return top::run(&config, *json).await;
    }
    // Only a long-running `serve` publishes to Redis: a one-shot command would leave
    // an instance behind that lived for a second.
    if !matches!(cli.command, Command::Serve { .. }) {
        config.redis.url = None;
    }
    match &cli.command {
        Command::Demo(args) => return demo::run(args, config).await,
        Command::Keys(KeysCommand::Generate { path }) => return generate_key(path),
        Command::Cloud(command) => {
            let url = config
                .cloud_url
                .clone()
                .context("cloud administration needs --cloud-url (or HYBRIDSYNC_CLOUD_URL)")?;
            return cloud_admin(command, &url).await;
        }
        Command::Serve {
            sync_interval,
            metrics_addr,
            auto_sync,
        } => {
            if let Some(secs) = sync_interval {
                config.sync.interval_secs = Some(*secs);
            }
            let auto_sync =
                std::time::Duration::try_from_secs_f64(*auto_sync).context("--auto-sync")?;
            // Listening before the open, which starts publishing to Redis: a SIGTERM
            // from then on is a clean stop that deregisters, never the default exit
            // that leaves the instance listed until its TTL runs out.
            let terminate = serve::terminate_signal()?;
            let store = open(&config).await?;
            let result = serve::run(&store, *metrics_addr, auto_sync, terminate).await;
            store.close().await;
            return result;
        }
        _ => {}
    }
    let store = open(&config).await?;
    let result = run(&cli.command, &store).await;
    store.close().await;
    result
}

async fn run(command: &Command, store: &HybridStore) -> Result<()> {
    match command {
        Command::Collections(CollectionsCommand::Create { name, spec }) => {
            spec.create(store, name).await?;
            if spec.encrypted {
                say!("collection {name} ready (encrypted before sync)")?;
            } else {
                say!("collection {name} ready")?;
            }
        }
        Command::Migrate(command) => migrate::run(store, command).await?,
        Command::Collections(CollectionsCommand::List) => {
            for spec in store.collections().await? {
                let encrypted = if spec.encrypted { "\tencrypted" } else { "" };
                match spec.vector {
                    Some(v) => say!(
                        "{}\tdim={} metric={} precision={}{encrypted}",
                        spec.name,
                        v.dim,
                        v.metric,
                        v.precision
                    )?,
                    None => say!("{}{encrypted}", spec.name)?,
                }
            }
        }
        Command::Keys(KeysCommand::List) => {
            let status = store.status().await?;
            match status.key_ids.split_first() {
                None => bail!(
                    "no encryption key is configured ([encryption] key_file or HYBRIDSYNC_ENCRYPTION_KEY_FILE)"
                ),
                Some((current, previous)) => {
                    say!("{current}\tcurrent")?;
                    for id in previous {
                        say!("{id}\tprevious")?;
                    }
                }
            }
        }
        Command::Verify {
            selection,
            repair,
            deep,
            sample,
            strategy,
            json,
        } => replicate::verify(store, selection, *repair, *deep, *sample, *strategy, *json).await?,
        Command::Keys(KeysCommand::Rotate) => {
            replicate::run(
                store,
                replicate::Operation::Reencrypt,
                &replicate::Selection::default(),
            )
            .await?;
        }
        Command::Put {
            collection,
            key,
            json,
            embedding,
            priority,
        } => {
            let value: serde_json::Value =
                serde_json::from_str(json).context("--json is not valid JSON")?;
            let mut options = WriteOptions::default().priority(*priority);
            if let Some(csv) = embedding {
                options = options.embedding(parse_embedding(csv)?);
            }
            let version = store
                .raw(collection)?
                .put(key, serde_json::to_vec(&value)?, options)
                .await?;
            say!("stored {collection}/{key} at version {version}")?;
        }
        Command::Get { collection, key } => match store.raw(collection)?.get(key).await? {
            Some(bytes) => match std::str::from_utf8(&bytes) {
                Ok(text) => say!("{text}")?,
                Err(_) => bail!(
                    "{collection}/{key} holds {} bytes of binary (typed) payload, not JSON",
                    bytes.len()
                ),
            },
            None => bail!("no record {collection}/{key}"),
        },
        Command::List {
            collection,
            prefix,
            limit,
            json,
        } => list(store, collection, prefix, *limit, *json).await?,
        Command::Delete {
            collection,
            key,
            priority,
        } => {
            let version = store.raw(collection)?.delete(key, *priority).await?;
            say!("deleted {collection}/{key} at version {version}")?;
        }
        Command::Search {
            collection,
            embedding,
            k,
        } => {
            for hit in store
                .raw(collection)?
                .search(&parse_embedding(embedding)?, *k)
                .await?
            {
                say!("{}\t{:.6}", hit.key, hit.distance)?;
            }
        }
        Command::Status { watch: true, .. } => watch::run(store).await?,
        Command::Status { json, .. } => {
            let status = store.status().await?;
            // A short timeout: status must answer promptly when the cloud is down.
            let reachable = store
                .cloud_reachable(std::time::Duration::from_secs(2))
                .await;
            let sync = store.sync_status();
            if *json {
                say!(
                    "{}",
                    serde_json::to_string_pretty(&stats::status_json(
                        &status,
                        reachable,
                        sync.as_ref()
                    ))?
                )?;
            } else {
                print!("{}", stats::status_text(&status, reachable, sync.as_ref()));
            }
        }
        Command::Queue(QueueCommand::Stats) => {
            let outbox = store.status().await?.outbox;
            say!(
                "pending {}  in_flight {}  failed {}  done {}",
                outbox.pending,
                outbox.in_flight,
                outbox.failed,
                outbox.done
            )?;
            for (priority, n) in &outbox.by_priority {
                say!("  {priority:<9} {n}")?;
            }
        }
        Command::Queue(QueueCommand::RetryFailed) => say!(
            "{} failed entries back to pending",
            store.retry_failed().await?
        )?,
        Command::Queue(QueueCommand::ClearFailed) => say!(
            "cleared {} failed entries; their changes will not reach the cloud",
            store.clear_failed().await?
        )?,
        Command::Seed(selection) => {
            replicate::run(store, replicate::Operation::Seed, selection).await?
        }
        Command::Hydrate(selection) => {
            replicate::run(store, replicate::Operation::Hydrate, selection).await?
        }
        Command::Sync {
            selection,
            strategy,
        } => replicate::run(store, replicate::Operation::Sync(*strategy), selection).await?,
        Command::Queue(QueueCommand::ClearDone { older_than_hours }) => {
            let age = std::time::Duration::try_from_secs_f64(older_than_hours * 3600.0)
                .context("--older-than-hours")?;
            say!(
                "cleared {} shipped entries older than {older_than_hours} h",
                store.clear_completed(age).await?
            )?;
        }
        Command::Flush { timeout } => {
            store
                .verify_cloud_schema()
                .await
                .context("the cloud is not ready (run `hybridsync cloud migrate`)")?;
            let timeout = std::time::Duration::try_from_secs_f64(*timeout).context("--timeout")?;
            let left = store.flush(timeout).await?;
            if left > 0 {
                bail!("{left} outbox entries still pending or in flight after {timeout:?}");
            }
            say!("outbox flushed: nothing pending")?;
        }
        Command::Devices(DevicesCommand::List { json }) => {
            let this = store.device_id();
            let now = time::now_ms();
            let devices = store.devices().await?;
            if *json {
                let rows: Vec<serde_json::Value> = devices
                    .iter()
                    .map(|d| {
                        serde_json::json!({
                            "id": d.id.to_string(),
                            "name": d.name,
                            "last_seen_ms": d.last_seen_ms,
                            "this_device": d.id == this,
                        })
                    })
                    .collect();
                say!("{}", serde_json::to_string_pretty(&rows)?)?;
                return Ok(());
            }
            for device in devices {
                let marker = if device.id == this {
                    " (this device)"
                } else {
                    ""
                };
                say!(
                    "{}\t{}\tlast seen {} ({}){marker}",
                    device.id,
                    device.name,
                    time::utc(device.last_seen_ms),
                    time::age(device.last_seen_ms, now)
                )?;
            }
        }
        Command::Devices(DevicesCommand::Register { name }) => {
            store.register_device(name).await?;
            say!("registered {} as {name:?}", store.device_id())?;
        }
        Command::Devices(DevicesCommand::Deregister { id }) => {
            let id = hybridsync::DeviceId::parse_hex(id)?;
            if !store.deregister_device(id).await? {
                bail!("no device {id} is registered");
            }
            say!("deregistered {id}")?;
        }
        Command::Serve { .. }
        | Command::Demo(_)
        | Command::Top { .. }
        | Command::Cloud(_)
        | Command::Keys(KeysCommand::Generate { .. }) => {
            unreachable!("handled before opening the store")
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_cause_is_printed_once() {
        let e = anyhow::Error::new(std::io::Error::other("database or disk is full"))
            .context("sqlite write: database or disk is full")
            .context("local store: sqlite write: database or disk is full")
            .context("writing notes/k");
        assert_eq!(
            causes(&e),
            "writing notes/k: local store: sqlite write: database or disk is full"
        );
        let pipe = anyhow::Error::new(std::io::Error::from(std::io::ErrorKind::BrokenPipe))
            .context("printing");
        assert!(closed_pipe(&pipe) && !closed_pipe(&e));
    }
}
