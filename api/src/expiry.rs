//! Noticing expiry, in the background: every `VERIFY_EXPIRY_SWEEP_INTERVAL_MS`, one API
//! process at a time (the others find the sweep taken and skip their turn) records
//! `verification.expired` for the verifications that expired since the last sweep and
//! counts them by country (`db::verifications::sweep_expired_verifications`). Nothing of
//! it runs on the request path, and no verification row is written: a pending
//! verification past its expiry already reads as expired.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use verify_common::db::{DbError, Pool, verifications};
use verify_common::domain::PhoneNumber;

use crate::metrics::ApiMetrics;

/// How long after its expiry a verification is swept. A check is one short statement; one
/// that began before the expiry and still runs this much later would have to wait on
/// locks for seconds, and a start commits within its group-commit batch, well under this.
pub const SETTLE: Duration = Duration::from_secs(2);

/// Sweeps once: the numbers of the verifications found expired, whose
/// `verification.expired` webhooks are recorded; empty when another process is sweeping.
///
/// # Errors
/// [`DbError`] when Postgres fails; then nothing was recorded and the next sweep covers
/// the same verifications.
pub async fn sweep(pool: &Pool) -> Result<Vec<PhoneNumber>, DbError> {
    verifications::sweep_expired_verifications(pool, SETTLE).await
}

/// Sweeps every `interval` until `shutdown`.
pub(crate) async fn run(
    pool: Pool,
    metrics: Arc<ApiMetrics>,
    interval: Duration,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
        match sweep(&pool).await {
            Ok(expired) => {
                for to in &expired {
                    metrics.verification_expired(to);
                }
            }
            Err(error) => tracing::warn!(%error, "could not sweep for expired verifications"),
        }
    }
}
