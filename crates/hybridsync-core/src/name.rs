//! Validated collection names and keys.

use crate::{Error, Limits, Result};
use std::fmt;

/// A collection name: an SQL-safe identifier of 1–63 bytes, `[a-z_][a-z0-9_]*`.
///
/// Names are also used as parts of SQL identifiers and file names, so only this
/// conservative alphabet is accepted; anything else is refused, never escaped.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CollectionName(String);

impl CollectionName {
    /// The longest accepted name (PostgreSQL's identifier limit).
    pub const MAX_LEN: usize = 63;

    /// Validates `name`.
    pub fn new(name: impl Into<String>) -> Result<Self> {
        let name = name.into();
        let reason = if name.is_empty() {
            Some("must not be empty")
        } else if name.len() > Self::MAX_LEN {
            Some("must be at most 63 bytes")
        } else if !name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_') {
            Some("must start with a lowercase letter or underscore")
        } else if !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            Some("may contain only lowercase letters, digits and underscores")
        } else {
            None
        };
        match reason {
            Some(reason) => Err(Error::InvalidCollectionName { name, reason }),
            None => Ok(Self(name)),
        }
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for CollectionName {
    type Error = Error;
    fn try_from(value: String) -> Result<Self> {
        Self::new(value)
    }
}

impl From<CollectionName> for String {
    fn from(value: CollectionName) -> Self {
        value.0
    }
}

impl std::str::FromStr for CollectionName {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Self::new(s)
    }
}

impl fmt::Display for CollectionName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for CollectionName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// A record key: non-empty UTF-8 without control characters, bounded by
/// [`Limits::max_key_bytes`].
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Key(String);

impl Key {
    /// Validates `key` against the default [`Limits`].
    pub fn new(key: impl Into<String>) -> Result<Self> {
        Self::with_limits(key, &Limits::default())
    }

    /// Validates `key` against `limits`.
    pub fn with_limits(key: impl Into<String>, limits: &Limits) -> Result<Self> {
        let key = key.into();
        Self::check(&key, limits)?;
        Ok(Self(key))
    }

    /// Validates `key` as [`Self::with_limits`] does, without taking or copying it.
    pub fn check(key: &str, limits: &Limits) -> Result<()> {
        let len = key.len();
        if key.is_empty() {
            return Err(Error::InvalidKey {
                len,
                reason: "must not be empty",
            });
        }
        if len > limits.max_key_bytes {
            return Err(Error::InvalidKey {
                len,
                reason: "longer than the key limit",
            });
        }
        if key.chars().any(char::is_control) {
            return Err(Error::InvalidKey {
                len,
                reason: "must not contain control characters",
            });
        }
        Ok(())
    }

    /// The key as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Key {
    type Error = Error;
    fn try_from(value: String) -> Result<Self> {
        Self::new(value)
    }
}

impl From<Key> for String {
    fn from(value: Key) -> Self {
        value.0
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}
