//! The fake provider itself, independent of wire format: it counts, applies failure
//! injection and records what it accepted. `twilio` and `generic` translate HTTP to and
//! from it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::faults::{Faults, Outcome};
use crate::number;
use crate::store::{MessageLog, RecordedMessage};

/// Which wire format a message came in on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Api {
    Twilio,
    Json,
}

impl Api {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Api::Twilio => "twilio",
            Api::Json => "json",
        }
    }
}

/// What the provider did with a valid send request.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Verdict {
    Accepted(RecordedMessage),
    /// An injected failure; nothing was recorded.
    Failed {
        status: u16,
        retry_after: Option<u64>,
    },
}

/// The status a hanging request is finally answered with.
pub(crate) const HANG_STATUS: u16 = 504;

/// Counters for `GET /stats`.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    received: AtomicU64,
    accepted: AtomicU64,
    failed: AtomicU64,
    rejected: AtomicU64,
}

/// A point-in-time copy of [`Stats`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct StatsSnapshot {
    /// Every request to a send endpoint.
    pub(crate) received: u64,
    /// Sends recorded as messages.
    pub(crate) accepted: u64,
    /// Sends failed by injection, hangs included.
    pub(crate) failed: u64,
    /// Sends refused as unauthorised or malformed.
    pub(crate) rejected: u64,
}

impl Stats {
    pub(crate) fn snapshot(&self) -> StatsSnapshot {
        // Counters are independent tallies; no reader needs them mutually consistent.
        StatsSnapshot {
            received: self.received.load(Ordering::Relaxed),
            accepted: self.accepted.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
        }
    }
}

/// Shared by every request handler.
#[derive(Debug)]
pub(crate) struct Provider {
    pub(crate) log: MessageLog,
    pub(crate) faults: Faults,
    pub(crate) stats: Stats,
    // Cut short injected waits at shutdown, so a 30 s hang cannot hold the process up.
    stopping: CancellationToken,
}

impl Provider {
    pub(crate) fn new(log: MessageLog, faults: Faults, stopping: CancellationToken) -> Provider {
        Provider {
            log,
            faults,
            stats: Stats::default(),
            stopping,
        }
    }

    /// Notes a send request's arrival and returns the time it will be recorded with.
    pub(crate) fn arrived(&self) -> DateTime<Utc> {
        self.stats.received.fetch_add(1, Ordering::Relaxed);
        // Truncated to what the wire shows, so a message read back over HTTP compares
        // equal to the one held in memory.
        Utc::now().trunc_subsecs(6)
    }

    /// Notes a send refused before failure injection was consulted.
    pub(crate) fn refused(&self) {
        self.stats.rejected.fetch_add(1, Ordering::Relaxed);
    }

    /// Runs a valid send through failure injection and records it if it succeeds.
    pub(crate) async fn submit(self: &Arc<Self>, message: RecordedMessage) -> Verdict {
        match self.faults.next_outcome() {
            Outcome::Deliver { latency } if latency.is_zero() => {
                self.accept(message.clone());
                Verdict::Accepted(message)
            }
            Outcome::Deliver { latency } => {
                // A client that gives up during the delay must not un-send the message,
                // just as with a real provider; otherwise duplicate-send scenarios could
                // never be reproduced. So the delivery runs on its own task.
                let provider = Arc::clone(self);
                let delivery = tokio::spawn(async move {
                    provider.pause(latency).await;
                    provider.accept(message.clone());
                    message
                });
                match delivery.await {
                    Ok(message) => Verdict::Accepted(message),
                    // Only possible if the runtime is shutting down under us.
                    Err(_) => Verdict::Failed {
                        status: 503,
                        retry_after: None,
                    },
                }
            }
            Outcome::Fail {
                latency,
                status,
                retry_after,
            } => {
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
                self.pause(latency).await;
                Verdict::Failed {
                    status,
                    retry_after,
                }
            }
            Outcome::Hang { hold } => {
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
                self.pause(hold).await;
                Verdict::Failed {
                    status: HANG_STATUS,
                    retry_after: None,
                }
            }
        }
    }

    fn accept(&self, message: RecordedMessage) {
        tracing::debug!(
            id = %message.id,
            api = %message.api,
            to = %number::mask(&message.to),
            "message accepted"
        );
        self.log.record(message);
        self.stats.accepted.fetch_add(1, Ordering::Relaxed);
    }

    async fn pause(&self, duration: Duration) {
        if duration.is_zero() {
            return;
        }
        tokio::select! {
            () = tokio::time::sleep(duration) => {}
            () = self.stopping.cancelled() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Arc;
    use std::time::Duration;

    use tokio_util::sync::CancellationToken;

    use super::{Api, Provider, Verdict};
    use crate::faults::{FaultSettings, Faults};
    use crate::settings::{FailureMode, SinkSettings};
    use crate::store::{MessageLog, RecordedMessage};

    fn provider(faults: FaultSettings, stopping: CancellationToken) -> Arc<Provider> {
        Arc::new(Provider::new(
            MessageLog::new(100),
            Faults::new(faults),
            stopping,
        ))
    }

    fn message(provider: &Provider) -> RecordedMessage {
        RecordedMessage {
            id: "id".to_owned(),
            to: "+14155550100".to_owned(),
            from: "+15005550006".to_owned(),
            body: "Your code is 123456".to_owned(),
            received_at: provider.arrived(),
            api: Api::Json.as_str().to_owned(),
        }
    }

    #[tokio::test]
    async fn accepted_sends_are_recorded_and_counted() {
        let p = provider(
            FaultSettings::from(&SinkSettings::from_flags(&[]).unwrap()),
            CancellationToken::new(),
        );
        let verdict = p.submit(message(&p)).await;
        assert!(matches!(verdict, Verdict::Accepted(_)));
        assert_eq!(p.log.len(), 1);
        let stats = p.stats.snapshot();
        assert_eq!((stats.received, stats.accepted, stats.failed), (1, 1, 0));
    }

    #[tokio::test]
    async fn failed_sends_are_counted_but_not_recorded() {
        let p = provider(
            FaultSettings {
                failure_rate: 1.0,
                ..FaultSettings::from(&SinkSettings::from_flags(&[]).unwrap())
            },
            CancellationToken::new(),
        );
        let verdict = p.submit(message(&p)).await;
        assert_eq!(
            verdict,
            Verdict::Failed {
                status: 503,
                retry_after: None
            }
        );
        assert!(p.log.is_empty());
        assert_eq!(p.stats.snapshot().failed, 1);
    }

    #[tokio::test]
    async fn shutdown_cuts_a_hang_short_and_answers_504() {
        let stopping = CancellationToken::new();
        let p = provider(
            FaultSettings {
                fail_first: 1,
                failure_mode: FailureMode::Hang,
                hang_ms: 60_000,
                ..FaultSettings::from(&SinkSettings::from_flags(&[]).unwrap())
            },
            stopping.clone(),
        );
        stopping.cancel();
        let verdict = tokio::time::timeout(Duration::from_secs(5), p.submit(message(&p)))
            .await
            .unwrap();
        assert_eq!(
            verdict,
            Verdict::Failed {
                status: 504,
                retry_after: None
            }
        );
    }

    #[tokio::test]
    async fn a_delayed_send_is_recorded_even_if_the_client_gives_up() {
        let p = provider(
            FaultSettings {
                latency_ms: 50,
                ..FaultSettings::from(&SinkSettings::from_flags(&[]).unwrap())
            },
            CancellationToken::new(),
        );
        let gave_up = tokio::time::timeout(Duration::from_millis(5), p.submit(message(&p))).await;
        assert!(gave_up.is_err());
        let found = p.log.wait_for("+14155550100", Duration::from_secs(5)).await;
        assert!(found.is_some());
    }
}
