//! `Idempotency-Key` on start requests: retries are safe, one verification and one SMS.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{TestApp, phone_number, spawn_app};

async fn post_with_key(app: &TestApp, path: &str, key: &str, body: &Value) -> reqwest::Response {
    app.request(reqwest::Method::POST, path)
        .header("idempotency-key", key)
        .json(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn fifty_concurrent_requests_with_one_key_create_one_verification_and_one_sms() {
    let app = spawn_app().await;
    let to = phone_number(1);
    let body = json!({ "to": to });

    let responses = futures_util::future::join_all(
        (0..50).map(|_| post_with_key(&app, "/v1/verifications", "order-42", &body)),
    )
    .await;

    let mut ids = Vec::new();
    for response in responses {
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        let json: Value = response.json().await.unwrap();
        ids.push(json["id"].as_str().unwrap().to_owned());
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "every response names the same verification");
    let count: i64 = app.sql("SELECT count(*) FROM verifications").await[0].get(0);
    assert_eq!(count, 1);
    app.drain().await;
    assert_eq!(app.sent_sms(&to).len(), 1);
    let verification = app.get_verification(&ids[0]).await;
    assert_eq!(verification["delivery_status"], "sent");
}

#[tokio::test]
async fn a_repeated_request_returns_the_first_response() {
    let app = spawn_app().await;
    let body = json!({ "to": phone_number(2), "code_length": 8 });

    let first: Value = post_with_key(&app, "/v1/verifications", "k-1", &body)
        .await
        .json()
        .await
        .unwrap();
    let second = post_with_key(&app, "/v1/verifications", "k-1", &body).await;

    assert_eq!(second.status(), StatusCode::ACCEPTED);
    let second: Value = second.json().await.unwrap();
    assert_eq!(first, second);
}

#[tokio::test]
async fn the_same_key_with_a_different_body_answers_422() {
    let app = spawn_app().await;
    post_with_key(
        &app,
        "/v1/verifications",
        "k-2",
        &json!({ "to": phone_number(3) }),
    )
    .await;

    let response = post_with_key(
        &app,
        "/v1/verifications",
        "k-2",
        &json!({ "to": phone_number(4) }),
    )
    .await;

    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "idempotency_key_reused");
    assert_eq!(body["error"]["field"], "Idempotency-Key");
    let count: i64 = app.sql("SELECT count(*) FROM verifications").await[0].get(0);
    assert_eq!(count, 1);
}

#[tokio::test]
async fn a_key_older_than_24_hours_starts_a_new_verification() {
    let app = spawn_app().await;
    let body = json!({ "to": phone_number(5) });
    let first: Value = post_with_key(&app, "/v1/verifications", "k-3", &body)
        .await
        .json()
        .await
        .unwrap();
    app.sql("UPDATE idempotency_keys SET created_at = now() - interval '25 hours'")
        .await;

    let second: Value = post_with_key(&app, "/v1/verifications", "k-3", &body)
        .await
        .json()
        .await
        .unwrap();

    assert_ne!(first["id"], second["id"]);
}

#[tokio::test]
async fn the_portatext_start_route_honours_idempotency_keys_too() {
    let app = spawn_app().await;

    let first = post_with_key(&app, "/number_verify/14155550106", "pt-1", &json!({})).await;
    let second = post_with_key(&app, "/number_verify/14155550106", "pt-1", &json!({})).await;

    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(second.status(), StatusCode::OK);
    let first: Value = first.json().await.unwrap();
    let second: Value = second.json().await.unwrap();
    assert_eq!(first["id"], second["id"]);
    assert_eq!(second["success"], true);
    let count: i64 = app.sql("SELECT count(*) FROM verifications").await[0].get(0);
    assert_eq!(count, 1);
}

#[tokio::test]
async fn an_idempotent_start_cancels_the_numbers_pending_verification_like_any_other() {
    let app = spawn_app().await;
    let to = phone_number(9);
    let earlier = app.start_verification(&json!({ "to": to })).await;

    let later = post_with_key(&app, "/v1/verifications", "k-4", &json!({ "to": to })).await;
    let repeat = post_with_key(&app, "/v1/verifications", "k-4", &json!({ "to": to })).await;

    assert_eq!(later.status(), StatusCode::ACCEPTED);
    assert_eq!(repeat.status(), StatusCode::ACCEPTED);
    let later: Value = later.json().await.unwrap();
    let repeat: Value = repeat.json().await.unwrap();
    assert_eq!(later["id"], repeat["id"]);
    let earlier = app.get_verification(earlier["id"].as_str().unwrap()).await;
    assert_eq!(earlier["status"], "canceled");
    let later = app.get_verification(later["id"].as_str().unwrap()).await;
    assert_eq!(later["status"], "pending", "a replay cancels nothing");
}

#[tokio::test]
async fn a_malformed_key_answers_400_naming_the_header() {
    let app = spawn_app().await;

    let response = post_with_key(
        &app,
        "/v1/verifications",
        "has space",
        &json!({ "to": phone_number(6) }),
    )
    .await;

    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_idempotency_key");
    assert_eq!(body["error"]["field"], "Idempotency-Key");
}

/// Posts `body` to `path` with an `Idempotency-Key` of raw bytes (not visible ASCII).
async fn post_with_raw_key(
    app: &TestApp,
    path: &str,
    key: &[u8],
    body: &Value,
) -> reqwest::Response {
    app.request(reqwest::Method::POST, path)
        .header(
            "idempotency-key",
            reqwest::header::HeaderValue::from_bytes(key).unwrap(),
        )
        .json(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_key_that_is_not_ascii_answers_400_and_creates_nothing() {
    let app = spawn_app().await;
    let body = json!({ "to": phone_number(7) });

    let first = post_with_raw_key(&app, "/v1/verifications", "ключ-1".as_bytes(), &body).await;
    let second = post_with_raw_key(&app, "/v1/verifications", "ключ-1".as_bytes(), &body).await;

    for response in [first, second] {
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "invalid_idempotency_key", "{body}");
        assert_eq!(body["error"]["field"], "Idempotency-Key", "{body}");
    }
    let count: i64 = app.sql("SELECT count(*) FROM verifications").await[0].get(0);
    assert_eq!(count, 0);
}

#[tokio::test]
async fn a_key_that_is_not_ascii_answers_400_on_the_portatext_start_route_in_its_shape() {
    let app = spawn_app().await;

    let response = post_with_raw_key(
        &app,
        "/number_verify/14155550107",
        "ключ-1".as_bytes(),
        &json!({}),
    )
    .await;

    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["success"], false, "{body}");
    assert_eq!(body["error_code"], "invalid_idempotency_key", "{body}");
    assert!(body["error_description"].is_array(), "{body}");
    let count: i64 = app.sql("SELECT count(*) FROM verifications").await[0].get(0);
    assert_eq!(count, 0);
}

#[tokio::test]
async fn an_unreadable_content_type_answers_400_naming_the_header() {
    let app = spawn_app().await;

    let response = app
        .request(reqwest::Method::POST, "/v1/verifications")
        .header(
            "content-type",
            reqwest::header::HeaderValue::from_bytes("application/json; ä".as_bytes()).unwrap(),
        )
        .body(json!({ "to": phone_number(8) }).to_string())
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_header", "{body}");
    assert_eq!(body["error"]["field"], "Content-Type", "{body}");
}
