//! What the send phase has seen: counts, API latency, failures by status, and every
//! accepted verification with its number and send time, shared by all request tasks.
//!
//! The counters the progress line reads every second are atomics; everything recorded per
//! answer sits behind one mutex, taken once per answer, which costs nothing next to an HTTP
//! round trip.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use crate::client::{ClientError, Started, TransportKind};
use crate::latency::LatencyHistogram;

/// A verification the API accepted (202).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Accepted {
    /// Its id.
    pub id: String,
    /// Digits in its code.
    pub code_length: u8,
    /// When its POST was due (open loop) or sent (closed loop), in wall-clock time: the
    /// start of its end-to-end latency.
    pub sent_at: DateTime<Utc>,
}

/// Failures counted by kind, with one example detail per kind.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Failures {
    /// Answers with an unexpected status, by status code.
    pub statuses: BTreeMap<u16, u64>,
    /// Requests without an answer, by kind.
    pub transport: BTreeMap<TransportKind, u64>,
    /// Answers with the right status but unreadable JSON.
    pub decode: u64,
    /// The first detail seen for each status or kind (e.g. `429` → `rate_limited`).
    pub examples: BTreeMap<String, String>,
}

impl Failures {
    /// Counts one failure.
    pub fn record(&mut self, error: &ClientError) {
        let (key, detail) = match error {
            ClientError::Status { status, detail } => {
                *self.statuses.entry(status.as_u16()).or_default() += 1;
                (status.as_u16().to_string(), detail.clone())
            }
            ClientError::Transport { kind, source } => {
                *self.transport.entry(*kind).or_default() += 1;
                (kind.as_str().to_owned(), source.to_string())
            }
            ClientError::Decode(detail) => {
                self.decode += 1;
                ("decode".to_owned(), detail.clone())
            }
        };
        self.examples.entry(key).or_insert(detail);
    }

    /// All failures.
    pub fn total(&self) -> u64 {
        self.statuses.values().sum::<u64>() + self.transport.values().sum::<u64>() + self.decode
    }
}

/// The live counters, for the progress line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// POSTs started.
    pub sent: u64,
    /// 202 answers.
    pub accepted: u64,
    /// Every other outcome.
    pub failed: u64,
    /// POSTs started and not yet answered.
    pub in_flight: u64,
}

/// Everything the send phase recorded, once it is over.
#[derive(Debug, Default)]
pub struct SendResults {
    /// Final counters.
    pub counters: Counters,
    /// Due or start time to answer, for every POST that got an answer or an error.
    pub api_latency: LatencyHistogram,
    /// Open loop: how late each POST actually left, against its due time.
    pub send_lag: LatencyHistogram,
    /// What went wrong.
    pub failures: Failures,
    /// Accepted verifications by phone number.
    pub accepted: HashMap<String, Accepted>,
    /// When the last POST left.
    pub last_start: Option<Instant>,
    /// When the last POST was answered.
    pub last_answer: Option<Instant>,
}

/// The shared recorder.
#[derive(Debug, Default)]
pub struct Tally {
    sent: AtomicU64,
    accepted: AtomicU64,
    failed: AtomicU64,
    answered: AtomicU64,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    results: SendResults,
    // API latency since the progress line last looked.
    recent_latency: LatencyHistogram,
}

/// One answered POST, as the request task saw it.
#[derive(Debug)]
pub struct Answer<'a> {
    /// The number it was sent to.
    pub number: String,
    /// When it was due; its latency counts from here.
    pub due: Instant,
    /// `due` in wall-clock time.
    pub due_wall: DateTime<Utc>,
    /// When it actually left.
    pub started: Instant,
    /// When the answer (or the error) came.
    pub answered: Instant,
    /// The answer.
    pub result: &'a Result<Started, ClientError>,
}

impl Tally {
    /// Counts a POST that is about to leave.
    pub fn record_start(&self) {
        self.sent.fetch_add(1, Ordering::Relaxed);
    }

    /// Records an answered POST; returns the verification when it was accepted.
    pub fn record_answer(&self, answer: Answer<'_>) -> Option<Accepted> {
        let latency = answer.answered.saturating_duration_since(answer.due);
        let lag = answer.started.saturating_duration_since(answer.due);
        let accepted = match answer.result {
            Ok(started) => {
                self.accepted.fetch_add(1, Ordering::Relaxed);
                Some(Accepted {
                    id: started.id.clone(),
                    code_length: started.code_length,
                    sent_at: answer.due_wall,
                })
            }
            Err(_) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
                None
            }
        };
        {
            let mut inner = self.lock();
            let results = &mut inner.results;
            results.api_latency.record(latency);
            results.send_lag.record(lag);
            results.last_answer = Some(
                results
                    .last_answer
                    .map_or(answer.answered, |last| last.max(answer.answered)),
            );
            match (&accepted, answer.result) {
                (Some(accepted), _) => {
                    results.accepted.insert(answer.number, accepted.clone());
                }
                (None, Err(error)) => results.failures.record(error),
                (None, Ok(_)) => {}
            }
            inner.recent_latency.record(latency);
        }
        self.answered.fetch_add(1, Ordering::Relaxed);
        accepted
    }

    /// The counters now.
    pub fn counters(&self) -> Counters {
        let sent = self.sent.load(Ordering::Relaxed);
        let answered = self.answered.load(Ordering::Relaxed);
        Counters {
            sent,
            accepted: self.accepted.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            in_flight: sent.saturating_sub(answered),
        }
    }

    /// The 99th percentile of API latency since the last call, and forgets those samples.
    pub fn take_recent_p99(&self) -> Option<Duration> {
        let mut inner = self.lock();
        let p99 = inner.recent_latency.quantile(0.99);
        inner.recent_latency.clear();
        p99
    }

    /// Everything recorded; the tally is empty afterwards.
    pub fn take_results(&self) -> SendResults {
        let counters = self.counters();
        let mut inner = self.lock();
        SendResults {
            counters,
            ..std::mem::take(&mut inner.results)
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Nothing panics while the lock is held; a poisoned tally is still consistent.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::{Duration, Instant};

    use chrono::Utc;
    use reqwest::StatusCode;

    use super::{Answer, Tally};
    use crate::client::{ClientError, Started};

    fn answer<'a>(
        number: &str,
        due: Instant,
        after: Duration,
        result: &'a Result<Started, ClientError>,
    ) -> Answer<'a> {
        Answer {
            number: number.to_owned(),
            due,
            due_wall: Utc::now(),
            started: due,
            answered: due + after,
            result,
        }
    }

    #[test]
    fn accepted_and_refused_posts_are_counted_apart() {
        let tally = Tally::default();
        let due = Instant::now();
        let ok = Ok(Started {
            id: "v1".to_owned(),
            code_length: 6,
        });
        let limited = Err(ClientError::Status {
            status: StatusCode::TOO_MANY_REQUESTS,
            detail: "rate_limited".to_owned(),
        });
        for _ in 0..3 {
            tally.record_start();
        }
        let accepted =
            tally.record_answer(answer("+12122000000", due, Duration::from_millis(5), &ok));
        assert_eq!(accepted.map(|a| a.id), Some("v1".to_owned()));
        assert!(
            tally
                .record_answer(answer(
                    "+12122000001",
                    due,
                    Duration::from_millis(7),
                    &limited
                ))
                .is_none()
        );

        let counters = tally.counters();
        assert_eq!(
            (
                counters.sent,
                counters.accepted,
                counters.failed,
                counters.in_flight
            ),
            (3, 1, 1, 1)
        );
        assert!(tally.take_recent_p99().is_some());
        assert!(tally.take_recent_p99().is_none());

        let results = tally.take_results();
        assert_eq!(results.api_latency.count(), 2);
        assert_eq!(results.failures.statuses.get(&429), Some(&1));
        assert_eq!(results.failures.examples["429"], "rate_limited");
        assert_eq!(results.failures.total(), 1);
        assert_eq!(results.accepted["+12122000000"].code_length, 6);
        assert_eq!(results.last_answer, Some(due + Duration::from_millis(7)));
    }
}
