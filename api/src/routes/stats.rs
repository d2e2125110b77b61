//! `GET /v1/stats`: traffic figures of a window, optionally grouped.

use std::sync::Arc;

use utoipa::IntoParams;
use verify_common::domain::{StatsGroupBy, StatsWindow, StatsWindowError};
use warp::Filter;
use warp::reply::{Reply, Response};

use super::extract;
use super::native::respond;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::operations::stats as ops;
use crate::state::{AppState, with_state};
use crate::views::StatsView;

pub(super) fn routes(
    state: AppState,
) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
    endpoint!(Native GET "v1" / "stats")
        .and(extract::caller(Arc::clone(&state.api_keys)))
        .and(with_state(state))
        .and(warp::query::raw().or(warp::any().map(String::new)).unify())
        .then(report)
        .map(respond)
}

/// The query's parameters, as given.
#[derive(Debug, Default, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct StatsQuery {
    /// The window's start (RFC 3339), rounded down to the hour.
    #[param(required = true, value_type = String, format = DateTime)]
    from: Option<String>,
    /// The window's end (RFC 3339), rounded up to the hour; at most 400 days after `from`.
    #[param(required = true, value_type = String, format = DateTime)]
    to: Option<String>,
    /// One row per country, template, provider or day; a single row when absent.
    #[param(value_type = Option<StatsGroupBy>)]
    group_by: Option<String>,
}

/// Traffic figures of a window: starts, sends, deliveries, approvals, conversion and
/// delivery rates, median times; optionally one row per group.
#[utoipa::path(
    get,
    path = "/v1/stats",
    operation_id = "get_stats",
    tag = "stats",
    params(StatsQuery),
    responses((status = 200, description = "The report", body = StatsView)),
)]
async fn report(_caller: Caller, state: AppState, query: String) -> Result<impl Reply, ApiError> {
    let query = parse_query(&query)?;
    let window = StatsWindow::parse(query.from.as_deref(), query.to.as_deref()).map_err(|e| {
        let code = match e {
            StatsWindowError::Empty | StatsWindowError::TooLong => "invalid_window",
            StatsWindowError::Missing { .. } | StatsWindowError::NotATime { .. } => "invalid_time",
        };
        ApiError::invalid(code, e.field(), e)
    })?;
    let group_by = query
        .group_by
        .as_deref()
        .map(StatsGroupBy::parse)
        .transpose()
        .map_err(|e| ApiError::invalid("invalid_group_by", "group_by", e))?;
    Ok(warp::reply::json(
        &ops::report(&state, window, group_by).await?,
    ))
}

/// Reads `from`, `to` and `group_by` from a raw query string, naming a parameter that is
/// unknown or given twice.
fn parse_query(raw: &str) -> Result<StatsQuery, ApiError> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(raw).map_err(|_| {
        ApiError::invalid(
            "invalid_query",
            "query",
            "the query string is not URL-encoded",
        )
    })?;
    let mut query = StatsQuery::default();
    for (name, value) in pairs {
        let slot = match name.as_str() {
            "from" => &mut query.from,
            "to" => &mut query.to,
            "group_by" => &mut query.group_by,
            _ => {
                return Err(ApiError::invalid(
                    "invalid_query",
                    name.clone(),
                    format!("unknown query parameter {name:?}"),
                ));
            }
        };
        if slot.replace(value).is_some() {
            return Err(ApiError::invalid(
                "invalid_query",
                name.clone(),
                format!("{name} is given more than once"),
            ));
        }
    }
    Ok(query)
}
