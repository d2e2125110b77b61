//! Steady traffic while faults are injected: verifications started at a fixed rate, each to
//! a number never used before in the run, with every answer recorded for the audit.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::stack::API_KEY;

/// Requests in flight at most; beyond it the schedule slips rather than the tool piling up.
const MAX_IN_FLIGHT: usize = 512;
/// A request the API has not answered in this long counts as unanswered.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What one `POST /v1/verifications` came to.
#[derive(Debug, Clone)]
pub struct Submission {
    pub to: String,
    pub sent_at: DateTime<Utc>,
    pub latency: Duration,
    pub answer: Answer,
}

/// The API's answer, or the lack of one.
#[derive(Debug, Clone)]
pub enum Answer {
    /// 202: the API promised the SMS.
    Accepted {
        id: String,
        expires_at: DateTime<Utc>,
    },
    /// Any other status; `retry_after` is the header, when present.
    Refused {
        status: u16,
        retry_after: Option<String>,
    },
    /// No HTTP answer (refused connection, reset, timeout): the API was down.
    Unanswered(String),
}

/// Gives out phone numbers no earlier request in the run used.
#[derive(Debug, Default)]
pub struct NumberPlan {
    next: AtomicU32,
}

impl NumberPlan {
    /// The next fresh number: +1 415 NXX XXXX with the exchange from 200 upwards.
    pub fn next(&self) -> String {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        format!("+1415{}{:04}", 200 + n / 10_000, n % 10_000)
    }
}

/// How the traffic is shaped.
#[derive(Debug, Clone, Copy)]
pub struct TrafficShape {
    pub rate: u32,
    /// Every `short_ttl_every`-th verification gets the shortest allowed lifetime (60 s),
    /// so an outage outlives some codes; 0 never.
    pub short_ttl_every: u32,
}

/// Traffic running in the background until stopped.
pub struct Traffic {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Vec<Submission>>,
}

impl Traffic {
    /// Starts sending.
    pub fn start(
        client: reqwest::Client,
        api_url: String,
        template_id: i64,
        numbers: Arc<NumberPlan>,
        shape: TrafficShape,
    ) -> Self {
        let stop = CancellationToken::new();
        let task = tokio::spawn(drive(
            client,
            api_url,
            template_id,
            numbers,
            shape,
            stop.clone(),
        ));
        Self { stop, task }
    }

    /// Stops sending, waits for the answers still outstanding and returns every submission.
    pub async fn finish(self) -> Vec<Submission> {
        self.stop.cancel();
        self.task.await.unwrap_or_default()
    }
}

async fn drive(
    client: reqwest::Client,
    api_url: String,
    template_id: i64,
    numbers: Arc<NumberPlan>,
    shape: TrafficShape,
    stop: CancellationToken,
) -> Vec<Submission> {
    let log = Arc::new(Mutex::new(Vec::new()));
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut ticker = tokio::time::interval(Duration::from_secs(1) / shape.rate.max(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut requests = JoinSet::new();
    let mut sent: u32 = 0;
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = ticker.tick() => {}
        }
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            break;
        };
        sent = sent.wrapping_add(1);
        let short_ttl = shape.short_ttl_every > 0 && sent.is_multiple_of(shape.short_ttl_every);
        let mut body = json!({ "to": numbers.next(), "template_id": template_id });
        if short_ttl {
            body["ttl_seconds"] = json!(60);
        }
        let client = client.clone();
        let url = format!("{api_url}/v1/verifications");
        let log = Arc::clone(&log);
        requests.spawn(async move {
            let (submission, _) = submit(&client, &url, body).await;
            log.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(submission);
            drop(slot);
        });
        // Reap finished requests so the set does not grow with the run.
        while requests.try_join_next().is_some() {}
    }
    while requests.join_next().await.is_some() {}
    std::mem::take(&mut *log.lock().unwrap_or_else(PoisonError::into_inner))
}

/// POSTs one start request to `url` and records the answer, with the body of an answer
/// that was not an acceptance (its error code says why).
pub(crate) async fn submit(
    client: &reqwest::Client,
    url: &str,
    body: Value,
) -> (Submission, Option<Value>) {
    let to = body["to"].as_str().unwrap_or_default().to_owned();
    let sent_at = Utc::now();
    let started = tokio::time::Instant::now();
    let result = client
        .post(url)
        .header("X-Api-Key", API_KEY)
        .timeout(REQUEST_TIMEOUT)
        .json(&body)
        .send()
        .await;
    let mut refusal_body = None;
    let answer = match result {
        Err(error) => Answer::Unanswered(error.to_string()),
        Ok(response) => {
            let status = response.status().as_u16();
            let retry_after = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            match response.json::<Value>().await {
                Ok(view) if status == 202 => accepted(&view).unwrap_or(Answer::Refused {
                    status,
                    retry_after,
                }),
                Ok(view) => {
                    refusal_body = Some(view);
                    Answer::Refused {
                        status,
                        retry_after,
                    }
                }
                Err(error) => {
                    Answer::Unanswered(format!("{status} with an unreadable body: {error}"))
                }
            }
        }
    };
    let submission = Submission {
        to,
        sent_at,
        latency: started.elapsed(),
        answer,
    };
    (submission, refusal_body)
}

fn accepted(view: &Value) -> Option<Answer> {
    Some(Answer::Accepted {
        id: view.get("id")?.as_str()?.to_owned(),
        expires_at: view.get("expires_at")?.as_str()?.parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::NumberPlan;

    #[test]
    fn the_number_plan_never_repeats_a_number() {
        let plan = NumberPlan::default();
        let numbers: HashSet<String> = (0..50_000).map(|_| plan.next()).collect();
        assert_eq!(numbers.len(), 50_000);
    }

    #[test]
    fn numbers_are_e164_with_a_valid_exchange() {
        let plan = NumberPlan::default();
        let first = plan.next();
        assert_eq!(first, "+14152000000");
        for _ in 0..10_000 {
            plan.next();
        }
        assert_eq!(plan.next(), "+14152010001");
    }
}
