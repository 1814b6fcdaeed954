//! The operation history: what every writer process announced and acknowledged,
//! collected from their standard output.

use std::collections::{BTreeMap, BTreeSet};
use std::io::BufRead;
use std::sync::{Arc, Mutex};

/// One operation: a put of `value`, or a delete (`None`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Op {
    pub key: String,
    pub value: Option<String>,
}

/// Everything the writers of one schedule did.
#[derive(Debug, Default)]
pub(crate) struct Ops {
    /// Acknowledged operations per key, with their versions.
    pub acked: BTreeMap<String, Vec<(String, Option<String>)>>,
    /// Operations whose outcome is unknown (the writer died, or the call failed):
    /// puts by key and value, and keys with a delete in doubt.
    pub maybe_put: BTreeMap<String, BTreeSet<String>>,
    pub maybe_del: BTreeSet<String>,
    /// Values acknowledged by rogue devices (clock far ahead), which the cloud must refuse.
    pub rogue_values: BTreeSet<String>,
    pub invoked: u64,
    pub ok: u64,
    /// Calls that returned an error (the writer went on).
    pub failed: u64,
    /// Calls in progress when their writer died.
    pub unknown: u64,
    pub breaker_transitions: u64,
    /// The most cloud connections any writer process held open at once.
    pub max_pool: u64,
    /// The highest own-key index each device acknowledged, for restarts and the reader.
    pub highest: BTreeMap<String, u64>,
}

impl Ops {
    /// A rogue device's operations never count as possibly applied: the cloud must
    /// refuse them all.
    fn doubt(&mut self, op: Op, rogue: bool) {
        if rogue {
            self.rogue_values.extend(op.value);
            return;
        }
        match op.value {
            Some(value) => {
                self.maybe_put.entry(op.key).or_default().insert(value);
            }
            None => {
                self.maybe_del.insert(op.key);
            }
        }
    }

    /// An operation invoked and acknowledged in this process (the fleet's devices).
    #[allow(dead_code)] // the chaos binary reads writers' lines instead
    pub(crate) fn invoked_and_acknowledged(&mut self, device: &str, op: Op, version: String) {
        self.invoked += 1;
        self.acknowledge(device, op, version, false);
    }

    fn acknowledge(&mut self, device: &str, op: Op, version: String, rogue: bool) {
        self.ok += 1;
        if rogue {
            if let Some(value) = op.value {
                self.rogue_values.insert(value);
            }
            return;
        }
        if let Some(i) = op
            .key
            .strip_prefix(device)
            .and_then(|k| k.strip_prefix("-w"))
            .and_then(|i| i.parse().ok())
        {
            let highest = self.highest.entry(device.to_owned()).or_default();
            *highest = (*highest).max(i);
        }
        self.acked
            .entry(op.key)
            .or_default()
            .push((version, op.value));
    }
}

/// Reads a writer's lines into `ops` until its stdout closes. A writer has at most one
/// call in progress: a `try` not followed by its `ack` failed (the next `try` came) or
/// is unknown (the stream ended).
pub(crate) fn collect(
    stdout: impl std::io::Read,
    device: &str,
    rogue: bool,
    ops: &Arc<Mutex<Ops>>,
) {
    let mut pending: Option<Op> = None;
    for line in std::io::BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        let mut ops = ops.lock().unwrap_or_else(|e| e.into_inner());
        let parts: Vec<&str> = line.split(' ').collect();
        match parts.as_slice() {
            ["try", kind, key, rest @ ..] => {
                if let Some(op) = pending.take() {
                    ops.failed += 1;
                    ops.doubt(op, rogue);
                }
                ops.invoked += 1;
                let value = (*kind == "put").then(|| rest.first().map(|v| v.to_string()));
                pending = Some(Op {
                    key: key.to_string(),
                    value: value.flatten(),
                });
            }
            ["ack", _, _, .., version] => {
                if let Some(op) = pending.take() {
                    ops.acknowledge(device, op, version.to_string(), rogue);
                }
            }
            ["breaker", _, _] => ops.breaker_transitions += 1,
            ["pool", n] => ops.max_pool = ops.max_pool.max(n.parse().unwrap_or(0)),
            _ => {}
        }
    }
    if let Some(op) = pending {
        let mut ops = ops.lock().unwrap_or_else(|e| e.into_inner());
        ops.unknown += 1;
        ops.doubt(op, rogue);
    }
}
