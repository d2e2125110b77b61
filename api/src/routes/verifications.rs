//! Native verification routes under `/v1/verifications`.

use std::sync::Arc;

use chrono::Utc;
use serde::Deserialize;
use utoipa::ToSchema;
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
use crate::error::ErrorBody;
use crate::idempotency::{self, IdempotencyKey};
use crate::operations::templates::{template_error, variable_error};
use crate::operations::verifications::{
    self as ops, NumberCheck, StartRequest, client_signals, phone_error,
};
use crate::state::{AppState, with_state};
use crate::trace;
use crate::views::{CheckView, NumberCheckView, RefusedCheckView, TimelineView, VerificationView};

/// A start request: where to send a code, and how to word it.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = StartVerification)]
pub(super) struct CreateBody {
    /// The number to verify, international form (spaces, dashes and brackets allowed).
    to: String,
    /// A stored template; the built-in text when absent.
    template_id: Option<i64>,
    /// Which translation of the template (`en`, `pt-BR`, …).
    locale: Option<String>,
    /// Values for the template's own variables: an object of strings.
    #[schema(value_type = Option<HashMap<String, String>>)]
    variables: Option<serde_json::Value>,
    /// The sender id to send from, where the provider allows one.
    from: Option<String>,
    /// Digits in the code, within the configured bounds.
    code_length: Option<i64>,
    /// How long the code is valid, within the configured bounds.
    ttl_seconds: Option<i64>,
    /// The end user's IP address, for the abuse rules.
    client_ip: Option<String>,
    /// The end user's id in the caller's own system, for the abuse rules.
    client_id: Option<String>,
}

/// A code to check against one verification.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = CheckCode)]
pub(super) struct CheckBody {
    /// The code as the user typed it: 4 to 10 digits.
    code: String,
}

/// A code to check against the newest open verification of a number.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = CheckCodeByNumber)]
pub(super) struct CheckByNumberBody {
    to: String,
    /// The code as the user typed it: 4 to 10 digits.
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

/// Starts a verification: sends a code to `to`. A repeated `Idempotency-Key` with the
/// same body answers the first answer again; with another body, a 422.
#[utoipa::path(
    post,
    path = "/v1/verifications",
    operation_id = "start_verification",
    tag = "verifications",
    request_body = CreateBody,
    params(
        ("Idempotency-Key" = Option<String>, Header,
            description = "Makes retries of this start safe: 1 to 255 visible ASCII characters"),
    ),
    responses(
        (status = 202, description = "Accepted: the code is on its way",
            body = VerificationView,
            headers(("Location" = String, description = "The verification's URL"))),
        (status = 403, description = "`country_blocked`: an abuse rule refuses this country",
            body = ErrorBody),
        (status = 422, description = "`number_type_blocked`, `message_too_long`, \
            `invalid_client_id`, `idempotency_key_reused`", body = ErrorBody),
        (status = 429, description = "`rate_limited`, `velocity_limited`, `number_locked`, \
            `destination_blocked`; see `Retry-After`", body = ErrorBody),
    ),
)]
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

/// A verification and its sends.
#[utoipa::path(
    get,
    path = "/v1/verifications/{id}",
    operation_id = "get_verification",
    tag = "verifications",
    params(("id" = Uuid, Path, description = "The verification's id")),
    responses(
        (status = 200, description = "The verification", body = VerificationView),
        (status = 404, description = "`verification_not_found`", body = ErrorBody),
    ),
)]
async fn get(_caller: Caller, id: VerificationId, state: AppState) -> Result<impl Reply, ApiError> {
    let found = ops::find_verification(&state, id).await?;
    Ok(verification_reply(StatusCode::OK, found))
}

/// Every event of a verification's life, oldest first.
#[utoipa::path(
    get,
    path = "/v1/verifications/{id}/events",
    operation_id = "get_verification_events",
    tag = "verifications",
    params(("id" = Uuid, Path, description = "The verification's id")),
    responses(
        (status = 200, description = "The timeline", body = TimelineView),
        (status = 404, description = "`verification_not_found`", body = ErrorBody),
    ),
)]
async fn events(
    _caller: Caller,
    id: VerificationId,
    state: AppState,
) -> Result<impl Reply, ApiError> {
    let timeline = ops::timeline(&state, id).await?;
    Ok(warp::reply::json(&timeline))
}

/// Checks a code. An unknown id answers as an expired verification does, so ids cannot
/// be probed for.
#[utoipa::path(
    post,
    path = "/v1/verifications/{id}/check",
    operation_id = "check_verification",
    tag = "verifications",
    params(("id" = Uuid, Path, description = "The verification's id")),
    request_body = CheckBody,
    responses(
        (status = 200, description = "The outcome: `valid` and the verification's status",
            body = CheckView),
    ),
)]
async fn check_by_id(
    _caller: Caller,
    id: VerificationId,
    state: AppState,
    request: CheckBody,
) -> Result<impl Reply, ApiError> {
    let view = ops::check_by_id(&state, id, &request.code).await?;
    Ok(warp::reply::json(&view))
}

/// Checks a code against the newest open verification of a number. Every outcome but an
/// approval has one answer, with every field `null` but `valid: false`, so the answer
/// never tells whether the number has a verification.
#[utoipa::path(
    post,
    path = "/v1/verifications/check",
    operation_id = "check_verification_by_number",
    tag = "verifications",
    request_body = CheckByNumberBody,
    responses(
        (status = 200, description = "Approved, or refused without saying why",
            body = NumberCheckView),
    ),
)]
async fn check_by_number(
    _caller: Caller,
    state: AppState,
    request: CheckByNumberBody,
) -> Result<impl Reply, ApiError> {
    let to = PhoneNumber::parse(&request.to).map_err(|e| phone_error("to", &e))?;
    Ok(
        match ops::check_by_number(&state, &to, &request.code).await? {
            NumberCheck::Approved(view) => warp::reply::json(&NumberCheckView::Approved(view)),
            NumberCheck::Refused => {
                warp::reply::json(&NumberCheckView::Refused(RefusedCheckView::default()))
            }
        },
    )
}

/// Sends the code of a pending verification again. The send is judged like a start, by
/// the abuse rules, blocks and limits in force now.
#[utoipa::path(
    post,
    path = "/v1/verifications/{id}/resend",
    operation_id = "resend_verification",
    tag = "verifications",
    params(("id" = Uuid, Path, description = "The verification's id")),
    responses(
        (status = 202, description = "Accepted: the code is on its way again",
            body = VerificationView,
            headers(("Location" = String, description = "The verification's URL"))),
        (status = 404, description = "`verification_not_found`", body = ErrorBody),
        (status = 403, description = "`country_blocked`: an abuse rule refuses this country",
            body = ErrorBody),
        (status = 409, description = "`verification_not_pending`", body = ErrorBody),
        (status = 422, description = "`number_type_blocked`", body = ErrorBody),
        (status = 429, description = "`resend_too_soon`, `rate_limited`, \
            `velocity_limited`, `number_locked`, `destination_blocked`; see `Retry-After`",
            body = ErrorBody),
    ),
)]
async fn resend(
    caller: Caller,
    id: VerificationId,
    state: AppState,
    trace: TraceParent,
) -> Result<impl Reply, ApiError> {
    let resent = ops::resend(&state, id, &caller.key_name(), trace).await?;
    Ok(verification_reply(StatusCode::ACCEPTED, resent))
}

/// Cancels a pending verification: its code stops working.
#[utoipa::path(
    post,
    path = "/v1/verifications/{id}/cancel",
    operation_id = "cancel_verification",
    tag = "verifications",
    params(("id" = Uuid, Path, description = "The verification's id")),
    responses(
        (status = 200, description = "The canceled verification", body = VerificationView),
        (status = 404, description = "`verification_not_found`", body = ErrorBody),
        (status = 409, description = "`verification_not_pending`", body = ErrorBody),
    ),
)]
async fn cancel(
    _caller: Caller,
    id: VerificationId,
    state: AppState,
) -> Result<impl Reply, ApiError> {
    let canceled = ops::cancel(&state, id).await?;
    Ok(verification_reply(StatusCode::OK, canceled))
}
