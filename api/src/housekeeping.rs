//! Periodic clean-up the API does in the background: expired idempotency keys.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use verify_common::db::{Pool, idempotency};

/// How often expired idempotency keys are deleted. Expiry itself is exact (expired keys
/// are ignored when presented); deleting them only bounds the table's size.
const INTERVAL: Duration = Duration::from_secs(15 * 60);

/// Runs until `shutdown`.
pub(crate) async fn run(pool: Pool, shutdown: CancellationToken) {
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
    }
}
