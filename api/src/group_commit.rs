//! Start requests recorded together: the API's [`GroupCommit`] of new verifications.
//!
//! Each start request needs its idempotency key (if it has one), the number's lock, the
//! send-limit count, the velocity counts, the cancel of the number's earlier open verification and two inserts
//! in a transaction flushed to disk when it commits. Done per request, that was most of
//! Postgres' work under load, and Postgres was the bottleneck; in batches, one statement
//! and one commit serve every request that arrived meanwhile
//! ([`starts::insert_verifications`]). Every start goes this way, idempotent or not.
//!
//! The jobs of the sends created are handed to the outbox here, as soon as their batch
//! commits, so a send whose requester went away meanwhile is still published at once.

use std::sync::Arc;
use std::time::Duration;

use verify_common::db::Pool;
use verify_common::db::starts::{self, CreateOutcome, NewVerification, SendLimit, StartResult};
use verify_common::group_commit::{BatchLimits, GroupCommit};

use crate::outbox::Outbox;

/// New verifications, each answered with its own outcome.
pub(crate) type Starts = GroupCommit<NewVerification, StartResult>;

/// Up to 128 requests per statement, two statements at once (each holds one of the pool's
/// connections while it runs). A batch waits 2 ms for company: at 1,000 requests/s that
/// turns one commit per request into one per few, and it cost less latency than the
/// commits it saved (measured with `scripts/bench`, scenario c).
const LIMITS: BatchLimits = BatchLimits {
    max_batch: 128,
    in_flight: 2,
    linger: Duration::from_millis(2),
};

/// Starts the batcher of new verifications.
pub(crate) fn record_starts(pool: Pool, outbox: Arc<Outbox>, limit: SendLimit) -> Starts {
    GroupCommit::start(LIMITS, move |batch: Vec<NewVerification>| {
        let pool = pool.clone();
        let outbox = Arc::clone(&outbox);
        async move {
            let outcomes = starts::insert_verifications(&pool, &batch, limit).await?;
            for (new, result) in batch.iter().zip(&outcomes) {
                if let CreateOutcome::Created(created) = &result.outcome {
                    outbox.publish(created.1.id, new.trace);
                }
            }
            Ok(outcomes)
        }
    })
}
