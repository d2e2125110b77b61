//! `--check`: for every accepted verification, wait for its SMS at the sink, read the code
//! and check it through the API, counting right and wrong answers and timing the check.
//!
//! Each verification gets a task of its own, spawned when its POST is accepted, so checks
//! never hold up the POST schedule. A task sleeps until its SMS is likely to be there
//! (learned from the SMS found so far), then polls the sink's indexed per-number lookup with
//! a short backoff. Sleeping tasks cost no connection: only sink polls and check requests
//! take one of `--check-concurrency` permits, which bounds the extra load the checks put on
//! the system being measured.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::client::{ApiClient, SinkClient};
use crate::delivery::extract_code;
use crate::latency::LatencyHistogram;
use crate::tally::{Accepted, Failures};

/// Earliest first look at the sink after an accepted POST.
const FIRST_POLL_FLOOR: Duration = Duration::from_millis(20);
/// Gap after a look that found nothing; doubles up to [`POLL_GAP_CAP`].
const FIRST_POLL_GAP: Duration = Duration::from_millis(25);
const POLL_GAP_CAP: Duration = Duration::from_secs(1);

/// How the checks went.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CheckFigures {
    /// Checks answered `approved` / `valid: true`.
    pub approved: u64,
    /// Checks answered 200 with anything else: the right code was refused.
    pub wrong: u64,
    /// Checks that failed with an error status or no answer.
    pub failed: u64,
    /// SMS in which no code of the verification's length was found.
    pub unreadable: u64,
    /// Verifications whose SMS did not turn up before the drain ended.
    pub not_delivered: u64,
}

/// The `--check` machinery of one run.
pub struct Checker {
    api: ApiClient,
    sink: SinkClient,
    permits: Semaphore,
    give_up: CancellationToken,
    tasks: TaskTracker,
    // Learned delay from an accepted POST to its SMS being visible at the sink, in µs.
    visible_after_micros: AtomicU64,
    inner: Mutex<Inner>,
}

/// Everything the checks recorded.
#[derive(Clone, Debug, Default)]
pub struct CheckResults {
    /// Outcomes.
    pub figures: CheckFigures,
    /// Time of each check request.
    pub latency: LatencyHistogram,
    /// Failed check requests.
    pub failures: Failures,
    /// When the last check was answered.
    pub last_answer: Option<Instant>,
}

#[derive(Default)]
struct Inner {
    results: CheckResults,
}

impl Checker {
    /// A checker allowing `concurrency` sink polls and checks at once.
    pub fn new(api: ApiClient, sink: SinkClient, concurrency: usize) -> Checker {
        Checker {
            api,
            sink,
            permits: Semaphore::new(concurrency),
            give_up: CancellationToken::new(),
            tasks: TaskTracker::new(),
            visible_after_micros: AtomicU64::new(0),
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Starts checking `verification`, sent to `number` and accepted at `accepted_at`.
    pub fn spawn(self: &Arc<Self>, number: String, verification: Accepted, accepted_at: Instant) {
        let checker = Arc::clone(self);
        self.tasks.spawn(async move {
            checker.check(number, verification, accepted_at).await;
        });
    }

    /// Checks done so far.
    pub fn done(&self) -> u64 {
        let figures = &self.lock().results.figures;
        figures.approved + figures.wrong + figures.failed + figures.unreadable
    }

    /// Waits until every check has finished, `deadline` passes or `stop` is cancelled;
    /// checks still waiting for their SMS then count as not delivered.
    pub async fn finish(&self, deadline: Instant, stop: &CancellationToken) {
        self.tasks.close();
        tokio::select! {
            () = self.tasks.wait() => return,
            () = tokio::time::sleep_until(deadline.into()) => {}
            () = stop.cancelled() => {}
        }
        self.give_up.cancel();
        self.tasks.wait().await;
    }

    /// What the checks recorded so far.
    pub fn results(&self) -> CheckResults {
        self.lock().results.clone()
    }

    async fn check(&self, number: String, verification: Accepted, accepted_at: Instant) {
        let Some(body) = self.wait_for_sms(&number, accepted_at).await else {
            self.lock().results.figures.not_delivered += 1;
            return;
        };
        let Some(code) = extract_code(&body, verification.code_length) else {
            self.lock().results.figures.unreadable += 1;
            return;
        };
        let answer = {
            let _permit = self.permits.acquire().await;
            let started = Instant::now();
            let answer = self.api.check_code(&verification.id, code).await;
            let answered = Instant::now();
            let mut inner = self.lock();
            inner.results.latency.record(answered - started);
            inner.results.last_answer = inner.results.last_answer.max(Some(answered));
            answer
        };
        let results = &mut self.lock().results;
        match answer {
            Ok(answer) if answer.is_approved() => results.figures.approved += 1,
            Ok(_) => results.figures.wrong += 1,
            Err(error) => {
                results.figures.failed += 1;
                results.failures.record(&error);
            }
        }
    }

    /// The body of the first SMS to `number`, or `None` if the run gives up first.
    async fn wait_for_sms(&self, number: &str, accepted_at: Instant) -> Option<String> {
        let expected = Duration::from_micros(self.visible_after_micros.load(Ordering::Relaxed));
        let mut wait = expected
            .saturating_sub(accepted_at.elapsed())
            .max(FIRST_POLL_FLOOR);
        let mut gap = FIRST_POLL_GAP;
        loop {
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = self.give_up.cancelled() => return None,
            }
            let found = {
                let _permit = self.permits.acquire().await;
                self.sink.messages_to(number).await
            };
            // A failed look is retried like an empty one: the drain deadline bounds both.
            if let Some(message) = found.ok().and_then(|messages| messages.into_iter().next()) {
                self.learn_visibility(accepted_at.elapsed());
                return Some(message.body);
            }
            wait = gap;
            gap = (gap * 2).min(POLL_GAP_CAP);
        }
    }

    /// Moves the expected visibility delay towards a little less than `observed`, so most
    /// first looks find the SMS while the estimate keeps probing for a shorter delay.
    fn learn_visibility(&self, observed: Duration) {
        let observed = u64::try_from(observed.as_micros()).unwrap_or(u64::MAX);
        let target = observed / 10 * 8;
        let current = self.visible_after_micros.load(Ordering::Relaxed);
        let next = if current == 0 {
            target
        } else {
            current - current / 8 + target / 8
        };
        // A lost update between two tasks only skips one sample of an estimate.
        self.visible_after_micros.store(next, Ordering::Relaxed);
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Nothing panics while the lock is held; the figures stay consistent.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
