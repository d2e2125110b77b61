//! Native routes managing webhook endpoints under `/v1/webhooks`.

use std::sync::Arc;

use serde::Deserialize;
use utoipa::ToSchema;
use verify_common::db::webhooks::EndpointChange;
use warp::Filter;
use warp::http::StatusCode;
use warp::reply::{Reply, Response};

use super::extract;
use super::native::respond;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::error::ErrorBody;
use crate::operations::webhooks as ops;
use crate::state::{AppState, with_state};
use crate::views::{WebhookListView, WebhookView, webhook_events};

/// A new webhook endpoint.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = NewWebhook)]
pub(super) struct CreateBody {
    /// Where events are posted: an `https` (or, where allowed, `http`) URL on a public
    /// address.
    url: String,
    /// The event types to receive: at least one.
    #[schema(schema_with = webhook_events)]
    events: Vec<String>,
}

/// A change: each field optional, each present one valid.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = WebhookChange)]
pub(super) struct ChangeBody {
    url: Option<String>,
    events: Option<Vec<String>>,
    enabled: Option<bool>,
}

pub(super) fn routes(
    state: AppState,
) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
    let caller = extract::caller(Arc::clone(&state.api_keys));
    let state = with_state(state);
    let list = endpoint!(Native GET "v1" / "webhooks")
        .and(caller.clone())
        .and(state.clone())
        .then(list)
        .map(respond);
    let create = endpoint!(Native POST "v1" / "webhooks")
        .and(caller.clone())
        .and(state.clone())
        .and(extract::json())
        .then(create)
        .map(respond);
    let find = endpoint!(Native GET "v1" / "webhooks" / String)
        .and(caller.clone())
        .and_then(extract::record_id)
        .untuple_one()
        .and(state.clone())
        .then(find)
        .map(respond);
    let update = endpoint!(Native PATCH "v1" / "webhooks" / String)
        .and(caller.clone())
        .and_then(extract::record_id)
        .untuple_one()
        .and(state.clone())
        .and(extract::json())
        .then(update)
        .map(respond);
    let delete = endpoint!(Native DELETE "v1" / "webhooks" / String)
        .and(caller)
        .and_then(extract::record_id)
        .untuple_one()
        .and(state)
        .then(delete)
        .map(respond);
    list.or(create)
        .unify()
        .or(find)
        .unify()
        .or(update)
        .unify()
        .or(delete)
        .unify()
}

/// Every webhook endpoint.
#[utoipa::path(
    get,
    path = "/v1/webhooks",
    operation_id = "list_webhooks",
    tag = "webhooks",
    responses((status = 200, description = "The endpoints", body = WebhookListView)),
)]
async fn list(_caller: Caller, state: AppState) -> Result<impl Reply, ApiError> {
    let webhooks = ops::list(&state).await?;
    Ok(warp::reply::json(&WebhookListView { webhooks }))
}

/// Subscribes an endpoint to events. The answer carries its signing `secret`, the only
/// time it is shown.
#[utoipa::path(
    post,
    path = "/v1/webhooks",
    operation_id = "create_webhook",
    tag = "webhooks",
    request_body = CreateBody,
    responses(
        (status = 201, description = "The endpoint, with its secret", body = WebhookView),
        (status = 422, description = "`webhook_destination_refused`, \
            `webhook_unresolvable`", body = ErrorBody),
    ),
)]
async fn create(
    _caller: Caller,
    state: AppState,
    body: CreateBody,
) -> Result<impl Reply, ApiError> {
    let url = ops::parse_url(&body.url)?;
    let events = ops::parse_events(&body.events)?;
    let view = ops::create(&state, url, events).await?;
    Ok(warp::reply::with_status(
        warp::reply::json(&view),
        StatusCode::CREATED,
    ))
}

/// One webhook endpoint.
#[utoipa::path(
    get,
    path = "/v1/webhooks/{id}",
    operation_id = "get_webhook",
    tag = "webhooks",
    params(("id" = i64, Path, minimum = 1, description = "The endpoint's id")),
    responses(
        (status = 200, description = "The endpoint", body = WebhookView),
        (status = 404, description = "`webhook_not_found`", body = ErrorBody),
    ),
)]
async fn find(_caller: Caller, id: i64, state: AppState) -> Result<impl Reply, ApiError> {
    Ok(warp::reply::json(&ops::find(&state, id).await?))
}

/// Changes an endpoint's URL or events, or enables or disables it.
#[utoipa::path(
    patch,
    path = "/v1/webhooks/{id}",
    operation_id = "update_webhook",
    tag = "webhooks",
    params(("id" = i64, Path, minimum = 1, description = "The endpoint's id")),
    request_body = ChangeBody,
    responses(
        (status = 200, description = "The changed endpoint", body = WebhookView),
        (status = 404, description = "`webhook_not_found`", body = ErrorBody),
        (status = 422, description = "`webhook_destination_refused`, \
            `webhook_unresolvable`", body = ErrorBody),
    ),
)]
async fn update(
    _caller: Caller,
    id: i64,
    state: AppState,
    body: ChangeBody,
) -> Result<impl Reply, ApiError> {
    let change = EndpointChange {
        url: body.url.as_deref().map(ops::parse_url).transpose()?,
        events: body.events.as_deref().map(ops::parse_events).transpose()?,
        enabled: body.enabled,
    };
    Ok(warp::reply::json(&ops::update(&state, id, change).await?))
}

/// Deletes an endpoint; events already queued for it are dropped.
#[utoipa::path(
    delete,
    path = "/v1/webhooks/{id}",
    operation_id = "delete_webhook",
    tag = "webhooks",
    params(("id" = i64, Path, minimum = 1, description = "The endpoint's id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "`webhook_not_found`", body = ErrorBody),
    ),
)]
async fn delete(_caller: Caller, id: i64, state: AppState) -> Result<impl Reply, ApiError> {
    ops::delete(&state, id).await?;
    Ok(StatusCode::NO_CONTENT)
}
