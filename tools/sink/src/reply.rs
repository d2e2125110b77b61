//! Building HTTP responses: every answer the sink gives is JSON, errors included.

use serde::Serialize;
use serde_json::json;
use warp::Reply;
use warp::http::StatusCode;
use warp::http::header::{HeaderValue, RETRY_AFTER};
use warp::reply::Response;

/// `value` as a JSON response with `status`.
pub(crate) fn json<T: Serialize>(status: StatusCode, value: &T) -> Response {
    warp::reply::with_status(warp::reply::json(value), status).into_response()
}

/// The sink's own error shape, `{"error": message}`, used everywhere but the Twilio route.
pub(crate) fn error(status: StatusCode, message: impl Into<String>) -> Response {
    json(status, &json!({ "error": message.into() }))
}

/// Adds `Retry-After` when there is one to advertise.
pub(crate) fn with_retry_after(mut response: Response, retry_after: Option<u64>) -> Response {
    if let Some(secs) = retry_after {
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(secs));
    }
    response
}

/// The status for a number already validated to be 400..=599.
pub(crate) fn status(code: u16) -> StatusCode {
    // Validation happens when settings are parsed; should an invalid value slip through,
    // a 503 is still a failure, which is what the caller asked for.
    StatusCode::from_u16(code).unwrap_or(StatusCode::SERVICE_UNAVAILABLE)
}

/// The standard reason phrase, for error messages on injected failures.
pub(crate) fn reason(status: StatusCode) -> &'static str {
    status.canonical_reason().unwrap_or("Provider failure")
}
