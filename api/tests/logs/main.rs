//! What the whole system writes to its log at `RUST_LOG=trace`, checked for secrets.
//!
//! A binary of its own: it installs the process's global subscriber, writing every line
//! of every crate (ours and third-party ones, `log` records included) to a buffer, then
//! runs a complete flow through the API, the worker and the fake provider in-process.

use std::io::Write;
use std::sync::{Arc, Mutex, PoisonError};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use verify_common::config::{FromFlags, LogFormat, OtpSettings};
use verify_common::telemetry::init_tracing_to;

// The API suite's harness; this binary uses only part of it.
#[allow(dead_code)]
#[path = "../api/helpers.rs"]
mod helpers;

use helpers::{API_KEY, SECRET, TWILIO_TOKEN, TestApp, TestOptions, code_in, spawn_app_with};

/// Every byte the process logged.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    fn text(&self) -> String {
        let bytes = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

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

/// Ten-digit codes: a six-digit code could turn up by chance among the digits of
/// timestamps and ids in a long log; ten digits cannot.
fn options() -> TestOptions {
    TestOptions {
        otp: OtpSettings::from_flags(&["--otp-length", "10"]).expect("the OTP flags parse"),
        ..TestOptions::default()
    }
}

/// A number's E.164 form and its digits alone (as PortaText paths carry them).
fn number_forms(number: &str) -> [String; 2] {
    [number.to_owned(), number.trim_start_matches('+').to_owned()]
}

/// The ways a nonce can be printed: hex either case, and the `Debug` of its bytes.
fn nonce_forms(nonce: &[u8]) -> [String; 3] {
    let hex: String = nonce.iter().map(|b| format!("{b:02x}")).collect();
    let listed = nonce
        .iter()
        .map(u8::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    [hex.clone(), hex.to_uppercase(), listed]
}

async fn json_of(response: reqwest::Response) -> Value {
    let status = response.status();
    let text = response.text().await.expect("a readable body");
    serde_json::from_str(&text).unwrap_or_else(|_| panic!("{status}: not JSON: {text}"))
}

/// A native start, its SMS, a wrong check and a right one; returns the code and the body.
async fn native_flow(app: &TestApp, to: &str) -> (String, String) {
    let template = app
        .create_template(&json!({
            "name": "branded",
            "text": "{{brand}}: your code is {{code}}. Valid {{ttl_minutes}} minutes."
        }))
        .await;
    let started = app
        .start_verification(&json!({
            "to": to,
            "template_id": template["id"],
            "variables": {"brand": "Quillfeather"}
        }))
        .await;
    let id = started["id"].as_str().expect("an id").to_owned();
    let body = app.wait_for_sms(to, 1).await[0].body.clone();
    let code = code_in(&body);
    let wrong = json_of(app.check_code(&id, &wrong_code(&code)).await).await;
    assert_eq!(wrong["valid"], false, "{wrong}");
    let right = json_of(app.check_code(&id, &code).await).await;
    assert_eq!(right["valid"], true, "{right}");
    (code, body)
}

/// A PortaText start and check of `digits`; returns the code and the body.
async fn portatext_flow(app: &TestApp, digits: &str) -> (String, String) {
    let path = format!("/number_verify/{digits}");
    let started = app
        .request(Method::POST, &path)
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .expect("sending the PortaText start");
    assert_eq!(started.status(), StatusCode::OK);
    let body = app.wait_for_sms(&format!("+{digits}"), 1).await[0]
        .body
        .clone();
    let code = code_in(&body);
    let checked = app
        .request(Method::GET, &format!("{path}?code={code}"))
        .send()
        .await
        .expect("sending the PortaText check");
    let checked = json_of(checked).await;
    assert_eq!(checked["verified"], true, "{checked}");
    (code, body)
}

fn wrong_code(code: &str) -> String {
    helpers::wrong_code(code)
}

#[tokio::test]
async fn at_trace_level_no_log_line_holds_a_number_nonce_code_secret_key_or_sms_body() {
    let captured = Captured::default();
    let sink = captured.clone();
    assert!(
        init_tracing_to(LogFormat::Text, "trace", false, move || sink.clone()),
        "another subscriber was installed first; this binary must own the global one"
    );
    let app = spawn_app_with(options()).await;
    let native_to = helpers::phone_number(101);
    let portatext_to = helpers::phone_number(102);

    let (native_code, native_body) = native_flow(&app, &native_to).await;
    let (portatext_code, portatext_body) =
        portatext_flow(&app, portatext_to.trim_start_matches('+')).await;

    let nonces: Vec<Vec<u8>> = app
        .sql("SELECT code_nonce FROM verifications")
        .await
        .iter()
        .map(|row| row.get("code_nonce"))
        .collect();
    assert_eq!(nonces.len(), 2);
    let mut secrets: Vec<(&str, String)> = vec![
        ("the code secret", SECRET.to_owned()),
        ("the API key", API_KEY.to_owned()),
        ("the provider's auth token", TWILIO_TOKEN.to_owned()),
        ("a code", native_code),
        ("a code", portatext_code),
        ("an SMS body", native_body),
        ("an SMS body", portatext_body),
    ];
    for number in [&native_to, &portatext_to] {
        secrets.extend(number_forms(number).map(|form| ("a full phone number", form)));
    }
    for nonce in &nonces {
        secrets.extend(nonce_forms(nonce).map(|form| ("a code nonce", form)));
    }
    // tokio-postgres logs through `log`; a notice reaches its log at info.
    app.sql("DO $$ BEGIN RAISE NOTICE 'log capture probe'; END $$")
        .await;
    let log = captured.text();

    // The capture must have seen the flow, at trace level, from our crates and others'.
    assert!(
        log.contains("verification started"),
        "nothing of ours was captured"
    );
    assert!(
        log.contains("SMS sent"),
        "the worker's lines were not captured"
    );
    assert!(log.contains("TRACE"), "no trace-level line was captured");
    assert!(
        log.contains("log capture probe"),
        "tokio-postgres's `log` records were not captured"
    );
    let leaks: Vec<String> = secrets
        .iter()
        .filter_map(|(what, value)| {
            log.lines()
                .find(|line| line.contains(value.as_str()))
                .map(|line| format!("{what} ({value}) in: {line}"))
        })
        .collect();
    assert!(
        leaks.is_empty(),
        "{} secrets in the log:\n{}",
        leaks.len(),
        leaks.join("\n")
    );
}
