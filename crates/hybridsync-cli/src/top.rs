//! `hybridsync top`: every live instance of the tenant, as the Redis publisher left
//! them (`[redis] url`, `HYBRIDSYNC_REDIS_URL`).

use anyhow::{Context, Result};
use hybridsync::{Config, InstanceView};
use std::time::Duration;

/// How long reading Redis may take.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

pub(crate) async fn run(config: &Config, json: bool) -> Result<()> {
    let url = config
        .redis
        .url
        .as_ref()
        .context("top reads Redis: set [redis] url or HYBRIDSYNC_REDIS_URL")?;
    let tenant = config.cloud.tenant.as_deref().unwrap_or("default");
    let instances = hybridsync::redis_instances(url, tenant, READ_TIMEOUT).await?;
    if json {
        say!("{}", serde_json::to_string_pretty(&instances)?)?;
        return Ok(());
    }
    say!(
        "tenant {tenant}: {} live instance{} (redis {url})",
        instances.len(),
        if instances.len() == 1 { "" } else { "s" }
    )?;
    if instances.is_empty() {
        return Ok(());
    }
    say!(
        "{:<12} {:<20} {:>7} {:>8} {:>6} {:>6} {:<9} {:>5} {:>6} {:>8} {:>8} {:>6}",
        "DEVICE",
        "NAME",
        "PID",
        "UPTIME",
        "QUEUE",
        "FAILED",
        "CIRCUIT",
        "POOL",
        "HIT%",
        "SYNCED",
        "LASTSYNC",
        "SEEN"
    )?;
    for instance in &instances {
        say!("{}", row(instance))?;
    }
    Ok(())
}

fn row(i: &InstanceView) -> String {
    let text = |field: &str| i.gauges.get(field).cloned().unwrap_or_else(|| "-".into());
    let secs = |field: &str| {
        i.gauge::<f64>(field)
            .map_or_else(|| "-".to_owned(), crate::time::span)
    };
    let hit = i
        .gauge::<f64>("cache_hit_rate")
        .map_or_else(|| "-".to_owned(), |r| format!("{:.1}", r * 100.0));
    let pool = match text("circuit").as_str() {
        "none" => "-".to_owned(),
        _ => format!("{}/{}", text("pool_size"), text("pool_max")),
    };
    let mut name = text("name");
    name.truncate(20);
    format!(
        "{:<12} {:<20} {:>7} {:>8} {:>6} {:>6} {:<9} {:>5} {:>6} {:>8} {:>8} {:>6}",
        &i.device[..i.device.len().min(12)],
        name,
        text("pid"),
        secs("uptime_secs"),
        text("queue"),
        text("failed"),
        text("circuit"),
        pool,
        hit,
        text("synced"),
        secs("last_sync_age_secs"),
        crate::time::span(i.age_secs),
    )
}
