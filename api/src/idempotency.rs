//! `Idempotency-Key`: a client may retry a start request safely. The same key with the same
//! body within 24 hours answers with the first request's verification and creates nothing;
//! the same key with another body is refused with 422.

use sha2::{Digest, Sha256};
use verify_common::db::idempotency::IdempotencyClaim;

use crate::auth::Caller;
use crate::error::ApiError;

/// The header, as named in error bodies.
pub(crate) const HEADER: &str = "Idempotency-Key";

/// A key as the client sent it: 1–255 visible ASCII characters without spaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IdempotencyKey(String);

impl IdempotencyKey {
    /// Accepts a header value of the key's form.
    ///
    /// # Errors
    /// 400 `invalid_idempotency_key` for an empty, overlong or non-printable key.
    pub(crate) fn parse(value: &str) -> Result<Self, ApiError> {
        let printable = value.bytes().all(|b| (0x21..=0x7e).contains(&b));
        if value.is_empty() || value.len() > 255 || !printable {
            return Err(invalid_key());
        }
        Ok(Self(value.to_owned()))
    }
}

/// The 400 for a key that is not of the key's form, or not readable as text at all.
pub(crate) fn invalid_key() -> ApiError {
    ApiError::InvalidHeader {
        code: "invalid_idempotency_key",
        header: HEADER.to_owned(),
        message: "the Idempotency-Key must be 1-255 printable ASCII characters without spaces"
            .to_owned(),
    }
}

/// Builds the claim for a request.
///
/// `route` distinguishes the API shapes (and, for PortaText, the number in the path); the
/// body is hashed in canonical form (keys sorted, no whitespace), so formatting does not
/// matter but every value does. An empty body hashes as JSON `null`.
///
/// # Errors
/// 400 `invalid_json` when the body is not JSON (callers have parsed it already, so only
/// a caller that skipped that step sees it).
pub(crate) fn claim(
    caller: Caller,
    key: IdempotencyKey,
    route: &str,
    body: &[u8],
) -> Result<IdempotencyClaim, ApiError> {
    let canonical: serde_json::Value = if body.iter().all(u8::is_ascii_whitespace) {
        serde_json::Value::Null
    } else {
        crate::body::parse_json(body)?
    };
    let mut hasher = Sha256::new();
    hasher.update(route.as_bytes());
    hasher.update([0]);
    hasher.update(canonical.to_string().as_bytes());
    Ok(IdempotencyClaim {
        scope: caller.key_hash,
        key: key.0,
        request_hash: hasher.finalize().into(),
    })
}

/// The 422 for a key reused with a different body.
pub(crate) fn key_reused() -> ApiError {
    ApiError::unprocessable(
        "idempotency_key_reused",
        HEADER,
        "this Idempotency-Key was used with a different request body",
    )
}

#[cfg(test)]
mod tests {
    use super::{IdempotencyKey, claim};
    use crate::auth::Caller;

    const CALLER: Caller = Caller {
        key_hash: [7; 32],
        key_id: None,
    };

    fn hash(route: &str, body: &str) -> [u8; 32] {
        let key = IdempotencyKey::parse("k1").unwrap();
        claim(CALLER, key, route, body.as_bytes())
            .unwrap()
            .request_hash
    }

    #[test]
    fn the_same_body_in_any_formatting_gives_the_same_hash() {
        let a = hash("v1", r#"{"to":"+1","x":1}"#);
        let b = hash("v1", r#"{ "x": 1, "to": "+1" }"#);
        let c = hash("v1", r#"{"to":"+2","x":1}"#);
        let d = hash("portatext", r#"{"to":"+1","x":1}"#);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, d);
    }

    #[test]
    fn an_empty_body_hashes_like_json_null() {
        assert_eq!(hash("portatext", ""), hash("portatext", "null"));
        assert_ne!(hash("portatext", ""), hash("portatext", "{}"));
    }

    #[test]
    fn malformed_keys_are_refused() {
        for bad in ["", "has space", &"x".repeat(256), "naïve", "tab\there"] {
            assert!(IdempotencyKey::parse(bad).is_err(), "{bad:?}");
        }
        assert!(IdempotencyKey::parse(&"x".repeat(255)).is_ok());
    }
}
