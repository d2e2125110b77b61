//! Periodic clean-up the API does in the background: expired idempotency keys, velocity
//! counts older than every window that reads them, failed checks older than any guess
//! budget's window, and delivery receipts held for a day without their send appearing;
//! and folding the stats rollups' shards of closed hours and days, which keeps
//! `GET /v1/stats` reading one row per key and period.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use verify_common::db::{Pool, abuse, deliveries, idempotency, stats};

use crate::abuse::AbuseControls;

/// How often old rows are deleted. Expiry itself is exact (expired keys are ignored when
/// presented, counts and failed checks are read within their windows); deleting only
/// bounds the tables.
const INTERVAL: Duration = Duration::from_secs(15 * 60);

/// How long a receipt waits for its send's message id to be recorded. A worker records it
/// within seconds of the provider's answer; a receipt still unmatched after a day is for a
/// message this deployment never recorded (another system on the same provider account).
const HELD_RECEIPT_LIFETIME: Duration = Duration::from_secs(24 * 60 * 60);

/// Runs until `shutdown`.
pub(crate) async fn run(pool: Pool, controls: Arc<AbuseControls>, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(INTERVAL) => {}
        }
        match idempotency::delete_expired_idempotency_keys(&pool).await {
            Ok(0) => {}
            Ok(count) => tracing::info!(count, "deleted expired idempotency keys"),
            Err(error) => tracing::warn!(%error, "could not delete expired idempotency keys"),
        }
        let (sends, buckets) = controls.velocity_retention();
        match abuse::delete_old_velocity_counts(&pool, sends, buckets).await {
            Ok(0) => {}
            Ok(count) => tracing::info!(count, "deleted old velocity counts"),
            Err(error) => tracing::warn!(%error, "could not delete old velocity counts"),
        }
        match abuse::delete_old_guesses(&pool).await {
            Ok(0) => {}
            Ok(count) => tracing::info!(count, "deleted old failed checks"),
            Err(error) => tracing::warn!(%error, "could not delete old failed checks"),
        }
        match deliveries::delete_stale_held_receipts(&pool, HELD_RECEIPT_LIFETIME).await {
            Ok(0) => {}
            // At warn: each is a receipt that was never applied to any send.
            Ok(count) => tracing::warn!(
                count,
                "deleted delivery receipts whose message id no send recorded within a day"
            ),
            Err(error) => tracing::warn!(%error, "could not delete stale held receipts"),
        }
        match stats::fold_closed_shards(&pool).await {
            Ok(0) => {}
            Ok(count) => tracing::debug!(count, "folded stats rollup shards"),
            Err(error) => tracing::warn!(%error, "could not fold stats rollup shards"),
        }
    }
}
