//! `GET /healthz` (the process answers) and `GET /readyz` (Postgres and RabbitMQ answer).

use std::time::Duration;

use serde_json::json;
use warp::Filter;
use warp::http::StatusCode;
use warp::reply::{Reply, Response};

use crate::state::{AppState, with_state};

/// Longest a readiness probe waits on each dependency.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

pub(super) fn routes(
    state: AppState,
) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
    let healthz = endpoint!(Probe GET "healthz")
        .map(|| warp::reply::json(&json!({"status": "ok"})).into_response());
    let readyz = endpoint!(Probe GET "readyz")
        .and(with_state(state))
        .then(readiness);
    healthz.or(readyz).unify()
}

async fn readiness(state: AppState) -> Response {
    let postgres = tokio::time::timeout(PROBE_TIMEOUT, verify_common::db::ping(&state.pool))
        .await
        .map_err(|_| "timed out".to_owned())
        .and_then(|r| r.map_err(|e| e.to_string()));
    let rabbitmq = tokio::time::timeout(PROBE_TIMEOUT, state.outbox.publisher().ping())
        .await
        .map_err(|_| "timed out".to_owned())
        .and_then(|r| r.map_err(|e| e.to_string()));
    let describe = |r: &Result<(), String>| match r {
        Ok(()) => "ok".to_owned(),
        Err(e) => e.clone(),
    };
    let ready = postgres.is_ok() && rabbitmq.is_ok();
    let body = json!({
        "status": if ready { "ready" } else { "unavailable" },
        "postgres": describe(&postgres),
        "rabbitmq": describe(&rabbitmq),
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    warp::reply::with_status(warp::reply::json(&body), status).into_response()
}
