//! Native routes managing webhook endpoints under `/v1/webhooks`.

use std::sync::Arc;

use serde::Deserialize;
use serde_json::json;
use verify_common::db::webhooks::EndpointChange;
use warp::Filter;
use warp::http::StatusCode;
use warp::reply::{Reply, Response};

use super::extract;
use super::native::respond;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::operations::webhooks as ops;
use crate::state::{AppState, with_state};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    url: String,
    events: Vec<String>,
}

/// A change: each field optional, each present one valid.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChangeBody {
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

async fn list(_caller: Caller, state: AppState) -> Result<impl Reply, ApiError> {
    let webhooks = ops::list(&state).await?;
    Ok(warp::reply::json(&json!({ "webhooks": webhooks })))
}

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

async fn find(_caller: Caller, id: i64, state: AppState) -> Result<impl Reply, ApiError> {
    Ok(warp::reply::json(&ops::find(&state, id).await?))
}

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

async fn delete(_caller: Caller, id: i64, state: AppState) -> Result<impl Reply, ApiError> {
    ops::delete(&state, id).await?;
    Ok(StatusCode::NO_CONTENT)
}
