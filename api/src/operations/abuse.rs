//! Managing the abuse controls: rules, the allow list and blocks.

use verify_common::db::abuse::{self, AllowInsertOutcome};
use verify_common::domain::abuse::{AllowEntry, Rule, RuleId, RuleKind, RuleMode, RuleParams};

use crate::error::ApiError;
use crate::state::AppState;
use crate::views::{AllowView, BlockView, RuleView};

/// The process-wide mode and every rule with its counts.
///
/// # Errors
/// 503 when Postgres is down.
pub(crate) async fn list_rules(state: &AppState) -> Result<(RuleMode, Vec<RuleView>), ApiError> {
    let global = state.abuse.global_mode();
    let snapshot = abuse::load_rules(&state.pool).await?;
    let counts = abuse::rule_counts(&state.pool).await?;
    let views = snapshot
        .rules
        .iter()
        .map(|record| RuleView::new(record, global, &counts))
        .collect();
    Ok((global, views))
}

/// A change to one rule: a new mode, new parameters, a new reason, or several; what is
/// left out stays.
#[derive(Debug, Clone)]
pub(crate) struct RuleChange {
    pub mode: Option<RuleMode>,
    pub params: Option<RuleParams>,
    pub reason: Option<String>,
}

/// Creates or changes a rule; this process applies it at once, the others within their
/// refresh interval. A new rule needs its parameters; its mode defaults to `enforce`.
///
/// # Errors
/// 422 `invalid_rule_params` naming `params` for a new rule without them; 503 when
/// Postgres is down.
pub(crate) async fn put_rule(
    state: &AppState,
    id: RuleId,
    change: RuleChange,
) -> Result<RuleView, ApiError> {
    let current = abuse::find_rule(&state.pool, id).await?;
    let example = match id.kind() {
        RuleKind::Velocity => {
            r#"{"scope": "client_ip", "window_secs": 3600, "limit": 10, "action": "block"}"#
        }
        RuleKind::NumberType | RuleKind::Country => r#"{"action": "block"}"#,
        RuleKind::Guess => r#"{"window_secs": 3600, "limit": 10, "lock_secs": 3600}"#,
        RuleKind::Conversion => {
            r#"{"min_sends": 50, "min_conversion_pct": 20, "window_secs": 3600, "cooldown_secs": 43200, "grace_secs": 120}"#
        }
    };
    let params = change
        .params
        .or(current.as_ref().map(|record| record.rule.params))
        .ok_or_else(|| {
            ApiError::unprocessable(
                "invalid_rule_params",
                "params",
                format!("{id} is a new rule: give its params, such as {example}"),
            )
        })?;
    let mode = change
        .mode
        .or(current.as_ref().map(|record| record.rule.mode))
        .unwrap_or(RuleMode::Enforce);
    let reason = change
        .reason
        .or(current.map(|record| record.reason))
        .unwrap_or_default();
    let record = abuse::put_rule(&state.pool, &Rule { id, mode, params }, &reason).await?;
    reload_rules(state).await;
    let counts = abuse::rule_counts(&state.pool).await?;
    Ok(RuleView::new(&record, state.abuse.global_mode(), &counts))
}

/// Deletes a rule. `country.default` stays: it decides for every country without a rule
/// of its own.
///
/// # Errors
/// 409 `rule_required` for `country.default`, 404 `rule_not_found`, 503 when Postgres is
/// down.
pub(crate) async fn delete_rule(state: &AppState, id: RuleId) -> Result<(), ApiError> {
    if id == RuleId::CountryDefault {
        return Err(ApiError::Conflict {
            code: "rule_required",
            message: "country.default decides for every country without a rule of its own; \
                      change its action instead"
                .to_owned(),
        });
    }
    if !abuse::delete_rule(&state.pool, id).await? {
        return Err(ApiError::NotFound {
            code: "rule_not_found",
            what: "rule",
        });
    }
    reload_rules(state).await;
    Ok(())
}

/// Applies a change of the rules or the allow list made here at once. Should the reload
/// fail, the change is stored and the periodic refresh applies it, so the request still
/// succeeds.
async fn reload_rules(state: &AppState) {
    if let Err(error) = state.abuse.reload().await {
        tracing::warn!(%error, "could not reload the abuse rules after a change");
    }
}

/// Every allow-list entry.
///
/// # Errors
/// 503 when Postgres is down.
pub(crate) async fn list_allow(state: &AppState) -> Result<Vec<AllowView>, ApiError> {
    Ok(abuse::list_allow_entries(&state.pool)
        .await?
        .iter()
        .map(AllowView::new)
        .collect())
}

/// Adds an allow-list entry; this process applies it at once, the others as they do rule
/// changes.
///
/// # Errors
/// 409 `allow_entry_exists`, 422 `unknown_api_key` naming `value`, 503 when Postgres is
/// down.
pub(crate) async fn add_allow(state: &AppState, entry: &AllowEntry) -> Result<AllowView, ApiError> {
    match abuse::insert_allow_entry(&state.pool, entry).await? {
        AllowInsertOutcome::Added(record) => {
            reload_rules(state).await;
            Ok(AllowView::new(&record))
        }
        AllowInsertOutcome::Exists => Err(ApiError::Conflict {
            code: "allow_entry_exists",
            message: format!(
                "the allow list has the {} {} already",
                entry.kind(),
                entry.value()
            ),
        }),
        AllowInsertOutcome::UnknownApiKey => Err(ApiError::unprocessable(
            "unknown_api_key",
            "value",
            "no stored API key has this id (see `verify-api keys list`)",
        )),
    }
}

/// Removes an allow-list entry, applied as [`add_allow`] applies one.
///
/// # Errors
/// 404 `allow_entry_not_found`, 503 when Postgres is down.
pub(crate) async fn delete_allow(state: &AppState, id: i64) -> Result<(), ApiError> {
    if abuse::delete_allow_entry(&state.pool, id).await? {
        reload_rules(state).await;
        Ok(())
    } else {
        Err(ApiError::NotFound {
            code: "allow_entry_not_found",
            what: "allow-list entry",
        })
    }
}

/// Every block in force.
///
/// # Errors
/// 503 when Postgres is down.
pub(crate) async fn list_blocks(state: &AppState) -> Result<Vec<BlockView>, ApiError> {
    Ok(abuse::list_active_blocks(&state.pool)
        .await?
        .iter()
        .map(BlockView::new)
        .collect())
}

/// Lifts a block in force: this process stops applying it at once, the others when they
/// hear of it.
///
/// # Errors
/// 404 `block_not_found` (also for a block that has run out or was lifted), 503 when
/// Postgres is down.
pub(crate) async fn lift_block(state: &AppState, id: i64) -> Result<(), ApiError> {
    if abuse::lift_block(&state.pool, id).await? {
        if let Err(error) = state.abuse.reload_blocks().await {
            tracing::warn!(%error, "could not reload the abuse blocks after a lift");
        }
        Ok(())
    } else {
        Err(ApiError::NotFound {
            code: "block_not_found",
            what: "block",
        })
    }
}
