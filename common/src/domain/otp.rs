//! One-time codes: how they are made, how they are checked, and how they stay out of storage.
//!
//! A code is never stored. Each verification gets a random 32-byte nonce from the OS
//! CSPRNG; the code is derived as HMAC-SHA256(server secret, verification id ‖ nonce) and
//! turned into decimal digits by rejection sampling, so every digit is uniform. The worker
//! re-derives it to render the SMS and the API re-derives it to check, so neither Postgres
//! nor RabbitMQ ever holds the code or anything that reveals it without the secret.

use std::fmt;
use std::time::Duration;

use hmac::{Hmac, Mac};
use rand::TryRngCore;
use rand::rngs::OsRng;
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use uuid::Uuid;

/// Length in bytes of the per-verification nonce.
pub const NONCE_LEN: usize = 32;

/// Shortest server secret accepted; shorter keys make the HMAC guessable offline.
pub const MIN_SECRET_LEN: usize = 16;

/// Fewest digits a code may have unless the operator allows weak codes.
pub const MIN_STRONG_LENGTH: u8 = 6;
/// Shortest lifetime a request may ask for.
pub const MIN_TTL: Duration = Duration::from_secs(60);
/// Longest lifetime a request may ask for unless the operator allows weak codes.
pub const MAX_STRONG_TTL: Duration = Duration::from_secs(600);
/// Longest lifetime a request may ask for when the operator allows weak codes.
pub const MAX_WEAK_TTL: Duration = Duration::from_secs(86_400);

/// Problems with codes or their configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OtpError {
    #[error("code length must be between 4 and 10 digits, got {0}")]
    InvalidLength(i64),
    #[error(
        "codes shorter than {MIN_STRONG_LENGTH} digits are allowed only where the operator \
         allows weak codes (VERIFY_ALLOW_WEAK_CODES=true), got {0}"
    )]
    WeakLength(i64),
    #[error("the lifetime must be between {} and {} seconds, got {seconds}{}",
        MIN_TTL.as_secs(),
        max.as_secs(),
        if *max == MAX_STRONG_TTL {
            " (longer lifetimes are allowed only where the operator allows weak codes, \
             VERIFY_ALLOW_WEAK_CODES=true)"
        } else {
            ""
        }
    )]
    InvalidTtl { seconds: i64, max: Duration },
    #[error("the server secret must be at least {MIN_SECRET_LEN} bytes long")]
    SecretTooShort,
    #[error("the operating system's random number generator failed: {0}")]
    RandomUnavailable(String),
    #[error("the stored nonce has {0} bytes instead of {NONCE_LEN}")]
    CorruptNonce(usize),
}

/// Number of digits in a code: 4 to 10.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OtpCodeLength(u8);

impl OtpCodeLength {
    /// The default used when a request does not ask for another length.
    pub const DEFAULT: Self = Self(6);

    /// # Errors
    /// [`OtpError::InvalidLength`] outside 4..=10.
    pub fn parse(len: i64) -> Result<Self, OtpError> {
        match u8::try_from(len) {
            Ok(n @ 4..=10) => Ok(Self(n)),
            _ => Err(OtpError::InvalidLength(len)),
        }
    }

    /// The length as a count of digits.
    pub fn get(self) -> u8 {
        self.0
    }
}

/// Lifetime, attempt budget and default length of codes, and whether requests may ask
/// for weak ones: fewer than [`MIN_STRONG_LENGTH`] digits or a lifetime over
/// [`MAX_STRONG_TTL`]. Only the operator can allow those; a request never can.
#[derive(Debug, Clone, Copy)]
pub struct OtpPolicy {
    pub code_length: OtpCodeLength,
    pub ttl: Duration,
    pub max_checks: u32,
    pub allow_weak_codes: bool,
}

impl OtpPolicy {
    /// The code length a request asked for.
    ///
    /// # Errors
    /// [`OtpError::InvalidLength`] outside 4..=10, [`OtpError::WeakLength`] under
    /// [`MIN_STRONG_LENGTH`] unless weak codes are allowed.
    pub fn requested_length(&self, digits: i64) -> Result<OtpCodeLength, OtpError> {
        let length = OtpCodeLength::parse(digits)?;
        if length.get() < MIN_STRONG_LENGTH && !self.allow_weak_codes {
            return Err(OtpError::WeakLength(digits));
        }
        Ok(length)
    }

    /// The lifetime a request asked for, in seconds.
    ///
    /// # Errors
    /// [`OtpError::InvalidTtl`] under [`MIN_TTL`] or over the longest allowed:
    /// [`MAX_STRONG_TTL`], or [`MAX_WEAK_TTL`] where weak codes are allowed.
    pub fn requested_ttl(&self, seconds: i64) -> Result<Duration, OtpError> {
        let max = if self.allow_weak_codes {
            MAX_WEAK_TTL
        } else {
            MAX_STRONG_TTL
        };
        match u64::try_from(seconds) {
            Ok(s) if (MIN_TTL.as_secs()..=max.as_secs()).contains(&s) => Ok(Duration::from_secs(s)),
            _ => Err(OtpError::InvalidTtl { seconds, max }),
        }
    }
}

/// The server key codes are derived from. `Debug` never prints it.
#[derive(Clone)]
pub struct CodeSecret(SecretString);

impl CodeSecret {
    /// # Errors
    /// [`OtpError::SecretTooShort`] when the key is shorter than [`MIN_SECRET_LEN`] bytes.
    pub fn parse(secret: SecretString) -> Result<Self, OtpError> {
        if secret.expose_secret().len() < MIN_SECRET_LEN {
            return Err(OtpError::SecretTooShort);
        }
        Ok(Self(secret))
    }

    fn mac(&self) -> Hmac<Sha256> {
        <Hmac<Sha256> as Mac>::new_from_slice(self.0.expose_secret().as_bytes())
            .expect("HMAC accepts keys of any length")
    }
}

impl fmt::Debug for CodeSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CodeSecret(<redacted>)")
    }
}

/// A fresh random nonce for a new verification.
///
/// # Errors
/// [`OtpError::RandomUnavailable`] if the OS CSPRNG cannot be read.
pub fn generate_nonce() -> Result<[u8; NONCE_LEN], OtpError> {
    let mut nonce = [0u8; NONCE_LEN];
    OsRng
        .try_fill_bytes(&mut nonce)
        .map_err(|e| OtpError::RandomUnavailable(e.to_string()))?;
    Ok(nonce)
}

/// A one-time code in plain digits. Exists only in memory, for rendering or comparing;
/// `Debug` and `Display` are redacted.
pub struct OtpCode(String);

impl OtpCode {
    /// Derives the code of one verification from the server secret and its nonce.
    ///
    /// # Errors
    /// [`OtpError::CorruptNonce`] when the stored nonce has the wrong size.
    pub fn derive(
        secret: &CodeSecret,
        verification_id: Uuid,
        nonce: &[u8],
        length: OtpCodeLength,
    ) -> Result<Self, OtpError> {
        if nonce.len() != NONCE_LEN {
            return Err(OtpError::CorruptNonce(nonce.len()));
        }
        let wanted = usize::from(length.get());
        let mut digits = String::with_capacity(wanted);
        // Each block yields ~31 digits on average; a second block is astronomically rare
        // but keeps the loop correct for any key.
        for block in 0u32.. {
            let mut mac = secret.mac();
            mac.update(b"verify-otp-v1");
            mac.update(verification_id.as_bytes());
            mac.update(nonce);
            mac.update(&block.to_be_bytes());
            for byte in mac.finalize().into_bytes() {
                // 250 is the largest multiple of 10 not above 256: rejecting bytes at or
                // above it keeps every digit exactly uniform (no modulo bias).
                if byte < 250 {
                    digits.push(char::from(b'0' + byte % 10));
                    if digits.len() == wanted {
                        return Ok(Self(digits));
                    }
                }
            }
        }
        unreachable!("the block counter cannot run out before enough digits are produced")
    }

    /// The digits, for rendering into the SMS body.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Compares a typed candidate with this code in constant time (for equal lengths; the
    /// length itself is public).
    pub fn matches(&self, candidate: &str) -> bool {
        let candidate = candidate.trim();
        candidate.len() == self.0.len() && bool::from(candidate.as_bytes().ct_eq(self.0.as_bytes()))
    }
}

impl fmt::Debug for OtpCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("OtpCode(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::{
        CodeSecret, MAX_STRONG_TTL, NONCE_LEN, OtpCode, OtpCodeLength, OtpError, OtpPolicy,
        generate_nonce,
    };
    use secrecy::SecretString;
    use uuid::Uuid;

    fn secret() -> CodeSecret {
        CodeSecret::parse(SecretString::from("a-test-secret-of-enough-length")).unwrap()
    }

    #[test]
    fn code_lengths_outside_four_to_ten_are_rejected() {
        for bad in [-1, 0, 3, 11, 300] {
            assert_eq!(OtpCodeLength::parse(bad), Err(OtpError::InvalidLength(bad)));
        }
        for good in 4..=10 {
            assert_eq!(OtpCodeLength::parse(good).unwrap().get() as i64, good);
        }
    }

    fn policy(allow_weak_codes: bool) -> OtpPolicy {
        OtpPolicy {
            code_length: OtpCodeLength::DEFAULT,
            ttl: MAX_STRONG_TTL,
            max_checks: 5,
            allow_weak_codes,
        }
    }

    #[test]
    fn requests_get_short_codes_and_long_lifetimes_only_where_the_operator_allows_them() {
        let strict = policy(false);
        for digits in [4, 5] {
            assert_eq!(
                strict.requested_length(digits),
                Err(OtpError::WeakLength(digits))
            );
            assert_eq!(
                policy(true).requested_length(digits).unwrap().get() as i64,
                digits
            );
        }
        for digits in [3, 11] {
            assert_eq!(
                policy(true).requested_length(digits),
                Err(OtpError::InvalidLength(digits))
            );
        }
        assert_eq!(strict.requested_length(6).unwrap().get(), 6);
        assert_eq!(strict.requested_ttl(600).unwrap().as_secs(), 600);
        assert_eq!(strict.requested_ttl(60).unwrap().as_secs(), 60);
        for seconds in [601, 86_400] {
            let error = strict.requested_ttl(seconds).unwrap_err();
            assert_eq!(
                error,
                OtpError::InvalidTtl {
                    seconds,
                    max: MAX_STRONG_TTL
                }
            );
            assert!(
                error.to_string().contains("VERIFY_ALLOW_WEAK_CODES"),
                "{error}"
            );
        }
        assert_eq!(
            policy(true).requested_ttl(86_400).unwrap().as_secs(),
            86_400
        );
        for seconds in [-1, 0, 59, 86_401] {
            assert!(policy(true).requested_ttl(seconds).is_err(), "{seconds}");
        }
    }

    #[test]
    fn short_secrets_are_rejected() {
        assert!(matches!(
            CodeSecret::parse(SecretString::from("short")),
            Err(OtpError::SecretTooShort)
        ));
    }

    #[test]
    fn the_same_inputs_derive_the_same_code_and_it_has_the_requested_digits() {
        let id = Uuid::new_v4();
        let nonce = generate_nonce().unwrap();
        for len in 4..=10 {
            let length = OtpCodeLength::parse(len).unwrap();
            let a = OtpCode::derive(&secret(), id, &nonce, length).unwrap();
            let b = OtpCode::derive(&secret(), id, &nonce, length).unwrap();
            assert_eq!(a.expose(), b.expose());
            assert_eq!(a.expose().len() as i64, len);
            assert!(a.expose().bytes().all(|c| c.is_ascii_digit()));
        }
    }

    #[test]
    fn a_different_secret_or_nonce_gives_a_different_code() {
        let id = Uuid::new_v4();
        let nonce = generate_nonce().unwrap();
        let len = OtpCodeLength::parse(10).unwrap();
        let base = OtpCode::derive(&secret(), id, &nonce, len).unwrap();
        let other_secret =
            CodeSecret::parse(SecretString::from("another-secret-value-xyz")).unwrap();
        let other = OtpCode::derive(&other_secret, id, &nonce, len).unwrap();
        let other_nonce = OtpCode::derive(&secret(), id, &generate_nonce().unwrap(), len).unwrap();
        assert_ne!(base.expose(), other.expose());
        assert_ne!(base.expose(), other_nonce.expose());
    }

    #[test]
    fn matching_accepts_only_the_exact_code() {
        let code = OtpCode::derive(
            &secret(),
            Uuid::new_v4(),
            &generate_nonce().unwrap(),
            OtpCodeLength::DEFAULT,
        )
        .unwrap();
        assert!(code.matches(code.expose()));
        assert!(code.matches(&format!(" {} ", code.expose())));
        assert!(!code.matches(""));
        assert!(!code.matches(&code.expose()[..5]));
        assert!(!code.matches(&format!("{}0", code.expose())));
        let mut wrong = code.expose().as_bytes().to_vec();
        wrong[0] = if wrong[0] == b'9' { b'0' } else { wrong[0] + 1 };
        assert!(!code.matches(std::str::from_utf8(&wrong).unwrap()));
    }

    #[test]
    fn digits_are_spread_evenly_over_many_codes() {
        let mut counts = [0u32; 10];
        let len = OtpCodeLength::parse(10).unwrap();
        for _ in 0..2_000 {
            let code = OtpCode::derive(&secret(), Uuid::new_v4(), &generate_nonce().unwrap(), len)
                .unwrap();
            for b in code.expose().bytes() {
                counts[usize::from(b - b'0')] += 1;
            }
        }
        // 20,000 digits: each expected 2,000; a biased generator drifts far beyond ±10 %.
        for (digit, count) in counts.iter().enumerate() {
            assert!(
                (1_800..=2_200).contains(count),
                "digit {digit} seen {count} times"
            );
        }
    }

    #[test]
    fn debug_never_shows_the_code() {
        let code = OtpCode::derive(
            &secret(),
            Uuid::new_v4(),
            &[7u8; NONCE_LEN],
            OtpCodeLength::DEFAULT,
        )
        .unwrap();
        assert_eq!(format!("{code:?}"), "OtpCode(<redacted>)");
        assert_eq!(format!("{:?}", secret()), "CodeSecret(<redacted>)");
    }

    #[test]
    fn a_nonce_of_the_wrong_size_is_reported_not_used() {
        let result = OtpCode::derive(
            &secret(),
            Uuid::new_v4(),
            &[1, 2, 3],
            OtpCodeLength::DEFAULT,
        );
        assert!(matches!(result, Err(OtpError::CorruptNonce(3))));
    }
}
