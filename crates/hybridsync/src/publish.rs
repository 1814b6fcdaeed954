//! The Redis publisher's place in the store (feature `redis`): started by `open` when
//! a Redis URL is configured, stopped (and its keys removed) by `shutdown`.

use crate::Result;
use hybridsync_core::CloudUrl;
use std::time::Duration;

/// What the store holds while it publishes.
#[cfg(feature = "redis")]
pub(crate) type Publisher = hybridsync_telemetry::RedisPublisher;
/// Without the feature there is never one.
#[cfg(not(feature = "redis"))]
pub(crate) type Publisher = std::convert::Infallible;

/// Where and how to publish.
#[derive(Debug, Clone)]
pub(crate) struct RedisTarget {
    pub(crate) url: CloudUrl,
    pub(crate) ttl: Duration,
}

/// Refuses a malformed URL (or, without the feature, any URL) before anything opens.
pub(crate) fn check(target: &RedisTarget) -> Result<()> {
    #[cfg(feature = "redis")]
    return Ok(hybridsync_telemetry::check_redis_url(&target.url)?);
    #[cfg(not(feature = "redis"))]
    Err(crate::Error::RedisUnavailable {
        url: target.url.redacted(),
    })
}

/// Starts publishing the runtime's snapshots as `device` of `tenant`.
#[cfg_attr(not(feature = "redis"), allow(unused_variables))]
pub(crate) fn start(
    target: &RedisTarget,
    tenant: &str,
    device: hybridsync_core::DeviceId,
    snapshots: tokio::sync::watch::Receiver<Option<hybridsync_telemetry::SyncMetrics>>,
) -> Result<Publisher> {
    #[cfg(not(feature = "redis"))]
    return check(target).map(|()| unreachable!("check refuses every URL without the feature"));
    #[cfg(feature = "redis")]
    {
        let instance = hybridsync_telemetry::Instance {
            tenant: tenant.to_owned(),
            device: device.to_string(),
            name: hybridsync_engine::default_device_name(device),
        };
        let options = hybridsync_telemetry::RedisOptions {
            ttl: target.ttl,
            ..Default::default()
        };
        Ok(Publisher::start(&target.url, instance, options, snapshots)?)
    }
}

/// Stops a publisher and removes its instance from Redis (bounded by its timeout).
pub(crate) async fn stop(publisher: Option<Publisher>) {
    #[cfg(feature = "redis")]
    if let Some(publisher) = publisher {
        publisher.stop().await;
    }
    #[cfg(not(feature = "redis"))]
    let _ = publisher;
}
