//! Native routes managing the abuse controls under `/v1/abuse`: rules, the allow list and
//! blocks.

use std::sync::Arc;

use serde::Deserialize;
use serde_json::json;
use verify_common::domain::abuse::{AllowEntry, RuleId, RuleMode, RuleParams};
use warp::Filter;
use warp::http::StatusCode;
use warp::reply::{Reply, Response};

use super::extract;
use super::native::respond;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::operations::abuse::{self as ops, RuleChange};
use crate::state::{AppState, with_state};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleBody {
    mode: Option<String>,
    params: Option<serde_json::Value>,
    reason: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AllowBody {
    kind: String,
    value: String,
    note: Option<String>,
}

pub(super) fn routes(
    state: AppState,
) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
    let caller = extract::caller(Arc::clone(&state.api_keys));
    let state = with_state(state);
    let list_rules = endpoint!(Native GET "v1" / "abuse" / "rules")
        .and(caller.clone())
        .and(state.clone())
        .then(list_rules)
        .map(respond);
    let put_rule = endpoint!(Native PUT "v1" / "abuse" / "rules" / String)
        .and(caller.clone())
        .and_then(extract::rule_id)
        .untuple_one()
        .and(state.clone())
        .and(extract::json())
        .then(put_rule)
        .map(respond);
    let delete_rule = endpoint!(Native DELETE "v1" / "abuse" / "rules" / String)
        .and(caller.clone())
        .and_then(extract::rule_id)
        .untuple_one()
        .and(state.clone())
        .then(delete_rule)
        .map(respond);
    let list_allow = endpoint!(Native GET "v1" / "abuse" / "allow")
        .and(caller.clone())
        .and(state.clone())
        .then(list_allow)
        .map(respond);
    let add_allow = endpoint!(Native POST "v1" / "abuse" / "allow")
        .and(caller.clone())
        .and(state.clone())
        .and(extract::json())
        .then(add_allow)
        .map(respond);
    let delete_allow = endpoint!(Native DELETE "v1" / "abuse" / "allow" / String)
        .and(caller.clone())
        .and_then(extract::record_id)
        .untuple_one()
        .and(state.clone())
        .then(delete_allow)
        .map(respond);
    let list_blocks = endpoint!(Native GET "v1" / "abuse" / "blocks")
        .and(caller.clone())
        .and(state.clone())
        .then(list_blocks)
        .map(respond);
    let lift_block = endpoint!(Native DELETE "v1" / "abuse" / "blocks" / String)
        .and(caller)
        .and_then(extract::record_id)
        .untuple_one()
        .and(state)
        .then(lift_block)
        .map(respond);
    list_rules
        .or(put_rule)
        .unify()
        .or(delete_rule)
        .unify()
        .or(list_allow)
        .unify()
        .or(add_allow)
        .unify()
        .or(delete_allow)
        .unify()
        .or(list_blocks)
        .unify()
        .or(lift_block)
        .unify()
}

async fn list_rules(_caller: Caller, state: AppState) -> Result<impl Reply, ApiError> {
    let (mode, rules) = ops::list_rules(&state).await?;
    Ok(warp::reply::json(&json!({ "mode": mode, "rules": rules })))
}

/// Longest reason kept with a rule.
const MAX_RULE_REASON_CHARS: usize = 300;

/// Reads a change of rule `id`: each field is optional, each present one must be valid.
fn rule_change(id: RuleId, body: RuleBody) -> Result<RuleChange, ApiError> {
    let mode = body
        .mode
        .as_deref()
        .map(str::parse::<RuleMode>)
        .transpose()
        .map_err(|e| ApiError::unprocessable("invalid_rule_mode", "mode", e))?;
    let params = body
        .params
        .as_ref()
        .map(|params| RuleParams::parse(id.kind(), params))
        .transpose()
        .map_err(|e| ApiError::unprocessable("invalid_rule_params", e.field, e.message))?;
    let reason = body.reason.map(|reason| reason.trim().to_owned());
    if let Some(reason) = &reason
        && (reason.chars().count() > MAX_RULE_REASON_CHARS || reason.chars().any(char::is_control))
    {
        return Err(ApiError::unprocessable(
            "invalid_rule_reason",
            "reason",
            format!(
                "the reason may have at most {MAX_RULE_REASON_CHARS} characters and no control characters"
            ),
        ));
    }
    Ok(RuleChange {
        mode,
        params,
        reason,
    })
}

async fn put_rule(
    _caller: Caller,
    id: RuleId,
    state: AppState,
    body: RuleBody,
) -> Result<impl Reply, ApiError> {
    let view = ops::put_rule(&state, id, rule_change(id, body)?).await?;
    Ok(warp::reply::json(&view))
}

async fn delete_rule(_caller: Caller, id: RuleId, state: AppState) -> Result<impl Reply, ApiError> {
    ops::delete_rule(&state, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_allow(_caller: Caller, state: AppState) -> Result<impl Reply, ApiError> {
    let entries = ops::list_allow(&state).await?;
    Ok(warp::reply::json(&json!({ "entries": entries })))
}

async fn add_allow(
    _caller: Caller,
    state: AppState,
    body: AllowBody,
) -> Result<impl Reply, ApiError> {
    let entry = AllowEntry::parse(&body.kind, &body.value, body.note.as_deref())
        .map_err(|e| ApiError::unprocessable("invalid_allow_entry", e.field(), &e))?;
    let view = ops::add_allow(&state, &entry).await?;
    Ok(warp::reply::with_status(
        warp::reply::json(&view),
        StatusCode::CREATED,
    ))
}

async fn delete_allow(_caller: Caller, id: i64, state: AppState) -> Result<impl Reply, ApiError> {
    ops::delete_allow(&state, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_blocks(_caller: Caller, state: AppState) -> Result<impl Reply, ApiError> {
    let blocks = ops::list_blocks(&state).await?;
    Ok(warp::reply::json(&json!({ "blocks": blocks })))
}

async fn lift_block(_caller: Caller, id: i64, state: AppState) -> Result<impl Reply, ApiError> {
    ops::lift_block(&state, id).await?;
    Ok(StatusCode::NO_CONTENT)
}
