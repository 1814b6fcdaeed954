//! The write checkers shared by the chaos schedules and the fleet: what every side
//! (a device, the cloud) holds at the end, held against every acknowledged operation.

use crate::ops::Ops;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Violations of the per-write invariants.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub(crate) struct Verdict {
    /// Invariant 1: acknowledged but absent, or an older value in its place.
    pub lost: u64,
    pub stale: u64,
    /// Invariant 2: a value carrying a version other than the one it was written with
    /// (a duplicated write).
    pub version_mismatches: u64,
    /// Invariant 3.
    pub resurrected: u64,
    /// A value no writer ever wrote, or a rogue device's value the cloud should refuse.
    pub unknown_values: u64,
    pub rogue_leaked: u64,
}

impl Verdict {
    pub(crate) fn violations(&self) -> u64 {
        self.lost
            + self.stale
            + self.version_mismatches
            + self.resurrected
            + self.unknown_values
            + self.rogue_leaked
    }
}

/// A row as a checker sees it: version, and the value unless it is a tombstone.
pub(crate) type Row = (String, Option<String>);
pub(crate) type State = BTreeMap<String, Row>;

/// The cloud's rows of `collection` for `tenant` (tombstones included), read as the
/// superuser at `admin_url`. A full server (the direct fleet) refuses even that now and
/// then, so it tries for half a minute.
pub(crate) async fn cloud_state(
    admin_url: &str,
    tenant: &str,
    collection: &str,
) -> anyhow::Result<State> {
    use sqlx::{Connection, Row as _};
    let mut tries = 0;
    let mut admin = loop {
        match sqlx::PgConnection::connect(admin_url).await {
            Ok(conn) => break conn,
            Err(_) if tries < 100 => {
                tries += 1;
                tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            }
            Err(e) => return Err(e.into()),
        }
    };
    let rows = sqlx::query(
        "SELECT key, hlc, origin, tombstone, payload FROM hs_records WHERE tenant = $1 AND collection = $2",
    )
    .bind(tenant)
    .bind(collection)
    .fetch_all(&mut admin)
    .await?;
    let _ = admin.close().await;
    Ok(rows
        .iter()
        .map(|r| {
            let origin: Vec<u8> = r.get(2);
            let payload: Vec<u8> = r.get(4);
            (r.get(0), row(r.get(1), &origin, r.get(3), &payload))
        })
        .collect())
}

pub(crate) fn row(packed: i64, origin: &[u8], tombstone: bool, payload: &[u8]) -> Row {
    let origin: String = origin.iter().map(|b| format!("{b:02x}")).collect();
    let value = (!tombstone).then(|| String::from_utf8_lossy(payload).into_owned());
    (format!("{packed:020}.{origin}"), value)
}

/// Checks one side's final state against the history. For each key, W is the newest
/// acknowledged operation; the final row must be at least as new as W (else an
/// acknowledged write was lost, went stale, or a delete was undone), and a value some
/// acknowledged put wrote must carry that put's version.
pub(crate) fn check_side(
    side: &str,
    state: &State,
    ops: &Ops,
    verdict: &mut Verdict,
    history: &mut String,
) {
    let mut flag = |counter: &mut u64, what: String| {
        *counter += 1;
        let _ = writeln!(history, "{side}: {what}");
    };
    for (key, row) in state {
        if let Some(value) = &row.1 {
            if ops.rogue_values.contains(value) {
                flag(
                    &mut verdict.rogue_leaked,
                    format!("ROGUE VALUE {key}={value}"),
                );
                continue;
            }
            let acked = ops.acked.get(key).into_iter().flatten();
            let mut versions = acked.filter(|(_, v)| v.as_ref() == Some(value));
            match versions.next() {
                Some((version, _)) if *version != row.0 => flag(
                    &mut verdict.version_mismatches,
                    format!(
                        "VERSION {key}={value} carries {} instead of {version}",
                        row.0
                    ),
                ),
                Some(_) => {}
                None if ops.maybe_put.get(key).is_some_and(|m| m.contains(value)) => {}
                None => flag(
                    &mut verdict.unknown_values,
                    format!("UNKNOWN VALUE {key}={value}"),
                ),
            }
        }
    }
    for (key, acked) in &ops.acked {
        let Some(newest) = acked.iter().max_by(|a, b| a.0.cmp(&b.0)) else {
            continue;
        };
        let stamp = &newest.0;
        match (&newest.1, state.get(key)) {
            (Some(value), None) => {
                flag(
                    &mut verdict.lost,
                    format!("LOST {key}={value} ({stamp}): no row"),
                );
            }
            // A tombstone older than the acknowledged put should have been replaced; a
            // newer one can only come from a delete whose outcome was unknown.
            (Some(value), Some((version, None)))
                if version < stamp || !ops.maybe_del.contains(key) =>
            {
                flag(
                    &mut verdict.lost,
                    format!("LOST {key}={value} ({stamp}): tombstone {version}"),
                );
            }
            (Some(value), Some((version, Some(found)))) if version < stamp => flag(
                &mut verdict.stale,
                format!("STALE {key}: {found} ({version}) instead of {value} ({stamp})"),
            ),
            (None, Some((version, Some(found)))) if version < stamp => flag(
                &mut verdict.resurrected,
                format!("RESURRECTED {key}={found} ({version}) over the delete at {stamp}"),
            ),
            _ => {}
        }
    }
}
