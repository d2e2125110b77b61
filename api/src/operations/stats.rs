//! Stats: traffic figures of a window, read from the rollups.

use verify_common::db::stats;
use verify_common::domain::{StatsGroupBy, StatsWindow};

use crate::error::ApiError;
use crate::state::AppState;
use crate::views::{StatsGroupView, StatsView};

/// The figures of the verifications started in `window`, grouped by `group_by`.
///
/// # Errors
/// 503 when Postgres is down.
pub(crate) async fn report(
    state: &AppState,
    window: StatsWindow,
    group_by: Option<StatsGroupBy>,
) -> Result<StatsView, ApiError> {
    let figures = stats::read_stats(&state.pool, &window, group_by).await?;
    Ok(StatsView {
        from: window.from(),
        to: window.to(),
        group_by: group_by.map(StatsGroupBy::as_str),
        groups: figures.iter().map(StatsGroupView::new).collect(),
    })
}
