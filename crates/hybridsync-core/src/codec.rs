//! The bincode codec for typed payloads.

use crate::{Error, Result};

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

/// Encodes a serde value with bincode (standard configuration).
pub fn encode_payload<T: serde::Serialize>(value: &T) -> Result<Vec<u8>> {
    bincode::serde::encode_to_vec(value, config()).map_err(|e| Error::Encode(e.to_string()))
}

/// Decodes a bincode payload, refusing trailing bytes so a payload written for another
/// type is not silently misread.
pub fn decode_payload<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    let decode_error = |reason: String| Error::Decode {
        type_name: std::any::type_name::<T>(),
        reason,
    };
    let (value, read) = bincode::serde::decode_from_slice(bytes, config())
        .map_err(|e| decode_error(e.to_string()))?;
    if read != bytes.len() {
        return Err(decode_error(format!(
            "{} trailing bytes",
            bytes.len() - read
        )));
    }
    Ok(value)
}
