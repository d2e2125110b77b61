//! The conversion breaker, evaluated in the background: every
//! `VERIFY_ABUSE_BREAKER_INTERVAL_MS`, one API process at a time (the others find the
//! evaluation taken and skip their turn) runs one statement that blocks the prefixes and
//! countries whose codes are almost never used (`db::abuse::trip_conversion_breakers`).
//! Nothing of it runs on the request path: starts only meet the blocks it wrote, through
//! the blocks every process holds in memory (`crate::abuse`).

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use verify_common::db::abuse::{self, ConversionCheck};
use verify_common::db::{DbError, Pool};
use verify_common::domain::abuse::{AllowList, RuleId, RuleMode, RuleParams, RuleSet};

use crate::abuse::AbuseControls;

/// Evaluates the conversion rules once, as stored now and capped by `global`: the number
/// of blocks written or renewed, or `None` when another process is evaluating them.
/// Rules that are off are not evaluated; rules in shadow mode write shadow blocks.
///
/// # Errors
/// [`DbError`] when Postgres fails; then nothing was written.
pub async fn evaluate(pool: &Pool, global: RuleMode) -> Result<Option<u64>, DbError> {
    let snapshot = abuse::load_rules(pool).await?;
    // The allow list is applied in the statement, which reads it itself.
    let rules = RuleSet::new(
        global,
        snapshot.rules.iter().map(|record| record.rule),
        AllowList::default(),
    );
    let checks: Vec<ConversionCheck> = [RuleId::ConversionPrefix, RuleId::ConversionCountry]
        .into_iter()
        .filter_map(|id| {
            let (rule, mode) = rules.counting_rule(id)?;
            let RuleParams::Conversion(breaker) = rule.params else {
                return None;
            };
            (mode != RuleMode::Off).then_some(ConversionCheck {
                rule: id,
                breaker,
                shadow: mode == RuleMode::Shadow,
            })
        })
        .collect();
    if checks.is_empty() {
        return Ok(Some(0));
    }
    abuse::trip_conversion_breakers(pool, &checks).await
}

/// Evaluates the breaker every `interval` until `shutdown`. Blocks it writes apply in this
/// process at once, and in the others when they hear of them.
pub(crate) async fn run(
    controls: Arc<AbuseControls>,
    pool: Pool,
    interval: Duration,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
        match evaluate(&pool, controls.global_mode()).await {
            Ok(Some(0) | None) => {}
            Ok(Some(written)) => {
                tracing::info!(written, "the conversion breaker wrote or renewed blocks");
                if let Err(error) = controls.reload_blocks().await {
                    tracing::warn!(%error, "could not reload the abuse blocks");
                }
            }
            Err(error) => tracing::warn!(%error, "could not evaluate the conversion breaker"),
        }
    }
}
