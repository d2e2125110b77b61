//! Blocks written by the counting rules: the guess budget locks a number after too many
//! wrong codes across its verifications, and the conversion breaker blocks a prefix or a
//! country whose codes are almost never used; both in enforce and in shadow mode, lifted
//! through the API, and applied by every API process.

use reqwest::{Method, Response, StatusCode};
use serde_json::{Value, json};
use verify_api::keys::create_key;

use crate::abuse::{
    RULE_DELAY, add_allow, error_of, hit, hits, key_id, rule, rules, set_rule, start_until,
    verifications_recorded, wait_for_count,
};
use crate::helpers::{TestApp, TestOptions, code_in, phone_number, spawn_app_with, wrong_code};

/// Resends without the minimum interval, so a test can resend at once.
async fn spawn_app_with_fast_resends() -> TestApp {
    let mut options = TestOptions::default();
    options.api.resend_interval_secs = 0;
    spawn_app_with(options).await
}

/// A guess budget of three wrong codes per hour, locking for ten minutes.
async fn small_guess_budget(app: &TestApp, mode: &str) {
    set_rule(
        app,
        "guess.number",
        &json!({"mode": mode, "params": {"window_secs": 3600, "limit": 3, "lock_secs": 600}}),
    )
    .await;
}

/// Starts a verification of `to` and returns its id and the code it sent (the newest SMS
/// to `to`, which must be the `sms`-th).
async fn start_and_read_code(app: &TestApp, to: &str, sms: usize) -> (String, String) {
    let started = app.start_verification(&json!({ "to": to })).await;
    let messages = app.wait_for_sms(to, sms).await;
    let code = code_in(&messages.last().unwrap().body);
    (started["id"].as_str().unwrap().to_owned(), code)
}

/// Checks a code by id; returns the answer's status and body.
async fn check(app: &TestApp, id: &str, code: &str) -> (StatusCode, Value) {
    let response = app.check_code(id, code).await;
    (response.status(), response.json().await.unwrap())
}

async fn resend(app: &TestApp, id: &str) -> Response {
    app.post_json(&format!("/v1/verifications/{id}/resend"), &json!({}))
        .await
}

/// Spends the small guess budget of `to`: a wrong code, a resend and another wrong code
/// on one verification, then a wrong code on a new one. Returns the new verification's
/// id and its right code.
async fn spend_the_guess_budget(app: &TestApp, to: &str) -> (String, String) {
    let (first, code) = start_and_read_code(app, to, 1).await;
    check(app, &first, &wrong_code(&code)).await;
    assert_eq!(resend(app, &first).await.status(), StatusCode::ACCEPTED);
    check(app, &first, &wrong_code(&code)).await;
    let (second, code) = start_and_read_code(app, to, 3).await;
    let (status, body) = check(app, &second, &wrong_code(&code)).await;
    assert_eq!((status, &body["valid"]), (StatusCode::OK, &json!(false)));
    (second, code)
}

/// The blocks in force, as listed.
async fn blocks(app: &TestApp) -> Vec<Value> {
    let response = app.get("/v1/abuse/blocks").await;
    assert_eq!(response.status(), StatusCode::OK);
    let listed: Value = response.json().await.unwrap();
    listed["blocks"].as_array().unwrap().clone()
}

/// The one block in force, which must exist.
async fn the_block(app: &TestApp) -> Value {
    let listed = blocks(app).await;
    assert_eq!(listed.len(), 1, "{listed:#?}");
    listed[0].clone()
}

async fn lift(app: &TestApp, block: &Value) {
    let response = app
        .request(Method::DELETE, &format!("/v1/abuse/blocks/{}", block["id"]))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
}

/// The `Retry-After` of an answer, in seconds.
fn retry_after(response: &Response) -> u64 {
    response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn the_guess_budget_and_the_conversion_breaker_are_enforced_by_default() {
    let app = spawn_app_with(TestOptions::default()).await;

    let listed = rules(&app).await;

    let guess = rule(&listed, "guess.number");
    assert_eq!(
        (&guess["kind"], &guess["mode"]),
        (&json!("guess"), &json!("enforce"))
    );
    assert_eq!(
        guess["params"],
        json!({"window_secs": 3600, "limit": 10, "lock_secs": 3600})
    );
    for id in ["conversion.prefix", "conversion.country"] {
        let breaker = rule(&listed, id);
        assert_eq!(
            (&breaker["kind"], &breaker["mode"]),
            (&json!("conversion"), &json!("enforce"))
        );
        assert_eq!(
            breaker["params"],
            json!({"min_sends": 50, "min_conversion_pct": 20, "window_secs": 3600,
                   "cooldown_secs": 43_200, "grace_secs": 120}),
            "{id}"
        );
    }
}

#[tokio::test]
async fn wrong_codes_across_verifications_and_a_resend_lock_the_number_for_starts_and_resends() {
    let app = spawn_app_with_fast_resends().await;
    small_guess_budget(&app, "enforce").await;
    let to = phone_number(1);

    let (second, _) = spend_the_guess_budget(&app, &to).await;

    let refused = app.post_verification(&json!({ "to": to })).await;
    assert!((590..=600).contains(&retry_after(&refused)));
    let error = error_of(refused, StatusCode::TOO_MANY_REQUESTS, "number_locked").await;
    assert_eq!(error["rule"], "guess.number");
    let resent = resend(&app, &second).await;
    assert!(resent.headers().contains_key("retry-after"));
    error_of(resent, StatusCode::TOO_MANY_REQUESTS, "number_locked").await;
    let block = the_block(&app).await;
    assert_eq!(
        (
            &block["scope"],
            &block["key"],
            &block["rule"],
            &block["shadow"]
        ),
        (
            &json!("number"),
            &json!(to),
            &json!("guess.number"),
            &json!(false)
        )
    );
    assert_eq!(block["counts"]["failed_checks"], 3);
    app.drain().await;
    assert_eq!(
        app.sent_sms(&to).len(),
        3,
        "nothing was sent after the lock"
    );
    wait_for_count(&app, "guess.number", "block", 2).await;
}

#[tokio::test]
async fn a_locked_numbers_right_code_is_answered_as_a_wrong_one() {
    let app = spawn_app_with_fast_resends().await;
    small_guess_budget(&app, "enforce").await;
    let to = phone_number(2);
    let (second, code) = spend_the_guess_budget(&app, &to).await;

    let by_id = check(&app, &second, &code).await;
    let by_number = app
        .post_json(
            "/v1/verifications/check",
            &json!({ "to": to, "code": code }),
        )
        .await;

    assert_eq!(by_id.0, StatusCode::OK);
    assert_eq!(
        (
            &by_id.1["valid"],
            &by_id.1["status"],
            &by_id.1["attempts_remaining"]
        ),
        (&json!(false), &json!("pending"), &json!(3))
    );
    let wrong = app
        .post_json(
            "/v1/verifications/check",
            &json!({ "to": to, "code": wrong_code(&code) }),
        )
        .await;
    assert_eq!(by_number.status(), wrong.status());
    let by_number: Value = by_number.json().await.unwrap();
    let wrong: Value = wrong.json().await.unwrap();
    assert_eq!(by_number, wrong);
    let stored = app
        .sql(&format!(
            "SELECT status FROM verifications WHERE id = '{second}'"
        ))
        .await;
    assert_eq!(stored[0].get::<_, String>(0), "pending");
}

#[tokio::test]
async fn lifting_a_lock_lets_the_number_start_and_approve_again() {
    let app = spawn_app_with_fast_resends().await;
    small_guess_budget(&app, "enforce").await;
    let to = phone_number(3);
    spend_the_guess_budget(&app, &to).await;

    lift(&app, &the_block(&app).await).await;

    let (id, code) = start_and_read_code(&app, &to, 4).await;
    let (status, body) = check(&app, &id, &code).await;
    assert_eq!((status, &body["valid"]), (StatusCode::OK, &json!(true)));
    assert!(blocks(&app).await.is_empty());
}

#[tokio::test]
async fn the_guess_budget_in_shadow_mode_records_the_lock_and_refuses_nothing() {
    let app = spawn_app_with_fast_resends().await;
    small_guess_budget(&app, "shadow").await;
    let to = phone_number(4);
    spend_the_guess_budget(&app, &to).await;

    let block = the_block(&app).await;
    let (id, code) = start_and_read_code(&app, &to, 4).await;

    assert_eq!(
        (&block["rule"], &block["shadow"]),
        (&json!("guess.number"), &json!(true))
    );
    let risk = app.get_verification(&id).await["risk"].clone();
    assert_eq!(risk["decision"], "shadow_block");
    assert_eq!(hits(&risk), [hit("guess.number", "shadow", "shadow_block")]);
    let (status, body) = check(&app, &id, &code).await;
    assert_eq!((status, &body["valid"]), (StatusCode::OK, &json!(true)));
    // The start and the check the lock would have refused.
    wait_for_count(&app, "guess.number", "shadow_block", 2).await;
}

/// Conversion thresholds a test can reach: five judged sends, at least 20 % approved,
/// judged at once (no grace), blocking for ten minutes.
fn small_breaker(mode: &str) -> Value {
    json!({
        "mode": mode,
        "params": {"min_sends": 5, "min_conversion_pct": 20, "window_secs": 3600,
                   "cooldown_secs": 600, "grace_secs": 0},
    })
}

/// Only `conversion.prefix` is evaluated, with [`small_breaker`] thresholds.
async fn small_prefix_breaker(app: &TestApp, mode: &str) {
    set_rule(app, "conversion.prefix", &small_breaker(mode)).await;
    set_rule(app, "conversion.country", &json!({"mode": "off"})).await;
}

/// Starts one verification for each of `count` numbers of the prefix +1415555, each
/// number once, as a pumping attack walks a range; returns the numbers.
async fn pump(app: &TestApp, count: u32) -> Vec<String> {
    let mut numbers = Vec::new();
    for n in 0..count {
        let to = phone_number(100 + n);
        app.start_verification(&json!({ "to": to })).await;
        numbers.push(to);
    }
    numbers
}

/// An answer to a start request.
struct Answer {
    status: StatusCode,
    retry_after: Option<u64>,
    body: Value,
}

/// Starts verifications of `to(0)`, `to(1)`, … until an answer is `applied`, which must
/// happen within [`RULE_DELAY`]: the API applies a block the breaker wrote once it hears
/// of it. Until then every start must be accepted.
async fn start_until_applied(
    app: &TestApp,
    to: impl Fn(u32) -> String,
    applied: impl Fn(&Answer) -> bool,
) -> Answer {
    let deadline = tokio::time::Instant::now() + RULE_DELAY;
    let mut n = 0;
    loop {
        let response = app.post_verification(&json!({ "to": to(n) })).await;
        let answer = Answer {
            status: response.status(),
            retry_after: response
                .headers()
                .get("retry-after")
                .map(|value| value.to_str().unwrap().parse().unwrap()),
            body: response.json().await.unwrap(),
        };
        if applied(&answer) {
            return answer;
        }
        assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.body);
        assert!(
            tokio::time::Instant::now() < deadline,
            "the block was not applied within {RULE_DELAY:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        n += 1;
    }
}

/// A number outside the prefix +1415555.
const OTHER_PREFIX: &str = "+12025550123";

#[tokio::test]
async fn the_breaker_blocks_a_prefix_whose_numbers_were_each_asked_once_and_never_checked() {
    let app = spawn_app_with(TestOptions::default()).await;
    small_prefix_breaker(&app, "enforce").await;
    pump(&app, 5).await;

    let written = app.evaluate_breaker().await;

    assert_eq!(written, 1);
    let block = the_block(&app).await;
    assert_eq!(
        (&block["scope"], &block["key"], &block["rule"]),
        (
            &json!("prefix"),
            &json!("+1415555"),
            &json!("conversion.prefix")
        )
    );
    assert_eq!(block["counts"]["sends"], 5);
    assert_eq!(block["counts"]["approved"], 0);
    let refused = start_until_applied(
        &app,
        |n| phone_number(200 + n),
        |answer| answer.status == StatusCode::TOO_MANY_REQUESTS,
    )
    .await;
    assert!(
        refused
            .retry_after
            .is_some_and(|secs| (590..=600).contains(&secs))
    );
    let error = &refused.body["error"];
    assert_eq!(
        (&error["code"], &error["rule"], &error["scope"]),
        (
            &json!("destination_blocked"),
            &json!("conversion.prefix"),
            &json!("prefix")
        )
    );
    let recorded = verifications_recorded(&app).await;
    let portatext = app
        .request(Method::POST, "/number_verify/14155550300")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(portatext.status(), StatusCode::TOO_MANY_REQUESTS);
    let body: Value = portatext.json().await.unwrap();
    assert_eq!(body["error_code"], "destination_blocked", "{body}");
    assert_eq!(verifications_recorded(&app).await, recorded);
    app.start_verification(&json!({ "to": OTHER_PREFIX })).await;
}

#[tokio::test]
async fn the_breaker_leaves_a_prefix_whose_codes_are_used_alone() {
    let app = spawn_app_with(TestOptions::default()).await;
    small_prefix_breaker(&app, "enforce").await;
    let numbers = pump(&app, 5).await;
    for to in &numbers[..2] {
        let code = app.wait_for_code(to).await;
        let approved = app
            .post_json(
                "/v1/verifications/check",
                &json!({ "to": to, "code": code }),
            )
            .await;
        assert_eq!(approved.status(), StatusCode::OK);
    }

    let written = app.evaluate_breaker().await;

    assert_eq!(written, 0);
    assert!(blocks(&app).await.is_empty());
    app.start_verification(&json!({ "to": phone_number(200) }))
        .await;
}

#[tokio::test]
async fn a_tripped_block_renews_while_the_pattern_lasts() {
    let app = spawn_app_with(TestOptions::default()).await;
    small_prefix_breaker(&app, "enforce").await;
    pump(&app, 5).await;
    app.evaluate_breaker().await;
    let first = the_block(&app).await;

    let written = app.evaluate_breaker().await;

    assert_eq!(written, 1);
    let renewed = the_block(&app).await;
    assert_eq!(
        (&renewed["id"], &renewed["since"]),
        (&first["id"], &first["since"])
    );
    let until = |block: &Value| {
        chrono::DateTime::parse_from_rfc3339(block["until"].as_str().unwrap()).unwrap()
    };
    assert!(until(&renewed) > until(&first), "{first} then {renewed}");
}

#[tokio::test]
async fn a_lifted_block_is_not_tripped_again_by_the_sends_that_tripped_it() {
    let app = spawn_app_with(TestOptions::default()).await;
    small_prefix_breaker(&app, "enforce").await;
    pump(&app, 5).await;
    app.evaluate_breaker().await;

    lift(&app, &the_block(&app).await).await;

    app.start_verification(&json!({ "to": phone_number(200) }))
        .await;
    assert_eq!(app.evaluate_breaker().await, 0);
    assert!(blocks(&app).await.is_empty());
}

#[tokio::test]
async fn the_breaker_in_shadow_mode_records_a_shadow_block_and_refuses_nothing() {
    let app = spawn_app_with(TestOptions::default()).await;
    small_prefix_breaker(&app, "shadow").await;
    pump(&app, 5).await;

    app.evaluate_breaker().await;

    let block = the_block(&app).await;
    assert_eq!(
        (&block["key"], &block["shadow"]),
        (&json!("+1415555"), &json!(true))
    );
    let started = start_until_applied(
        &app,
        |n| phone_number(200 + n),
        |answer| answer.body["risk"]["decision"] == "shadow_block",
    )
    .await;
    assert_eq!(started.status, StatusCode::ACCEPTED);
    let shown = app
        .get_verification(started.body["id"].as_str().unwrap())
        .await;
    assert_eq!(
        hits(&shown["risk"]),
        [hit("conversion.prefix", "shadow", "shadow_block")]
    );
    wait_for_count(&app, "conversion.prefix", "shadow_block", 1).await;
}

#[tokio::test]
async fn the_country_breaker_blocks_a_country_whose_codes_are_never_used() {
    let app = spawn_app_with(TestOptions::default()).await;
    set_rule(&app, "conversion.country", &small_breaker("enforce")).await;
    set_rule(&app, "conversion.prefix", &json!({"mode": "off"})).await;
    for n in 0..5 {
        app.start_verification(&json!({ "to": format!("+234802123{n:04}") }))
            .await;
    }

    app.evaluate_breaker().await;

    let block = the_block(&app).await;
    assert_eq!(
        (&block["scope"], &block["key"]),
        (&json!("country"), &json!("NG"))
    );
    let refused = start_until_applied(
        &app,
        |n| format!("+234802124{n:04}"),
        |answer| answer.status == StatusCode::TOO_MANY_REQUESTS,
    )
    .await;
    let error = &refused.body["error"];
    assert_eq!(
        (&error["code"], &error["rule"], &error["scope"]),
        (
            &json!("destination_blocked"),
            &json!("conversion.country"),
            &json!("country")
        )
    );
    app.start_verification(&json!({ "to": phone_number(1) }))
        .await;
}

#[tokio::test]
async fn another_api_process_refuses_a_blocked_prefix_and_accepts_it_again_once_lifted_within_two_seconds()
 {
    let app = spawn_app_with(TestOptions::default()).await;
    let key = create_key(&app.database.settings, "replica").await.unwrap();
    let other = app.spawn_api_process().await;
    small_prefix_breaker(&app, "enforce").await;
    pump(&app, 5).await;
    let start_in_other = |n: u32| {
        app.send(
            app.client
                .post(other.url("/v1/verifications"))
                .header("x-api-key", &key)
                .json(&json!({ "to": phone_number(300 + n) })),
        )
    };

    app.evaluate_breaker().await;
    let tripped = tokio::time::Instant::now();
    start_until(
        0,
        &start_in_other,
        StatusCode::TOO_MANY_REQUESTS,
        StatusCode::ACCEPTED,
        tripped,
    )
    .await;

    lift(&app, &the_block(&app).await).await;
    let lifted = tokio::time::Instant::now();
    start_until(
        100,
        &start_in_other,
        StatusCode::ACCEPTED,
        StatusCode::TOO_MANY_REQUESTS,
        lifted,
    )
    .await;
}

#[tokio::test]
async fn the_allow_list_lets_a_blocked_prefix_through_but_not_a_locked_number() {
    let app = spawn_app_with_fast_resends().await;
    small_prefix_breaker(&app, "enforce").await;
    small_guess_budget(&app, "enforce").await;
    pump(&app, 5).await;
    app.evaluate_breaker().await;
    start_until_applied(
        &app,
        |n| phone_number(200 + n),
        |answer| answer.status == StatusCode::TOO_MANY_REQUESTS,
    )
    .await;

    let allowed = app
        .post_json(
            "/v1/abuse/allow",
            &json!({"kind": "prefix", "value": "+1415555"}),
        )
        .await;

    assert_eq!(allowed.status(), StatusCode::CREATED);
    // Starts to the blocked prefix are accepted again, and their wrong codes still count.
    let to = phone_number(300);
    spend_the_guess_budget(&app, &to).await;
    let locked = app.post_verification(&json!({ "to": to })).await;
    error_of(locked, StatusCode::TOO_MANY_REQUESTS, "number_locked").await;
}

#[tokio::test]
async fn the_breaker_leaves_out_the_traffic_of_an_allow_listed_api_key() {
    let app = spawn_app_with(TestOptions::default()).await;
    small_prefix_breaker(&app, "enforce").await;
    let qa_key = create_key(&app.database.settings, "qa").await.unwrap();
    let allowed = add_allow(
        &app,
        &json!({"kind": "api_key", "value": key_id(&app, "qa").await}),
    )
    .await;
    assert_eq!(allowed.status(), StatusCode::CREATED);
    for n in 0..5 {
        let started = app
            .send(
                app.client
                    .post(app.url("/v1/verifications"))
                    .header("x-api-key", &qa_key)
                    .json(&json!({ "to": phone_number(100 + n) })),
            )
            .await
            .unwrap();
        assert_eq!(started.status(), StatusCode::ACCEPTED);
    }

    let written_for_qa_traffic = app.evaluate_breaker().await;
    pump(&app, 5).await;
    let written_for_the_same_traffic_unlisted = app.evaluate_breaker().await;

    assert_eq!(written_for_qa_traffic, 0);
    assert_eq!(written_for_the_same_traffic_unlisted, 1);
    assert_eq!(the_block(&app).await["counts"]["sends"], 5);
}
