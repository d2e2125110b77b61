//! Starting, reading, resending and canceling verifications.

use reqwest::StatusCode;
use serde_json::{Value, json};
use verify_common::config::{FromFlags, OtpSettings};

use crate::helpers::{TestOptions, code_in, phone_number, spawn_app, spawn_app_with};

#[tokio::test]
async fn posting_a_verification_answers_202_at_once_and_the_code_arrives_by_sms() {
    let app = spawn_app().await;
    let to = phone_number(1);

    let response = app.post_verification(&json!({ "to": to })).await;

    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        location,
        format!("/v1/verifications/{}", body["id"].as_str().unwrap())
    );
    assert_eq!(body["to"], to);
    assert_eq!(body["status"], "pending");
    assert_eq!(body["attempts_remaining"], 5);
    assert_eq!(body["code_length"], 6);
    let sms = app.wait_for_sms(&to, 1).await;
    assert_eq!(sms.len(), 1);
    assert_eq!(sms[0].from, "+15005550006");
    assert!(
        sms[0].body.contains("It expires in 10 minutes"),
        "{}",
        sms[0].body
    );
    assert_eq!(code_in(&sms[0].body).len(), 6);
}

#[tokio::test]
async fn the_verification_shows_its_send_with_status_attempts_and_provider_message_id() {
    let app = spawn_app().await;
    let created = app
        .start_verification(&json!({ "to": phone_number(2) }))
        .await;
    let id = created["id"].as_str().unwrap();

    let verification = app.wait_for_delivery_status(id, "sent").await;

    let send = &verification["sends"][0];
    assert_eq!(send["status"], "sent");
    assert_eq!(send["attempts"], 1);
    assert_eq!(send["send_number"], 1);
    assert!(
        send["provider_message_id"]
            .as_str()
            .unwrap()
            .starts_with("SM")
    );
    assert!(send["sent_at"].is_string());
    assert_eq!(send["attempt_log"][0]["outcome"], "sent");
    assert!(send["last_error"].is_null());
}

#[tokio::test]
async fn the_verification_shows_a_send_the_provider_refused_as_failed_with_its_error() {
    let mut options = TestOptions::default();
    options.sink.failure_rate = 1.0;
    options.sink.failure_status = 400;
    let app = spawn_app_with(options).await;
    let created = app
        .start_verification(&json!({ "to": phone_number(7) }))
        .await;
    let id = created["id"].as_str().unwrap();

    app.drain().await;

    let verification = app.get_verification(id).await;
    assert_eq!(verification["delivery_status"], "failed");
    let send = &verification["sends"][0];
    assert_eq!(send["status"], "failed");
    assert_eq!(send["attempts"], 1);
    assert_eq!(send["attempt_log"][0]["outcome"], "permanent_error");
    assert_eq!(send["attempt_log"][0]["provider"], "twilio");
    let error = send["last_error"].as_str().unwrap();
    assert!(error.contains("400"), "{error}");
    assert!(send["provider_message_id"].is_null());
    assert!(app.sink.is_empty());
}

#[tokio::test]
async fn no_code_appears_in_postgres_or_in_the_api_responses() {
    let app = spawn_app().await;
    let to = phone_number(3);
    let created = app.start_verification(&json!({ "to": to })).await;
    let code = app.wait_for_code(&to).await;
    let id = created["id"].as_str().unwrap();

    let verification = app.wait_for_delivery_status(id, "sent").await;
    let rows = app
        .sql("SELECT row_to_json(v)::text FROM verifications v UNION ALL SELECT row_to_json(d)::text FROM sms_deliveries d")
        .await;

    assert!(!verification.to_string().contains(&code));
    assert!(!created.to_string().contains(&code));
    for row in rows {
        let text: String = row.get(0);
        assert!(!text.contains(&code), "the code leaked into {text}");
    }
}

#[tokio::test]
async fn a_template_with_variables_is_rendered_into_the_sms() {
    let app = spawn_app().await;
    let template = app
        .create_template(&json!({
            "name": "acme-en",
            "text": "{{brand}}: your code is {{code}}. It expires in {{ttl_minutes}} minutes.",
            "locale": "en"
        }))
        .await;
    let to = phone_number(4);

    app.start_verification(&json!({
        "to": to,
        "template_id": template["id"],
        "variables": {"brand": "Acme"},
        "ttl_seconds": 300,
        "code_length": 8
    }))
    .await;

    let sms = app.wait_for_sms(&to, 1).await;
    let code = code_in(&sms[0].body);
    assert_eq!(code.len(), 8);
    assert_eq!(
        sms[0].body,
        format!("Acme: your code is {code}. It expires in 5 minutes.")
    );
}

#[tokio::test]
async fn where_the_operator_allows_weak_codes_a_request_may_ask_for_four_digits_and_an_hour() {
    let app = spawn_app_with(TestOptions {
        otp: OtpSettings::from_flags(&["--allow-weak-codes"]).unwrap(),
        ..TestOptions::default()
    })
    .await;
    let to = phone_number(5);

    let created = app
        .start_verification(&json!({ "to": to, "code_length": 4, "ttl_seconds": 3_600 }))
        .await;

    assert_eq!(created["code_length"], 4);
    let sms = app.wait_for_sms(&to, 1).await;
    assert_eq!(code_in(&sms[0].body).len(), 4);
    assert!(sms[0].body.contains("60 minutes"), "{}", sms[0].body);
}

#[tokio::test]
async fn the_locale_chooses_the_built_in_text_and_from_sets_the_sender() {
    let app = spawn_app().await;
    let to = phone_number(5);

    app.start_verification(&json!({ "to": to, "locale": "es-MX", "from": "Acme" }))
        .await;

    let sms = app.wait_for_sms(&to, 1).await;
    assert!(
        sms[0].body.starts_with("Tu código de verificación es"),
        "{}",
        sms[0].body
    );
    assert_eq!(sms[0].from, "Acme");
}

fn fast_resend() -> TestOptions {
    let mut options = TestOptions::default();
    options.api.resend_interval_secs = 0;
    options
}

#[tokio::test]
async fn resend_sends_the_same_code_again_and_keeps_the_failed_checks() {
    let app = spawn_app_with(fast_resend()).await;
    let to = phone_number(6);
    let created = app.start_verification(&json!({ "to": to })).await;
    let id = created["id"].as_str().unwrap();
    let code = app.wait_for_code(&to).await;
    let wrong = crate::helpers::wrong_code(&code);
    app.check_code(id, &wrong).await;

    let response = app
        .post_json(&format!("/v1/verifications/{id}/resend"), &json!({}))
        .await;

    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["sends"].as_array().unwrap().len(), 2);
    assert_eq!(body["attempts_remaining"], 4);
    assert_eq!(body["status"], "pending", "a resend cancels nothing");
    let sms = app.wait_for_sms(&to, 2).await;
    assert_eq!(code_in(&sms[1].body), code);
}

#[tokio::test]
async fn resending_too_soon_answers_429_with_retry_after() {
    let app = spawn_app().await;
    let created = app
        .start_verification(&json!({ "to": phone_number(7) }))
        .await;
    let id = created["id"].as_str().unwrap();

    let response = app
        .post_json(&format!("/v1/verifications/{id}/resend"), &json!({}))
        .await;

    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=30).contains(&retry_after), "{retry_after}");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "resend_too_soon");
}

#[tokio::test]
async fn the_sixth_send_to_one_number_within_the_window_answers_429_with_retry_after() {
    let app = spawn_app().await;
    let to = phone_number(8);
    for _ in 0..5 {
        app.start_verification(&json!({ "to": to })).await;
    }

    let response = app.post_verification(&json!({ "to": to })).await;

    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((590..=600).contains(&retry_after), "{retry_after}");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited");
    let other = app
        .post_verification(&json!({ "to": phone_number(9) }))
        .await;
    assert_eq!(
        other.status(),
        StatusCode::ACCEPTED,
        "the limit is per number"
    );
    let count: i64 = app.sql("SELECT count(*) FROM verifications").await[0].get(0);
    assert_eq!(count, 6, "the refused request recorded nothing");
}

#[tokio::test]
async fn concurrent_starts_for_one_number_never_exceed_its_send_limit() {
    let app = spawn_app().await;
    let busy = phone_number(20);
    // Twenty requests for one number race with ten for other numbers, so they are recorded
    // together in batches and separately, in whatever mix the timing gives.
    let mut requests = tokio::task::JoinSet::new();
    for n in 0..30 {
        let to = if n % 3 == 0 {
            phone_number(21 + n)
        } else {
            busy.clone()
        };
        let client = app.request(reqwest::Method::POST, "/v1/verifications");
        requests.spawn(async move {
            let response = client.json(&json!({ "to": to })).send().await.unwrap();
            (to, response.status())
        });
    }
    let answers = requests.join_all().await;

    let to_busy = |status| {
        answers
            .iter()
            .filter(|(to, answer)| *to == busy && *answer == status)
            .count()
    };
    assert_eq!(to_busy(StatusCode::ACCEPTED), 5, "{answers:?}");
    assert_eq!(to_busy(StatusCode::TOO_MANY_REQUESTS), 15, "{answers:?}");
    assert!(
        answers
            .iter()
            .filter(|(to, _)| *to != busy)
            .all(|(_, status)| *status == StatusCode::ACCEPTED),
        "other numbers are not limited: {answers:?}"
    );
    let rows = app
        .sql(&format!(
            "SELECT count(*) FROM sms_deliveries WHERE to_number = '{busy}'"
        ))
        .await;
    assert_eq!(rows[0].get::<_, i64>(0), 5);
}

#[tokio::test]
async fn a_new_start_cancels_the_numbers_pending_verification_so_only_the_newest_code_is_sent() {
    let app = spawn_app_with(TestOptions {
        start_worker: false,
        ..TestOptions::default()
    })
    .await;
    let to = phone_number(11);
    let earlier = app.start_verification(&json!({ "to": to })).await;
    let later = app.start_verification(&json!({ "to": to })).await;

    app.start_worker().await;
    app.drain().await;

    let earlier = app.get_verification(earlier["id"].as_str().unwrap()).await;
    assert_eq!(earlier["status"], "canceled");
    assert_eq!(earlier["delivery_status"], "failed");
    let sms = app.sent_sms(&to);
    assert_eq!(sms.len(), 1, "only the live verification's code is sent");
    let later_id = later["id"].as_str().unwrap();
    let check: Value = app
        .check_code(later_id, &code_in(&sms[0].body))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(check["valid"], true, "{check}");
}

#[tokio::test]
async fn cancel_closes_the_verification_and_a_second_cancel_answers_409() {
    let app = spawn_app().await;
    let to = phone_number(10);
    let created = app.start_verification(&json!({ "to": to })).await;
    let id = created["id"].as_str().unwrap();
    let code = app.wait_for_code(&to).await;

    let response = app
        .post_json(&format!("/v1/verifications/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "canceled");

    let check: Value = app.check_code(id, &code).await.json().await.unwrap();
    assert_eq!(check["valid"], false);
    assert_eq!(check["status"], "canceled");
    let again = app
        .post_json(&format!("/v1/verifications/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(again.status(), StatusCode::CONFLICT);
    let resend = app
        .post_json(&format!("/v1/verifications/{id}/resend"), &json!({}))
        .await;
    assert_eq!(resend.status(), StatusCode::CONFLICT);
}

#[tokio::test]
async fn an_unknown_verification_id_answers_404() {
    let app = spawn_app().await;

    let response = app
        .get("/v1/verifications/0190c0de-0000-7000-8000-000000000000")
        .await;

    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "verification_not_found");
}
