//! W3C traces followed through the whole system: a start's `traceparent`, the API's log
//! lines of that request, the job through RabbitMQ and the worker's log lines of that send.
//!
//! A binary of its own: it installs the process's global subscriber, writing every line
//! (JSON, as `--log-format json` does) to a buffer, and runs the API, the worker and the
//! fake provider in-process. Tests run at once and share the buffer; each follows its
//! own trace id.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use reqwest::StatusCode;
use serde_json::{Value, json};
use verify_common::config::LogFormat;
use verify_common::domain::TraceParent;
use verify_common::telemetry::init_tracing_to;
use verify_sink::SinkSettings;

// The API suite's harness; this binary uses only part of it.
#[allow(dead_code)]
#[path = "../api/helpers.rs"]
mod helpers;

use helpers::{TestApp, TestOptions, spawn_app_with};

/// Every byte the process logged.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut bytes = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The process's log, captured from the first test on.
fn captured() -> &'static Captured {
    static CAPTURED: OnceLock<Captured> = OnceLock::new();
    CAPTURED.get_or_init(|| {
        let captured = Captured::default();
        let sink = captured.clone();
        assert!(
            init_tracing_to(LogFormat::Json, "info", false, move || sink.clone()),
            "another subscriber was installed first; this binary must own the global one"
        );
        captured
    })
}

/// One JSON log line.
struct Line(Value);

impl Line {
    fn message(&self) -> &str {
        self.0["fields"]["message"].as_str().unwrap_or_default()
    }

    /// A field of the line's spans (the innermost that has it).
    fn span_field(&self, name: &str) -> Option<&str> {
        let spans = self.0["spans"].as_array().map(Vec::as_slice).unwrap_or(&[]);
        spans
            .iter()
            .rev()
            .chain(std::iter::once(&self.0["span"]))
            .find_map(|span| span[name].as_str())
    }

    /// Whether the line was written while handling a job (a worker), not a request.
    fn in_job(&self) -> bool {
        let spans = self.0["spans"].as_array().map(Vec::as_slice).unwrap_or(&[]);
        spans.iter().any(|span| span["name"] == "job")
    }
}

/// Every line logged so far in the trace `trace_id`.
fn lines_of(trace_id: &str) -> Vec<Line> {
    let bytes = captured()
        .0
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    String::from_utf8_lossy(&bytes)
        .lines()
        .map(|line| Line(serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"))))
        .filter(|line| line.span_field("trace_id") == Some(trace_id))
        .collect()
}

async fn app(options: TestOptions) -> TestApp {
    captured();
    spawn_app_with(options).await
}

/// Posts a start with these `traceparent` headers; returns the verification id and the
/// answer's `traceparent`, which must be valid.
async fn start(app: &TestApp, to: &str, traceparent: Option<&str>) -> (String, TraceParent) {
    let mut request = app
        .request(reqwest::Method::POST, "/v1/verifications")
        .json(&json!({ "to": to }));
    if let Some(header) = traceparent {
        request = request.header("traceparent", header);
    }
    let response = request.send().await.expect("sending a start");
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let answered = response
        .headers()
        .get("traceparent")
        .expect("a traceparent in the answer")
        .to_str()
        .expect("a text header")
        .to_owned();
    let answered = TraceParent::parse(&answered)
        .unwrap_or_else(|e| panic!("the answer's traceparent {answered:?}: {e}"));
    let body: Value = response.json().await.expect("a JSON verification");
    let id = body["id"].as_str().expect("an id").to_owned();
    (id, answered)
}

/// Waits for the send, then asserts that the trace's lines include the API's start and
/// the worker's `worker_message`, and that every one of them names the verification.
async fn assert_followed(
    app: &TestApp,
    to: &str,
    trace: &TraceParent,
    id: &str,
    worker_message: &str,
) {
    app.wait_for_sms(to, 1).await;
    app.drain().await;
    let trace_id = trace.trace_id().to_string();
    let lines = lines_of(&trace_id);
    let described: Vec<String> = lines.iter().map(|line| line.0.to_string()).collect();
    assert!(
        lines
            .iter()
            .any(|line| !line.in_job() && line.message() == "verification started"),
        "no API line of the start in trace {trace_id}: {described:#?}"
    );
    assert!(
        lines
            .iter()
            .any(|line| line.in_job() && line.message() == worker_message),
        "no worker line {worker_message:?} in trace {trace_id}: {described:#?}"
    );
    for line in &lines {
        assert_eq!(
            line.span_field("verification_id"),
            Some(id),
            "a line of trace {trace_id} without its verification: {}",
            line.0
        );
    }
}

#[tokio::test]
async fn a_start_with_a_traceparent_is_followed_by_its_trace_id_through_api_and_worker_logs() {
    let app = app(TestOptions::default()).await;
    let to = helpers::phone_number(1);
    let callers = TraceParent::start();

    let (id, answered) = start(&app, &to, Some(&callers.to_string())).await;

    assert_eq!(answered.trace_id(), callers.trace_id());
    assert_ne!(
        answered.parent_id(),
        callers.parent_id(),
        "the API answers with a span of its own"
    );
    assert_followed(&app, &to, &callers, &id, "SMS sent").await;
}

#[tokio::test]
async fn a_start_without_a_traceparent_learns_its_new_trace_from_the_answer_and_finds_it_in_the_logs()
 {
    let app = app(TestOptions::default()).await;
    let to = helpers::phone_number(2);

    let (id, answered) = start(&app, &to, None).await;

    assert_followed(&app, &to, &answered, &id, "SMS sent").await;
}

#[tokio::test]
async fn a_malformed_traceparent_is_ignored_and_the_start_accepted_in_a_new_trace() {
    let app = app(TestOptions::default()).await;
    let given = "4bf92f3577b34da6a3ce929d0e0e4736";
    let malformed = [
        ("wrong length", format!("00-{given}-00f067aa0ba902b7-011")),
        (
            "uppercase",
            format!("00-{}-00f067aa0ba902b7-01", given.to_uppercase()),
        ),
        (
            "all-zero trace id",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01".to_owned(),
        ),
        ("version ff", format!("ff-{given}-00f067aa0ba902b7-01")),
    ];
    for (n, (case, header)) in (3..).zip(malformed) {
        let to = helpers::phone_number(n);

        let (id, answered) = start(&app, &to, Some(&header)).await;

        let new_trace = answered.trace_id().to_string();
        assert_ne!(new_trace, given, "{case}");
        assert_ne!(new_trace, "0".repeat(32), "{case}");
        assert_followed(&app, &to, &answered, &id, "SMS sent").await;
    }
}

#[tokio::test]
async fn a_send_retried_after_a_provider_error_keeps_its_trace_id() {
    let app = app(TestOptions {
        sink: SinkSettings::from_flags(&[
            "--addr",
            "127.0.0.1:0",
            "--twilio-account-sid",
            "ACtest0000000000000000000000000000",
            "--twilio-auth-token",
            helpers::TWILIO_TOKEN,
            "--fail-first",
            "1",
        ])
        .expect("the test sink flags parse"),
        ..TestOptions::default()
    })
    .await;
    let to = helpers::phone_number(10);
    let callers = TraceParent::start();

    let (id, _) = start(&app, &to, Some(&callers.to_string())).await;

    assert_followed(&app, &to, &callers, &id, "send failed; retrying").await;
    let sent = lines_of(&callers.trace_id().to_string())
        .into_iter()
        .filter(|line| line.in_job() && line.message() == "SMS sent")
        .count();
    assert_eq!(sent, 1, "the retry was not logged in the trace");
}
