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

use bytes::Bytes;
use chrono::Utc;
use serde::Deserialize;
use serde_json::{Value, json};
use verify_common::domain::{PhoneNumber, Sender, Variables};
use warp::Filter;
use warp::http::StatusCode;
use warp::reply::{Reply, Response};

use super::MAX_BODY_BYTES;
use super::templates::parse_template_id;
use super::verifications::idempotency_key;
use super::verifications::phone_error;
use crate::auth::presented_key;
use crate::body::{limited_body, parse_json};
use crate::error::{ApiError, with_retry_after};
use crate::idempotency;
use crate::operations::templates::{self as template_ops, TemplateInput, variable_error};
use crate::operations::verifications::{self as ops, CheckTarget, StartRequest};
use crate::state::{AppState, with_state};
use crate::views::{TemplateView, VerificationView};

#[derive(Debug, Deserialize)]
struct StartBody {
    from: Option<String>,
    template_id: Option<i64>,
    /// An object, or `[]` (PHP encodes an empty array that way), or absent.
    variables: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct TemplateBodyJson {
    name: Option<String>,
    description: Option<String>,
    text: Option<String>,
}

type Auth = Option<String>;
type Body = Result<Bytes, ApiError>;

pub fn routes(
    state: AppState,
) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
    let base = warp::any().and(with_state(state)).and(presented_key());
    let body = limited_body(MAX_BODY_BYTES);
    let start = warp::path!("number_verify" / String)
        .and(warp::post())
        .and(base.clone())
        .and(idempotency_key())
        .and(body.clone())
        .then(start);
    let check = warp::path!("number_verify" / String)
        .and(warp::get())
        .and(base.clone())
        .and(warp::query::raw().or(warp::any().map(String::new)).unify())
        .then(check);
    let list = warp::path!("templates")
        .and(warp::get())
        .and(base.clone())
        .then(list_templates);
    let create = warp::path!("templates")
        .and(warp::post())
        .and(base.clone())
        .and(body.clone())
        .then(create_template);
    let get = warp::path!("templates" / String)
        .and(warp::get())
        .and(base.clone())
        .then(get_template);
    let update = warp::path!("templates" / String)
        .and(warp::put().or(warp::patch()).unify())
        .and(base.clone())
        .and(body)
        .then(update_template);
    let delete = warp::path!("templates" / String)
        .and(warp::delete())
        .and(base)
        .then(delete_template);
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

/// Maps an error to a status the SDKs know and their error body.
fn error_reply(error: ApiError) -> Response {
    let status = match error.status().as_u16() {
        400 | 401 | 403 | 404 | 405 | 415 | 429 | 500 => error.status(),
        409 | 413 | 422 => StatusCode::BAD_REQUEST,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let retry_after = error.retry_after();
    let mut body = json!({
        "error_description": [error.public_message()],
        "error_code": error.code(),
    });
    if let Some(field) = error.field() {
        body["field"] = Value::String(field.to_owned());
    }
    // Logging happens in ApiError's own reply path; keep it for internal errors here.
    if matches!(error, ApiError::Internal(_) | ApiError::Unavailable(_)) {
        drop(error.into_response());
    }
    with_retry_after(reply(status, body), retry_after)
}

fn respond(result: Result<Response, ApiError>) -> Response {
    result.unwrap_or_else(error_reply)
}

fn parse_number(raw: &str) -> Result<PhoneNumber, ApiError> {
    PhoneNumber::parse_international(raw).map_err(|e| phone_error("number", &e))
}

fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8], empty: T) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        Ok(empty)
    } else {
        parse_json(body)
    }
}

async fn start(
    number: String,
    state: AppState,
    key: Auth,
    idempotency_key: Option<String>,
    body: Body,
) -> Response {
    respond(
        async {
            let caller = state.api_keys.authenticate(key).await?;
            let to = parse_number(&number)?;
            let body = body?;
            let claim = match idempotency_key {
                Some(header) => {
                    let canonical: Value = parse_body(&body, Value::Null)?;
                    let route = format!("portatext/number_verify/{}", to.as_str());
                    idempotency::claim(caller, Some(header), &route, &canonical)?
                }
                None => None,
            };
            let request: StartBody = parse_body(
                &body,
                StartBody {
                    from: None,
                    template_id: None,
                    variables: None,
                },
            )?;
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
            let body = ops::start_verification_answer(
                &state,
                StartRequest {
                    to,
                    template_id: request.template_id,
                    locale: None,
                    variables,
                    sender,
                    code_length: None,
                    ttl: None,
                },
                claim.as_ref(),
                start_body,
            )
            .await?;
            Ok(reply(StatusCode::OK, body))
        }
        .await,
    )
}

fn start_body(
    verification: &verify_common::db::verifications::VerificationRecord,
    sends: &[verify_common::db::deliveries::DeliveryRecord],
) -> Value {
    let view = VerificationView::new(verification, sends, Utc::now());
    json!({ "verification": view, "id": view.id })
}

async fn check(number: String, state: AppState, key: Auth, query: String) -> Response {
    respond(
        async {
            state.api_keys.authenticate(key).await?;
            let to = parse_number(&number)?;
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
            let view = ops::check_code(&state, CheckTarget::Number(to), &code).await?;
            let status = if view.valid {
                StatusCode::OK
            } else {
                StatusCode::BAD_REQUEST
            };
            let mut body = json!({
                "verified": view.valid,
                "status": view.status,
                "attempts_remaining": view.attempts_remaining,
                "id": view.id,
            });
            if !view.valid {
                body["error_description"] = json!(["invalid code"]);
            }
            Ok(reply(status, body))
        }
        .await,
    )
}

fn template_json(record: &verify_common::db::templates::TemplateRecord) -> Value {
    json!(TemplateView::new(record))
}

async fn list_templates(state: AppState, key: Auth) -> Response {
    respond(
        async {
            state.api_keys.authenticate(key).await?;
            let records = template_ops::list_templates(&state, 0, 10_000).await?;
            let templates: Vec<Value> = records.iter().map(template_json).collect();
            Ok(reply(StatusCode::OK, json!({ "templates": templates })))
        }
        .await,
    )
}

fn template_input(body: &[u8]) -> Result<TemplateInput, ApiError> {
    let parsed: TemplateBodyJson = parse_body(
        body,
        TemplateBodyJson {
            name: None,
            description: None,
            text: None,
        },
    )?;
    Ok(TemplateInput {
        name: parsed.name,
        description: parsed.description,
        locale: None,
        text: parsed.text,
    })
}

async fn create_template(state: AppState, key: Auth, body: Body) -> Response {
    respond(
        async {
            state.api_keys.authenticate(key).await?;
            let record = template_ops::create_template(&state, template_input(&body?)?).await?;
            Ok(reply(
                StatusCode::CREATED,
                json!({ "template": template_json(&record) }),
            ))
        }
        .await,
    )
}

async fn get_template(id: String, state: AppState, key: Auth) -> Response {
    respond(
        async {
            state.api_keys.authenticate(key).await?;
            let record = template_ops::find_template(&state, parse_template_id(&id)?).await?;
            Ok(reply(
                StatusCode::OK,
                json!({ "template": template_json(&record) }),
            ))
        }
        .await,
    )
}

async fn update_template(id: String, state: AppState, key: Auth, body: Body) -> Response {
    respond(
        async {
            state.api_keys.authenticate(key).await?;
            let id = parse_template_id(&id)?;
            let record = template_ops::update_template(&state, id, template_input(&body?)?).await?;
            Ok(reply(
                StatusCode::OK,
                json!({ "template": template_json(&record) }),
            ))
        }
        .await,
    )
}

async fn delete_template(id: String, state: AppState, key: Auth) -> Response {
    respond(
        async {
            state.api_keys.authenticate(key).await?;
            template_ops::delete_template(&state, parse_template_id(&id)?).await?;
            Ok(reply(StatusCode::OK, json!({})))
        }
        .await,
    )
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
