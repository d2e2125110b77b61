//! Native verification routes under `/v1/verifications`.

use std::sync::Arc;

use chrono::Utc;
use serde::Deserialize;
use verify_common::domain::{
    OtpPolicy, PhoneNumber, Sender, TemplateLocale, TraceParent, Variables, VerificationId,
};
use warp::Filter;
use warp::http::StatusCode;
use warp::reply::{Reply, Response};

use super::extract::{self, JsonBody};
use super::native::respond;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::idempotency::{self, IdempotencyKey};
use crate::operations::templates::{template_error, variable_error};
use crate::operations::verifications::{
    self as ops, NumberCheck, StartRequest, client_signals, phone_error,
};
use crate::state::{AppState, with_state};
use crate::trace;
use crate::views::{RefusedCheckView, VerificationView};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    to: String,
    template_id: Option<i64>,
    locale: Option<String>,
    variables: Option<serde_json::Value>,
    from: Option<String>,
    code_length: Option<i64>,
    ttl_seconds: Option<i64>,
    client_ip: Option<String>,
    client_id: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckBody {
    code: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckByNumberBody {
    to: String,
    code: String,
}

pub(super) fn routes(
    state: AppState,
) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
    let caller = extract::caller(Arc::clone(&state.api_keys));
    let state = with_state(state);
    let create = endpoint!(Native POST "v1" / "verifications")
        .and(caller.clone())
        .and(state.clone())
        .and(extract::json_with_raw())
        .and(extract::idempotency_key())
        .and(trace::current())
        .then(create)
        .map(respond);
    let check_by_number = endpoint!(Native POST "v1" / "verifications" / "check")
        .and(caller.clone())
        .and(state.clone())
        .and(extract::json())
        .then(check_by_number)
        .map(respond);
    let get = endpoint!(Native GET "v1" / "verifications" / String)
        .and(caller.clone())
        .and_then(extract::verification_id)
        .untuple_one()
        .and(state.clone())
        .then(get)
        .map(respond);
    let events = endpoint!(Native GET "v1" / "verifications" / String / "events")
        .and(caller.clone())
        .and_then(extract::verification_id)
        .untuple_one()
        .and(state.clone())
        .then(events)
        .map(respond);
    let check = endpoint!(Native POST "v1" / "verifications" / String / "check")
        .and(caller.clone())
        .and_then(extract::verification_id)
        .untuple_one()
        .and(state.clone())
        .and(extract::json())
        .then(check_by_id)
        .map(respond);
    let resend = endpoint!(Native POST "v1" / "verifications" / String / "resend")
        .and(caller.clone())
        .and_then(extract::verification_id)
        .untuple_one()
        .and(state.clone())
        .and(trace::current())
        .then(resend)
        .map(respond);
    let cancel = endpoint!(Native POST "v1" / "verifications" / String / "cancel")
        .and(caller)
        .and_then(extract::verification_id)
        .untuple_one()
        .and(state)
        .then(cancel)
        .map(respond);
    create
        .or(check_by_number)
        .unify()
        .or(get)
        .unify()
        .or(events)
        .unify()
        .or(check)
        .unify()
        .or(resend)
        .unify()
        .or(cancel)
        .unify()
}

/// Validates the native create body into a start request; `otp` says how short a code
/// and how long a lifetime a request may ask for.
fn start_request(
    body: CreateBody,
    otp: &OtpPolicy,
    caller: Caller,
    trace: TraceParent,
) -> Result<StartRequest, ApiError> {
    Ok(StartRequest {
        to: PhoneNumber::parse(&body.to).map_err(|e| phone_error("to", &e))?,
        template_id: ops::body_template_id(body.template_id)?,
        locale: body
            .locale
            .as_deref()
            .map(TemplateLocale::parse)
            .transpose()
            .map_err(template_error)?,
        variables: body
            .variables
            .as_ref()
            .map(Variables::parse)
            .transpose()
            .map_err(variable_error)?
            .unwrap_or_default(),
        sender: body
            .from
            .as_deref()
            .map(Sender::parse)
            .transpose()
            .map_err(|e| ApiError::invalid("invalid_sender", "from", e))?,
        code_length: body
            .code_length
            .map(|digits| otp.requested_length(digits))
            .transpose()
            .map_err(|e| ApiError::invalid("invalid_code_length", "code_length", e))?,
        ttl: body
            .ttl_seconds
            .map(|seconds| otp.requested_ttl(seconds))
            .transpose()
            .map_err(|e| ApiError::invalid("invalid_ttl", "ttl_seconds", e))?,
        client: client_signals(body.client_ip.as_deref(), body.client_id.as_deref())?,
        api_key: caller.key_name(),
        trace,
    })
}

/// A 202 with a verification's JSON and its `Location`.
fn accepted(json: &serde_json::Value) -> Response {
    let mut response =
        warp::reply::with_status(warp::reply::json(json), StatusCode::ACCEPTED).into_response();
    if let Some(id) = json["id"].as_str()
        && let Ok(location) = format!("/v1/verifications/{id}").parse()
    {
        response.headers_mut().insert("location", location);
    }
    response
}

fn verification_reply(
    status: StatusCode,
    (verification, sends): (
        verify_common::db::verifications::VerificationRecord,
        Vec<verify_common::db::deliveries::DeliveryRecord>,
    ),
) -> Response {
    let json = view_json(&verification, &sends);
    if status == StatusCode::ACCEPTED {
        return accepted(&json);
    }
    warp::reply::with_status(warp::reply::json(&json), status).into_response()
}

async fn create(
    caller: Caller,
    state: AppState,
    body: JsonBody<CreateBody>,
    idempotency_key: Option<IdempotencyKey>,
    trace: TraceParent,
) -> Result<impl Reply, ApiError> {
    let request = start_request(body.value, &state.otp, caller, trace)?;
    let claim = idempotency_key
        .map(|key| idempotency::claim(caller, key, "v1/verifications", &body.raw))
        .transpose()?;
    let json = ops::start_verification_answer(&state, request, claim.as_ref(), view_json).await?;
    Ok(accepted(&json))
}

fn view_json(
    verification: &verify_common::db::verifications::VerificationRecord,
    sends: &[verify_common::db::deliveries::DeliveryRecord],
) -> serde_json::Value {
    serde_json::to_value(VerificationView::new(verification, sends, Utc::now()))
        .unwrap_or(serde_json::Value::Null)
}

async fn get(_caller: Caller, id: VerificationId, state: AppState) -> Result<impl Reply, ApiError> {
    let found = ops::find_verification(&state, id).await?;
    Ok(verification_reply(StatusCode::OK, found))
}

async fn events(
    _caller: Caller,
    id: VerificationId,
    state: AppState,
) -> Result<impl Reply, ApiError> {
    let timeline = ops::timeline(&state, id).await?;
    Ok(warp::reply::json(&timeline))
}

async fn check_by_id(
    _caller: Caller,
    id: VerificationId,
    state: AppState,
    request: CheckBody,
) -> Result<impl Reply, ApiError> {
    let view = ops::check_by_id(&state, id, &request.code).await?;
    Ok(warp::reply::json(&view))
}

async fn check_by_number(
    _caller: Caller,
    state: AppState,
    request: CheckByNumberBody,
) -> Result<impl Reply, ApiError> {
    let to = PhoneNumber::parse(&request.to).map_err(|e| phone_error("to", &e))?;
    Ok(
        match ops::check_by_number(&state, &to, &request.code).await? {
            NumberCheck::Approved(view) => warp::reply::json(&view),
            NumberCheck::Refused => warp::reply::json(&RefusedCheckView::default()),
        },
    )
}

async fn resend(
    caller: Caller,
    id: VerificationId,
    state: AppState,
    trace: TraceParent,
) -> Result<impl Reply, ApiError> {
    let resent = ops::resend(&state, id, &caller.key_name(), trace).await?;
    Ok(verification_reply(StatusCode::ACCEPTED, resent))
}

async fn cancel(
    _caller: Caller,
    id: VerificationId,
    state: AppState,
) -> Result<impl Reply, ApiError> {
    let canceled = ops::cancel(&state, id).await?;
    Ok(verification_reply(StatusCode::OK, canceled))
}
