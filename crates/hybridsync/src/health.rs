//! Liveness and readiness: [`HybridStore::health`], and (with `prometheus`) the
//! `/healthz` and `/readyz` probes of [`HybridStore::install_prometheus`].
//!
//! A local-first store is ready without its cloud: the cloud's state is reported, and
//! never fails readiness.

use crate::HybridStore;
use std::time::{Duration, SystemTime};

/// How long the readiness read of the local store may take before it counts as failed.
const READY_DEADLINE: Duration = Duration::from_secs(2);

/// What [`HybridStore::health`] found.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Health {
    /// The store is open (shutdown has not begun).
    pub live: bool,
    /// The store is open and a read of the local database answered within 2 s.
    pub ready: bool,
    /// Why the local read failed, when it did.
    pub store_error: Option<String>,
    /// The cloud as this process last saw it (`None` without one). Never part of
    /// `ready`.
    pub cloud: Option<CloudHealth>,
}

/// The cloud's side of [`Health`].
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct CloudHealth {
    /// `closed`, `half_open` or `open`.
    pub circuit: String,
    /// Whether the circuit is closed: the cloud answered as far as the drain knows.
    pub reachable: bool,
    /// Seconds since the cloud last answered (a health check or an acknowledged batch).
    pub last_contact_age_secs: Option<f64>,
    /// Seconds since the cloud last acknowledged a batch.
    pub last_sync_age_secs: Option<f64>,
}

fn age(at: Option<SystemTime>) -> Option<f64> {
    at.and_then(|at| SystemTime::now().duration_since(at).ok())
        .map(|d| d.as_secs_f64())
}

impl HybridStore {
    /// Liveness and readiness, for probes: the store must be open and answer a read of
    /// its database within 2 s. The cloud is reported and never fails readiness.
    pub async fn health(&self) -> Health {
        let live = !self.runtime().is_shut_down();
        let store_error = if live {
            match tokio::time::timeout(READY_DEADLINE, self.collections()).await {
                Ok(Ok(_)) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(_) => Some(format!(
                    "the local store did not answer within {READY_DEADLINE:?}"
                )),
            }
        } else {
            Some("the store is shut down".to_owned())
        };
        let cloud = self.sync_status().map(|s| CloudHealth {
            circuit: s.circuit.as_str().to_owned(),
            reachable: s.circuit == hybridsync_core::CircuitState::Closed,
            last_contact_age_secs: age(s.last_contact),
            last_sync_age_secs: age(s.last_success),
        });
        Health {
            live,
            ready: live && store_error.is_none(),
            store_error,
            cloud,
        }
    }

    /// Installs the global metrics recorder and serves, on `addr`, `GET /metrics`,
    /// `GET /healthz` (200 while this store is open, else 503) and `GET /readyz` (200
    /// while its database answers; the JSON body also reports the cloud, which never
    /// fails readiness). Returns the bound address (port 0 picks a free one). Call it
    /// once per process, inside a Tokio runtime. The probes hold the store weakly: they
    /// answer 503 once every handle is dropped.
    #[cfg(feature = "prometheus")]
    #[cfg_attr(docsrs, doc(cfg(feature = "prometheus")))]
    pub fn install_prometheus(
        &self,
        addr: std::net::SocketAddr,
    ) -> crate::Result<std::net::SocketAddr> {
        use hybridsync_telemetry::{Probe, ProbeAnswer, Probes};
        use std::sync::Arc;
        let weak = Arc::downgrade(&self.inner);
        let probe = |ready: bool| -> Probe {
            let weak = weak.clone();
            Arc::new(move || {
                let store = weak.upgrade().map(|inner| HybridStore { inner });
                Box::pin(async move {
                    let Some(store) = store else {
                        return ProbeAnswer {
                            ok: false,
                            body: "{\"status\":\"closed\"}\n".to_owned(),
                        };
                    };
                    // Liveness is only "open": a slow disk must not get the process
                    // restarted; readiness reads the database.
                    if !ready {
                        let ok = !store.runtime().is_shut_down();
                        let status = if ok { "ok" } else { "closed" };
                        return ProbeAnswer {
                            ok,
                            body: format!(
                                "{}\n",
                                serde_json::json!({ "status": status, "live": ok })
                            ),
                        };
                    }
                    let health = store.health().await;
                    let ok = health.ready;
                    let mut body = serde_json::json!({
                        "status": if ok { "ok" } else { "failing" },
                    });
                    if let (Some(map), Ok(serde_json::Value::Object(fields))) =
                        (body.as_object_mut(), serde_json::to_value(&health))
                    {
                        map.extend(fields);
                    }
                    ProbeAnswer {
                        ok,
                        body: format!("{body}\n"),
                    }
                })
            })
        };
        Ok(hybridsync_telemetry::install_prometheus_with(
            addr,
            Probes {
                live: probe(false),
                ready: probe(true),
            },
        )?)
    }
}
