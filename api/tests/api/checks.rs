//! Checking codes: approval, single use, the attempt budget, expiry, checks by number
//! and concurrent checks of one verification.

use futures_util::future::join_all;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{TestApp, phone_number, spawn_app, wrong_code};

/// Starts a verification to `phone_number(n)` and returns its id and the code it sent.
async fn verification_with_code(app: &TestApp, n: u32) -> (String, String) {
    let to = phone_number(n);
    let created = app.start_verification(&json!({ "to": to })).await;
    let code = app.wait_for_code(&to).await;
    (created["id"].as_str().unwrap().to_owned(), code)
}

/// Checks `code` against verification `id`, expecting 200, and returns the JSON answer.
async fn check(app: &TestApp, id: &str, code: &str) -> Value {
    let response = app.check_code(id, code).await;
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.unwrap()
}

/// The stored check counter and status of the only verification in the test database.
async fn stored_checks(app: &TestApp) -> (i32, String) {
    let rows = app
        .sql("SELECT checks_made, status FROM verifications")
        .await;
    assert_eq!(rows.len(), 1);
    (rows[0].get(0), rows[0].get(1))
}

#[tokio::test]
async fn the_right_code_approves_the_verification() {
    let app = spawn_app().await;
    let (id, code) = verification_with_code(&app, 1).await;

    let answer = check(&app, &id, &code).await;

    assert_eq!(answer["id"], id);
    assert_eq!(answer["valid"], true);
    assert_eq!(answer["status"], "approved");
    assert_eq!(answer["attempts_remaining"], 0);
    let verification = app.get_verification(&id).await;
    assert_eq!(verification["status"], "approved");
    assert!(verification["approved_at"].is_string());
}

#[tokio::test]
async fn a_code_works_only_once() {
    let app = spawn_app().await;
    let (id, code) = verification_with_code(&app, 2).await;
    check(&app, &id, &code).await;

    let second = check(&app, &id, &code).await;

    assert_eq!(second["valid"], false);
    assert_eq!(second["status"], "approved");
    assert_eq!(second["attempts_remaining"], 0);
}

#[tokio::test]
async fn each_wrong_code_uses_up_one_attempt() {
    let app = spawn_app().await;
    let (id, code) = verification_with_code(&app, 3).await;
    let wrong = wrong_code(&code);

    let first = check(&app, &id, &wrong).await;
    let second = check(&app, &id, &wrong).await;

    assert_eq!(first["valid"], false);
    assert_eq!(first["status"], "pending");
    assert_eq!(first["attempts_remaining"], 4);
    assert_eq!(second["valid"], false);
    assert_eq!(second["status"], "pending");
    assert_eq!(second["attempts_remaining"], 3);
}

#[tokio::test]
async fn five_wrong_codes_close_the_verification_and_the_right_code_is_refused_afterwards() {
    let app = spawn_app().await;
    let (id, code) = verification_with_code(&app, 4).await;
    let wrong = wrong_code(&code);
    for _ in 0..4 {
        check(&app, &id, &wrong).await;
    }

    let fifth = check(&app, &id, &wrong).await;
    let right_afterwards = check(&app, &id, &code).await;

    assert_eq!(fifth["valid"], false);
    assert_eq!(fifth["status"], "max_attempts_reached");
    assert_eq!(fifth["attempts_remaining"], 0);
    assert_eq!(right_afterwards["valid"], false);
    assert_eq!(right_afterwards["status"], "max_attempts_reached");
    assert_eq!(
        stored_checks(&app).await,
        (5, "max_attempts_reached".to_owned())
    );
}

#[tokio::test]
async fn an_expired_verification_refuses_the_right_code() {
    let app = spawn_app().await;
    let (id, code) = verification_with_code(&app, 5).await;
    app.sql("UPDATE verifications SET expires_at = now() - interval '1 second'")
        .await;

    let answer = check(&app, &id, &code).await;

    assert_eq!(answer["valid"], false);
    assert_eq!(answer["status"], "expired");
    assert_eq!(answer["attempts_remaining"], 0);
    let (checks_made, status) = stored_checks(&app).await;
    assert_eq!(
        checks_made, 0,
        "a check of an expired verification is not counted"
    );
    assert_eq!(status, "pending");
}

#[tokio::test]
async fn a_check_by_number_applies_to_the_newest_pending_verification_of_that_number() {
    let app = spawn_app().await;
    let to = phone_number(6);
    let older = app.start_verification(&json!({ "to": to })).await;
    let older_code = app.wait_for_code(&to).await;
    let newer = app.start_verification(&json!({ "to": to })).await;
    let sms = app.wait_for_sms(&to, 2).await;
    let newer_code = sms
        .iter()
        .map(|message| crate::helpers::code_in(&message.body))
        .find(|code| *code != older_code)
        .expect("the second SMS carries a different code");

    let response = app
        .post_json(
            "/v1/verifications/check",
            &json!({ "to": to, "code": newer_code }),
        )
        .await;

    assert_eq!(response.status(), StatusCode::OK);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["valid"], true);
    assert_eq!(answer["status"], "approved");
    assert_eq!(answer["id"], newer["id"]);
    let older = app.get_verification(older["id"].as_str().unwrap()).await;
    assert_eq!(older["status"], "pending");
    assert_eq!(older["attempts_remaining"], 5);
}

#[tokio::test]
async fn a_check_by_number_for_a_number_without_verifications_answers_404() {
    let app = spawn_app().await;

    let response = app
        .post_json(
            "/v1/verifications/check",
            &json!({ "to": phone_number(7), "code": "123456" }),
        )
        .await;

    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "verification_not_found");
}

#[tokio::test]
async fn ten_concurrent_wrong_codes_count_exactly_five_checks() {
    let app = spawn_app().await;
    let (id, code) = verification_with_code(&app, 8).await;
    let wrong = wrong_code(&code);

    let responses = join_all((0..10).map(|_| app.check_code(&id, &wrong))).await;

    let mut answers = Vec::new();
    for response in responses {
        assert_eq!(response.status(), StatusCode::OK);
        answers.push(response.json::<Value>().await.unwrap());
    }
    assert!(answers.iter().all(|a| a["valid"] == false), "{answers:#?}");
    // The first four counted checks leave the verification open with 4, 3, 2 and 1
    // attempts left; the fifth closes it; the rest find it closed.
    let mut still_open: Vec<u64> = answers
        .iter()
        .filter(|a| a["status"] == "pending")
        .map(|a| a["attempts_remaining"].as_u64().unwrap())
        .collect();
    still_open.sort_unstable();
    assert_eq!(still_open, [1, 2, 3, 4], "{answers:#?}");
    let closed: Vec<&Value> = answers
        .iter()
        .filter(|a| a["status"] != "pending")
        .collect();
    assert_eq!(closed.len(), 6);
    for answer in closed {
        assert_eq!(answer["status"], "max_attempts_reached");
        assert_eq!(answer["attempts_remaining"], 0);
    }
    assert_eq!(
        stored_checks(&app).await,
        (5, "max_attempts_reached".to_owned())
    );
}

#[tokio::test]
async fn ten_concurrent_right_codes_approve_exactly_once() {
    let app = spawn_app().await;
    let (id, code) = verification_with_code(&app, 9).await;

    let responses = join_all((0..10).map(|_| app.check_code(&id, &code))).await;

    let mut answers = Vec::new();
    for response in responses {
        assert_eq!(response.status(), StatusCode::OK);
        answers.push(response.json::<Value>().await.unwrap());
    }
    let approvals = answers.iter().filter(|a| a["valid"] == true).count();
    assert_eq!(approvals, 1, "{answers:#?}");
    assert!(
        answers.iter().all(|a| a["status"] == "approved"),
        "{answers:#?}"
    );
    assert_eq!(stored_checks(&app).await, (1, "approved".to_owned()));
    let approved_at = app
        .sql("SELECT approved_at IS NOT NULL FROM verifications")
        .await;
    assert!(approved_at[0].get::<_, bool>(0));
}
