//! Size limits applied to keys and payloads before anything is written.

/// Bounds on user input. Defaults suit voiceprints and notes; raise them deliberately.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest key, in UTF-8 bytes.
    pub max_key_bytes: usize,
    /// Largest encoded payload, in bytes.
    pub max_payload_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_key_bytes: 512,
            max_payload_bytes: 1 << 20,
        }
    }
}

impl Limits {
    /// Refuses a payload above [`Limits::max_payload_bytes`].
    pub fn check_payload(&self, payload: &[u8]) -> crate::Result<()> {
        if payload.len() > self.max_payload_bytes {
            return Err(crate::Error::PayloadTooLarge {
                size: payload.len(),
                limit: self.max_payload_bytes,
            });
        }
        Ok(())
    }
}
