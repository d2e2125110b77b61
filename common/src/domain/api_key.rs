//! API keys: generated with the OS CSPRNG, shown once, stored only as a SHA-256 hash.

use rand::TryRngCore;
use rand::rngs::OsRng;
use sha2::{Digest, Sha256};

use super::otp::OtpError;

/// Prefix that makes keys recognisable in configuration and secret scanners.
pub const KEY_PREFIX: &str = "vk_";

/// The SHA-256 of a presented key, as stored. Keys carry 256 random bits, so a fast
/// unsalted hash is enough: there is nothing to brute-force.
pub fn hash_api_key(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// A new random key (`vk_` and 64 hex digits) and its hash.
///
/// # Errors
/// [`OtpError::RandomUnavailable`] if the OS CSPRNG cannot be read.
pub fn generate_api_key() -> Result<(String, [u8; 32]), OtpError> {
    let mut bytes = [0u8; 32];
    OsRng
        .try_fill_bytes(&mut bytes)
        .map_err(|e| OtpError::RandomUnavailable(e.to_string()))?;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let key = format!("{KEY_PREFIX}{hex}");
    let hash = hash_api_key(&key);
    Ok((key, hash))
}

#[cfg(test)]
mod tests {
    use super::{generate_api_key, hash_api_key};

    #[test]
    fn generated_keys_are_distinct_and_hash_to_what_is_returned() {
        let (a, hash_a) = generate_api_key().unwrap();
        let (b, _) = generate_api_key().unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with("vk_") && a.len() == 67);
        assert_eq!(hash_api_key(&a), hash_a);
    }
}
