//! `GET /v1/verifications/{id}/events`: a verification's life, oldest first, read back
//! from what the system recorded while it happened.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::expiry::spawn_app_with_short_lifetimes;
use crate::helpers::{
    Answer, TWILIO_TOKEN, TestApp, TestOptions, WAIT, WebhookReceiver, phone_number, spawn_app,
    spawn_app_with, wrong_code,
};

async fn events_of(app: &TestApp, id: &str) -> Vec<Value> {
    let response = app.get(&format!("/v1/verifications/{id}/events")).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    body["events"].as_array().expect("an events array").clone()
}

fn types_of(events: &[Value]) -> Vec<&str> {
    events
        .iter()
        .map(|event| event["type"].as_str().unwrap())
        .collect()
}

/// Reads the events until one of type `last` is there; fails the test after [`WAIT`].
async fn events_until(app: &TestApp, id: &str, last: &str) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let events = events_of(app, id).await;
        if types_of(&events).contains(&last) {
            return events;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {last} event came: {events:#?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

async fn start(app: &TestApp, to: &str) -> String {
    app.start_verification(&json!({ "to": to })).await["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn assert_oldest_first(events: &[Value]) {
    let times: Vec<chrono::DateTime<chrono::Utc>> = events
        .iter()
        .map(|event| event["at"].as_str().unwrap().parse().unwrap())
        .collect();
    assert!(times.is_sorted(), "{events:#?}");
}

#[tokio::test]
async fn a_whole_life_reads_back_in_order_with_its_facts() {
    let app = spawn_app_with(TestOptions {
        receipts: true,
        sink: verify_sink::SinkSettings::from_flags(&[
            "--addr",
            "127.0.0.1:0",
            "--twilio-account-sid",
            "ACtest0000000000000000000000000000",
            "--twilio-auth-token",
            TWILIO_TOKEN,
            "--receipt-delay-ms",
            "0",
        ])
        .unwrap(),
        ..TestOptions::default()
    })
    .await;
    let receiver = WebhookReceiver::start(&[], Answer::Status(204)).await;
    let webhook = app
        .create_webhook(&receiver.url, &["verification.approved"])
        .await;
    let to = phone_number(1);

    let id = start(&app, &to).await;
    let sent = app.wait_for_delivery_status(&id, "delivered").await;
    let code = app.wait_for_code(&to).await;
    let wrong = app.check_code(&id, &wrong_code(&code)).await;
    let right = app.check_code(&id, &code).await;
    assert_eq!(
        (wrong.status(), right.status()),
        (StatusCode::OK, StatusCode::OK)
    );
    let delivered = receiver.wait_for(1).await;
    let events = events_until(&app, &id, "webhook.attempt").await;

    assert_eq!(
        types_of(&events),
        [
            "verification.created",
            "send.queued",
            "send.attempt",
            "send.receipt",
            "check",
            "check",
            "webhook.queued",
            "webhook.attempt",
        ]
    );
    assert_oldest_first(&events);
    let send = &sent["sends"][0];
    let [
        created,
        queued,
        attempt,
        receipt,
        wrong,
        right,
        webhook_queued,
        webhook_attempt,
    ] = &events[..]
    else {
        unreachable!("eight events, as asserted above");
    };
    assert_eq!(created["at"], sent["created_at"]);
    assert_eq!(created["expires_at"], sent["expires_at"]);
    assert_eq!(created["max_checks"], 5);
    assert_eq!(queued["send_id"], send["id"]);
    assert_eq!(queued["send_number"], 1);
    assert_eq!(attempt["send_id"], send["id"]);
    assert_eq!(attempt["attempt"], 1);
    assert_eq!(attempt["outcome"], "sent");
    assert_eq!(attempt["provider_message_id"], send["provider_message_id"]);
    assert_eq!(attempt["provider"], "twilio");
    assert_eq!(receipt["send_id"], send["id"]);
    assert_eq!(receipt["status"], "delivered");
    assert_eq!(receipt["at"], send["receipt_at"]);
    assert_eq!(
        (&wrong["check_number"], &wrong["outcome"], &wrong["status"]),
        (&json!(1), &json!("wrong_code"), &json!("pending"))
    );
    assert_eq!(
        (&right["check_number"], &right["outcome"], &right["status"]),
        (&json!(2), &json!("approved"), &json!("approved"))
    );
    assert_eq!(webhook_queued["webhook_id"], delivered[0].id.as_str());
    assert_eq!(webhook_queued["event"], "verification.approved");
    assert_eq!(webhook_queued["endpoint_id"], webhook["id"]);
    assert_eq!(webhook_queued["status"], "delivered");
    assert_eq!(webhook_queued["attempts"], 1);
    assert_eq!(webhook_attempt["webhook_id"], delivered[0].id.as_str());
    assert_eq!(webhook_attempt["attempt"], 1);
    assert_eq!(webhook_attempt["status_code"], 204);
    assert_eq!(webhook_attempt["error"], Value::Null);
}

#[tokio::test]
async fn a_canceled_verification_ends_with_its_cancel() {
    let app = spawn_app().await;
    let id = start(&app, &phone_number(1)).await;

    let response = app
        .post_json(&format!("/v1/verifications/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let canceled: Value = response.json().await.unwrap();

    let events = events_of(&app, &id).await;
    let types = types_of(&events);
    assert_eq!(types[..2], ["verification.created", "send.queued"]);
    assert_eq!(
        types
            .iter()
            .filter(|kind| **kind == "verification.canceled")
            .count(),
        1,
        "{events:#?}"
    );
    let cancel = events
        .iter()
        .find(|event| event["type"] == "verification.canceled")
        .unwrap();
    assert_eq!(cancel["at"], canceled["updated_at"]);
    assert!(!types.contains(&"verification.expired"), "{events:#?}");
    assert_oldest_first(&events);
}

#[tokio::test]
async fn an_expired_verification_ends_with_its_expiry_and_the_event_announcing_it() {
    let app = spawn_app_with_short_lifetimes().await;
    let receiver = WebhookReceiver::start(&[], Answer::Status(204)).await;
    app.create_webhook(&receiver.url, &["verification.expired"])
        .await;
    let id = start(&app, &phone_number(1)).await;
    let expires_at = app.get_verification(&id).await["expires_at"].clone();

    let events = events_until(&app, &id, "webhook.attempt").await;

    let expiry = events
        .iter()
        .find(|event| event["type"] == "verification.expired")
        .unwrap_or_else(|| panic!("no expiry in {events:#?}"));
    assert_eq!(expiry["at"], expires_at);
    let queued = events
        .iter()
        .find(|event| event["type"] == "webhook.queued")
        .unwrap();
    assert_eq!(queued["event"], "verification.expired");
    assert!(!types_of(&events).contains(&"check"), "{events:#?}");
    assert_oldest_first(&events);
}
