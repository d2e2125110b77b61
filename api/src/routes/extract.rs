//! Extractors shared by every route family (native `/v1` and PortaText): who is calling,
//! the JSON body, the `Idempotency-Key` and the ids in paths.
//!
//! Each extractor yields a typed value or refuses the request with an [`ApiError`] carried
//! in a [`Refusal`] rejection; each family turns refusals into its own error shape with
//! [`answering_refusals`], so handlers only ever see valid input. Routes apply them after
//! the path and method matched (an unknown path still answers 404, a wrong method 405) and
//! extract the [`Caller`] first, so a request without a valid key learns nothing more, not
//! even that its id or body is malformed. A header that is present but unreadable is
//! refused naming the header; it is never taken for an absent one.

use std::sync::Arc;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use uuid::Uuid;
use verify_common::domain::abuse::RuleId;
use verify_common::domain::{PhoneNumber, TemplateId, VerificationId};
use warp::reply::Response;
use warp::{Filter, Rejection};

use crate::auth::{ApiKeys, Caller};
use crate::body::{BODY_READ_TIMEOUT, MAX_BODY_BYTES, collect_limited, parse_json, require_json};
use crate::error::ApiError;
use crate::idempotency::{self, IdempotencyKey};
use crate::operations::verifications::phone_error;

/// A request refused by an extractor; the family's [`answering_refusals`] answers it.
#[derive(Debug)]
pub(super) struct Refusal(ApiError);

impl warp::reject::Reject for Refusal {}

pub(super) fn refuse(error: ApiError) -> Rejection {
    warp::reject::custom(Refusal(error))
}

/// Answers the refusals of `routes` with `answer` (the family's error shape) and passes
/// every other rejection on, so routing failures still reach the global handler.
pub(super) fn answering_refusals<F>(
    routes: F,
    answer: fn(&ApiError) -> Response,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone
where
    F: Filter<Extract = (Response,), Error = Rejection> + Clone,
{
    routes
        .recover(move |rejection: Rejection| async move {
            match rejection.find::<Refusal>() {
                Some(Refusal(error)) => Ok(answer(error)),
                None => Err(rejection),
            }
        })
        .unify()
}

/// A header value that is present but not visible ASCII text.
#[derive(Debug, Clone, Copy)]
struct Unreadable;

/// A header's text: `Ok(None)` when absent, `Err(Unreadable)` when it is not visible ASCII.
fn header_text(
    name: &'static str,
) -> impl Filter<Extract = (Result<Option<String>, Unreadable>,), Error = std::convert::Infallible> + Copy
{
    warp::header::optional::<String>(name)
        .map(Ok)
        .or_else(|_| async { Ok::<_, std::convert::Infallible>((Err(Unreadable),)) })
}

/// A header's text, `None` when absent; an unreadable value is refused with the error
/// `unreadable` builds, naming the header.
pub(super) fn text_header(
    name: &'static str,
    unreadable: fn() -> ApiError,
) -> impl Filter<Extract = (Option<String>,), Error = Rejection> + Copy {
    header_text(name).and_then(move |text: Result<Option<String>, Unreadable>| async move {
        text.map_err(|Unreadable| refuse(unreadable()))
    })
}

/// The authenticated caller. Refuses with 401 for a missing or unknown key, 400 for an
/// unreadable key header and 503 when the key store cannot be read.
pub(super) fn caller(
    keys: Arc<ApiKeys>,
) -> impl Filter<Extract = (Caller,), Error = Rejection> + Clone {
    header_text("x-api-key")
        .and(header_text("authorization"))
        .and_then(move |api_key, authorization| {
            let keys = Arc::clone(&keys);
            async move {
                let presented = presented_key(api_key, authorization).map_err(refuse)?;
                keys.authenticate(presented).await.map_err(refuse)
            }
        })
}

/// The key in `X-Api-Key`, else the token of `Authorization: Bearer`; `None` when neither
/// is sent (another authorization scheme carries no key of ours). Only the header that
/// carries the key is required to be readable.
fn presented_key(
    api_key: Result<Option<String>, Unreadable>,
    authorization: Result<Option<String>, Unreadable>,
) -> Result<Option<String>, ApiError> {
    match api_key {
        Ok(Some(key)) => Ok(Some(key.trim().to_owned())),
        Err(Unreadable) => Err(ApiError::unreadable_header("invalid_header", "X-Api-Key")),
        Ok(None) => match authorization {
            Err(Unreadable) => Err(ApiError::unreadable_header(
                "invalid_header",
                "Authorization",
            )),
            Ok(value) => Ok(value.and_then(|value| {
                let (scheme, token) = value.trim().split_once(' ')?;
                scheme
                    .eq_ignore_ascii_case("bearer")
                    .then(|| token.trim().to_owned())
            })),
        },
    }
}

/// A parsed JSON body and the bytes it was parsed from (idempotency hashes those).
#[derive(Debug)]
pub(super) struct JsonBody<T> {
    pub value: T,
    pub raw: Bytes,
}

/// The body, at most [`MAX_BODY_BYTES`], arriving within [`BODY_READ_TIMEOUT`].
pub(super) fn bounded_body() -> impl Filter<Extract = (Bytes,), Error = Rejection> + Copy {
    warp::body::stream().and_then(|stream| async move {
        collect_limited(stream, MAX_BODY_BYTES, BODY_READ_TIMEOUT)
            .await
            .map_err(refuse)
    })
}

/// The token of `Authorization: Bearer`, `None` when no bearer token is sent; an
/// unreadable header is refused naming it.
pub(super) fn bearer_token() -> impl Filter<Extract = (Option<String>,), Error = Rejection> + Copy {
    text_header("authorization", || {
        ApiError::unreadable_header("invalid_header", "Authorization")
    })
    .map(|value: Option<String>| {
        value.and_then(|value| {
            let (scheme, token) = value.trim().split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| token.trim().to_owned())
        })
    })
}

/// A JSON body of type `T` with its bytes. The Content-Type must be JSON or absent; an
/// empty body, malformed JSON or a wrong field is refused naming the field.
pub(super) fn json_with_raw<T>() -> impl Filter<Extract = (JsonBody<T>,), Error = Rejection> + Copy
where
    T: DeserializeOwned + Send + 'static,
{
    text_header("content-type", || {
        ApiError::unreadable_header("invalid_header", "Content-Type")
    })
    .and_then(|content_type: Option<String>| async move {
        require_json(content_type.as_deref()).map_err(refuse)
    })
    .untuple_one()
    .and(bounded_body())
    .and_then(|raw: Bytes| async move {
        parse_json(&raw)
            .map(|value| JsonBody { value, raw })
            .map_err(refuse)
    })
}

/// A JSON body of type `T`, as [`json_with_raw`] without the bytes.
pub(super) fn json<T>() -> impl Filter<Extract = (T,), Error = Rejection> + Copy
where
    T: DeserializeOwned + Send + 'static,
{
    json_with_raw().map(|body: JsonBody<T>| body.value)
}

/// A JSON body as PortaText's SDKs send it: any Content-Type, and an empty body means
/// `T::default()`.
pub(super) fn lenient_json<T>() -> impl Filter<Extract = (JsonBody<T>,), Error = Rejection> + Copy
where
    T: DeserializeOwned + Default + Send + 'static,
{
    bounded_body().and_then(|raw: Bytes| async move {
        let value = if raw.iter().all(u8::is_ascii_whitespace) {
            Ok(T::default())
        } else {
            parse_json(&raw)
        };
        value.map(|value| JsonBody { value, raw }).map_err(refuse)
    })
}

/// The `Idempotency-Key`, if sent. A key that is unreadable or not of the key's form is
/// refused with 400 `invalid_idempotency_key`: ignoring it would turn a client's retries
/// into duplicate verifications and duplicate SMS.
pub(super) fn idempotency_key()
-> impl Filter<Extract = (Option<IdempotencyKey>,), Error = Rejection> + Copy {
    text_header("idempotency-key", idempotency::invalid_key).and_then(
        |value: Option<String>| async move {
            value
                .as_deref()
                .map(IdempotencyKey::parse)
                .transpose()
                .map_err(refuse)
        },
    )
}

/// A verification id from the path, parsed once the caller is known: chain it after
/// [`caller`] with `.and_then(verification_id).untuple_one()`. The request's span names
/// it from then on.
///
/// # Errors
/// 400 `invalid_id` when the segment is not a UUID.
pub(super) async fn verification_id(
    raw: String,
    caller: Caller,
) -> Result<(Caller, VerificationId), Rejection> {
    Uuid::parse_str(&raw)
        .map(|id| {
            let id = VerificationId::from_uuid(id);
            crate::trace::record_verification(id);
            (caller, id)
        })
        .map_err(|_| {
            refuse(ApiError::invalid(
                "invalid_id",
                "id",
                "the verification id is not a UUID",
            ))
        })
}

/// A template id from the path, parsed once the caller is known (as [`verification_id`]).
///
/// # Errors
/// 400 `invalid_id` unless the segment is a positive integer.
pub(super) async fn template_id(
    raw: String,
    caller: Caller,
) -> Result<(Caller, TemplateId), Rejection> {
    raw.parse::<i64>()
        .ok()
        .and_then(|id| TemplateId::try_from(id).ok())
        .map(|id| (caller, id))
        .ok_or_else(|| {
            refuse(ApiError::invalid(
                "invalid_id",
                "id",
                "the template id must be a positive integer",
            ))
        })
}

/// An abuse rule id from the path, parsed once the caller is known (as
/// [`verification_id`]).
///
/// # Errors
/// 400 `invalid_rule_id` naming `id` when no rule could have this id.
pub(super) async fn rule_id(raw: String, caller: Caller) -> Result<(Caller, RuleId), Rejection> {
    RuleId::parse(&raw)
        .map(|id| (caller, id))
        .map_err(|e| refuse(ApiError::invalid("invalid_rule_id", "id", e)))
}

/// The numeric id of an allow-list entry or a block from the path, parsed once the caller
/// is known (as [`verification_id`]).
///
/// # Errors
/// 400 `invalid_id` unless the segment is a positive integer.
pub(super) async fn record_id(raw: String, caller: Caller) -> Result<(Caller, i64), Rejection> {
    raw.parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .map(|id| (caller, id))
        .ok_or_else(|| {
            refuse(ApiError::invalid(
                "invalid_id",
                "id",
                "the id must be a positive integer",
            ))
        })
}

/// A phone number from a PortaText path (`+` optional, also as `%2B`), parsed once the
/// caller is known (as [`verification_id`]).
///
/// warp hands path segments over as sent, still percent-encoded, and clients that build
/// URLs with an encoder send the `+` as `%2B`; the segment is decoded before parsing.
///
/// # Errors
/// 400 `invalid_phone_number` naming `number` when the segment is not valid
/// percent-encoding of UTF-8 text or not a valid number.
pub(super) async fn path_number(
    raw: String,
    caller: Caller,
) -> Result<(Caller, PhoneNumber), Rejection> {
    let decoded = percent_decoded(&raw).ok_or_else(|| {
        refuse(ApiError::invalid(
            "invalid_phone_number",
            "number",
            "the number in the path is not valid percent-encoding",
        ))
    })?;
    PhoneNumber::parse_international(&decoded)
        .map(|number| (caller, number))
        .map_err(|e| refuse(phone_error("number", &e)))
}

/// A path segment decoded, or `None` when a `%` is not followed by two hex digits or the
/// decoded bytes are not UTF-8 (the decoder would pass a malformed escape through as
/// text, which would then be reported as an odd character instead of a bad encoding).
fn percent_decoded(segment: &str) -> Option<String> {
    let well_formed = segment.split('%').skip(1).all(|after| {
        after
            .as_bytes()
            .get(..2)
            .is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit))
    });
    if !well_formed {
        return None;
    }
    percent_encoding::percent_decode_str(segment)
        .decode_utf8()
        .ok()
        .map(|text| text.into_owned())
}

#[cfg(test)]
mod tests {
    use super::percent_decoded;

    #[test]
    fn path_segments_are_percent_decoded_and_malformed_escapes_refused() {
        let cases = [
            ("14155550100", Some("14155550100")),
            ("%2B14155550100", Some("+14155550100")),
            ("%2b1%20415", Some("+1 415")),
            ("1415%2", None),
            ("1415%", None),
            ("%zz1415", None),
            ("%FF1415", None),
        ];
        let failures: Vec<String> = cases
            .iter()
            .filter(|(raw, want)| percent_decoded(raw).as_deref() != *want)
            .map(|(raw, want)| format!("{raw}: want {want:?}, got {:?}", percent_decoded(raw)))
            .collect();
        assert!(failures.is_empty(), "{failures:#?}");
    }
}
