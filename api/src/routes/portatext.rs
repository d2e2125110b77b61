//! PortaText-compatible routes, so PortaText's SDKs work unchanged.
//!
//! - `POST /number_verify/{number}` `{from?, template_id?, variables?}` starts a
//!   verification; `GET /number_verify/{number}?code=NNNNNN` checks it.
//! - `/templates` (GET, POST) and `/templates/{id}` (GET, PUT, PATCH, DELETE).
//!
//! The SDKs treat any 2xx as success (PHP and Ruby also need `"success": true`) and map
//! 400/401/403/404/405/415/429/500 to exceptions, reading `error_description` as an
//! array of strings. A wrong code therefore answers 400, so no SDK mistakes it for an
//! approval. Numbers may come without `+`; the Node SDK reads responses as ASCII, so
//! bodies escape every non-ASCII character.

use std::sync::Arc;

use chrono::Utc;
use serde::Deserialize;
use serde_json::{Value, json};
use verify_common::domain::{PhoneNumber, Sender, TemplateId, TraceParent, Variables};
use warp::Filter;
use warp::http::StatusCode;
use warp::reply::{Reply, Response};

use super::extract::{self, JsonBody};
use crate::auth::Caller;
use crate::error::{ApiError, with_retry_after};
use crate::idempotency::{self, IdempotencyKey};
use crate::operations::templates::{self as template_ops, TemplateInput, variable_error};
use crate::operations::verifications::{self as ops, NumberCheck, StartRequest, client_signals};
use crate::state::{AppState, with_state};
use crate::trace;
use crate::views::{TemplateView, VerificationView};

#[derive(Debug, Default, Deserialize)]
struct StartBody {
    from: Option<String>,
    template_id: Option<i64>,
    /// An object, or `[]` (PHP encodes an empty array that way), or absent.
    variables: Option<Value>,
    /// The end user's IP address and an opaque id of theirs, for the abuse rules.
    client_ip: Option<String>,
    client_id: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct TemplateBodyJson {
    name: Option<String>,
    description: Option<String>,
    text: Option<String>,
}

impl From<TemplateBodyJson> for TemplateInput {
    fn from(body: TemplateBodyJson) -> Self {
        Self {
            name: body.name,
            description: body.description,
            locale: None,
            text: body.text,
        }
    }
}

pub(super) fn routes(
    state: AppState,
) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
    let caller = extract::caller(Arc::clone(&state.api_keys));
    let state = with_state(state);
    let start = endpoint!(PortaText POST "number_verify" / String)
        .and(caller.clone())
        .and_then(extract::path_number)
        .untuple_one()
        .and(state.clone())
        .and(extract::lenient_json())
        .and(extract::idempotency_key())
        .and(trace::current())
        .then(start)
        .map(respond);
    let check = endpoint!(PortaText GET "number_verify" / String)
        .and(caller.clone())
        .and_then(extract::path_number)
        .untuple_one()
        .and(state.clone())
        .and(warp::query::raw().or(warp::any().map(String::new)).unify())
        .then(check)
        .map(respond);
    let list = endpoint!(PortaText GET "templates")
        .and(caller.clone())
        .and(state.clone())
        .then(list_templates)
        .map(respond);
    let create = endpoint!(PortaText POST "templates")
        .and(caller.clone())
        .and(state.clone())
        .and(extract::lenient_json())
        .then(create_template)
        .map(respond);
    let get = endpoint!(PortaText GET "templates" / String)
        .and(caller.clone())
        .and_then(extract::template_id)
        .untuple_one()
        .and(state.clone())
        .then(get_template)
        .map(respond);
    let update = endpoint!(PortaText PUT "templates" / String)
        .or(endpoint!(PortaText PATCH "templates" / String))
        .unify()
        .and(caller.clone())
        .and_then(extract::template_id)
        .untuple_one()
        .and(state.clone())
        .and(extract::lenient_json())
        .then(update_template)
        .map(respond);
    let delete = endpoint!(PortaText DELETE "templates" / String)
        .and(caller)
        .and_then(extract::template_id)
        .untuple_one()
        .and(state)
        .then(delete_template)
        .map(respond);
    start
        .or(check)
        .unify()
        .or(list)
        .unify()
        .or(create)
        .unify()
        .or(get)
        .unify()
        .or(update)
        .unify()
        .or(delete)
        .unify()
}

/// Serialises JSON with every non-ASCII character as a `\u` escape. Non-ASCII can only
/// occur inside JSON strings, so escaping after serialisation is safe.
fn ascii_json(value: &Value) -> String {
    let text = value.to_string();
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_ascii() {
            out.push(c);
        } else {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                out.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    out
}

fn reply(status: StatusCode, mut body: Value) -> Response {
    if let Some(object) = body.as_object_mut() {
        object.insert("success".to_owned(), Value::Bool(status.is_success()));
    }
    let mut response = warp::reply::with_status(ascii_json(&body), status).into_response();
    response.headers_mut().insert(
        "content-type",
        warp::http::HeaderValue::from_static("application/json"),
    );
    response
}

/// PortaText's answer to an error: a status the SDKs know and their error body. PortaText
/// errors, from handlers and extractors alike, become responses here only, so this is
/// where they are logged.
pub(super) fn error_response(error: &ApiError) -> Response {
    error.log();
    let status = match error.status().as_u16() {
        400 | 401 | 403 | 404 | 405 | 415 | 429 | 500 => error.status(),
        409 | 413 | 422 => StatusCode::BAD_REQUEST,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let mut body = json!({
        "error_description": [error.public_message()],
        "error_code": error.code(),
    });
    if let Some(field) = error.field() {
        body["field"] = Value::String(field.to_owned());
    }
    for (name, value) in error.details() {
        body[name] = Value::String(value);
    }
    with_retry_after(reply(status, body), error.retry_after())
}

fn respond(result: Result<Response, ApiError>) -> Response {
    result.unwrap_or_else(|error| error_response(&error))
}

async fn start(
    caller: Caller,
    to: PhoneNumber,
    state: AppState,
    body: JsonBody<StartBody>,
    idempotency_key: Option<IdempotencyKey>,
    trace: TraceParent,
) -> Result<Response, ApiError> {
    let claim = idempotency_key
        .map(|key| {
            let route = format!("portatext/number_verify/{}", to.as_str());
            idempotency::claim(caller, key, &route, &body.raw)
        })
        .transpose()?;
    let request = body.value;
    let variables = match &request.variables {
        Some(Value::Array(items)) if items.is_empty() => Variables::default(),
        Some(value) => Variables::parse(value).map_err(variable_error)?,
        None => Variables::default(),
    };
    let sender = request
        .from
        .as_deref()
        .filter(|f| !f.trim().is_empty())
        .map(|from| {
            // PortaText callers pass sender numbers without '+'.
            let with_plus = if from.chars().all(|c| c.is_ascii_digit()) {
                format!("+{from}")
            } else {
                from.to_owned()
            };
            Sender::parse(&with_plus)
        })
        .transpose()
        .map_err(|e| ApiError::invalid("invalid_sender", "from", e))?;
    let client = client_signals(request.client_ip.as_deref(), request.client_id.as_deref())?;
    let body = ops::start_verification_answer(
        &state,
        StartRequest {
            to,
            template_id: ops::body_template_id(request.template_id)?,
            locale: None,
            variables,
            sender,
            code_length: None,
            ttl: None,
            client,
            api_key: caller.key_name(),
            trace,
        },
        claim.as_ref(),
        start_body,
    )
    .await?;
    Ok(reply(StatusCode::OK, body))
}

fn start_body(
    verification: &verify_common::db::verifications::VerificationRecord,
    sends: &[verify_common::db::deliveries::DeliveryRecord],
) -> Value {
    let view = VerificationView::new(verification, sends, Utc::now());
    json!({ "verification": view, "id": view.id })
}

async fn check(
    _caller: Caller,
    to: PhoneNumber,
    state: AppState,
    query: String,
) -> Result<Response, ApiError> {
    let code = query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(name, _)| *name == "code")
        .map(|(_, value)| value.to_owned())
        .ok_or_else(|| {
            ApiError::invalid(
                "missing_field",
                "code",
                "the code query parameter is required",
            )
        })?;
    Ok(match ops::check_by_number(&state, &to, &code).await? {
        NumberCheck::Approved(view) => reply(
            StatusCode::OK,
            json!({
                "verified": true,
                "status": view.status,
                "attempts_remaining": view.attempts_remaining,
                "id": view.id,
            }),
        ),
        // One answer for a wrong code and for every other refusal (see `NumberCheck`).
        NumberCheck::Refused => reply(
            StatusCode::BAD_REQUEST,
            json!({
                "verified": false,
                "error_description": ["invalid code"],
            }),
        ),
    })
}

fn template_json(record: &verify_common::db::templates::TemplateRecord) -> Value {
    json!(TemplateView::new(record))
}

async fn list_templates(_caller: Caller, state: AppState) -> Result<Response, ApiError> {
    let records = template_ops::list_templates(&state, 0, 10_000).await?;
    let templates: Vec<Value> = records.iter().map(template_json).collect();
    Ok(reply(StatusCode::OK, json!({ "templates": templates })))
}

async fn create_template(
    _caller: Caller,
    state: AppState,
    body: JsonBody<TemplateBodyJson>,
) -> Result<Response, ApiError> {
    let record = template_ops::create_template(&state, body.value.into()).await?;
    Ok(reply(
        StatusCode::CREATED,
        json!({ "template": template_json(&record) }),
    ))
}

async fn get_template(
    _caller: Caller,
    id: TemplateId,
    state: AppState,
) -> Result<Response, ApiError> {
    let record = template_ops::find_template(&state, id).await?;
    Ok(reply(
        StatusCode::OK,
        json!({ "template": template_json(&record) }),
    ))
}

async fn update_template(
    _caller: Caller,
    id: TemplateId,
    state: AppState,
    body: JsonBody<TemplateBodyJson>,
) -> Result<Response, ApiError> {
    let record = template_ops::update_template(&state, id, body.value.into()).await?;
    Ok(reply(
        StatusCode::OK,
        json!({ "template": template_json(&record) }),
    ))
}

async fn delete_template(
    _caller: Caller,
    id: TemplateId,
    state: AppState,
) -> Result<Response, ApiError> {
    template_ops::delete_template(&state, id).await?;
    Ok(reply(StatusCode::OK, json!({})))
}

#[cfg(test)]
mod tests {
    use super::ascii_json;
    use serde_json::json;

    #[test]
    fn non_ascii_text_is_escaped_for_ascii_only_readers() {
        assert_eq!(
            ascii_json(&json!({"t": "Código 😀"})),
            r#"{"t":"C\u00f3digo \ud83d\ude00"}"#
        );
    }
}
