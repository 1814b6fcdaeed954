//! Events broadcast by the engine.

use crate::{CollectionName, Hlc, Key};

/// Which sync operation an event belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncOperation {
    Drain,
    Seed,
    Hydrate,
    Sync,
    /// Rewriting encrypted collections under the current key (a key rotation).
    Reencrypt,
}

crate::text::text_enum!(SyncOperation, "sync operation", Drain => "drain", Seed => "seed", Hydrate => "hydrate", Sync => "sync", Reencrypt => "reencrypt");

/// The circuit breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CircuitState {
    #[default]
    Closed,
    Open,
    HalfOpen,
}

crate::text::text_enum!(CircuitState, "circuit state", Closed => "closed", Open => "open", HalfOpen => "half_open" | "half-open");

impl CircuitState {
    /// The value of the `hybridsync_circuit_state` gauge: 0 closed, 1 half-open, 2 open.
    pub fn gauge_value(self) -> f64 {
        match self {
            CircuitState::Closed => 0.0,
            CircuitState::HalfOpen => 1.0,
            CircuitState::Open => 2.0,
        }
    }
}

/// Something that happened in the engine, for subscribers of its event stream.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum SyncEvent {
    SyncStarted {
        operation: SyncOperation,
    },
    SyncProgress {
        operation: SyncOperation,
        percent: f32,
        message: String,
    },
    SyncCompleted {
        operation: SyncOperation,
        records: u64,
    },
    SyncError {
        operation: SyncOperation,
        message: String,
    },
    ConflictDetected {
        collection: CollectionName,
        key: Key,
    },
    RecordSynced {
        collection: CollectionName,
        key: Key,
        version: Hlc,
    },
    RecordFailed {
        collection: CollectionName,
        key: Key,
        error: String,
    },
    CircuitStateChanged {
        from: CircuitState,
        to: CircuitState,
    },
    /// The consistency checker found a row that differs between the device and the
    /// cloud.
    InconsistencyFound {
        collection: CollectionName,
        key: Key,
        kind: crate::Difference,
    },
    /// The consistency checker mended a row.
    Repaired {
        collection: CollectionName,
        key: Key,
        kind: crate::Difference,
    },
}
