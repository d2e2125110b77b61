//! Native routes managing the abuse controls under `/v1/abuse`: rules, the allow list and
//! blocks.

use std::sync::Arc;

use serde::Deserialize;
use utoipa::ToSchema;
use verify_common::domain::abuse::{AllowEntry, AllowKind, RuleId, RuleMode, RuleParams};
use warp::Filter;
use warp::http::StatusCode;
use warp::reply::{Reply, Response};

use super::extract;
use super::native::respond;
use crate::auth::Caller;
use crate::error::ApiError;
use crate::error::ErrorBody;
use crate::operations::abuse::{self as ops, RuleChange};
use crate::state::{AppState, with_state};
use crate::views::{AllowListView, AllowView, BlockListView, RuleListView, RuleView};

/// A change of a rule: each field optional, each present one valid.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = RuleChange)]
pub(super) struct RuleBody {
    #[schema(value_type = Option<RuleMode>)]
    mode: Option<String>,
    /// The rule's parameters, of the shape its kind reads.
    #[schema(value_type = Option<Object>)]
    params: Option<serde_json::Value>,
    /// Why the rule is set this way: at most 300 characters.
    reason: Option<String>,
}

/// A new allow-list entry.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = NewAllowEntry)]
pub(super) struct AllowBody {
    #[schema(value_type = AllowKind)]
    kind: String,
    /// A number in E.164, a prefix of one, or a stored API key's id, as `kind` says.
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

/// Every abuse rule, how it applies and how often it matched.
#[utoipa::path(
    get,
    path = "/v1/abuse/rules",
    operation_id = "list_abuse_rules",
    tag = "abuse",
    responses((status = 200, description = "The rules", body = RuleListView)),
)]
async fn list_rules(_caller: Caller, state: AppState) -> Result<impl Reply, ApiError> {
    let (mode, rules) = ops::list_rules(&state).await?;
    Ok(warp::reply::json(&RuleListView { mode, rules }))
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

/// Creates or changes a rule. A new rule needs its `params`; its mode defaults to
/// `enforce`.
#[utoipa::path(
    put,
    path = "/v1/abuse/rules/{id}",
    operation_id = "put_abuse_rule",
    tag = "abuse",
    params(("id" = String, Path, description = "The rule's id: its kind and what it \
        judges (`number_type.voip`, `country.default`, `country.NG`, a velocity rule's name)")),
    request_body = RuleBody,
    responses(
        (status = 200, description = "The rule as now stored", body = RuleView),
        (status = 422, description = "`invalid_rule_mode`, `invalid_rule_params`, \
            `invalid_rule_reason`", body = ErrorBody),
    ),
)]
async fn put_rule(
    _caller: Caller,
    id: RuleId,
    state: AppState,
    body: RuleBody,
) -> Result<impl Reply, ApiError> {
    let view = ops::put_rule(&state, id, rule_change(id, body)?).await?;
    Ok(warp::reply::json(&view))
}

/// Deletes a rule. `country.default` stays: it decides for every country without a
/// rule of its own.
#[utoipa::path(
    delete,
    path = "/v1/abuse/rules/{id}",
    operation_id = "delete_abuse_rule",
    tag = "abuse",
    params(("id" = String, Path, description = "The rule's id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "`rule_not_found`", body = ErrorBody),
        (status = 409, description = "`rule_required`: change its mode instead",
            body = ErrorBody),
    ),
)]
async fn delete_rule(_caller: Caller, id: RuleId, state: AppState) -> Result<impl Reply, ApiError> {
    ops::delete_rule(&state, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The allow list: numbers, prefixes and API keys the abuse rules never refuse.
#[utoipa::path(
    get,
    path = "/v1/abuse/allow",
    operation_id = "list_allow_entries",
    tag = "abuse",
    responses((status = 200, description = "The allow list", body = AllowListView)),
)]
async fn list_allow(_caller: Caller, state: AppState) -> Result<impl Reply, ApiError> {
    let entries = ops::list_allow(&state).await?;
    Ok(warp::reply::json(&AllowListView { entries }))
}

/// Adds an entry to the allow list.
#[utoipa::path(
    post,
    path = "/v1/abuse/allow",
    operation_id = "add_allow_entry",
    tag = "abuse",
    request_body = AllowBody,
    responses(
        (status = 201, description = "The new entry", body = AllowView),
        (status = 409, description = "`allow_entry_exists`", body = ErrorBody),
        (status = 422, description = "`invalid_allow_entry`, or an API key id that names \
            no stored key", body = ErrorBody),
    ),
)]
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

/// Removes an allow-list entry.
#[utoipa::path(
    delete,
    path = "/v1/abuse/allow/{id}",
    operation_id = "delete_allow_entry",
    tag = "abuse",
    params(("id" = i64, Path, minimum = 1, description = "The entry's id")),
    responses(
        (status = 204, description = "Removed"),
        (status = 404, description = "`allow_entry_not_found`", body = ErrorBody),
    ),
)]
async fn delete_allow(_caller: Caller, id: i64, state: AppState) -> Result<impl Reply, ApiError> {
    ops::delete_allow(&state, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The blocks in force, written by the rules.
#[utoipa::path(
    get,
    path = "/v1/abuse/blocks",
    operation_id = "list_blocks",
    tag = "abuse",
    responses((status = 200, description = "The blocks", body = BlockListView)),
)]
async fn list_blocks(_caller: Caller, state: AppState) -> Result<impl Reply, ApiError> {
    let blocks = ops::list_blocks(&state).await?;
    Ok(warp::reply::json(&BlockListView { blocks }))
}

/// Lifts a block before its end.
#[utoipa::path(
    delete,
    path = "/v1/abuse/blocks/{id}",
    operation_id = "lift_block",
    tag = "abuse",
    params(("id" = i64, Path, minimum = 1, description = "The block's id")),
    responses(
        (status = 204, description = "Lifted"),
        (status = 404, description = "`block_not_found`", body = ErrorBody),
    ),
)]
async fn lift_block(_caller: Caller, id: i64, state: AppState) -> Result<impl Reply, ApiError> {
    ops::lift_block(&state, id).await?;
    Ok(StatusCode::NO_CONTENT)
}
