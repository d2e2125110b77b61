//! The audit: every accepted verification checked against what the SMS sink received and
//! what the API says of it, once the system has gone quiet.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::bail;
use chrono::{DateTime, Utc};
use futures_util::stream::{self, StreamExt};
use serde::Deserialize;
use serde_json::Value;

use crate::stack::{API_KEY, Stack};
use crate::traffic::{Answer, Submission};

/// A code with at least this much lifetime left when the faults end must be delivered;
/// one with less may legitimately expire unsent (the worker never sends a code about to
/// expire, and retries back off up to 30 s).
const STILL_VALID: Duration = Duration::from_secs(60);
/// Verification lookups in flight at once during the audit.
const LOOKUPS_IN_FLIGHT: usize = 16;

/// One SMS as the sink recorded it.
#[derive(Debug, Clone, Deserialize)]
pub struct SinkMessage {
    pub to: String,
    pub received_at: DateTime<Utc>,
}

/// A verification's send as the API reports it.
#[derive(Debug, Clone, Default)]
struct SendState {
    status: String,
    attempts: i64,
}

impl SendState {
    fn settled(&self) -> bool {
        // A delivery receipt moves a sent send on; it stays settled.
        matches!(
            self.status.as_str(),
            "sent" | "failed" | "delivered" | "undelivered"
        )
    }
}

/// The figures of one scenario.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Figures {
    pub requests: usize,
    pub accepted: usize,
    pub delivered: usize,
    /// Accepted, still valid after the faults, never delivered.
    pub lost: usize,
    /// Sends not finished (neither sent nor failed) when the audit gave up waiting.
    pub stuck: usize,
    /// Accepted but expired before a send was possible (legitimate during long outages).
    pub expired_unsent: usize,
    /// SMS that arrived after their code had expired.
    pub sent_after_expiry: usize,
    /// SMS beyond the first for one verification.
    pub duplicates: usize,
    /// The most duplicates the scenario's faults may cause.
    pub duplicate_bound: usize,
    /// Verifications that needed more than one provider attempt.
    pub retried: usize,
    /// Requests the API did not answer (it was down or restarting).
    pub unanswered: usize,
    pub answered_503: usize,
    /// 503 answers without a Retry-After header.
    pub answered_503_without_retry_after: usize,
    /// 5xx answers other than 503: always a defect.
    pub server_errors: usize,
    /// Slowest answer while a dependency was down, in milliseconds.
    pub slowest_answer_during_fault_ms: u64,
    /// The 99th percentile of the time from request to SMS, in milliseconds, for the
    /// verifications requested while the fault lasted (none without a fault window).
    pub sms_p99_during_fault_ms: Option<u64>,
    /// Longest time, after a dependency came back, until requests were accepted and SMS
    /// delivered again, in seconds.
    pub recovery_secs: Option<f64>,
    /// How long the audit waited for the system to go quiet, in seconds.
    pub drain_secs: f64,
}

/// Waits until every accepted verification's send is settled (or `drain` passes), then
/// counts everything.
///
/// # Errors
/// When the sink or the API cannot be read at all.
pub async fn audit(
    stack: &Stack,
    submissions: &[Submission],
    faults_ended: DateTime<Utc>,
    fault_window: Option<(DateTime<Utc>, DateTime<Utc>)>,
    recoveries: &[DateTime<Utc>],
    drain: Duration,
) -> anyhow::Result<Figures> {
    let started = tokio::time::Instant::now();
    let accepted: Vec<(&Submission, &str, DateTime<Utc>)> = submissions
        .iter()
        .filter_map(|s| match &s.answer {
            Answer::Accepted { id, expires_at } => Some((s, id.as_str(), *expires_at)),
            _ => None,
        })
        .collect();

    let mut states: HashMap<&str, SendState> = HashMap::new();
    let deadline = started + drain;
    loop {
        let pending: Vec<&str> = accepted
            .iter()
            .map(|(_, id, _)| *id)
            .filter(|id| !states.get(id).is_some_and(SendState::settled))
            .collect();
        if pending.is_empty() || tokio::time::Instant::now() > deadline {
            break;
        }
        let looked_up: Vec<(&str, anyhow::Result<SendState>)> = stream::iter(pending)
            .map(|id| async move { (id, send_state(stack, id).await) })
            .buffer_unordered(LOOKUPS_IN_FLIGHT)
            .collect()
            .await;
        for (id, state) in looked_up {
            if let Ok(state) = state {
                states.insert(id, state);
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let drain_secs = started.elapsed().as_secs_f64();

    let messages = sink_messages(stack).await?;
    let mut by_recipient: HashMap<&str, Vec<&SinkMessage>> = HashMap::new();
    for message in &messages {
        by_recipient.entry(&message.to).or_default().push(message);
    }

    let mut figures = Figures {
        requests: submissions.len(),
        accepted: accepted.len(),
        drain_secs,
        ..Figures::default()
    };
    let still_valid = faults_ended + STILL_VALID;
    let mut sms_delays_during_fault = Vec::new();
    for (submission, id, expires_at) in &accepted {
        let received = by_recipient
            .get(submission.to.as_str())
            .map(Vec::as_slice)
            .unwrap_or_default();
        let state = states.get(id).cloned().unwrap_or_default();
        if state.attempts > 1 {
            figures.retried += 1;
        }
        if !state.settled() {
            figures.stuck += 1;
        }
        if received.is_empty() {
            if *expires_at > still_valid {
                figures.lost += 1;
            } else {
                figures.expired_unsent += 1;
            }
            continue;
        }
        figures.delivered += 1;
        if fault_window.is_some_and(|window| in_window(submission, window)) {
            let first = received.iter().map(|m| m.received_at).min();
            if let Some(first) = first {
                let ms = (first - submission.sent_at).num_milliseconds().max(0);
                sms_delays_during_fault.push(u64::try_from(ms).unwrap_or(0));
            }
        }
        figures.duplicates += received.len() - 1;
        figures.sent_after_expiry += received
            .iter()
            .filter(|m| m.received_at > *expires_at)
            .count();
    }

    sms_delays_during_fault.sort_unstable();
    figures.sms_p99_during_fault_ms = sms_delays_during_fault
        .get(
            (sms_delays_during_fault.len() * 99)
                .div_ceil(100)
                .saturating_sub(1),
        )
        .copied();

    for submission in submissions {
        match &submission.answer {
            Answer::Unanswered(_) => figures.unanswered += 1,
            Answer::Refused {
                status: 503,
                retry_after,
            } => {
                figures.answered_503 += 1;
                if retry_after.is_none() {
                    figures.answered_503_without_retry_after += 1;
                }
            }
            Answer::Refused { status, .. } if *status >= 500 => figures.server_errors += 1,
            Answer::Refused { .. } | Answer::Accepted { .. } => {}
        }
        let answered = !matches!(submission.answer, Answer::Unanswered(_));
        let in_window = fault_window.is_some_and(|window| in_window(submission, window));
        if answered && in_window {
            let ms = u64::try_from(submission.latency.as_millis()).unwrap_or(u64::MAX);
            figures.slowest_answer_during_fault_ms = figures.slowest_answer_during_fault_ms.max(ms);
        }
    }

    figures.recovery_secs = recoveries
        .iter()
        .map(|back| recovery_after(*back, &accepted, &by_recipient))
        .reduce(|a, b| match (a, b) {
            (Some(a), Some(b)) => Some(a.max(b)),
            _ => None,
        })
        .flatten();
    Ok(figures)
}

/// Seconds from `back` until both a request was accepted and an SMS of a verification
/// started after `back` arrived; `None` when either never happened.
fn recovery_after(
    back: DateTime<Utc>,
    accepted: &[(&Submission, &str, DateTime<Utc>)],
    by_recipient: &HashMap<&str, Vec<&SinkMessage>>,
) -> Option<f64> {
    let after: Vec<&Submission> = accepted
        .iter()
        .map(|(s, _, _)| *s)
        .filter(|s| s.sent_at >= back)
        .collect();
    let first_accept = after
        .iter()
        .map(|s| s.sent_at + chrono::Duration::from_std(s.latency).unwrap_or_default())
        .min()?;
    let first_delivery = after
        .iter()
        .filter_map(|s| by_recipient.get(s.to.as_str()))
        .flat_map(|messages| messages.iter().map(|m| m.received_at))
        .min()?;
    let recovered = first_accept.max(first_delivery);
    Some((recovered - back).as_seconds_f64().max(0.0))
}

async fn send_state(stack: &Stack, id: &str) -> anyhow::Result<SendState> {
    let response = stack
        .http()
        .get(format!("{}/v1/verifications/{id}", stack.api_url()))
        .header("X-Api-Key", API_KEY)
        .send()
        .await?;
    if !response.status().is_success() {
        bail!("looking up {id} answered {}", response.status());
    }
    let view: Value = response.json().await?;
    let newest_send = view["sends"].as_array().and_then(|sends| sends.last());
    Ok(SendState {
        status: view["delivery_status"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        attempts: newest_send
            .and_then(|send| send["attempts"].as_i64())
            .unwrap_or_default(),
    })
}

/// Whether `submission` was sent within the window, both ends included.
pub(crate) fn in_window(
    submission: &Submission,
    (from, to): (DateTime<Utc>, DateTime<Utc>),
) -> bool {
    submission.sent_at >= from && submission.sent_at <= to
}

async fn sink_messages(stack: &Stack) -> anyhow::Result<Vec<SinkMessage>> {
    let response = stack
        .http()
        .get(format!("{}/messages", stack.sink_url()))
        .timeout(Duration::from_secs(60))
        .send()
        .await?;
    if !response.status().is_success() {
        bail!("the sink's message log answered {}", response.status());
    }
    Ok(response.json().await?)
}
