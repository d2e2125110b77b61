//! Delivery receipts: Twilio's signed status callbacks and the generic JSON route move a
//! sent send on to `delivered` or `undelivered`, once, and never backwards.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use chrono::Utc;
use hmac::{Hmac, Mac};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sha1::Sha1;
use verify_common::db::deliveries::{
    AttemptRecord, ClaimOutcome, FinishedAttempt, claim_deliveries, finish_attempts,
};
use verify_common::domain::{AttemptLogEntry, AttemptOutcome, DeliveryId, DeliveryStatus};
use verify_sink::SinkSettings;

use crate::helpers::{
    HTTP_RECEIPT_TOKEN, TWILIO_TOKEN, TestApp, TestOptions, WAIT, phone_number, spawn_app,
    spawn_app_with,
};

const TWILIO_PATH: &str = "/callbacks/twilio/status";
const HTTP_PATH: &str = "/callbacks/http/status";

/// Twilio's signature, computed here independently of the API's code: base64 HMAC-SHA1
/// over the URL and the parameters sorted by name.
fn sign(token: &str, url: &str, params: &[(&str, &str)]) -> String {
    let mut sorted = params.to_vec();
    sorted.sort();
    let mut mac = Hmac::<Sha1>::new_from_slice(token.as_bytes()).unwrap();
    mac.update(url.as_bytes());
    for (name, value) in sorted {
        mac.update(name.as_bytes());
        mac.update(value.as_bytes());
    }
    BASE64.encode(mac.finalize().into_bytes())
}

impl TestApp {
    /// Posts a Twilio status callback signed as Twilio signs it; returns the answer's
    /// status and body.
    async fn post_twilio_receipt(&self, params: &[(&str, &str)]) -> (StatusCode, Value) {
        let signature = sign(TWILIO_TOKEN, &self.url(TWILIO_PATH), params);
        let response = self
            .client
            .post(self.url(TWILIO_PATH))
            .header("X-Twilio-Signature", signature)
            .form(params)
            .send()
            .await
            .unwrap();
        (response.status(), response.json().await.unwrap())
    }

    /// Posts a generic JSON receipt with the given bearer token.
    async fn post_http_receipt(&self, token: Option<&str>, body: &Value) -> reqwest::Response {
        let mut request = self.client.post(self.url(HTTP_PATH)).json(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.unwrap()
    }

    /// Starts a verification and runs the pipeline until its send is `sent`; returns the
    /// verification id and the provider's message id.
    async fn sent_verification(&self, n: u32) -> (String, String) {
        let started = self
            .start_verification(&json!({ "to": phone_number(n) }))
            .await;
        let id = started["id"].as_str().unwrap().to_owned();
        self.drain().await;
        let verification = self.get_verification(&id).await;
        assert_eq!(verification["delivery_status"], "sent", "{verification:#}");
        let sid = verification["sends"][0]["provider_message_id"]
            .as_str()
            .unwrap()
            .to_owned();
        (id, sid)
    }
}

fn status_params<'a>(sid: &'a str, status: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("AccountSid", "ACtest0000000000000000000000000000"),
        ("ApiVersion", "2010-04-01"),
        ("MessageSid", sid),
        ("MessageStatus", status),
        ("SmsSid", sid),
        ("SmsStatus", status),
        ("To", "+14155550001"),
        ("From", "+15005550006"),
    ]
}

#[tokio::test]
async fn a_signed_delivered_receipt_moves_a_sent_send_to_delivered() {
    let app = spawn_app().await;
    let (id, sid) = app.sent_verification(1).await;

    let (status, body) = app
        .post_twilio_receipt(&status_params(&sid, "delivered"))
        .await;

    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"outcome": "changed", "status": "delivered"}));
    let verification = app.get_verification(&id).await;
    assert_eq!(verification["delivery_status"], "delivered");
    let send = &verification["sends"][0];
    assert_eq!(send["status"], "delivered");
    assert!(send["receipt_at"].is_string(), "{send}");
    assert_eq!(send["receipt_error_code"], Value::Null);
}

#[tokio::test]
async fn a_receipt_without_a_valid_signature_is_refused_with_403_and_changes_nothing() {
    let app = spawn_app().await;
    let (id, sid) = app.sent_verification(1).await;
    let params = status_params(&sid, "delivered");
    let other_url = format!("http://verify.example.com{TWILIO_PATH}");
    let cases = [
        ("no signature", None),
        (
            "a forged signature",
            Some("bm90IGEgc2lnbmF0dXJl".to_owned()),
        ),
        (
            "signed with another token",
            Some(sign("another-token", &app.url(TWILIO_PATH), &params)),
        ),
        (
            "signed for the URL a Host header would name",
            Some(sign(TWILIO_TOKEN, &other_url, &params)),
        ),
    ];
    let mut failures = Vec::new();

    for (case, signature) in &cases {
        let response = app
            .client
            .post(app.url(TWILIO_PATH))
            .header("host", "verify.example.com")
            .form(&params);
        let response = match signature {
            Some(signature) => response.header("X-Twilio-Signature", signature),
            None => response,
        }
        .send()
        .await
        .unwrap();
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        if status != StatusCode::FORBIDDEN || body["error"]["code"] != "invalid_signature" {
            failures.push(format!("{case}: {status} {body}"));
        }
    }

    assert!(failures.is_empty(), "{failures:#?}");
    let verification = app.get_verification(&id).await;
    assert_eq!(verification["delivery_status"], "sent");
}

#[tokio::test]
async fn a_duplicate_receipt_answers_200_and_changes_nothing() {
    let app = spawn_app().await;
    let (id, sid) = app.sent_verification(1).await;
    let params = status_params(&sid, "delivered");
    app.post_twilio_receipt(&params).await;
    let first = app.get_verification(&id).await;

    let (status, body) = app.post_twilio_receipt(&params).await;

    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"outcome": "unchanged", "status": "delivered"}));
    let again = app.get_verification(&id).await;
    assert_eq!(
        again["sends"][0]["receipt_at"],
        first["sends"][0]["receipt_at"]
    );
    assert_eq!(
        again["sends"][0]["updated_at"],
        first["sends"][0]["updated_at"]
    );
}

#[tokio::test]
async fn receipts_out_of_order_never_move_a_send_backwards() {
    let app = spawn_app().await;
    let (delivered_id, delivered_sid) = app.sent_verification(1).await;
    let (undelivered_id, undelivered_sid) = app.sent_verification(2).await;
    app.post_twilio_receipt(&status_params(&delivered_sid, "delivered"))
        .await;
    let mut undelivered = status_params(&undelivered_sid, "undelivered");
    undelivered.push(("ErrorCode", "30005"));
    app.post_twilio_receipt(&undelivered).await;

    let (late_sent, late_sent_body) = app
        .post_twilio_receipt(&status_params(&delivered_sid, "sent"))
        .await;
    let (late_delivered, late_delivered_body) = app
        .post_twilio_receipt(&status_params(&undelivered_sid, "delivered"))
        .await;

    assert_eq!(late_sent, StatusCode::OK);
    assert_eq!(late_sent_body, json!({"outcome": "ignored"}));
    assert_eq!(late_delivered, StatusCode::OK);
    assert_eq!(
        late_delivered_body,
        json!({"outcome": "unchanged", "status": "undelivered"})
    );
    let delivered = app.get_verification(&delivered_id).await;
    assert_eq!(delivered["delivery_status"], "delivered");
    let undelivered = app.get_verification(&undelivered_id).await;
    assert_eq!(undelivered["delivery_status"], "undelivered");
    assert_eq!(undelivered["sends"][0]["receipt_error_code"], "30005");
}

#[tokio::test]
async fn interim_statuses_answer_200_and_change_nothing() {
    let app = spawn_app().await;
    let (id, sid) = app.sent_verification(1).await;

    for interim in ["queued", "sending", "sent", "accepted"] {
        let (status, body) = app.post_twilio_receipt(&status_params(&sid, interim)).await;
        assert_eq!(status, StatusCode::OK, "{interim}");
        assert_eq!(body, json!({"outcome": "ignored"}), "{interim}");
    }

    assert_eq!(app.get_verification(&id).await["delivery_status"], "sent");
}

#[tokio::test]
async fn an_undelivered_or_failed_receipt_records_twilios_error_code_and_shows_it() {
    let app = spawn_app().await;
    for (n, twilio_status, code) in [(1, "undelivered", "30003"), (2, "failed", "30008")] {
        let (id, sid) = app.sent_verification(n).await;
        let mut params = status_params(&sid, twilio_status);
        params.push(("ErrorCode", code));

        let (status, body) = app.post_twilio_receipt(&params).await;

        assert_eq!(status, StatusCode::OK, "{twilio_status}: {body}");
        let verification = app.get_verification(&id).await;
        assert_eq!(
            verification["delivery_status"], "undelivered",
            "{twilio_status}"
        );
        assert_eq!(verification["sends"][0]["receipt_error_code"], code);
    }
}

#[tokio::test]
async fn receipts_are_counted_by_provider_and_by_what_they_did() {
    let app = spawn_app().await;
    let (_, delivered) = app.sent_verification(1).await;
    let (_, undelivered) = app.sent_verification(2).await;

    for params in [
        status_params(&delivered, "sent"),
        status_params(&delivered, "delivered"),
        status_params(&delivered, "delivered"),
        status_params(&undelivered, "undelivered"),
        status_params("SMnobodyeversentthis", "delivered"),
    ] {
        let (status, body) = app.post_twilio_receipt(&params).await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }

    let metrics = app.scrape().await;
    let count = |outcome| {
        metrics.value(
            "verify_receipts_total",
            &[("provider", "twilio"), ("outcome", outcome)],
        )
    };
    assert_eq!(count("ignored"), Some(1.0));
    assert_eq!(count("delivered"), Some(1.0));
    assert_eq!(count("unchanged"), Some(1.0));
    assert_eq!(count("undelivered"), Some(1.0));
    assert_eq!(count("held"), Some(1.0));
    assert_eq!(
        metrics.sum("verify_receipts_total", &[("provider", "http")]),
        0.0
    );
}

#[tokio::test]
async fn a_receipt_for_an_unknown_message_id_answers_200_and_is_held() {
    let app = spawn_app().await;
    let (id, _) = app.sent_verification(1).await;

    let (status, body) = app
        .post_twilio_receipt(&status_params("SMnobodyeversentthis", "delivered"))
        .await;

    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"outcome": "held"}));
    let held = app
        .sql("SELECT status FROM held_receipts WHERE provider_message_id = 'SMnobodyeversentthis'")
        .await;
    assert_eq!(held.len(), 1);
    assert_eq!(held[0].get::<_, String>("status"), "delivered");
    assert_eq!(app.get_verification(&id).await["delivery_status"], "sent");
}

#[tokio::test]
async fn a_receipt_that_beats_the_workers_record_of_the_send_is_applied_once_it_is_recorded() {
    // Arrange: a send claimed for its attempt, its provider message id not yet recorded,
    // as when the handset answers before the worker's record commits.
    let app = spawn_app_with(TestOptions {
        start_worker: false,
        ..TestOptions::default()
    })
    .await;
    let started = app
        .start_verification(&json!({ "to": phone_number(1) }))
        .await;
    let id = started["id"].as_str().unwrap();
    let send_id: uuid::Uuid = app.get_verification(id).await["sends"][0]["id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let send_id = DeliveryId::from_uuid(send_id);
    let claimed = claim_deliveries(&app.pool, &[send_id], Duration::from_secs(60))
        .await
        .unwrap();
    let ClaimOutcome::Claimed(claim) = &claimed[0] else {
        panic!("the send was not claimed: {claimed:?}");
    };
    let sid = "SMreceiptbeforerecord0000000000001";

    // Act: the receipt arrives, then the worker records the send.
    let (status, body) = app
        .post_twilio_receipt(&status_params(sid, "delivered"))
        .await;
    let held_while_sending = app.get_verification(id).await["delivery_status"].clone();
    let recorded = finish_attempts(
        &app.pool,
        "twilio",
        &[FinishedAttempt {
            id: send_id,
            attempt: claim.attempt,
            record: AttemptRecord {
                next: DeliveryStatus::Sent,
                provider_message_id: Some(sid.to_owned()),
                error: None,
                retry_in: None,
                log_entry: AttemptLogEntry {
                    attempt: claim.attempt,
                    at: Utc::now(),
                    outcome: AttemptOutcome::Sent,
                    provider_message_id: Some(sid.to_owned()),
                    error: None,
                    retry_at: None,
                    duration_ms: Some(1),
                    provider: None,
                },
                segments: Some(1),
            },
        }],
    )
    .await
    .unwrap();

    // Assert: held, not lost and not applied early; delivered once the id is recorded.
    assert_eq!((status, body), (StatusCode::OK, json!({"outcome": "held"})));
    assert_eq!(held_while_sending, "sending");
    assert_eq!(recorded, [true]);
    app.wait_for_delivery_status(id, "delivered").await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while !app.sql("SELECT 1 FROM held_receipts").await.is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the held receipt was never released"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn the_sink_calls_back_and_a_send_through_the_real_pipeline_ends_delivered() {
    let app = spawn_app_with(TestOptions {
        receipts: true,
        sink: sink_with(&["--receipt-delay-ms", "20"]),
        ..TestOptions::default()
    })
    .await;

    let started = app
        .start_verification(&json!({ "to": phone_number(1) }))
        .await;

    let id = started["id"].as_str().unwrap();
    let verification = app.wait_for_delivery_status(id, "delivered").await;
    let send = &verification["sends"][0];
    assert!(
        send["provider_message_id"]
            .as_str()
            .unwrap()
            .starts_with("SM")
    );
    assert!(send["receipt_at"].is_string(), "{send}");
}

#[tokio::test]
async fn undelivered_duplicated_and_out_of_order_callbacks_from_the_sink_end_undelivered() {
    let app = spawn_app_with(TestOptions {
        receipts: true,
        sink: sink_with(&[
            "--receipt-delay-ms",
            "0",
            "--receipt-undelivered-rate",
            "1",
            "--receipt-duplicate-rate",
            "1",
            "--receipt-out-of-order-rate",
            "1",
        ]),
        ..TestOptions::default()
    })
    .await;
    let started = app
        .start_verification(&json!({ "to": phone_number(1) }))
        .await;
    let id = started["id"].as_str().unwrap();
    app.wait_for_delivery_status(id, "undelivered").await;

    // Every callback (undelivered, its duplicate, a late `sent`) answered 2xx.
    let stats = wait_for_receipts_sent(&app, 3).await;

    assert_eq!(stats["receipts"]["failed"], 0, "{stats}");
    let verification = app.get_verification(id).await;
    assert_eq!(verification["delivery_status"], "undelivered");
    let code = verification["sends"][0]["receipt_error_code"].clone();
    assert!(code == "30003" || code == "30005", "{code}");
}

#[tokio::test]
async fn a_send_through_the_generic_provider_ends_delivered_by_the_sinks_json_receipt() {
    let app = spawn_app_with(TestOptions {
        receipts: true,
        generic_provider: true,
        sink: sink_with(&[
            "--receipt-delay-ms",
            "20",
            "--receipt-token",
            HTTP_RECEIPT_TOKEN,
        ]),
        ..TestOptions::default()
    })
    .await;

    let started = app
        .start_verification(&json!({ "to": phone_number(1) }))
        .await;

    let id = started["id"].as_str().unwrap();
    let verification = app.wait_for_delivery_status(id, "delivered").await;
    let sent = app.sent_sms(&phone_number(1));
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].api, "json");
    assert_eq!(
        verification["sends"][0]["provider_message_id"],
        sent[0].id.as_str()
    );
}

/// The test sink's settings with these flags added.
fn sink_with(flags: &[&str]) -> SinkSettings {
    let mut all = vec![
        "--addr",
        "127.0.0.1:0",
        "--twilio-account-sid",
        "ACtest0000000000000000000000000000",
        "--twilio-auth-token",
        TWILIO_TOKEN,
    ];
    all.extend_from_slice(flags);
    SinkSettings::from_flags(&all).unwrap()
}

/// Waits until the sink has had `count` receipts answered 2xx; returns its stats.
async fn wait_for_receipts_sent(app: &TestApp, count: u64) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let stats: Value = app
            .client
            .get(format!("{}/stats", app.sink_url))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let done = stats["receipts"]["sent"].as_u64().unwrap_or(0)
            + stats["receipts"]["failed"].as_u64().unwrap_or(0);
        if done >= count {
            return stats;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the sink sent only {done} of {count} receipts: {stats}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn a_generic_receipt_with_the_right_token_moves_a_sent_send_on() {
    let app = spawn_app().await;
    let (id, sid) = app.sent_verification(1).await;

    let response = app
        .post_http_receipt(
            Some(HTTP_RECEIPT_TOKEN),
            &json!({"message_id": sid, "status": "undelivered", "error_code": "E42"}),
        )
        .await;

    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body, json!({"outcome": "changed", "status": "undelivered"}));
    let verification = app.get_verification(&id).await;
    assert_eq!(verification["delivery_status"], "undelivered");
    assert_eq!(verification["sends"][0]["receipt_error_code"], "E42");
}

#[tokio::test]
async fn a_generic_receipt_without_the_right_token_is_refused_and_changes_nothing() {
    let app = spawn_app().await;
    let (id, sid) = app.sent_verification(1).await;
    let body = json!({"message_id": sid, "status": "delivered"});

    let missing = app.post_http_receipt(None, &body).await;
    let wrong = app.post_http_receipt(Some("not-the-token"), &body).await;

    assert_eq!(missing.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(wrong.status(), StatusCode::FORBIDDEN);
    let wrong: Value = wrong.json().await.unwrap();
    assert_eq!(wrong["error"]["code"], "invalid_receipt_token");
    assert_eq!(app.get_verification(&id).await["delivery_status"], "sent");
}

#[tokio::test]
async fn a_generic_receipt_with_a_bad_body_is_refused_naming_the_field() {
    let app = spawn_app().await;
    let cases = [
        (json!({"status": "delivered"}), "message_id"),
        (json!({"message_id": "m1"}), "status"),
        (json!({"message_id": "m1", "status": "read"}), "status"),
        (
            json!({"message_id": "", "status": "delivered"}),
            "message_id",
        ),
        (
            json!({"message_id": 7, "status": "delivered"}),
            "message_id",
        ),
        (
            json!({"message_id": "m1", "status": "undelivered", "error_code": "a b"}),
            "error_code",
        ),
        (
            json!({"message_id": "m1", "status": "delivered", "extra": 1}),
            "extra",
        ),
    ];
    let mut failures = Vec::new();

    for (body, field) in &cases {
        let response = app.post_http_receipt(Some(HTTP_RECEIPT_TOKEN), body).await;
        let status = response.status();
        let answer: Value = response.json().await.unwrap();
        if status != StatusCode::BAD_REQUEST || answer["error"]["field"] != *field {
            failures.push(format!("{body}: {status} {answer}"));
        }
    }

    assert!(failures.is_empty(), "{failures:#?}");
    assert!(app.sql("SELECT 1 FROM held_receipts").await.is_empty());
}

#[tokio::test]
async fn a_signed_twilio_receipt_without_a_message_sid_is_refused_naming_it() {
    let app = spawn_app().await;

    let (status, body) = app
        .post_twilio_receipt(&[("MessageStatus", "delivered")])
        .await;

    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["field"], "MessageSid");
}
