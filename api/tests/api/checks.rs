//! Checking codes: approval, single use, the attempt budget, expiry, checks by number,
//! concurrent checks of one verification, and refusals that answer alike (by id the real
//! status with one shape, an unknown id as an expired one; by number one body for all).

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
    let older_id = older["id"].as_str().unwrap();
    let older = app.get_verification(older_id).await;
    assert_eq!(older["status"], "canceled", "the newer start canceled it");
    let rows = app
        .sql(&format!(
            "SELECT checks_made FROM verifications WHERE id = '{older_id}'"
        ))
        .await;
    assert_eq!(rows[0].get::<_, i32>(0), 0, "the check did not count on it");
}

/// The ways a check can fail to approve, each arranged on a number of its own.
#[derive(Debug, Clone, Copy)]
enum Refusal {
    NoVerification,
    WrongCode,
    Expired,
    Used,
    Canceled,
    Locked,
}

const REFUSALS: [Refusal; 6] = [
    Refusal::NoVerification,
    Refusal::WrongCode,
    Refusal::Expired,
    Refusal::Used,
    Refusal::Canceled,
    Refusal::Locked,
];

/// A check that `refusal` must refuse: the verification's id (none for
/// `NoVerification`), its number and the code to type.
struct Refused {
    refusal: Refusal,
    id: Option<String>,
    to: String,
    code: String,
}

/// Arranges `refusal` on `phone_number(n)`. The code to type is the right one wherever
/// the verification's state alone must refuse it.
async fn arrange(app: &TestApp, refusal: Refusal, n: u32) -> Refused {
    let to = phone_number(n);
    if let Refusal::NoVerification = refusal {
        return Refused {
            refusal,
            id: None,
            to,
            code: "123456".to_owned(),
        };
    }
    let created = app.start_verification(&json!({ "to": to })).await;
    let id = created["id"].as_str().unwrap().to_owned();
    let right = app.wait_for_code(&to).await;
    let code = match refusal {
        Refusal::NoVerification | Refusal::WrongCode => wrong_code(&right),
        Refusal::Expired => {
            app.sql(&format!(
                "UPDATE verifications SET expires_at = now() - interval '1 second' WHERE id = '{id}'"
            ))
            .await;
            right
        }
        Refusal::Used => {
            assert_eq!(check(app, &id, &right).await["valid"], true);
            right
        }
        Refusal::Canceled => {
            let response = app
                .post_json(&format!("/v1/verifications/{id}/cancel"), &json!({}))
                .await;
            assert_eq!(response.status(), StatusCode::OK);
            right
        }
        Refusal::Locked => {
            for _ in 0..5 {
                check(app, &id, &wrong_code(&right)).await;
            }
            right
        }
    };
    Refused {
        refusal,
        id: Some(id),
        to,
        code,
    }
}

/// Every refusal arranged, numbers `first..`.
async fn arrange_all(app: &TestApp, first: u32) -> Vec<Refused> {
    let mut arranged = Vec::new();
    for (n, refusal) in (first..).zip(REFUSALS) {
        arranged.push(arrange(app, refusal, n).await);
    }
    arranged
}

#[tokio::test]
async fn a_check_by_id_answers_every_refusal_alike_with_the_real_status() {
    let app = spawn_app().await;
    let arranged = arrange_all(&app, 100).await;
    let expected = |refusal| match refusal {
        Refusal::NoVerification | Refusal::Expired => ("expired", 0),
        Refusal::WrongCode => ("pending", 4),
        Refusal::Used => ("approved", 0),
        Refusal::Canceled => ("canceled", 0),
        Refusal::Locked => ("max_attempts_reached", 0),
    };
    let mut failures = Vec::new();

    for case in &arranged {
        let id = case
            .id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
        let response = app.check_code(&id, &case.code).await;
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        let (state, remaining) = expected(case.refusal);
        let want = json!({
            "id": id,
            "status": state,
            "valid": false,
            "attempts_remaining": remaining,
        });
        if status != StatusCode::OK || body != want {
            failures.push(format!(
                "{:?}: {status} {body}, want 200 {want}",
                case.refusal
            ));
        }
    }

    assert!(failures.is_empty(), "{failures:#?}");
}

#[tokio::test]
async fn a_check_by_number_answers_every_refusal_with_the_same_body() {
    let app = spawn_app().await;
    let arranged = arrange_all(&app, 200).await;
    let want = json!({
        "id": null,
        "status": null,
        "valid": false,
        "attempts_remaining": null,
    });
    let mut failures = Vec::new();

    for case in &arranged {
        let response = app
            .post_json(
                "/v1/verifications/check",
                &json!({ "to": case.to, "code": case.code }),
            )
            .await;
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        if status != StatusCode::OK || body != want {
            failures.push(format!(
                "{:?}: {status} {body}, want 200 {want}",
                case.refusal
            ));
        }
    }

    assert!(failures.is_empty(), "{failures:#?}");
}

#[tokio::test]
async fn a_portatext_check_answers_every_refusal_with_the_same_400() {
    let app = spawn_app().await;
    let arranged = arrange_all(&app, 300).await;
    let want = json!({
        "success": false,
        "verified": false,
        "error_description": ["invalid code"],
    });
    let mut failures = Vec::new();

    for case in &arranged {
        let digits = case.to.trim_start_matches('+');
        let response = app
            .get(&format!("/number_verify/{digits}?code={}", case.code))
            .await;
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        if status != StatusCode::BAD_REQUEST || body != want {
            failures.push(format!(
                "{:?}: {status} {body}, want 400 {want}",
                case.refusal
            ));
        }
    }

    assert!(failures.is_empty(), "{failures:#?}");
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
