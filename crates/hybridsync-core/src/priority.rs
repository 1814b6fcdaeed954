//! Sync priority classes.

use crate::{Error, Result};

/// How urgently a change should reach the cloud. Drained highest first.
///
/// The discriminant is the storage code: lower is more urgent, so `Critical` sorts first.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Default,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    Critical = 0,
    High = 1,
    #[default]
    Normal = 2,
    Low = 3,
    Deferred = 4,
}

impl Priority {
    /// The storage code (0 = critical … 4 = deferred).
    pub fn code(self) -> i64 {
        self as i64
    }

    /// Inverse of [`Priority::code`].
    pub fn from_code(code: i64) -> Result<Self> {
        Self::ALL
            .get(usize::try_from(code).unwrap_or(usize::MAX))
            .copied()
            .ok_or_else(|| Error::Parse {
                what: "priority code",
                value: code.to_string(),
            })
    }

    /// Soft cap on queued entries per class (critical, high, normal, low, deferred).
    pub const SOFT_CAPS: [u64; 5] = [1000, 500, 200, 100, 50];

    /// The class a new entry takes given `queued` entries already in its class: one
    /// class lower when its class is at its soft cap. Critical is never downgraded, and
    /// nothing is ever dropped (deferred stays deferred).
    pub fn downgraded(self, queued: u64) -> Priority {
        match self {
            Priority::Critical | Priority::Deferred => self,
            _ if queued < Self::SOFT_CAPS[self as usize] => self,
            _ => Self::ALL[self as usize + 1],
        }
    }
}

crate::text::text_enum!(Priority, "priority", Critical => "critical", High => "high", Normal => "normal", Low => "low", Deferred => "deferred");
