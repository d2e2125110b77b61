//! Delivery receipts, sent back to the sender the way Twilio sends them: for every
//! accepted message that named a `StatusCallback`, a form-encoded POST to that URL, signed
//! with `X-Twilio-Signature` (base64 HMAC-SHA1 keyed with the account's auth token, over
//! the URL followed by every parameter sorted by name as name and value). Generic JSON
//! sends that named a `callback_url` get `{"message_id", "status", "error_code"}` there,
//! with the configured bearer token.
//!
//! Receipts leave after a configured delay, on their own tasks, so they never slow the
//! answer to a send. What waits is bounded: a queue of at most `--receipt-queue` receipts
//! and a fixed number in flight; a receipt that finds the queue full is dropped and
//! counted. Shares of receipts can be made `undelivered` (Twilio error 30003 or 30005),
//! sent twice, or followed by a late `sent`, so a receiver's handling of each is exercised.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use serde::Serialize;
use serde_json::json;
use sha1::Sha1;
use tokio::sync::{Semaphore, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::settings::SinkSettings;
use crate::store::RecordedMessage;

/// Receipts being posted at once; the queue waits behind them.
const MAX_IN_FLIGHT: usize = 256;
/// How long one receipt post may take.
const POST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long after the final receipt a late duplicate or a late `sent` follows, so it
/// arrives after the receipt it repeats or contradicts.
const FOLLOW_UP_DELAY: Duration = Duration::from_millis(100);
/// The error codes of undelivered receipts: unknown destination handset, and unknown
/// destination (Twilio's 30003 and 30005).
const UNDELIVERED_CODES: [&str; 2] = ["30003", "30005"];

/// The receipts' shares and delay, from the sink's settings.
#[derive(Debug, Clone)]
pub(crate) struct ReceiptSettings {
    pub(crate) delay: Duration,
    pub(crate) undelivered_rate: f64,
    pub(crate) duplicate_rate: f64,
    pub(crate) out_of_order_rate: f64,
    pub(crate) queue: usize,
    /// Bearer token for generic JSON receipts.
    pub(crate) token: Option<String>,
}

impl From<&SinkSettings> for ReceiptSettings {
    fn from(settings: &SinkSettings) -> Self {
        Self {
            delay: Duration::from_millis(settings.receipt_delay_ms),
            undelivered_rate: settings.receipt_undelivered_rate,
            duplicate_rate: settings.receipt_duplicate_rate,
            out_of_order_rate: settings.receipt_out_of_order_rate,
            queue: settings.receipt_queue,
            token: settings.receipt_token.clone(),
        }
    }
}

/// Counters of receipts, for `GET /stats`.
#[derive(Debug, Default)]
struct ReceiptStats {
    scheduled: AtomicU64,
    sent: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
}

/// A point-in-time copy of the receipt counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub(crate) struct ReceiptStatsSnapshot {
    /// Receipts queued to be sent.
    pub(crate) scheduled: u64,
    /// Receipts the receiver answered with 2xx.
    pub(crate) sent: u64,
    /// Receipts the receiver refused or never answered.
    pub(crate) failed: u64,
    /// Receipts not queued because the queue was full.
    pub(crate) dropped: u64,
}

/// One receipt post.
#[derive(Debug)]
enum Callback {
    Twilio {
        url: String,
        auth_token: String,
        params: Vec<(String, String)>,
    },
    Json {
        url: String,
        token: Option<String>,
        body: serde_json::Value,
    },
}

#[derive(Debug)]
struct Scheduled {
    due: Instant,
    callback: Callback,
}

/// The receipts' queue and its counters; the sender task drains the queue.
#[derive(Debug)]
pub(crate) struct Receipts {
    settings: ReceiptSettings,
    /// The delay, changeable at run time through `PUT /control` (`receipt_delay_ms`).
    delay_ms: AtomicU64,
    queue: mpsc::Sender<Scheduled>,
    stats: Arc<ReceiptStats>,
}

impl Receipts {
    /// Starts the task that sends queued receipts when they are due, until `stopping`.
    ///
    /// # Errors
    /// When the HTTP client cannot be built.
    pub(crate) fn start(
        settings: ReceiptSettings,
        stopping: CancellationToken,
    ) -> anyhow::Result<Receipts> {
        let client = reqwest::Client::builder().timeout(POST_TIMEOUT).build()?;
        let (queue, waiting) = mpsc::channel(settings.queue.max(1));
        let stats = Arc::new(ReceiptStats::default());
        tokio::spawn(send_when_due(waiting, client, Arc::clone(&stats), stopping));
        Ok(Receipts {
            delay_ms: AtomicU64::new(u64::try_from(settings.delay.as_millis()).unwrap_or(u64::MAX)),
            settings,
            queue,
            stats,
        })
    }

    /// The delay between accepting a send and posting its receipt.
    pub(crate) fn delay_ms(&self) -> u64 {
        self.delay_ms.load(Ordering::Relaxed)
    }

    /// Changes the delay for receipts scheduled from now on. The queue is sent in order,
    /// so after a shorter delay is set, new receipts still leave only after those queued
    /// under the longer one.
    pub(crate) fn set_delay_ms(&self, delay_ms: u64) {
        self.delay_ms.store(delay_ms, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> ReceiptStatsSnapshot {
        ReceiptStatsSnapshot {
            scheduled: self.stats.scheduled.load(Ordering::Relaxed),
            sent: self.stats.sent.load(Ordering::Relaxed),
            failed: self.stats.failed.load(Ordering::Relaxed),
            dropped: self.stats.dropped.load(Ordering::Relaxed),
        }
    }

    /// Queues Twilio's status callbacks for an accepted message: the final status, and
    /// by the configured shares a duplicate of it and a late `sent`.
    pub(crate) fn schedule_twilio(
        &self,
        message: &RecordedMessage,
        account_sid: &str,
        status_callback: &str,
        auth_token: &str,
    ) {
        let undelivered = roll(self.settings.undelivered_rate);
        let params = |status: &str, error_code: Option<&str>| {
            let mut params = vec![
                ("AccountSid", account_sid),
                ("ApiVersion", "2010-04-01"),
                ("From", message.from.as_str()),
                ("MessageSid", message.id.as_str()),
                ("MessageStatus", status),
                ("SmsSid", message.id.as_str()),
                ("SmsStatus", status),
                ("To", message.to.as_str()),
            ];
            if let Some(code) = error_code {
                params.push(("ErrorCode", code));
            }
            params
                .into_iter()
                .map(|(name, value)| (name.to_owned(), value.to_owned()))
                .collect::<Vec<_>>()
        };
        let last = if undelivered {
            let code = UNDELIVERED_CODES[usize::from(roll(0.5))];
            params("undelivered", Some(code))
        } else {
            params("delivered", None)
        };
        let callback = |params: Vec<(String, String)>| Callback::Twilio {
            url: status_callback.to_owned(),
            auth_token: auth_token.to_owned(),
            params,
        };
        self.schedule_with_follow_ups(
            callback(last.clone()),
            || callback(last.clone()),
            || callback(params("sent", None)),
        );
    }

    /// Queues a generic JSON receipt for an accepted message: `delivered` or
    /// `undelivered`, with the same shares as Twilio's. A late interim status has no JSON
    /// form, so the out-of-order share sends a late `delivered` after an `undelivered`
    /// (and the reverse).
    pub(crate) fn schedule_json(&self, message: &RecordedMessage, callback_url: &str) {
        let undelivered = roll(self.settings.undelivered_rate);
        let body = |undelivered: bool| {
            if undelivered {
                let code = UNDELIVERED_CODES[usize::from(roll(0.5))];
                json!({"message_id": message.id, "status": "undelivered", "error_code": code})
            } else {
                json!({"message_id": message.id, "status": "delivered"})
            }
        };
        let callback = |body: serde_json::Value| Callback::Json {
            url: callback_url.to_owned(),
            token: self.settings.token.clone(),
            body,
        };
        let last = body(undelivered);
        self.schedule_with_follow_ups(
            callback(last.clone()),
            || callback(last.clone()),
            || callback(body(!undelivered)),
        );
    }

    fn schedule_with_follow_ups(
        &self,
        last: Callback,
        duplicate: impl FnOnce() -> Callback,
        out_of_order: impl FnOnce() -> Callback,
    ) {
        let due = Instant::now() + Duration::from_millis(self.delay_ms());
        self.enqueue(due, last);
        if roll(self.settings.duplicate_rate) {
            self.enqueue(due + FOLLOW_UP_DELAY, duplicate());
        }
        if roll(self.settings.out_of_order_rate) {
            self.enqueue(due + FOLLOW_UP_DELAY * 2, out_of_order());
        }
    }

    fn enqueue(&self, due: Instant, callback: Callback) {
        match self.queue.try_send(Scheduled { due, callback }) {
            Ok(()) => self.stats.scheduled.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.stats.dropped.fetch_add(1, Ordering::Relaxed),
        };
    }
}

/// True with probability `rate`.
fn roll(rate: f64) -> bool {
    rate > 0.0 && rand::random::<f64>() < rate
}

/// Sends each queued receipt once it is due, at most [`MAX_IN_FLIGHT`] at once. Receipts
/// are queued in due order (one delay for all; follow-ups a little later than the receipt
/// they follow), so waiting for the oldest never holds back one that is due sooner by
/// more than the follow-up delay.
async fn send_when_due(
    mut waiting: mpsc::Receiver<Scheduled>,
    client: reqwest::Client,
    stats: Arc<ReceiptStats>,
    stopping: CancellationToken,
) {
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    loop {
        let next = tokio::select! {
            next = waiting.recv() => next,
            () = stopping.cancelled() => return,
        };
        let Some(Scheduled { due, callback }) = next else {
            return;
        };
        let permit = tokio::select! {
            () = tokio::time::sleep_until(due) => Arc::clone(&in_flight).acquire_owned().await,
            () = stopping.cancelled() => return,
        };
        let Ok(permit) = permit else {
            return;
        };
        let client = client.clone();
        let stats = Arc::clone(&stats);
        tokio::spawn(async move {
            let _permit = permit;
            let counter = if post(&client, callback).await {
                &stats.sent
            } else {
                &stats.failed
            };
            counter.fetch_add(1, Ordering::Relaxed);
        });
    }
}

/// Posts one receipt; true when the receiver answered 2xx.
async fn post(client: &reqwest::Client, callback: Callback) -> bool {
    let request = match callback {
        Callback::Twilio {
            url,
            auth_token,
            params,
        } => {
            let signature = twilio_signature(&auth_token, &url, &params);
            client
                .post(url)
                .header("X-Twilio-Signature", signature)
                .form(&params)
        }
        Callback::Json { url, token, body } => {
            let request = client.post(url).json(&body);
            match token {
                Some(token) => request.bearer_auth(token),
                None => request,
            }
        }
    };
    match request.send().await {
        Ok(response) if response.status().is_success() => true,
        Ok(response) => {
            tracing::debug!(status = %response.status(), "a receipt was refused");
            false
        }
        Err(error) => {
            tracing::debug!(%error, "a receipt could not be sent");
            false
        }
    }
}

/// Twilio's request signature: base64 of HMAC-SHA1 keyed with the auth token over the URL
/// followed by each parameter, sorted by name, as name then value.
fn twilio_signature(auth_token: &str, url: &str, params: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    sorted.sort();
    let mut signed = url.to_owned();
    for (name, value) in sorted {
        signed.push_str(name);
        signed.push_str(value);
    }
    let mut mac =
        Hmac::<Sha1>::new_from_slice(auth_token.as_bytes()).expect("HMAC takes any key length");
    mac.update(signed.as_bytes());
    BASE64.encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::twilio_signature;

    /// The example in Twilio's webhook security documentation (auth token `12345`).
    #[test]
    fn receipts_are_signed_as_twilios_documentation_shows() {
        let params: Vec<(String, String)> = [
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+14158675309"),
            ("Digits", "1234"),
            ("From", "+14158675309"),
            ("To", "+18005551212"),
        ]
        .into_iter()
        .rev()
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect();

        let signature = twilio_signature(
            "12345",
            "https://mycompany.com/myapp.php?foo=1&bar=2",
            &params,
        );

        assert_eq!(signature, "RSOYDt4T1cUTdK1PDd93/VVr8B8=");
    }
}
