//! `Idempotency-Key`: a client may retry a start request safely. The same key with the same
//! body within 24 hours answers with the first request's verification and creates nothing;
//! the same key with another body is refused with 422.

use sha2::{Digest, Sha256};
use verify_common::db::verifications::IdempotencyClaim;

use crate::auth::Caller;
use crate::error::ApiError;

/// The header, as named in error bodies.
pub const HEADER: &str = "Idempotency-Key";

/// Builds the claim for a request, or `None` without the header.
///
/// `route` distinguishes the API shapes (and, for PortaText, the number in the path); the
/// body is hashed in canonical form (keys sorted, no whitespace), so formatting does not
/// matter but every value does.
///
/// # Errors
/// 400 `invalid_idempotency_key` for an empty, overlong or non-printable key.
pub fn claim(
    caller: Caller,
    header: Option<String>,
    route: &str,
    body: &serde_json::Value,
) -> Result<Option<IdempotencyClaim>, ApiError> {
    let Some(key) = header else {
        return Ok(None);
    };
    let printable = key.bytes().all(|b| (0x21..=0x7e).contains(&b));
    if key.is_empty() || key.len() > 255 || !printable {
        return Err(ApiError::invalid(
            "invalid_idempotency_key",
            HEADER,
            "the Idempotency-Key must be 1-255 printable ASCII characters without spaces",
        ));
    }
    let mut hasher = Sha256::new();
    hasher.update(route.as_bytes());
    hasher.update([0]);
    hasher.update(body.to_string().as_bytes());
    Ok(Some(IdempotencyClaim {
        scope: caller.key_hash,
        key,
        request_hash: hasher.finalize().into(),
    }))
}

/// The 422 for a key reused with a different body.
pub fn key_reused() -> ApiError {
    ApiError::unprocessable(
        "idempotency_key_reused",
        HEADER,
        "this Idempotency-Key was used with a different request body",
    )
}

#[cfg(test)]
mod tests {
    use super::claim;
    use crate::auth::Caller;
    use serde_json::json;

    const CALLER: Caller = Caller { key_hash: [7; 32] };

    #[test]
    fn the_same_body_in_any_formatting_gives_the_same_hash() {
        let a = claim(
            CALLER,
            Some("k1".into()),
            "v1",
            &serde_json::from_str(r#"{"to":"+1","x":1}"#).unwrap(),
        )
        .unwrap()
        .unwrap();
        let b = claim(
            CALLER,
            Some("k1".into()),
            "v1",
            &serde_json::from_str(r#"{ "x": 1, "to": "+1" }"#).unwrap(),
        )
        .unwrap()
        .unwrap();
        let c = claim(
            CALLER,
            Some("k1".into()),
            "v1",
            &json!({"to": "+2", "x": 1}),
        )
        .unwrap()
        .unwrap();
        let d = claim(
            CALLER,
            Some("k1".into()),
            "portatext",
            &json!({"to": "+1", "x": 1}),
        )
        .unwrap()
        .unwrap();
        assert_eq!(a.request_hash, b.request_hash);
        assert_ne!(a.request_hash, c.request_hash);
        assert_ne!(a.request_hash, d.request_hash);
    }

    #[test]
    fn malformed_keys_are_refused_and_no_header_means_no_claim() {
        for bad in ["", "has space", &"x".repeat(256), "naïve"] {
            assert!(
                claim(CALLER, Some(bad.to_owned()), "v1", &json!({})).is_err(),
                "{bad:?}"
            );
        }
        assert!(claim(CALLER, None, "v1", &json!({})).unwrap().is_none());
    }
}
