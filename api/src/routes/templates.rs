//! Native template routes under `/v1/templates`.

use std::sync::Arc;

use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};
use verify_common::domain::{TemplateId, Variables};
use warp::Filter;
use warp::http::StatusCode;
use warp::reply::{Reply, Response};

use super::extract;
use super::native::respond;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::error::ErrorBody;
use crate::operations::templates::{self as ops, TemplateInput, variable_error};
use crate::state::{AppState, with_state};
use crate::views::{PreviewView, TemplateListView, TemplateView};

/// Templates per page when the client does not say, and at most.
const DEFAULT_PAGE: i64 = 100;
const MAX_PAGE: i64 = 1_000;

/// A template's fields. Creating one needs `name` and `text`; a change gives only the
/// fields it changes.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = TemplateFields)]
pub(super) struct TemplateBodyJson {
    name: Option<String>,
    description: Option<String>,
    /// `null` clears it; absent keeps it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    locale: Option<Option<String>>,
    /// The message: must use `{{ code }}`; may use `ttl_minutes`, `app_name` and its own
    /// variables.
    text: Option<String>,
}

/// Distinguishes `"locale": null` (clear it) from an absent key (keep it).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

/// A template text to render with a placeholder code, without storing it.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = TemplatePreviewRequest)]
pub(super) struct PreviewBody {
    text: String,
    /// Values for the text's own variables: an object of strings.
    #[schema(value_type = Option<HashMap<String, String>>)]
    variables: Option<serde_json::Value>,
}

/// A page of templates.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct ListQuery {
    /// Only templates with a greater id: the last id of the previous page.
    after: Option<i64>,
    /// Templates per page: 1 to 1000, 100 when absent.
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<i64>,
}

impl From<TemplateBodyJson> for TemplateInput {
    fn from(body: TemplateBodyJson) -> Self {
        Self {
            name: body.name,
            description: body.description,
            locale: body.locale,
            text: body.text,
        }
    }
}

pub(super) fn routes(
    state: AppState,
) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
    let caller = extract::caller(Arc::clone(&state.api_keys));
    let state = with_state(state);
    let list = endpoint!(Native GET "v1" / "templates")
        .and(caller.clone())
        .and(state.clone())
        .and(warp::query::raw().or(warp::any().map(String::new)).unify())
        .then(list)
        .map(respond);
    let create = endpoint!(Native POST "v1" / "templates")
        .and(caller.clone())
        .and(state.clone())
        .and(extract::json())
        .then(create)
        .map(respond);
    let preview = endpoint!(Native POST "v1" / "templates" / "preview")
        .and(caller.clone())
        .and(state.clone())
        .and(extract::json())
        .then(preview)
        .map(respond);
    let get = endpoint!(Native GET "v1" / "templates" / String)
        .and(caller.clone())
        .and_then(extract::template_id)
        .untuple_one()
        .and(state.clone())
        .then(get)
        .map(respond);
    let update = endpoint!(Native PATCH "v1" / "templates" / String)
        .or(endpoint!(Native PUT "v1" / "templates" / String))
        .unify()
        .and(caller.clone())
        .and_then(extract::template_id)
        .untuple_one()
        .and(state.clone())
        .and(extract::json())
        .then(update)
        .map(respond);
    let delete = endpoint!(Native DELETE "v1" / "templates" / String)
        .and(caller)
        .and_then(extract::template_id)
        .untuple_one()
        .and(state)
        .then(delete)
        .map(respond);
    list.or(create)
        .unify()
        .or(preview)
        .unify()
        .or(get)
        .unify()
        .or(update)
        .unify()
        .or(delete)
        .unify()
}

fn template_reply(
    status: StatusCode,
    record: &verify_common::db::templates::TemplateRecord,
) -> Response {
    warp::reply::with_status(warp::reply::json(&TemplateView::new(record)), status).into_response()
}

/// Stored templates, by id.
#[utoipa::path(
    get,
    path = "/v1/templates",
    operation_id = "list_templates",
    tag = "templates",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of templates", body = TemplateListView),
    ),
)]
async fn list(_caller: Caller, state: AppState, query: String) -> Result<impl Reply, ApiError> {
    let query: ListQuery = serde_urlencoded_query(&query)?;
    let limit = query.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::invalid(
            "invalid_limit",
            "limit",
            format!("limit must be between 1 and {MAX_PAGE}"),
        ));
    }
    let records = ops::list_templates(&state, query.after.unwrap_or(0), limit).await?;
    let views: Vec<TemplateView> = records.iter().map(TemplateView::new).collect();
    Ok(warp::reply::json(&TemplateListView { templates: views }))
}

/// Parses `after`/`limit` from a raw query string, naming the bad parameter.
fn serde_urlencoded_query(raw: &str) -> Result<ListQuery, ApiError> {
    let mut query = ListQuery {
        after: None,
        limit: None,
    };
    for pair in raw.split('&').filter(|p| !p.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let number = value.parse::<i64>().map_err(|_| {
            ApiError::invalid(
                "invalid_query",
                name.to_owned(),
                format!("{name} must be an integer"),
            )
        });
        match name {
            "after" => query.after = Some(number?),
            "limit" => query.limit = Some(number?),
            other => {
                return Err(ApiError::invalid(
                    "invalid_query",
                    other.to_owned(),
                    format!("unknown query parameter {other:?}"),
                ));
            }
        }
    }
    Ok(query)
}

/// Stores a template.
#[utoipa::path(
    post,
    path = "/v1/templates",
    operation_id = "create_template",
    tag = "templates",
    request_body = TemplateBodyJson,
    responses(
        (status = 201, description = "The stored template", body = TemplateView),
        (status = 422, description = "`message_too_long`, `unsafe_characters`",
            body = ErrorBody),
    ),
)]
async fn create(
    _caller: Caller,
    state: AppState,
    input: TemplateBodyJson,
) -> Result<impl Reply, ApiError> {
    let record = ops::create_template(&state, input.into()).await?;
    Ok(template_reply(StatusCode::CREATED, &record))
}

/// Renders a template text as it would be sent, with its encoding and segments.
#[utoipa::path(
    post,
    path = "/v1/templates/preview",
    operation_id = "preview_template",
    tag = "templates",
    request_body = PreviewBody,
    responses(
        (status = 200, description = "The rendered text", body = PreviewView),
        (status = 422, description = "`message_too_long`, `unsafe_characters`",
            body = ErrorBody),
    ),
)]
async fn preview(
    _caller: Caller,
    state: AppState,
    request: PreviewBody,
) -> Result<impl Reply, ApiError> {
    let variables = request
        .variables
        .as_ref()
        .map(Variables::parse)
        .transpose()
        .map_err(variable_error)?
        .unwrap_or_default();
    let view = ops::preview(&state, &request.text, &variables)?;
    Ok(warp::reply::json(&view))
}

/// One template.
#[utoipa::path(
    get,
    path = "/v1/templates/{id}",
    operation_id = "get_template",
    tag = "templates",
    params(("id" = i64, Path, minimum = 1, description = "The template's id")),
    responses(
        (status = 200, description = "The template", body = TemplateView),
        (status = 404, description = "`template_not_found`", body = ErrorBody),
    ),
)]
async fn get(_caller: Caller, id: TemplateId, state: AppState) -> Result<impl Reply, ApiError> {
    let record = ops::find_template(&state, id).await?;
    Ok(template_reply(StatusCode::OK, &record))
}

/// Changes the fields given; `PUT` is the same as `PATCH`.
#[utoipa::path(
    method(patch, put),
    path = "/v1/templates/{id}",
    operation_id = "update_template",
    tag = "templates",
    params(("id" = i64, Path, minimum = 1, description = "The template's id")),
    request_body = TemplateBodyJson,
    responses(
        (status = 200, description = "The changed template", body = TemplateView),
        (status = 404, description = "`template_not_found`", body = ErrorBody),
        (status = 422, description = "`message_too_long`, `unsafe_characters`",
            body = ErrorBody),
    ),
)]
async fn update(
    _caller: Caller,
    id: TemplateId,
    state: AppState,
    input: TemplateBodyJson,
) -> Result<impl Reply, ApiError> {
    let record = ops::update_template(&state, id, input.into()).await?;
    Ok(template_reply(StatusCode::OK, &record))
}

/// Deletes a template.
#[utoipa::path(
    delete,
    path = "/v1/templates/{id}",
    operation_id = "delete_template",
    tag = "templates",
    params(("id" = i64, Path, minimum = 1, description = "The template's id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "`template_not_found`", body = ErrorBody),
    ),
)]
async fn delete(_caller: Caller, id: TemplateId, state: AppState) -> Result<impl Reply, ApiError> {
    ops::delete_template(&state, id).await?;
    Ok(StatusCode::NO_CONTENT)
}
