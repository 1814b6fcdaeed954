//! Hybrid logical clocks: versions that are monotone, roughly wall-clock, and totally
//! ordered across devices.

use crate::MutexExt;
use crate::{Error, Result};
use std::fmt;
use std::sync::Mutex;

/// A device's identity: 16 random bytes, shown as 32 lowercase hex digits.
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, serde::Serialize, serde::Deserialize,
)]
pub struct DeviceId(pub [u8; 16]);

impl DeviceId {
    /// Parses 32 hex digits.
    pub fn parse_hex(s: &str) -> Result<Self> {
        let bad = || Error::Parse {
            what: "device id",
            value: s.to_owned(),
        };
        let bytes = crate::text::decode_hex(s).ok_or_else(bad)?;
        Ok(Self(bytes.try_into().map_err(|_| bad())?))
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceId({self})")
    }
}

/// A version stamp: physical milliseconds, a logical counter for events within the
/// same millisecond, and the origin device as the final tie-break.
///
/// The derived ordering compares the fields in that order, which is the HLC order.
#[derive(
    Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, serde::Serialize, serde::Deserialize,
)]
pub struct Hlc {
    pub physical_ms: u64,
    pub logical: u16,
    pub origin: DeviceId,
}

impl Hlc {
    /// Physical time fits in 47 bits (until the year 6429) so the pair packs into an `i64`.
    pub const MAX_PHYSICAL_MS: u64 = (1 << 47) - 1;

    /// `(physical_ms << 16) | logical`: one sortable integer for storage.
    pub fn packed(&self) -> i64 {
        ((self.physical_ms.min(Self::MAX_PHYSICAL_MS) << 16) | u64::from(self.logical)) as i64
    }

    /// Inverse of [`Hlc::packed`].
    pub fn from_packed(packed: i64, origin: DeviceId) -> Self {
        let packed = packed as u64;
        Self {
            physical_ms: packed >> 16,
            logical: (packed & 0xffff) as u16,
            origin,
        }
    }
}

impl fmt::Display for Hlc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}@{}", self.physical_ms, self.logical, self.origin)
    }
}

impl fmt::Debug for Hlc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hlc({self})")
    }
}

/// A source of physical time in milliseconds since the Unix epoch. Injectable so tests
/// can skew clocks.
pub trait Clock: Send + Sync + fmt::Debug {
    fn now_ms(&self) -> u64;
}

/// The system wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }
}

/// Issues strictly increasing [`Hlc`] stamps for one device.
///
/// Callers persist a high-water mark at or above every stamp they issue and pass it
/// back to [`HlcClock::new`] after a restart, so stamps stay monotone even when the
/// wall clock steps backwards.
#[derive(Debug)]
pub struct HlcClock<C: Clock = SystemClock> {
    clock: C,
    device: DeviceId,
    max_drift_ms: u64,
    last: Mutex<(u64, u16)>,
}

impl<C: Clock> HlcClock<C> {
    /// Default limit on how far a remote stamp may be ahead of the local clock.
    pub const DEFAULT_MAX_DRIFT_MS: u64 = 60_000;

    /// A clock for `device` that never issues a stamp at or below `high_water`.
    pub fn new(clock: C, device: DeviceId, high_water: Option<Hlc>, max_drift_ms: u64) -> Self {
        let last = high_water.map_or((0, 0), |h| (h.physical_ms, h.logical));
        Self {
            clock,
            device,
            max_drift_ms,
            last: Mutex::new(last),
        }
    }

    /// The device this clock stamps for.
    pub fn device(&self) -> DeviceId {
        self.device
    }

    /// The physical clock's current reading.
    pub fn physical_now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// A new stamp greater than every stamp issued or observed before.
    pub fn now(&self) -> Hlc {
        let wall = self.clock.now_ms();
        let mut last = self.last.lock_or_recover();
        let next = if wall > last.0 {
            (wall, 0)
        } else if last.1 == u16::MAX {
            (last.0 + 1, 0)
        } else {
            (last.0, last.1 + 1)
        };
        *last = next;
        Hlc {
            physical_ms: next.0,
            logical: next.1,
            origin: self.device,
        }
    }

    /// Merges a remote stamp so later local stamps order after it. Refuses a stamp more
    /// than the drift limit ahead of the local clock, so a device with a runaway clock
    /// cannot pin a key forever; nothing changes when it is refused.
    pub fn observe(&self, remote: Hlc) -> Result<()> {
        let wall = self.clock.now_ms();
        if remote.physical_ms > wall.saturating_add(self.max_drift_ms) {
            return Err(Error::ClockDrift {
                stamp_ms: remote.physical_ms,
                ahead_ms: remote.physical_ms - wall,
                max_drift_ms: self.max_drift_ms,
            });
        }
        let mut last = self.last.lock_or_recover();
        if (remote.physical_ms, remote.logical) > *last {
            *last = (remote.physical_ms, remote.logical);
        }
        Ok(())
    }
}

impl<C: Clock + ?Sized> Clock for std::sync::Arc<C> {
    fn now_ms(&self) -> u64 {
        (**self).now_ms()
    }
}

/// A clock that moves only when told to: for tests and clock-skew drills.
#[derive(Debug, Default)]
pub struct ManualClock(std::sync::atomic::AtomicU64);

impl ManualClock {
    /// A clock reading `start_ms`.
    pub fn new(start_ms: u64) -> Self {
        Self(std::sync::atomic::AtomicU64::new(start_ms))
    }

    /// Sets the reading (it may go backwards).
    pub fn set(&self, ms: u64) {
        self.0.store(ms, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}
