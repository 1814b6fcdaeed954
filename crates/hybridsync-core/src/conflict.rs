//! Conflict resolution: what happens when a remote change meets a pending local one.

use crate::Record;

/// A remote change to a key that still has a pending local change.
#[derive(Debug, Clone, Copy)]
pub struct Conflict<'a> {
    pub local: &'a Record,
    pub remote: &'a Record,
}

/// What a resolver decided.
#[derive(Debug, Clone, PartialEq)]
pub enum Resolution {
    KeepLocal,
    KeepRemote,
    /// A merged state, written as a new version that reaches every device.
    Merged {
        payload: Vec<u8>,
        embedding: Option<Vec<f32>>,
    },
}

/// Decides conflicts for a collection. Implement it for a custom merge.
pub trait ConflictResolver: Send + Sync + std::fmt::Debug {
    fn resolve(&self, conflict: Conflict<'_>) -> Resolution;
}

/// The built-in strategies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Strategy {
    /// The higher HLC version wins (the default).
    #[default]
    NewestWins,
    LocalWins,
    RemoteWins,
}

crate::text::text_enum!(Strategy, "conflict strategy (newest, local or remote)", NewestWins => "newest" | "newest_wins", LocalWins => "local" | "local_wins", RemoteWins => "remote" | "remote_wins");

impl ConflictResolver for Strategy {
    fn resolve(&self, conflict: Conflict<'_>) -> Resolution {
        match self {
            Strategy::NewestWins if conflict.remote.version > conflict.local.version => {
                Resolution::KeepRemote
            }
            Strategy::NewestWins | Strategy::LocalWins => Resolution::KeepLocal,
            Strategy::RemoteWins => Resolution::KeepRemote,
        }
    }
}

/// Resolves a conflict with `resolver`, except that a tombstone newer than the other
/// side always wins: an older write never resurrects a delete, whatever the strategy.
pub fn resolve(conflict: Conflict<'_>, resolver: &dyn ConflictResolver) -> Resolution {
    let (local, remote) = (conflict.local, conflict.remote);
    if local.tombstone && local.version > remote.version {
        return Resolution::KeepLocal;
    }
    if remote.tombstone && remote.version > local.version {
        return Resolution::KeepRemote;
    }
    resolver.resolve(conflict)
}

/// Which side a settled conflict kept, for reports and events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResolutionKind {
    KeepLocal,
    KeepRemote,
    Merged,
}

impl ResolutionKind {
    /// The name in reports and metric labels: `keep_local`, `keep_remote`, `merged`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::KeepLocal => "keep_local",
            Self::KeepRemote => "keep_remote",
            Self::Merged => "merged",
        }
    }
}

impl From<&Resolution> for ResolutionKind {
    fn from(resolution: &Resolution) -> Self {
        match resolution {
            Resolution::KeepLocal => Self::KeepLocal,
            Resolution::KeepRemote => Self::KeepRemote,
            Resolution::Merged { .. } => Self::Merged,
        }
    }
}
