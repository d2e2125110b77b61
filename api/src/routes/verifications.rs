//! Native verification routes under `/v1/verifications`.

use bytes::Bytes;
use chrono::Utc;
use serde::Deserialize;
use uuid::Uuid;
use verify_common::domain::{
    OtpCodeLength, PhoneNumber, Sender, TemplateLocale, Variables, VerificationId,
};
use warp::Filter;
use warp::http::StatusCode;
use warp::reply::{Reply, Response};

use super::{MAX_BODY_BYTES, respond};
use crate::auth::presented_key;
use crate::body::{content_type, limited_body, parse_json, require_json};
use crate::error::ApiError;
use crate::idempotency;
use crate::operations::templates::{template_error, variable_error};
use crate::operations::verifications::{self as ops, CheckTarget, StartRequest, parse_ttl};
use crate::state::{AppState, with_state};
use crate::views::VerificationView;

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

/// Phone-number errors as a 400 naming `field`.
pub fn phone_error(field: &str, error: &verify_common::domain::PhoneNumberError) -> ApiError {
    ApiError::invalid("invalid_phone_number", field, error)
}

fn parse_id(raw: &str) -> Result<VerificationId, ApiError> {
    Uuid::parse_str(raw)
        .map(VerificationId::from_uuid)
        .map_err(|_| ApiError::invalid("invalid_id", "id", "the verification id is not a UUID"))
}

/// Everything the routes here need before the handler runs: state, auth, and for
/// requests with a body, its content type and bytes.
type Auth = Option<String>;
type Body = Result<Bytes, ApiError>;

pub fn routes(
    state: AppState,
) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
    let base = warp::any().and(with_state(state)).and(presented_key());
    let with_body = content_type().and(limited_body(MAX_BODY_BYTES));

    let create = warp::path!("v1" / "verifications")
        .and(warp::post())
        .and(base.clone())
        .and(idempotency_key())
        .and(with_body.clone())
        .then(create);
    let check_by_number = warp::path!("v1" / "verifications" / "check")
        .and(warp::post())
        .and(base.clone())
        .and(with_body.clone())
        .then(check_by_number);
    let get = warp::path!("v1" / "verifications" / String)
        .and(warp::get())
        .and(base.clone())
        .then(get);
    let check = warp::path!("v1" / "verifications" / String / "check")
        .and(warp::post())
        .and(base.clone())
        .and(with_body)
        .then(check_by_id);
    let resend = warp::path!("v1" / "verifications" / String / "resend")
        .and(warp::post())
        .and(base.clone())
        .then(resend);
    let cancel = warp::path!("v1" / "verifications" / String / "cancel")
        .and(warp::post())
        .and(base)
        .then(cancel);
    create
        .or(check_by_number)
        .unify()
        .or(get)
        .unify()
        .or(check)
        .unify()
        .or(resend)
        .unify()
        .or(cancel)
        .unify()
}

/// Validates the native create body into a start request.
fn start_request(body: CreateBody) -> Result<StartRequest, ApiError> {
    Ok(StartRequest {
        to: PhoneNumber::parse(&body.to).map_err(|e| phone_error("to", &e))?,
        template_id: body.template_id,
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
            .map(OtpCodeLength::parse)
            .transpose()
            .map_err(|e| ApiError::invalid("invalid_code_length", "code_length", e))?,
        ttl: body.ttl_seconds.map(parse_ttl).transpose()?,
    })
}

/// The `Idempotency-Key` header, if sent.
pub fn idempotency_key()
-> impl Filter<Extract = (Option<String>,), Error = std::convert::Infallible> + Clone {
    warp::header::optional::<String>("idempotency-key")
        .or(warp::any().map(|| None))
        .unify()
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
    state: AppState,
    key: Auth,
    idempotency_key: Option<String>,
    content_type: Option<String>,
    body: Body,
) -> Response {
    respond(
        async {
            let caller = state.api_keys.authenticate(key).await?;
            require_json(content_type.as_deref())?;
            let body = body?;
            let request = start_request(parse_json(&body)?)?;
            let claim = match idempotency_key {
                Some(header) => {
                    let canonical: serde_json::Value = parse_json(&body)?;
                    idempotency::claim(caller, Some(header), "v1/verifications", &canonical)?
                }
                None => None,
            };
            let json =
                ops::start_verification_answer(&state, request, claim.as_ref(), view_json).await?;
            Ok(accepted(&json))
        }
        .await,
    )
}

fn view_json(
    verification: &verify_common::db::verifications::VerificationRecord,
    sends: &[verify_common::db::deliveries::DeliveryRecord],
) -> serde_json::Value {
    serde_json::to_value(VerificationView::new(verification, sends, Utc::now()))
        .unwrap_or(serde_json::Value::Null)
}

async fn get(id: String, state: AppState, key: Auth) -> Response {
    respond(
        async {
            state.api_keys.authenticate(key).await?;
            let found = ops::find_verification(&state, parse_id(&id)?).await?;
            Ok(verification_reply(StatusCode::OK, found))
        }
        .await,
    )
}

async fn check_by_id(
    id: String,
    state: AppState,
    key: Auth,
    content_type: Option<String>,
    body: Body,
) -> Response {
    respond(
        async {
            state.api_keys.authenticate(key).await?;
            require_json(content_type.as_deref())?;
            let id = parse_id(&id)?;
            let request: CheckBody = parse_json(&body?)?;
            let view = ops::check_code(&state, CheckTarget::Id(id), &request.code).await?;
            Ok(warp::reply::json(&view))
        }
        .await,
    )
}

async fn check_by_number(
    state: AppState,
    key: Auth,
    content_type: Option<String>,
    body: Body,
) -> Response {
    respond(
        async {
            state.api_keys.authenticate(key).await?;
            require_json(content_type.as_deref())?;
            let request: CheckByNumberBody = parse_json(&body?)?;
            let to = PhoneNumber::parse(&request.to).map_err(|e| phone_error("to", &e))?;
            let view = ops::check_code(&state, CheckTarget::Number(to), &request.code).await?;
            Ok(warp::reply::json(&view))
        }
        .await,
    )
}

async fn resend(id: String, state: AppState, key: Auth) -> Response {
    respond(
        async {
            state.api_keys.authenticate(key).await?;
            let resent = ops::resend(&state, parse_id(&id)?).await?;
            Ok(verification_reply(StatusCode::ACCEPTED, resent))
        }
        .await,
    )
}

async fn cancel(id: String, state: AppState, key: Auth) -> Response {
    respond(
        async {
            state.api_keys.authenticate(key).await?;
            let canceled = ops::cancel(&state, parse_id(&id)?).await?;
            Ok(verification_reply(StatusCode::OK, canceled))
        }
        .await,
    )
}
