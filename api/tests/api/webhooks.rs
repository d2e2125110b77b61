//! Webhooks to producers: endpoint management, SSRF refusals, signed deliveries checked
//! by an independent verifier, retries, 410 and a hanging endpoint beside SMS sending.

use base64::Engine as _;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use verify_common::config::{FromFlags, WebhookSettings};
use verify_common::queue::webhooks::WebhookPublisher;
use verify_common::testing::exposition::Exposition;

use crate::helpers::{
    Answer, TestApp, TestOptions, WAIT, WebhookReceiver, eventually, phone_number, spawn_app,
    spawn_app_with, verify_with_standardwebhooks, wait_until, wrong_code,
};

const VERIFICATION_EVENTS: [&str; 3] = [
    "verification.approved",
    "verification.canceled",
    "verification.max_attempts_reached",
];

async fn error_of(response: reqwest::Response) -> Value {
    response.json::<Value>().await.unwrap()["error"].clone()
}

/// Starts a verification to `to` and approves it with the code it sent; returns its id.
async fn approve_one(app: &TestApp, to: &str) -> String {
    let started = app.start_verification(&json!({ "to": to })).await;
    let id = started["id"].as_str().unwrap().to_owned();
    let code = app.wait_for_code(to).await;
    let check: Value = app.check_code(&id, &code).await.json().await.unwrap();
    assert_eq!(check["valid"], true, "{check}");
    id
}

async fn count(app: &TestApp, sql: &str) -> i64 {
    app.sql(sql).await[0].get(0)
}

const ATTEMPTS: &str = "verify_webhook_attempts_total";

/// The workers' metrics once one attempt ending in `outcome` is counted.
async fn attempts_counted(app: &TestApp, outcome: &str) -> Exposition {
    eventually(
        &format!("an attempt counted as {outcome}"),
        WAIT,
        || async {
            let metrics = app.scrape_workers().await;
            (metrics.sum(ATTEMPTS, &[("outcome", outcome)]) == 1.0).then_some(metrics)
        },
    )
    .await
}

#[tokio::test]
async fn a_new_webhook_shows_its_secret_once_and_never_again() {
    let app = spawn_app().await;

    let created = app
        .create_webhook("https://example.com/hooks", &["verification.approved"])
        .await;

    let secret = created["secret"].as_str().unwrap();
    let key = secret.strip_prefix("whsec_").expect("a whsec_ secret");
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(key)
        .unwrap();
    assert!(
        (24..=32).contains(&decoded.len()),
        "{} bytes",
        decoded.len()
    );
    assert_eq!(created["events"], json!(["verification.approved"]));
    assert_eq!(created["enabled"], true);
    let id = created["id"].as_i64().unwrap();
    let one: Value = app
        .get(&format!("/v1/webhooks/{id}"))
        .await
        .json()
        .await
        .unwrap();
    let all: Value = app.get("/v1/webhooks").await.json().await.unwrap();
    assert_eq!(one["url"], "https://example.com/hooks");
    assert!(one.get("secret").is_none(), "{one}");
    assert_eq!(all["webhooks"].as_array().unwrap().len(), 1);
    assert!(all["webhooks"][0].get("secret").is_none(), "{all}");
    assert!(!all.to_string().contains(secret));
}

#[tokio::test]
async fn bad_urls_and_events_are_refused_naming_the_field() {
    let app = spawn_app().await;
    let cases = [
        (
            json!({ "url": "/relative", "events": ["send.sent"] }),
            "url",
            "invalid_url",
        ),
        (
            json!({ "url": "ftp://example.com/", "events": ["send.sent"] }),
            "url",
            "invalid_url",
        ),
        (
            json!({ "url": "https://example.com/", "events": [] }),
            "events",
            "invalid_events",
        ),
        (
            json!({ "url": "https://example.com/", "events": ["send.sent", "verification.started"] }),
            "events",
            "invalid_events",
        ),
    ];
    for (body, field, code) in cases {
        let response = app.post_json("/v1/webhooks", &body).await;

        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{body}");
        let error = error_of(response).await;
        assert_eq!(error["field"], field, "{body}: {error}");
        assert_eq!(error["code"], code, "{body}: {error}");
    }
    let unknown = app
        .post_json(
            "/v1/webhooks",
            &json!({ "url": "https://example.com/", "events": ["verification.started"] }),
        )
        .await;
    assert!(
        error_of(unknown).await["message"]
            .as_str()
            .unwrap()
            .contains("verification.started")
    );
    let listed: Value = app.get("/v1/webhooks").await.json().await.unwrap();
    assert_eq!(listed["webhooks"], json!([]));
}

#[tokio::test]
async fn a_webhook_can_be_changed_and_deleted() {
    let app = spawn_app().await;
    let created = app
        .create_webhook("https://example.com/a", &["send.sent"])
        .await;
    let path = format!("/v1/webhooks/{}", created["id"]);

    let changed: Value = app
        .request(Method::PATCH, &path)
        .json(&json!({ "url": "https://example.com/b", "events": ["send.failed", "send.sent"] }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let bad = app
        .request(Method::PATCH, &path)
        .json(&json!({ "events": ["nope"] }))
        .send()
        .await
        .unwrap();
    let deleted = app.request(Method::DELETE, &path).send().await.unwrap();

    assert_eq!(changed["url"], "https://example.com/b");
    assert_eq!(changed["events"], json!(["send.failed", "send.sent"]));
    assert!(changed.get("secret").is_none());
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    assert_eq!(app.get(&path).await.status(), StatusCode::NOT_FOUND);
    let again = app.request(Method::DELETE, &path).send().await.unwrap();
    assert_eq!(again.status(), StatusCode::NOT_FOUND);
}

fn no_private_destinations() -> WebhookSettings {
    WebhookSettings::from_flags(&[
        "--webhook-retry-delays-ms",
        "50",
        "--webhook-relay-interval-ms",
        "20",
    ])
    .unwrap()
}

#[tokio::test]
async fn internal_destinations_are_refused_unless_private_addresses_are_allowed() {
    let app = spawn_app_with(TestOptions {
        api_webhooks: no_private_destinations().destinations,
        ..TestOptions::default()
    })
    .await;
    let allowing = spawn_app().await;

    for url in [
        "http://127.0.0.1:9/hooks",
        "http://localhost/hooks",
        "http://10.0.0.7/hooks",
        "http://169.254.169.254/latest/meta-data",
        "http://100.64.0.1/",
        "http://[::1]/hooks",
        "http://[fd00::1]/hooks",
        "http://[::ffff:192.168.0.1]/",
        "http://0.0.0.0/",
    ] {
        let refused = app
            .post_json(
                "/v1/webhooks",
                &json!({ "url": url, "events": ["send.sent"] }),
            )
            .await;

        assert_eq!(refused.status(), StatusCode::UNPROCESSABLE_ENTITY, "{url}");
        let error = error_of(refused).await;
        assert_eq!(error["field"], "url", "{url}: {error}");
        assert_eq!(
            error["code"], "webhook_destination_refused",
            "{url}: {error}"
        );
    }
    let public = app
        .post_json(
            "/v1/webhooks",
            &json!({ "url": "http://93.184.216.34/hooks", "events": ["send.sent"] }),
        )
        .await;
    assert_eq!(public.status(), StatusCode::CREATED);
    allowing
        .create_webhook("http://127.0.0.1:9/hooks", &["send.sent"])
        .await;
}

#[tokio::test]
async fn a_destination_that_turned_internal_is_refused_when_delivering() {
    // The API accepted the endpoint (as if its name resolved outward then); the worker,
    // which allows no internal address, checks again when it connects.
    let app = spawn_app_with(TestOptions {
        webhooks: no_private_destinations(),
        ..TestOptions::default()
    })
    .await;
    let receiver = WebhookReceiver::start(&[], Answer::Status(200)).await;
    app.create_webhook(&receiver.url, &VERIFICATION_EVENTS)
        .await;
    // A name, refused by the resolver; the receiver's literal address by a check of its own.
    app.create_webhook("http://localhost:9/hooks", &VERIFICATION_EVENTS)
        .await;

    approve_one(&app, &phone_number(1)).await;

    let errors = eventually(
        "both first attempts recorded without an answer",
        WAIT,
        || async {
            let rows = app
                .sql(
                    "SELECT a.error FROM webhook_attempts a
                 JOIN webhook_deliveries d ON d.id = a.delivery_id
                 WHERE a.attempt = 1 AND a.status_code IS NULL",
                )
                .await;
            (rows.len() == 2).then(|| {
                rows.iter()
                    .map(|row| row.get::<_, String>(0))
                    .collect::<Vec<_>>()
            })
        },
    )
    .await;
    assert!(
        errors
            .iter()
            .all(|error| error.contains("internal address")),
        "{errors:?}"
    );
    // Both were refused before connecting: the receiver on 127.0.0.1 never heard of them.
    assert!(receiver.received().is_empty());
}

#[tokio::test]
async fn every_verification_event_is_delivered_signed_so_an_independent_verifier_accepts_it() {
    let app = spawn_app().await;
    let receiver = WebhookReceiver::start(&[], Answer::Status(204)).await;
    let webhook = app
        .create_webhook(&receiver.url, &VERIFICATION_EVENTS)
        .await;
    let secret = webhook["secret"].as_str().unwrap();

    let approved = approve_one(&app, &phone_number(1)).await;
    let canceled_to = phone_number(2);
    let canceled = app.start_verification(&json!({ "to": canceled_to })).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let response = app
        .post_json(&format!("/v1/verifications/{canceled}/cancel"), &json!({}))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let exhausted_to = phone_number(3);
    let exhausted = app.start_verification(&json!({ "to": exhausted_to })).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let wrong = wrong_code(&app.wait_for_code(&exhausted_to).await);
    for _ in 0..5 {
        app.check_code(&exhausted, &wrong).await;
    }

    let received = receiver.wait_for(3).await;
    let mut by_type = std::collections::BTreeMap::new();
    for webhook in &received {
        verify_with_standardwebhooks(secret, webhook)
            .await
            .unwrap_or_else(|e| panic!("{webhook:?} was not accepted: {e}"));
        let body = webhook.json();
        assert!(webhook.id.starts_with("msg_"), "{webhook:?}");
        assert!(body["timestamp"].is_string(), "{body}");
        by_type.insert(
            body["type"].as_str().unwrap().to_owned(),
            body["data"].clone(),
        );
    }
    assert_eq!(
        by_type["verification.approved"]["verification_id"],
        approved
    );
    assert_eq!(by_type["verification.approved"]["status"], "approved");
    assert_eq!(by_type["verification.approved"]["to"], phone_number(1));
    assert_eq!(
        by_type["verification.canceled"]["verification_id"],
        canceled
    );
    assert_eq!(by_type["verification.canceled"]["status"], "canceled");
    assert_eq!(
        by_type["verification.max_attempts_reached"]["verification_id"],
        exhausted
    );
    assert_eq!(
        by_type["verification.max_attempts_reached"]["checks_made"],
        5
    );
    let mut tampered = received[0].clone();
    tampered.body = tampered.body.replace("verification", "verificatioN");
    assert!(
        verify_with_standardwebhooks(secret, &tampered)
            .await
            .is_err()
    );
}

#[tokio::test]
async fn an_event_nobody_subscribed_to_records_nothing() {
    let app = spawn_app().await;
    let receiver = WebhookReceiver::start(&[], Answer::Status(200)).await;
    app.create_webhook(&receiver.url, &["verification.canceled"])
        .await;

    approve_one(&app, &phone_number(1)).await;

    assert_eq!(
        count(&app, "SELECT count(*) FROM webhook_deliveries").await,
        0
    );
}

#[tokio::test]
async fn a_failing_endpoint_is_retried_with_the_same_webhook_id_until_it_recovers() {
    let app = spawn_app().await;
    let receiver = WebhookReceiver::start(
        &[Answer::Status(500), Answer::Status(503)],
        Answer::Status(200),
    )
    .await;
    app.create_webhook(&receiver.url, &VERIFICATION_EVENTS)
        .await;

    approve_one(&app, &phone_number(1)).await;

    let received = receiver.wait_for(3).await;
    assert!(
        received.iter().all(|r| r.id == received[0].id),
        "{received:#?}"
    );
    assert!(received.iter().all(|r| r.body == received[0].body));
    wait_until("the delivery is marked delivered", WAIT, || async {
        count(
            &app,
            "SELECT count(*) FROM webhook_deliveries WHERE status = 'delivered'",
        )
        .await
            > 0
    })
    .await;
    let attempts: Vec<(i32, Option<i32>)> = app
        .sql("SELECT attempt, status_code FROM webhook_attempts ORDER BY attempt")
        .await
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    assert_eq!(attempts, [(1, Some(500)), (2, Some(503)), (3, Some(200))]);
    // The attempt is counted just after it is recorded.
    let metrics = attempts_counted(&app, "delivered").await;
    let attempts_ending = |outcome| metrics.sum(ATTEMPTS, &[("outcome", outcome)]);
    assert_eq!(attempts_ending("retrying"), 2.0);
    assert_eq!(attempts_ending("delivered"), 1.0);
    assert_eq!(attempts_ending("failed"), 0.0);
    assert_eq!(
        metrics.sum("verify_webhook_attempt_duration_seconds_count", &[]),
        3.0
    );
    assert_eq!(metrics.sum("verify_webhooks_relayed_total", &[]), 1.0);
}

#[tokio::test]
async fn a_delivery_fails_for_good_when_the_schedule_runs_out() {
    let app = spawn_app().await;
    let receiver = WebhookReceiver::start(&[], Answer::Status(500)).await;
    app.create_webhook(&receiver.url, &VERIFICATION_EVENTS)
        .await;

    approve_one(&app, &phone_number(1)).await;

    // Three delays in the test schedule: four attempts in all.
    receiver.wait_for(4).await;
    wait_until("the delivery is marked failed", WAIT, || async {
        count(
            &app,
            "SELECT count(*) FROM webhook_deliveries WHERE status = 'failed'",
        )
        .await
            > 0
    })
    .await;
    assert_eq!(
        count(&app, "SELECT count(*) FROM webhook_attempts").await,
        4
    );
    assert_eq!(receiver.received().len(), 4);
    let metrics = attempts_counted(&app, "failed").await;
    assert_eq!(metrics.sum(ATTEMPTS, &[("outcome", "retrying")]), 3.0);
    assert_eq!(metrics.sum(ATTEMPTS, &[("outcome", "failed")]), 1.0);
}

#[tokio::test]
async fn an_unreadable_webhook_job_is_parked_with_its_reason_not_dropped() {
    let app = spawn_app().await;
    // The test workers' schedule has three retry delays: the same topology.
    let publisher = WebhookPublisher::connect(&app.rabbit, 3).await.unwrap();
    let body = b"\xffnot a webhook job".to_vec();

    publisher.publish_raw(&body).await.unwrap();

    let (parked, reason) = eventually("the job is parked", WAIT, || async {
        publisher.take_parked().await.unwrap()
    })
    .await;
    assert_eq!(parked, body);
    assert!(reason.contains("unreadable webhook job"), "{reason}");
}

#[tokio::test]
async fn an_endpoint_answering_410_is_disabled_and_gets_nothing_more() {
    let app = spawn_app().await;
    let receiver = WebhookReceiver::start(&[], Answer::Status(410)).await;
    let webhook = app
        .create_webhook(&receiver.url, &VERIFICATION_EVENTS)
        .await;
    let path = format!("/v1/webhooks/{}", webhook["id"]);

    approve_one(&app, &phone_number(1)).await;
    receiver.wait_for(1).await;
    let disabled = eventually("the endpoint is disabled", WAIT, || async {
        let current: Value = app.get(&path).await.json().await.unwrap();
        (current["enabled"] == false).then_some(current)
    })
    .await;
    approve_one(&app, &phone_number(2)).await;

    assert!(
        disabled["disabled_reason"]
            .as_str()
            .unwrap()
            .contains("410")
    );
    // The second approval recorded nothing for the disabled endpoint.
    assert_eq!(
        count(&app, "SELECT count(*) FROM webhook_deliveries").await,
        1
    );
    assert_eq!(
        count(&app, "SELECT count(*) FROM webhook_attempts").await,
        1
    );
    let enabled: Value = app
        .request(Method::PATCH, &path)
        .json(&json!({ "enabled": true }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(enabled["enabled"], true);
}

#[tokio::test]
async fn an_endpoint_that_never_answers_does_not_delay_sms_sending() {
    let app = spawn_app_with(TestOptions {
        webhooks: WebhookSettings::from_flags(&[
            "--webhook-allow-private",
            "--webhook-concurrency",
            "2",
            "--webhook-timeout-ms",
            "60000",
            "--webhook-relay-interval-ms",
            "20",
        ])
        .unwrap(),
        ..TestOptions::default()
    })
    .await;
    let receiver = WebhookReceiver::start(&[], Answer::Hang).await;
    app.create_webhook(&receiver.url, &VERIFICATION_EVENTS)
        .await;
    for n in 0..4 {
        let id = app
            .start_verification(&json!({ "to": phone_number(n) }))
            .await["id"]
            .as_str()
            .unwrap()
            .to_owned();
        app.post_json(&format!("/v1/verifications/{id}/cancel"), &json!({}))
            .await;
    }
    // Both webhook slots now hold a request the endpoint will not answer for a minute.
    receiver.wait_for(2).await;

    for n in 10..20 {
        app.start_verification(&json!({ "to": phone_number(n) }))
            .await;
    }

    for n in 10..20 {
        app.wait_for_sms(&phone_number(n), 1).await;
    }
    assert_eq!(receiver.received().len(), 2, "the slots were still held");
}

#[tokio::test]
async fn a_sent_sms_is_reported_with_its_send_and_provider_message_id() {
    let app = spawn_app().await;
    let receiver = WebhookReceiver::start(&[], Answer::Status(200)).await;
    let webhook = app
        .create_webhook(&receiver.url, &["send.sent", "send.failed"])
        .await;
    let to = phone_number(1);
    let id = app.start_verification(&json!({ "to": to })).await["id"]
        .as_str()
        .unwrap()
        .to_owned();

    let received = receiver.wait_for(1).await;

    let verification = app.get_verification(&id).await;
    let send = &verification["sends"][0];
    let body = received[0].json();
    assert_eq!(body["type"], "send.sent", "{body}");
    assert_eq!(body["data"]["send_id"], send["id"]);
    assert_eq!(body["data"]["verification_id"], id);
    assert_eq!(body["data"]["to"], to);
    assert_eq!(
        body["data"]["provider_message_id"],
        send["provider_message_id"]
    );
    verify_with_standardwebhooks(webhook["secret"].as_str().unwrap(), &received[0])
        .await
        .unwrap();
}

#[tokio::test]
async fn a_send_the_provider_refused_is_reported_as_failed_with_its_error() {
    let mut options = TestOptions::default();
    options.sink.failure_rate = 1.0;
    options.sink.failure_status = 400;
    let app = spawn_app_with(options).await;
    let receiver = WebhookReceiver::start(&[], Answer::Status(200)).await;
    app.create_webhook(&receiver.url, &["send.sent", "send.failed"])
        .await;

    let id = app
        .start_verification(&json!({ "to": phone_number(1) }))
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();

    let body = receiver.wait_for(1).await[0].json();
    assert_eq!(body["type"], "send.failed", "{body}");
    assert_eq!(body["data"]["verification_id"], id);
    assert_eq!(body["data"]["status"], "failed");
    assert!(body["data"]["error"].is_string(), "{body}");
}

fn sink_sending_receipts(undelivered_rate: &str) -> verify_sink::SinkSettings {
    verify_sink::SinkSettings::from_flags(&[
        "--addr",
        "127.0.0.1:0",
        "--twilio-account-sid",
        "ACtest0000000000000000000000000000",
        "--twilio-auth-token",
        crate::helpers::TWILIO_TOKEN,
        "--receipt-delay-ms",
        "0",
        "--receipt-undelivered-rate",
        undelivered_rate,
    ])
    .unwrap()
}

#[tokio::test]
async fn delivery_receipts_are_reported_as_delivered_or_undelivered() {
    for (rate, event) in [("0", "send.delivered"), ("1", "send.undelivered")] {
        let app = spawn_app_with(TestOptions {
            receipts: true,
            sink: sink_sending_receipts(rate),
            ..TestOptions::default()
        })
        .await;
        let receiver = WebhookReceiver::start(&[], Answer::Status(200)).await;
        app.create_webhook(&receiver.url, &["send.delivered", "send.undelivered"])
            .await;

        let id = app
            .start_verification(&json!({ "to": phone_number(1) }))
            .await["id"]
            .as_str()
            .unwrap()
            .to_owned();

        let body = receiver.wait_for(1).await[0].json();
        assert_eq!(body["type"], event, "{body}");
        assert_eq!(body["data"]["verification_id"], id);
        let send = &app.get_verification(&id).await["sends"][0];
        assert_eq!(body["data"]["send_id"], send["id"]);
        assert_eq!(body["data"]["error_code"], send["receipt_error_code"]);
    }
}

#[tokio::test]
async fn a_block_the_conversion_breaker_creates_is_reported_once() {
    let app = spawn_app().await;
    let receiver = WebhookReceiver::start(&[], Answer::Status(200)).await;
    app.create_webhook(&receiver.url, &["abuse.blocked"]).await;
    crate::abuse::set_rule(
        &app,
        "conversion.prefix",
        &json!({
            "mode": "enforce",
            "params": {"min_sends": 5, "min_conversion_pct": 20, "window_secs": 3600,
                       "cooldown_secs": 600, "grace_secs": 0},
        }),
    )
    .await;
    crate::abuse::set_rule(&app, "conversion.country", &json!({"mode": "off"})).await;
    for n in 0..5 {
        app.start_verification(&json!({ "to": phone_number(100 + n) }))
            .await;
    }

    assert_eq!(app.evaluate_breaker().await, 1);
    // A second evaluation renews the block: no new event.
    assert_eq!(app.evaluate_breaker().await, 1);

    let body = receiver.wait_for(1).await[0].json();
    assert_eq!(body["type"], "abuse.blocked", "{body}");
    assert_eq!(body["data"]["scope"], "prefix");
    assert_eq!(body["data"]["key"], "+1415555");
    assert_eq!(body["data"]["rule"], "conversion.prefix");
    assert_eq!(
        count(&app, "SELECT count(*) FROM webhook_deliveries").await,
        1
    );
}
