//! Providers' delivery receipts: `POST /callbacks/twilio/status` (Twilio's status
//! callbacks, form-encoded, signed with `X-Twilio-Signature`) and `POST
//! /callbacks/http/status` (a documented JSON shape behind a bearer token).
//!
//! Neither takes an API key (a provider cannot send ours): the signature or the token is
//! the caller's proof. A callback that fails it is refused with 403 and changes nothing.
//! Interim statuses, duplicates and receipts that arrive late change nothing and answer
//! 200, so a provider never retries them; the answer says what the receipt did.

use bytes::Bytes;
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::json;
use subtle::ConstantTimeEq;
use verify_common::db::deliveries::ReceiptRecorded;
use verify_common::domain::receipt::TWILIO_RECEIPT_PATH;
use verify_common::domain::{DeliveryStatus, MessageId, Receipt, ReceiptErrorCode};
use warp::reply::Response;
use warp::{Filter, Rejection};

use super::extract;
use super::native::respond;
use crate::error::ApiError;
use crate::metrics::{ReceiptOutcome, ReceiptSource};
use crate::receipts::{accept, twilio_signature};
use crate::state::{AppState, with_state};

/// The generic JSON receipt.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpReceiptBody {
    message_id: String,
    status: HttpReceiptStatus,
    /// Only read for `undelivered`.
    #[serde(default)]
    error_code: Option<String>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum HttpReceiptStatus {
    Delivered,
    Undelivered,
}

pub(super) fn routes(
    state: AppState,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    let twilio = endpoint!(Receipt POST "callbacks" / "twilio" / "status")
        .and(extract::text_header("x-twilio-signature", || {
            ApiError::unreadable_header("invalid_header", "X-Twilio-Signature")
        }))
        .and(warp::query::raw().or(warp::any().map(String::new)).unify())
        .and(extract::bounded_body())
        .and(with_state(state.clone()))
        .then(twilio_status)
        .map(respond);
    let http = endpoint!(Receipt POST "callbacks" / "http" / "status")
        .and(http_receipt_caller(state.clone()))
        .and(extract::json())
        .and(with_state(state))
        .then(http_status)
        .map(respond);
    twilio.or(http).unify()
}

fn not_configured(setting: &str) -> ApiError {
    ApiError::Forbidden {
        code: "receipts_not_configured",
        message: format!("this deployment accepts no such receipts: {setting} is not set"),
    }
}

fn same_secret(presented: &str, expected: &str) -> bool {
    presented.as_bytes().ct_eq(expected.as_bytes()).into()
}

async fn twilio_status(
    signature: Option<String>,
    query: String,
    body: Bytes,
    state: AppState,
) -> Result<Response, ApiError> {
    let keys = &state.receipt_keys;
    let token = keys
        .twilio_auth_token
        .as_ref()
        .ok_or_else(|| not_configured("VERIFY_TWILIO_AUTH_TOKEN"))?;
    let params: Vec<(String, String)> = serde_urlencoded::from_bytes(&body).map_err(|e| {
        ApiError::invalid(
            "invalid_form",
            "body",
            format!("the body is not form-encoded: {e}"),
        )
    })?;
    // The URL Twilio was given, which is what it signs: never the Host header, which the
    // caller chooses.
    let mut url = format!("{}{TWILIO_RECEIPT_PATH}", keys.public_url);
    if !query.is_empty() {
        url = format!("{url}?{query}");
    }
    let expected = twilio_signature(token.expose_secret().as_bytes(), &url, &params);
    if !signature.is_some_and(|presented| same_secret(presented.trim(), &expected)) {
        return Err(ApiError::Forbidden {
            code: "invalid_signature",
            message: "X-Twilio-Signature is missing or does not match this request".to_owned(),
        });
    }
    let field = |name: &str| {
        params
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    };
    let required = |name: &'static str| {
        field(name)
            .ok_or_else(|| ApiError::invalid("missing_field", name, format!("{name} is required")))
    };
    let message_id = MessageId::parse(required("MessageSid")?)
        .map_err(|e| ApiError::invalid("invalid_message_id", "MessageSid", e))?;
    let receipt = match required("MessageStatus")? {
        "delivered" => Receipt::delivered(message_id),
        "undelivered" | "failed" => Receipt::undelivered(
            message_id,
            ReceiptErrorCode::parse(field("ErrorCode").unwrap_or_default())
                .map_err(|e| ApiError::invalid("invalid_error_code", "ErrorCode", e))?,
        ),
        // queued, sending, sent, accepted, read…: not final, so nothing to record.
        _ => return Ok(answer(&state, ReceiptSource::Twilio, None)),
    };
    let recorded = accept(&state.pool, &receipt).await?;
    Ok(answer(&state, ReceiptSource::Twilio, Some(recorded)))
}

/// Authenticates a generic receipt before its body is read: 401 without a bearer token,
/// 403 with a wrong one.
fn http_receipt_caller(state: AppState) -> impl Filter<Extract = (), Error = Rejection> + Clone {
    extract::bearer_token()
        .and(with_state(state))
        .and_then(|presented: Option<String>, state: AppState| async move {
            let expected = state
                .receipt_keys
                .http_token
                .as_ref()
                .ok_or_else(|| extract::refuse(not_configured("VERIFY_HTTP_RECEIPT_TOKEN")))?;
            let presented = presented.ok_or_else(|| {
                extract::refuse(ApiError::Unauthorized(
                    "send the receipt token as Authorization: Bearer <token>",
                ))
            })?;
            if same_secret(&presented, expected.expose_secret()) {
                Ok(())
            } else {
                Err(extract::refuse(ApiError::Forbidden {
                    code: "invalid_receipt_token",
                    message: "the receipt token does not match".to_owned(),
                }))
            }
        })
        .untuple_one()
}

async fn http_status(body: HttpReceiptBody, state: AppState) -> Result<Response, ApiError> {
    let message_id = MessageId::parse(&body.message_id)
        .map_err(|e| ApiError::invalid("invalid_message_id", "message_id", e))?;
    let receipt = match body.status {
        HttpReceiptStatus::Delivered => Receipt::delivered(message_id),
        HttpReceiptStatus::Undelivered => Receipt::undelivered(
            message_id,
            ReceiptErrorCode::parse(body.error_code.as_deref().unwrap_or_default())
                .map_err(|e| ApiError::invalid("invalid_error_code", "error_code", e))?,
        ),
    };
    let recorded = accept(&state.pool, &receipt).await?;
    Ok(answer(&state, ReceiptSource::Http, Some(recorded)))
}

/// 200 with what the receipt did: `changed`, `unchanged` (with the send's status),
/// `held` (no send has its message id yet) or `ignored` (not a final status); counted.
fn answer(state: &AppState, source: ReceiptSource, recorded: Option<ReceiptRecorded>) -> Response {
    let outcome = match recorded {
        None => ReceiptOutcome::Ignored,
        Some(ReceiptRecorded::Changed {
            status: DeliveryStatus::Delivered,
            ..
        }) => ReceiptOutcome::Delivered,
        Some(ReceiptRecorded::Changed { .. }) => ReceiptOutcome::Undelivered,
        Some(ReceiptRecorded::Unchanged { .. }) => ReceiptOutcome::Unchanged,
        Some(ReceiptRecorded::Held) => ReceiptOutcome::Held,
    };
    state.metrics.receipt(source, outcome);
    let body = match recorded {
        None => json!({ "outcome": "ignored" }),
        Some(ReceiptRecorded::Changed { status, .. }) => {
            json!({ "outcome": "changed", "status": status })
        }
        Some(ReceiptRecorded::Unchanged { status, .. }) => {
            json!({ "outcome": "unchanged", "status": status })
        }
        Some(ReceiptRecorded::Held) => json!({ "outcome": "held" }),
    };
    warp::reply::Reply::into_response(warp::reply::json(&body))
}
