//! Typed HTTP calls to verify-api and verify-sink, and the one classification of their
//! failures that the report counts (status code, or the kind of transport error).
//!
//! Only the fields the tool uses are read from answers; everything else is skipped, which
//! keeps decoding cheap at thousands of answers a second.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::header::HeaderValue;
use reqwest::{Client, Response, StatusCode};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::signals::Signals;

/// Builds the HTTP client shared by every call: keeps up to `connections` idle connections
/// per host, so each request that can be in flight gets a warm connection, and gives up on
/// any answer after `timeout`.
///
/// # Errors
/// When the TLS back end cannot be initialised.
pub fn http_client(connections: usize, timeout: Duration) -> Result<Client, reqwest::Error> {
    Client::builder()
        .pool_max_idle_per_host(connections)
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .tcp_nodelay(true)
        .build()
}

/// Why a call did not give the answer it should.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an unexpected status.
    #[error("{status}: {detail}")]
    Status {
        /// The HTTP status.
        status: StatusCode,
        /// The error `code` of a Verify error body, else the start of the body.
        detail: String,
    },
    /// No answer: connection refused, reset, or timed out.
    #[error("no answer ({kind})")]
    Transport {
        /// What kind of failure, for counting.
        kind: TransportKind,
        /// What reqwest said.
        #[source]
        source: reqwest::Error,
    },
    /// The answer had the right status but not the expected JSON.
    #[error("unexpected answer: {0}")]
    Decode(String),
}

/// Transport failures, counted apart from HTTP statuses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum TransportKind {
    /// The connection could not be made.
    Connect,
    /// No complete answer within the timeout.
    Timeout,
    /// Anything else: reset connections, malformed HTTP.
    Other,
}

impl TransportKind {
    /// The name used in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            TransportKind::Connect => "connect",
            TransportKind::Timeout => "timeout",
            TransportKind::Other => "other",
        }
    }

    fn of(error: &reqwest::Error) -> TransportKind {
        if error.is_timeout() {
            TransportKind::Timeout
        } else if error.is_connect() {
            TransportKind::Connect
        } else {
            TransportKind::Other
        }
    }
}

impl fmt::Display for TransportKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<reqwest::Error> for ClientError {
    fn from(source: reqwest::Error) -> Self {
        if source.is_decode() {
            return ClientError::Decode(source.to_string());
        }
        ClientError::Transport {
            kind: TransportKind::of(&source),
            source,
        }
    }
}

/// Turns any status but `expected` into [`ClientError::Status`], reading Verify's error
/// body `{"error": {"code": …}}` when there is one.
async fn expect_status(response: Response, expected: StatusCode) -> Result<Response, ClientError> {
    let status = response.status();
    if status == expected {
        return Ok(response);
    }
    let body = response.text().await.unwrap_or_default();
    Err(ClientError::Status {
        status,
        detail: error_detail(&body),
    })
}

/// The machine-readable part of an error body: Verify's `error.code` (native API) or the
/// first line of the body, cut short.
fn error_detail(body: &str) -> String {
    #[derive(Deserialize)]
    struct Envelope {
        error: Inner,
    }
    #[derive(Deserialize)]
    struct Inner {
        code: String,
    }
    if let Ok(envelope) = serde_json::from_str::<Envelope>(body) {
        return envelope.error.code;
    }
    let line = body.lines().next().unwrap_or_default().trim();
    line.chars().take(120).collect()
}

/// The header verify-api reads the API key from.
const API_KEY_HEADER: &str = "x-api-key";

/// verify-api, as the tool uses it.
#[derive(Clone)]
pub struct ApiClient {
    http: Client,
    base: String,
    // Cloning a header value only bumps a reference count, so every request can carry it.
    key: HeaderValue,
}

/// What a 202 to `POST /v1/verifications` says that the tool needs.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Started {
    /// The verification's id, a UUID.
    pub id: String,
    /// Digits in its code, so the code can be found in the SMS.
    pub code_length: u8,
}

/// The answer to a check.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct CheckAnswer {
    /// `approved` when the code was right.
    pub status: String,
    /// Whether the code was right.
    pub valid: bool,
}

impl CheckAnswer {
    /// Whether this is the answer a right code must get.
    pub fn is_approved(&self) -> bool {
        self.valid && self.status == "approved"
    }
}

#[derive(Serialize)]
struct StartBody<'a> {
    to: &'a str,
    template_id: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_ip: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_id: Option<&'a str>,
}

#[derive(Serialize)]
struct CheckBody<'a> {
    code: &'a str,
}

#[derive(Serialize)]
struct TemplateBody<'a> {
    name: &'a str,
    description: &'a str,
    text: &'a str,
}

#[derive(Deserialize)]
struct AbuseRules {
    mode: String,
}

#[derive(Deserialize)]
struct TemplateId {
    id: i64,
}

impl ApiClient {
    /// A client for the API at `base` (no trailing `/`), authenticating with `api_key`.
    ///
    /// # Errors
    /// [`ClientError::Decode`] when the key cannot be sent as a header value.
    pub fn new(http: Client, base: &str, api_key: &SecretString) -> Result<ApiClient, ClientError> {
        let mut key = HeaderValue::from_str(api_key.expose_secret()).map_err(|_| {
            ClientError::Decode("the API key contains characters a header cannot carry".into())
        })?;
        // Keeps the key out of any debug output of requests.
        key.set_sensitive(true);
        Ok(ApiClient {
            http,
            base: base.to_owned(),
            key,
        })
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `GET /readyz`: whether the API and its Postgres and RabbitMQ answer.
    ///
    /// # Errors
    /// Any status but 200, or no answer.
    pub async fn ready(&self) -> Result<(), ClientError> {
        let response = self
            .http
            .get(format!("{}/readyz", self.base))
            .send()
            .await?;
        expect_status(response, StatusCode::OK).await.map(drop)
    }

    /// `GET /v1/templates/{id}`: makes sure a template exists (and that the key is accepted).
    ///
    /// # Errors
    /// Any status but 200, or no answer.
    pub async fn find_template(&self, id: i64) -> Result<(), ClientError> {
        let response = self
            .http
            .get(format!("{}/v1/templates/{id}", self.base))
            .header(API_KEY_HEADER, self.key.clone())
            .send()
            .await?;
        expect_status(response, StatusCode::OK).await.map(drop)
    }

    /// `GET /v1/abuse/rules`: the process-wide abuse mode the API judges requests under
    /// (`enforce`, `shadow` or `off`).
    ///
    /// # Errors
    /// Any status but 200, or no answer.
    pub async fn abuse_mode(&self) -> Result<String, ClientError> {
        let response = self
            .http
            .get(format!("{}/v1/abuse/rules", self.base))
            .header(API_KEY_HEADER, self.key.clone())
            .send()
            .await?;
        let rules: AbuseRules = expect_status(response, StatusCode::OK)
            .await?
            .json()
            .await?;
        Ok(rules.mode)
    }

    /// `POST /v1/templates` with a body that reads only `{{code}}`; returns the new id.
    ///
    /// # Errors
    /// Any status but 201, or no answer.
    pub async fn create_template(&self, name: &str) -> Result<i64, ClientError> {
        let response = self
            .http
            .post(format!("{}/v1/templates", self.base))
            .header(API_KEY_HEADER, self.key.clone())
            .json(&TemplateBody {
                name,
                description: "created by verify-load",
                text: "Your code is {{code}}",
            })
            .send()
            .await?;
        let template: TemplateId = expect_status(response, StatusCode::CREATED)
            .await?
            .json()
            .await?;
        Ok(template.id)
    }

    /// `POST /v1/verifications` to `to` with `template_id`, and the end user's `signals`
    /// when given.
    ///
    /// # Errors
    /// Any status but 202, or no answer.
    pub async fn start_verification(
        &self,
        to: &str,
        template_id: i64,
        signals: Option<&Signals>,
    ) -> Result<Started, ClientError> {
        let response = self
            .http
            .post(format!("{}/v1/verifications", self.base))
            .header(API_KEY_HEADER, self.key.clone())
            .json(&StartBody {
                to,
                template_id,
                client_ip: signals.map(|s| s.client_ip.as_str()),
                client_id: signals.map(|s| s.client_id.as_str()),
            })
            .send()
            .await?;
        Ok(expect_status(response, StatusCode::ACCEPTED)
            .await?
            .json()
            .await?)
    }

    /// `POST /v1/verifications/{id}/check` with `code`.
    ///
    /// # Errors
    /// Any status but 200, or no answer.
    pub async fn check_code(&self, id: &str, code: &str) -> Result<CheckAnswer, ClientError> {
        let response = self
            .http
            .post(format!("{}/v1/verifications/{id}/check", self.base))
            .header(API_KEY_HEADER, self.key.clone())
            .json(&CheckBody { code })
            .send()
            .await?;
        Ok(expect_status(response, StatusCode::OK)
            .await?
            .json()
            .await?)
    }
}

/// verify-sink's inspection endpoints.
#[derive(Clone)]
pub struct SinkClient {
    http: Client,
    base: String,
}

/// `GET /stats`: counters since the sink started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct SinkStats {
    /// Send requests that reached the sink.
    pub received: u64,
    /// Sends it accepted and recorded.
    pub accepted: u64,
    /// Sends failed by failure injection.
    pub failed: u64,
    /// Malformed or unauthorised sends.
    pub rejected: u64,
}

/// One recorded SMS, as much of it as the tool reads.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct SinkMessage {
    /// Recipient, as the worker sent it.
    pub to: String,
    /// Message text, with the code in it.
    pub body: String,
    /// When the send request reached the sink (before any injected latency).
    pub received_at: DateTime<Utc>,
}

impl SinkClient {
    /// A client for the sink at `base` (no trailing `/`).
    pub fn new(http: Client, base: &str) -> SinkClient {
        SinkClient {
            http,
            base: base.to_owned(),
        }
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `GET /stats`, waiting at most `timeout`.
    ///
    /// # Errors
    /// Any status but 200, or no answer.
    pub async fn stats(&self, timeout: Duration) -> Result<SinkStats, ClientError> {
        let response = self
            .http
            .get(format!("{}/stats", self.base))
            .timeout(timeout)
            .send()
            .await?;
        Ok(expect_status(response, StatusCode::OK)
            .await?
            .json()
            .await?)
    }

    /// `GET /messages`: every message the sink holds, oldest first.
    ///
    /// # Errors
    /// Any status but 200, or no answer.
    pub async fn messages(&self, timeout: Duration) -> Result<Vec<SinkMessage>, ClientError> {
        let response = self
            .http
            .get(format!("{}/messages", self.base))
            .timeout(timeout)
            .send()
            .await?;
        Ok(expect_status(response, StatusCode::OK)
            .await?
            .json()
            .await?)
    }

    /// `GET /messages?to=NUMBER`: the messages to one number, oldest first (an indexed
    /// lookup in the sink, cheap at any log size).
    ///
    /// # Errors
    /// Any status but 200, or no answer.
    pub async fn messages_to(&self, number: &str) -> Result<Vec<SinkMessage>, ClientError> {
        let response = self
            .http
            .get(format!("{}/messages", self.base))
            .query(&[("to", number)])
            .send()
            .await?;
        Ok(expect_status(response, StatusCode::OK)
            .await?
            .json()
            .await?)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Duration;

    use tokio_util::sync::CancellationToken;
    use verify_sink::{Sink, SinkSettings};

    use super::{ClientError, SinkClient, TransportKind, error_detail, http_client};

    #[test]
    fn error_details_prefer_verifys_error_code() {
        assert_eq!(
            error_detail(r#"{"error": {"code": "rate_limited", "message": "slow down"}}"#),
            "rate_limited"
        );
        assert_eq!(error_detail("Bad Gateway\nmore"), "Bad Gateway");
        assert_eq!(error_detail(&"x".repeat(500)).len(), 120);
    }

    #[tokio::test]
    async fn the_sink_client_reads_what_a_real_sink_records() {
        let sink = Sink::bind(SinkSettings::from_flags(&["--addr", "127.0.0.1:0"]).unwrap())
            .await
            .unwrap();
        let base = sink.base_url();
        let stop = CancellationToken::new();
        let server = tokio::spawn(sink.run_until_stopped(stop.clone()));
        let http = http_client(4, Duration::from_secs(5)).unwrap();
        let client = SinkClient::new(http.clone(), &base);

        http.post(format!("{base}/send"))
            .json(&serde_json::json!({
                "to": "+12122000001", "from": "Verify", "text": "Your code is 123456"
            }))
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap();

        let stats = client.stats(Duration::from_secs(5)).await.unwrap();
        assert_eq!((stats.received, stats.accepted), (1, 1));
        let all = client.messages(Duration::from_secs(5)).await.unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].body, "Your code is 123456");
        let to = client.messages_to("+12122000001").await.unwrap();
        assert_eq!(to, all);
        assert!(client.messages_to("+12122000002").await.unwrap().is_empty());

        stop.cancel();
        server.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn an_unreachable_sink_is_a_connect_error() {
        // A port that was free a moment ago: nothing listens there now.
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let http = http_client(1, Duration::from_secs(2)).unwrap();
        let client = SinkClient::new(http, &format!("http://127.0.0.1:{port}"));
        match client.stats(Duration::from_secs(2)).await {
            Err(ClientError::Transport { kind, .. }) => assert_eq!(kind, TransportKind::Connect),
            other => panic!("expected a connect error, got {other:?}"),
        }
    }
}
