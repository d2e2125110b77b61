//! Native template routes under `/v1/templates`.

use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;
use verify_common::domain::Variables;
use warp::Filter;
use warp::http::StatusCode;
use warp::reply::{Reply, Response};

use super::{MAX_BODY_BYTES, respond};
use crate::auth::presented_key;
use crate::body::{content_type, limited_body, parse_json, require_json};
use crate::error::ApiError;
use crate::operations::templates::{self as ops, TemplateInput, variable_error};
use crate::state::{AppState, with_state};
use crate::views::TemplateView;

/// Templates per page when the client does not say, and at most.
const DEFAULT_PAGE: i64 = 100;
const MAX_PAGE: i64 = 1_000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TemplateBodyJson {
    name: Option<String>,
    description: Option<String>,
    #[serde(default, deserialize_with = "present")]
    locale: Option<Option<String>>,
    text: Option<String>,
}

/// Distinguishes `"locale": null` (clear it) from an absent key (keep it).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PreviewBody {
    text: String,
    variables: Option<serde_json::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    after: Option<i64>,
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

/// Parses a template id from the path.
///
/// # Errors
/// 400 `invalid_id`.
pub fn parse_template_id(raw: &str) -> Result<i64, ApiError> {
    raw.parse::<i64>().ok().filter(|id| *id > 0).ok_or_else(|| {
        ApiError::invalid(
            "invalid_id",
            "id",
            "the template id must be a positive integer",
        )
    })
}

type Auth = Option<String>;
type Body = Result<Bytes, ApiError>;

pub fn routes(
    state: AppState,
) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
    let base = warp::any().and(with_state(state)).and(presented_key());
    let with_body = content_type().and(limited_body(MAX_BODY_BYTES));
    let list = warp::path!("v1" / "templates")
        .and(warp::get())
        .and(base.clone())
        .and(warp::query::raw().or(warp::any().map(String::new)).unify())
        .then(list);
    let create = warp::path!("v1" / "templates")
        .and(warp::post())
        .and(base.clone())
        .and(with_body.clone())
        .then(create);
    let preview = warp::path!("v1" / "templates" / "preview")
        .and(warp::post())
        .and(base.clone())
        .and(with_body.clone())
        .then(preview);
    let get = warp::path!("v1" / "templates" / String)
        .and(warp::get())
        .and(base.clone())
        .then(get);
    let update = warp::path!("v1" / "templates" / String)
        .and(warp::patch().or(warp::put()).unify())
        .and(base.clone())
        .and(with_body)
        .then(update);
    let delete = warp::path!("v1" / "templates" / String)
        .and(warp::delete())
        .and(base)
        .then(delete);
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

async fn list(state: AppState, key: Auth, query: String) -> Response {
    respond(
        async {
            state.api_keys.authenticate(key).await?;
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
            Ok(warp::reply::json(&json!({ "templates": views })))
        }
        .await,
    )
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

async fn create(state: AppState, key: Auth, content_type: Option<String>, body: Body) -> Response {
    respond(
        async {
            state.api_keys.authenticate(key).await?;
            require_json(content_type.as_deref())?;
            let input: TemplateBodyJson = parse_json(&body?)?;
            let record = ops::create_template(&state, input.into()).await?;
            Ok(template_reply(StatusCode::CREATED, &record))
        }
        .await,
    )
}

async fn preview(state: AppState, key: Auth, content_type: Option<String>, body: Body) -> Response {
    respond(
        async {
            state.api_keys.authenticate(key).await?;
            require_json(content_type.as_deref())?;
            let request: PreviewBody = parse_json(&body?)?;
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
        .await,
    )
}

async fn get(id: String, state: AppState, key: Auth) -> Response {
    respond(
        async {
            state.api_keys.authenticate(key).await?;
            let record = ops::find_template(&state, parse_template_id(&id)?).await?;
            Ok(template_reply(StatusCode::OK, &record))
        }
        .await,
    )
}

async fn update(
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
            let id = parse_template_id(&id)?;
            let input: TemplateBodyJson = parse_json(&body?)?;
            let record = ops::update_template(&state, id, input.into()).await?;
            Ok(template_reply(StatusCode::OK, &record))
        }
        .await,
    )
}

async fn delete(id: String, state: AppState, key: Auth) -> Response {
    respond(
        async {
            state.api_keys.authenticate(key).await?;
            ops::delete_template(&state, parse_template_id(&id)?).await?;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        .await,
    )
}
