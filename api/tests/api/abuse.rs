//! Abuse controls: number types and countries refused, monitored or shadowed; the rules,
//! allow list and blocks managed through the API; rule changes reaching other replicas.

use std::time::Duration;

use chrono::Utc;
use reqwest::{Method, Response, StatusCode};
use serde_json::{Value, json};
use verify_api::keys::{create_key, list_keys};
use verify_common::config::{AbuseSettings, FromFlags};
use verify_common::db::abuse::{NewBlock, insert_block};
use verify_common::db::notifications::LISTENER_APPLICATION_NAME;
use verify_common::domain::abuse::BlockScope;

use crate::helpers::{TestApp, TestOptions, WAIT, phone_number, spawn_app, spawn_app_with};

/// Example numbers of libphonenumber's metadata.
const GB_PREMIUM_RATE: &str = "+449012345678";
const US_TOLL_FREE: &str = "+18002345678";
const NG_MOBILE: &str = "+2348021234567";
const DE_MOBILE: &str = "+4915123456789";

/// The delay within which the README promises a rule change reaches every API process.
pub(crate) const RULE_DELAY: Duration = Duration::from_secs(2);

/// Starts with `start(first)`, `start(first + 1)`, … until one answers `wanted`, and returns
/// that answer. Every earlier answer must be `meanwhile`, and the wanted one must come within
/// [`RULE_DELAY`] of `since`: how a test sees a change it made reach an API process.
pub(crate) async fn start_until<F, Fut>(
    first: u32,
    mut start: F,
    wanted: StatusCode,
    meanwhile: StatusCode,
    since: tokio::time::Instant,
) -> Response
where
    F: FnMut(u32) -> Fut,
    Fut: std::future::Future<Output = reqwest::Result<Response>>,
{
    for n in first.. {
        let response = start(n).await.expect("the API answers");
        if response.status() == wanted {
            return response;
        }
        assert_eq!(response.status(), meanwhile);
        assert!(
            since.elapsed() < RULE_DELAY,
            "still {meanwhile} instead of {wanted} after {:?}",
            since.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    unreachable!("a change never reached the API process")
}

async fn spawn_app_in_mode(mode: &str) -> TestApp {
    spawn_app_with(TestOptions {
        abuse: AbuseSettings::from_flags(&["--abuse-mode", mode]).unwrap(),
        ..TestOptions::default()
    })
    .await
}

pub(crate) async fn put_rule(app: &TestApp, id: &str, body: &Value) -> Response {
    app.request(Method::PUT, &format!("/v1/abuse/rules/{id}"))
        .json(body)
        .send()
        .await
        .unwrap()
}

/// Changes a rule and asserts it was accepted.
pub(crate) async fn set_rule(app: &TestApp, id: &str, body: &Value) -> Value {
    let response = put_rule(app, id, body).await;
    assert_eq!(response.status(), StatusCode::OK, "PUT {id} {body}");
    response.json().await.unwrap()
}

/// The rules as listed, by id.
pub(crate) async fn rules(app: &TestApp) -> Value {
    let response = app.get("/v1/abuse/rules").await;
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.unwrap()
}

pub(crate) fn rule<'a>(rules: &'a Value, id: &str) -> &'a Value {
    rules["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|rule| rule["id"] == id)
        .unwrap_or_else(|| panic!("no rule {id} in {rules:#}"))
}

/// Waits until the shared counter of `outcome` for rule `id` reaches `count` (API
/// processes add their counts once a refresh interval).
pub(crate) async fn wait_for_count(app: &TestApp, id: &str, outcome: &str, count: i64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let listed = rules(app).await;
        let counted = rule(&listed, id)["counts"][outcome].as_i64().unwrap();
        if counted == count {
            return;
        }
        assert!(
            counted < count,
            "{id} counted {counted} {outcome}, expected {count}"
        );
        assert!(
            tokio::time::Instant::now() < deadline,
            "{id} never counted {count} {outcome}: {counted}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts a verification that must be accepted and returns the risk its GET shows.
pub(crate) async fn risk_of_start(app: &TestApp, body: &Value) -> Value {
    let started = app.start_verification(body).await;
    let shown = app.get_verification(started["id"].as_str().unwrap()).await;
    assert_eq!(
        shown["risk"], started["risk"],
        "the answer and the GET agree"
    );
    shown["risk"].clone()
}

/// The (id, mode, outcome) of every rule a risk lists.
pub(crate) fn hits(risk: &Value) -> Vec<(String, String, String)> {
    risk["rules"]
        .as_array()
        .unwrap_or_else(|| panic!("no rules in {risk}"))
        .iter()
        .map(|hit| {
            let text = |key: &str| hit[key].as_str().unwrap().to_owned();
            (text("id"), text("mode"), text("outcome"))
        })
        .collect()
}

pub(crate) fn hit(id: &str, mode: &str, outcome: &str) -> (String, String, String) {
    (id.to_owned(), mode.to_owned(), outcome.to_owned())
}

pub(crate) async fn verifications_recorded(app: &TestApp) -> i64 {
    app.sql("SELECT count(*) FROM verifications").await[0].get(0)
}

/// Asserts a native error answer and returns its `error` object.
pub(crate) async fn error_of(response: Response, status: StatusCode, code: &str) -> Value {
    assert_eq!(response.status(), status);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], code, "{body}");
    body["error"].clone()
}

#[tokio::test]
async fn the_default_rules_refuse_costly_number_types_and_allow_every_country() {
    let app = spawn_app().await;

    let listed = rules(&app).await;

    assert_eq!(listed["mode"], "enforce");
    for blocked in [
        "premium_rate",
        "shared_cost",
        "toll_free",
        "pager",
        "voicemail",
        "uan",
    ] {
        let rule = rule(&listed, &format!("number_type.{blocked}"));
        assert_eq!(rule["mode"], "enforce", "{rule}");
        assert_eq!(rule["params"], json!({"action": "block"}), "{rule}");
    }
    assert_eq!(
        rule(&listed, "number_type.voip")["params"],
        json!({"action": "allow"})
    );
    assert_eq!(
        rule(&listed, "country.default")["params"],
        json!({"action": "allow"})
    );
    let risk = risk_of_start(&app, &json!({ "to": NG_MOBILE })).await;
    assert_eq!(
        risk,
        json!({
            "decision": "allow",
            "mode": "enforce",
            "number_type": "mobile",
            "country": "NG",
            "rules": [],
            "notes": [],
        })
    );
}

#[tokio::test]
async fn a_premium_rate_number_is_refused_with_422_naming_the_rule_and_nothing_is_recorded() {
    let app = spawn_app().await;

    let response = app
        .post_verification(&json!({ "to": GB_PREMIUM_RATE }))
        .await;

    let error = error_of(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        "number_type_blocked",
    )
    .await;
    assert_eq!(error["rule"], "number_type.premium_rate");
    assert_eq!(error["number_type"], "premium_rate");
    assert_eq!(verifications_recorded(&app).await, 0);
    app.drain().await;
    assert!(app.sent_sms(GB_PREMIUM_RATE).is_empty());
    wait_for_count(&app, "number_type.premium_rate", "block", 1).await;
}

#[tokio::test]
async fn a_toll_free_number_is_refused_on_the_portatext_route_in_its_shape() {
    let app = spawn_app().await;

    let response = app
        .request(Method::POST, "/number_verify/18002345678")
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["success"], false, "{body}");
    assert_eq!(body["error_code"], "number_type_blocked", "{body}");
    assert_eq!(body["rule"], "number_type.toll_free", "{body}");
    assert_eq!(verifications_recorded(&app).await, 0);
}

#[tokio::test]
async fn a_retry_of_a_refused_request_with_its_idempotency_key_is_refused_the_same_way() {
    let app = spawn_app().await;
    let send = || {
        app.request(Method::POST, "/v1/verifications")
            .header("idempotency-key", "signup-7")
            .json(&json!({ "to": US_TOLL_FREE }))
            .send()
    };

    let first = send().await.unwrap();
    let retry = send().await.unwrap();

    for response in [first, retry] {
        let error = error_of(
            response,
            StatusCode::UNPROCESSABLE_ENTITY,
            "number_type_blocked",
        )
        .await;
        assert_eq!(error["rule"], "number_type.toll_free");
    }
    let keys: i64 = app.sql("SELECT count(*) FROM idempotency_keys").await[0].get(0);
    assert_eq!((keys, verifications_recorded(&app).await), (0, 0));
}

#[tokio::test]
async fn a_number_type_rule_in_shadow_mode_sends_and_counts_the_would_be_block() {
    let app = spawn_app().await;
    let changed = set_rule(&app, "number_type.premium_rate", &json!({"mode": "shadow"})).await;
    assert_eq!(changed["mode"], "shadow");
    assert_eq!(
        changed["params"],
        json!({"action": "block"}),
        "params are kept"
    );

    let risk = risk_of_start(&app, &json!({ "to": GB_PREMIUM_RATE })).await;

    assert_eq!(risk["decision"], "shadow_block");
    assert_eq!(risk["number_type"], "premium_rate");
    assert_eq!(
        hits(&risk),
        [hit("number_type.premium_rate", "shadow", "shadow_block")]
    );
    app.wait_for_sms(GB_PREMIUM_RATE, 1).await;
    wait_for_count(&app, "number_type.premium_rate", "shadow_block", 1).await;
}

#[tokio::test]
async fn under_the_global_shadow_mode_every_rule_only_records() {
    let app = spawn_app_in_mode("shadow").await;
    set_rule(&app, "country.NG", &json!({"params": {"action": "block"}})).await;

    let premium = risk_of_start(&app, &json!({ "to": GB_PREMIUM_RATE })).await;
    let nigerian = risk_of_start(&app, &json!({ "to": NG_MOBILE })).await;

    assert_eq!(premium["mode"], "shadow");
    assert_eq!(
        hits(&premium),
        [hit("number_type.premium_rate", "shadow", "shadow_block")]
    );
    assert_eq!(
        hits(&nigerian),
        [hit("country.NG", "shadow", "shadow_block")]
    );
    let listed = rules(&app).await;
    assert_eq!(listed["mode"], "shadow");
    assert_eq!(
        rule(&listed, "number_type.premium_rate")["effective_mode"],
        "shadow"
    );
    wait_for_count(&app, "number_type.premium_rate", "shadow_block", 1).await;
    wait_for_count(&app, "country.NG", "shadow_block", 1).await;
}

#[tokio::test]
async fn with_the_global_mode_off_no_rule_applies() {
    let app = spawn_app_in_mode("off").await;

    let risk = risk_of_start(&app, &json!({ "to": GB_PREMIUM_RATE })).await;

    assert_eq!(risk["mode"], "off");
    assert_eq!(risk["decision"], "allow");
    assert_eq!(risk["rules"], json!([]), "no rule was evaluated");

    let listed = rules(&app).await;
    assert_eq!(listed["mode"], "off");
    assert!(
        listed["rules"]
            .as_array()
            .unwrap()
            .iter()
            .all(|rule| rule["effective_mode"] == "off"),
        "{listed:#}"
    );
    app.wait_for_sms(GB_PREMIUM_RATE, 1).await;
}

#[tokio::test]
async fn a_blocked_country_answers_403_naming_the_country_and_the_rule() {
    let app = spawn_app().await;
    set_rule(&app, "country.ng", &json!({"params": {"action": "block"}})).await;

    let response = app.post_verification(&json!({ "to": NG_MOBILE })).await;

    let error = error_of(response, StatusCode::FORBIDDEN, "country_blocked").await;
    assert_eq!(error["rule"], "country.NG");
    assert_eq!(error["country"], "NG");
    assert_eq!(verifications_recorded(&app).await, 0);
    app.start_verification(&json!({ "to": DE_MOBILE })).await;
}

#[tokio::test]
async fn a_country_rule_in_shadow_mode_sends_and_counts() {
    let app = spawn_app().await;
    set_rule(
        &app,
        "country.NG",
        &json!({"mode": "shadow", "params": {"action": "block"}}),
    )
    .await;

    let risk = risk_of_start(&app, &json!({ "to": NG_MOBILE })).await;

    assert_eq!(risk["decision"], "shadow_block");
    assert_eq!(hits(&risk), [hit("country.NG", "shadow", "shadow_block")]);
    app.wait_for_sms(NG_MOBILE, 1).await;
    wait_for_count(&app, "country.NG", "shadow_block", 1).await;
}

#[tokio::test]
async fn a_monitored_country_is_sent_and_counted() {
    let app = spawn_app().await;
    set_rule(
        &app,
        "country.DE",
        &json!({"params": {"action": "monitor"}}),
    )
    .await;

    let risk = risk_of_start(&app, &json!({ "to": DE_MOBILE })).await;

    assert_eq!(risk["decision"], "monitor");
    assert_eq!(risk["rules"][0]["detail"], "country DE");
    assert_eq!(hits(&risk), [hit("country.DE", "enforce", "monitor")]);
    app.wait_for_sms(DE_MOBILE, 1).await;
    wait_for_count(&app, "country.DE", "monitor", 1).await;
}

#[tokio::test]
async fn the_default_country_rule_decides_for_countries_without_their_own() {
    let app = spawn_app().await;
    set_rule(
        &app,
        "country.default",
        &json!({"params": {"action": "block"}}),
    )
    .await;
    set_rule(&app, "country.US", &json!({"params": {"action": "allow"}})).await;

    let elsewhere = app.post_verification(&json!({ "to": DE_MOBILE })).await;
    let allowed = app
        .post_verification(&json!({ "to": phone_number(1) }))
        .await;

    let error = error_of(elsewhere, StatusCode::FORBIDDEN, "country_blocked").await;
    assert_eq!(error["rule"], "country.default");
    assert_eq!(allowed.status(), StatusCode::ACCEPTED);
}

#[tokio::test]
async fn client_signals_are_stored_and_shown_with_the_verification() {
    let app = spawn_app().await;
    let cases = [
        ("203.0.113.9", "203.0.113.9"),
        ("::ffff:203.0.113.9", "203.0.113.9"),
        (" 2001:DB8::1 ", "2001:db8::1"),
    ];

    for (n, (sent, stored)) in (0..).zip(cases) {
        let started = app
            .start_verification(&json!({
                "to": phone_number(n),
                "client_ip": sent,
                "client_id": "session-1f9a",
            }))
            .await;
        let shown = app.get_verification(started["id"].as_str().unwrap()).await;
        assert_eq!(shown["client_ip"], stored, "{sent:?}");
        assert_eq!(shown["client_id"], "session-1f9a");
        assert_eq!(shown["risk"]["notes"], json!([]), "{sent:?}");
    }
    let portatext = app
        .request(Method::POST, "/number_verify/14155550199")
        .json(&json!({ "client_ip": "198.51.100.4", "client_id": "device-7" }))
        .send()
        .await
        .unwrap();
    assert_eq!(portatext.status(), StatusCode::OK);
    let body: Value = portatext.json().await.unwrap();
    assert_eq!(body["verification"]["client_ip"], "198.51.100.4");
    assert_eq!(body["verification"]["client_id"], "device-7");
}

#[tokio::test]
async fn an_unreadable_client_ip_is_ignored_and_noted_in_the_risk() {
    let app = spawn_app().await;

    let started = app
        .start_verification(&json!({ "to": phone_number(1), "client_ip": "10.0.0.300" }))
        .await;

    let shown = app.get_verification(started["id"].as_str().unwrap()).await;
    assert_eq!(shown["client_ip"], Value::Null);
    assert_eq!(shown["risk"]["decision"], "allow");
    assert_eq!(shown["risk"]["notes"][0]["code"], "client_ip_unreadable");
}

#[tokio::test]
async fn an_invalid_client_id_answers_422_naming_the_field() {
    let app = spawn_app().await;
    let long = "x".repeat(129);

    for client_id in ["", "has space", "naïve", "tab\tbetween", long.as_str()] {
        let response = app
            .post_verification(&json!({ "to": phone_number(1), "client_id": client_id }))
            .await;
        let error = error_of(
            response,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_client_id",
        )
        .await;
        assert_eq!(error["field"], "client_id", "{client_id:?}");
    }
    let portatext = app
        .request(Method::POST, "/number_verify/14155550100")
        .json(&json!({ "client_id": "has space" }))
        .send()
        .await
        .unwrap();
    assert_eq!(portatext.status(), StatusCode::BAD_REQUEST);
    let body: Value = portatext.json().await.unwrap();
    assert_eq!(body["field"], "client_id", "{body}");
    assert_eq!(verifications_recorded(&app).await, 0);
}

#[tokio::test]
async fn a_rule_changed_through_one_api_applies_in_another_process_within_two_seconds() {
    let app = spawn_app().await;
    // The other process accepts stored keys only.
    let key = create_key(&app.database.settings, "replica").await.unwrap();
    let other = app.spawn_api_process().await;
    let start_in_other = |n: u32| {
        app.send(
            app.client
                .post(other.url("/v1/verifications"))
                .header("x-api-key", &key)
                .json(&json!({ "to": format!("+234802123{n:04}") })),
        )
    };
    let before = start_in_other(0).await.unwrap().status();
    assert_eq!(before, StatusCode::ACCEPTED, "{}", other.logged());

    set_rule(&app, "country.NG", &json!({"params": {"action": "block"}})).await;
    let changed = tokio::time::Instant::now();

    start_until(
        1,
        start_in_other,
        StatusCode::FORBIDDEN,
        StatusCode::ACCEPTED,
        changed,
    )
    .await;
}

#[tokio::test]
async fn a_rule_changed_while_the_listening_session_is_lost_still_applies_within_two_seconds() {
    let app = spawn_app().await;
    let listener = format!(
        "FROM pg_stat_activity WHERE datname = current_database() \
         AND application_name = '{LISTENER_APPLICATION_NAME}'"
    );
    let deadline = tokio::time::Instant::now() + WAIT;
    while app.sql(&format!("SELECT pid {listener}")).await.is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the API never listened"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    app.sql(&format!("SELECT pg_terminate_backend(pid) {listener}"))
        .await;
    // Written in SQL, as another process would: this API hears of it only by asking.
    app.sql(
        "INSERT INTO abuse_rules (id, kind, mode, params)
         VALUES ('country.NG', 'country', 'enforce', '{\"action\": \"block\"}')",
    )
    .await;
    let changed = tokio::time::Instant::now();

    let start = |n: u32| {
        app.request(Method::POST, "/v1/verifications")
            .json(&json!({ "to": format!("+234802123{n:04}") }))
            .send()
    };
    start_until(
        0,
        start,
        StatusCode::FORBIDDEN,
        StatusCode::ACCEPTED,
        changed,
    )
    .await;
}

#[tokio::test]
async fn a_country_rule_can_be_deleted_and_its_country_falls_back_to_the_default() {
    let app = spawn_app().await;
    set_rule(&app, "country.NG", &json!({"params": {"action": "block"}})).await;

    let deleted = app
        .request(Method::DELETE, "/v1/abuse/rules/country.NG")
        .send()
        .await
        .unwrap();

    assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
    app.start_verification(&json!({ "to": NG_MOBILE })).await;
    let listed = rules(&app).await;
    assert!(
        listed["rules"]
            .as_array()
            .unwrap()
            .iter()
            .all(|rule| rule["id"] != "country.NG")
    );
}

/// The id of the stored key called `name`, as `verify-api keys list` prints it.
pub(crate) async fn key_id(app: &TestApp, name: &str) -> String {
    let lines = list_keys(&app.database.settings).await.unwrap();
    let line = lines
        .iter()
        .find(|line| line.split_whitespace().nth(1) == Some(name))
        .unwrap_or_else(|| panic!("no key named {name} in {lines:?}"));
    line.split_whitespace().next().unwrap().to_owned()
}

pub(crate) async fn add_allow(app: &TestApp, body: &Value) -> Response {
    app.post_json("/v1/abuse/allow", body).await
}

#[tokio::test]
async fn allow_list_entries_are_added_listed_and_removed() {
    let app = spawn_app().await;
    create_key(&app.database.settings, "qa-team").await.unwrap();
    let qa_key = key_id(&app, "qa-team").await;

    let number = add_allow(
        &app,
        &json!({"kind": "number", "value": "+1 415 555 0100", "note": "QA phone"}),
    )
    .await;
    let prefix = add_allow(&app, &json!({"kind": "prefix", "value": "+44791"})).await;
    let key = add_allow(&app, &json!({"kind": "api_key", "value": qa_key})).await;
    let again = add_allow(&app, &json!({"kind": "prefix", "value": "+44791"})).await;

    assert_eq!(number.status(), StatusCode::CREATED);
    let number: Value = number.json().await.unwrap();
    assert_eq!(number["value"], "+14155550100");
    assert_eq!(number["note"], "QA phone");
    assert_eq!(prefix.status(), StatusCode::CREATED);
    assert_eq!(key.status(), StatusCode::CREATED);
    error_of(again, StatusCode::CONFLICT, "allow_entry_exists").await;
    let listed: Value = app.get("/v1/abuse/allow").await.json().await.unwrap();
    let kinds: Vec<&str> = listed["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| entry["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["number", "prefix", "api_key"]);

    let path = format!("/v1/abuse/allow/{}", number["id"]);
    let removed = app.request(Method::DELETE, &path).send().await.unwrap();
    let removed_again = app.request(Method::DELETE, &path).send().await.unwrap();

    assert_eq!(removed.status(), StatusCode::NO_CONTENT);
    error_of(
        removed_again,
        StatusCode::NOT_FOUND,
        "allow_entry_not_found",
    )
    .await;
    let listed: Value = app.get("/v1/abuse/allow").await.json().await.unwrap();
    assert_eq!(listed["entries"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn blocks_in_force_are_listed_with_their_counts_and_can_be_lifted() {
    let app = spawn_app().await;
    let block = insert_block(
        &app.pool,
        &NewBlock {
            scope: BlockScope::Prefix,
            key: "+23480212".to_owned(),
            rule_id: "conversion.prefix".to_owned(),
            reason: "2% of 60 verifications approved in the last hour".to_owned(),
            until: Utc::now() + chrono::Duration::hours(12),
            counts: json!({"sends": 60, "approved": 1}),
        },
    )
    .await
    .unwrap();

    let listed: Value = app.get("/v1/abuse/blocks").await.json().await.unwrap();

    let shown = &listed["blocks"][0];
    assert_eq!(shown["id"], block.id);
    assert_eq!(shown["scope"], "prefix");
    assert_eq!(shown["key"], "+23480212");
    assert_eq!(shown["rule"], "conversion.prefix");
    assert_eq!(shown["counts"], json!({"sends": 60, "approved": 1}));
    let path = format!("/v1/abuse/blocks/{}", block.id);
    let lifted = app.request(Method::DELETE, &path).send().await.unwrap();
    assert_eq!(lifted.status(), StatusCode::NO_CONTENT);
    let listed: Value = app.get("/v1/abuse/blocks").await.json().await.unwrap();
    assert_eq!(listed["blocks"], json!([]));
    let again = app.request(Method::DELETE, &path).send().await.unwrap();
    error_of(again, StatusCode::NOT_FOUND, "block_not_found").await;
}

/// A request and the answer it must get: status, error code and the field named.
type Case = (
    Method,
    &'static str,
    Option<Value>,
    StatusCode,
    &'static str,
    Option<&'static str>,
);

#[tokio::test]
async fn bad_inputs_on_every_management_route_answer_4xx_naming_the_field() {
    let app = spawn_app().await;
    let unknown_key = "0190c0de-0000-7000-8000-000000000001";
    let cases: Vec<Case> = vec![
        (
            Method::PUT,
            "/v1/abuse/rules/velocity.Client-IP",
            Some(json!({"mode": "off"})),
            StatusCode::BAD_REQUEST,
            "invalid_rule_id",
            Some("id"),
        ),
        (
            Method::PUT,
            "/v1/abuse/rules/velocity.ip_daily",
            Some(json!({"mode": "off"})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_rule_params",
            Some("params"),
        ),
        (
            Method::PUT,
            "/v1/abuse/rules/velocity.ip_daily",
            Some(
                json!({"params": {"scope": "ip", "window_secs": 60, "limit": 1, "action": "block"}}),
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_rule_params",
            Some("params.scope"),
        ),
        (
            Method::PUT,
            "/v1/abuse/rules/velocity.ip_daily",
            Some(
                json!({"params": {"scope": "client_ip", "window_secs": 0, "limit": 1, "action": "block"}}),
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_rule_params",
            Some("params.window_secs"),
        ),
        (
            Method::PUT,
            "/v1/abuse/rules/velocity.ip_daily",
            Some(
                json!({"params": {"scope": "client_ip", "window_secs": 60, "limit": 0, "action": "block"}}),
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_rule_params",
            Some("params.limit"),
        ),
        (
            Method::PUT,
            "/v1/abuse/rules/velocity.ip_daily",
            Some(
                json!({"params": {"scope": "client_ip", "window_secs": 60, "limit": 1, "action": "allow"}}),
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_rule_params",
            Some("params.action"),
        ),
        (
            Method::PUT,
            "/v1/abuse/rules/velocity.client_ip",
            Some(json!({"params": {"action": "block"}})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_rule_params",
            Some("params.scope"),
        ),
        (
            Method::PUT,
            "/v1/abuse/rules/velocity.client_ip",
            Some(json!({"reason": "x".repeat(301)})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_rule_reason",
            Some("reason"),
        ),
        (
            Method::PUT,
            "/v1/abuse/rules/country.XX",
            Some(json!({"mode": "off"})),
            StatusCode::BAD_REQUEST,
            "invalid_rule_id",
            Some("id"),
        ),
        (
            Method::PUT,
            "/v1/abuse/rules/number_type.voip",
            Some(json!({"mode": "strict"})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_rule_mode",
            Some("mode"),
        ),
        (
            Method::PUT,
            "/v1/abuse/rules/number_type.voip",
            Some(json!({"params": {"action": "deny"}})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_rule_params",
            Some("params.action"),
        ),
        (
            Method::PUT,
            "/v1/abuse/rules/number_type.voip",
            Some(json!({"params": {}})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_rule_params",
            Some("params.action"),
        ),
        (
            Method::PUT,
            "/v1/abuse/rules/number_type.voip",
            Some(json!({"params": {"action": "block", "limit": 3}})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_rule_params",
            Some("params.limit"),
        ),
        (
            Method::PUT,
            "/v1/abuse/rules/number_type.voip",
            Some(json!({"params": "block"})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_rule_params",
            Some("params"),
        ),
        (
            Method::PUT,
            "/v1/abuse/rules/number_type.voip",
            Some(json!({"mode": 1})),
            StatusCode::BAD_REQUEST,
            "invalid_json",
            Some("mode"),
        ),
        (
            Method::PUT,
            "/v1/abuse/rules/number_type.voip",
            Some(json!({"action": "block"})),
            StatusCode::BAD_REQUEST,
            "invalid_json",
            Some("action"),
        ),
        (
            Method::PUT,
            "/v1/abuse/rules/country.GB",
            Some(json!({"mode": "shadow"})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_rule_params",
            Some("params"),
        ),
        (
            Method::PUT,
            "/v1/abuse/rules/guess.number",
            Some(json!({"params": {"window_secs": 0, "limit": 3, "lock_secs": 60}})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_rule_params",
            Some("params.window_secs"),
        ),
        (
            Method::PUT,
            "/v1/abuse/rules/conversion.prefix",
            Some(json!({"params": {"action": "block"}})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_rule_params",
            Some("params.action"),
        ),
        (
            Method::DELETE,
            "/v1/abuse/rules/country",
            None,
            StatusCode::BAD_REQUEST,
            "invalid_rule_id",
            Some("id"),
        ),
        (
            Method::DELETE,
            "/v1/abuse/rules/country.default",
            None,
            StatusCode::CONFLICT,
            "rule_required",
            None,
        ),
        (
            Method::DELETE,
            "/v1/abuse/rules/country.FR",
            None,
            StatusCode::NOT_FOUND,
            "rule_not_found",
            None,
        ),
        (
            Method::POST,
            "/v1/abuse/allow",
            Some(json!({"kind": "phone", "value": "+14155550100"})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_allow_entry",
            Some("kind"),
        ),
        (
            Method::POST,
            "/v1/abuse/allow",
            Some(json!({"kind": "number", "value": "14155550100"})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_allow_entry",
            Some("value"),
        ),
        (
            Method::POST,
            "/v1/abuse/allow",
            Some(json!({"kind": "prefix", "value": "+0"})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_allow_entry",
            Some("value"),
        ),
        (
            Method::POST,
            "/v1/abuse/allow",
            Some(json!({"kind": "api_key", "value": "abc"})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_allow_entry",
            Some("value"),
        ),
        (
            Method::POST,
            "/v1/abuse/allow",
            Some(json!({"kind": "api_key", "value": unknown_key})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_api_key",
            Some("value"),
        ),
        (
            Method::POST,
            "/v1/abuse/allow",
            Some(json!({"kind": "prefix", "value": "+44", "note": "x\ny"})),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_allow_entry",
            Some("note"),
        ),
        (
            Method::POST,
            "/v1/abuse/allow",
            Some(json!({"kind": "prefix"})),
            StatusCode::BAD_REQUEST,
            "invalid_json",
            Some("value"),
        ),
        (
            Method::POST,
            "/v1/abuse/allow",
            Some(json!({"kind": "prefix", "value": "+44", "expires": 1})),
            StatusCode::BAD_REQUEST,
            "invalid_json",
            Some("expires"),
        ),
        (
            Method::DELETE,
            "/v1/abuse/allow/abc",
            None,
            StatusCode::BAD_REQUEST,
            "invalid_id",
            Some("id"),
        ),
        (
            Method::DELETE,
            "/v1/abuse/allow/0",
            None,
            StatusCode::BAD_REQUEST,
            "invalid_id",
            Some("id"),
        ),
        (
            Method::DELETE,
            "/v1/abuse/allow/99",
            None,
            StatusCode::NOT_FOUND,
            "allow_entry_not_found",
            None,
        ),
        (
            Method::DELETE,
            "/v1/abuse/blocks/-1",
            None,
            StatusCode::BAD_REQUEST,
            "invalid_id",
            Some("id"),
        ),
        (
            Method::DELETE,
            "/v1/abuse/blocks/99",
            None,
            StatusCode::NOT_FOUND,
            "block_not_found",
            None,
        ),
    ];
    let mut failures = Vec::new();

    for (method, path, body, status, code, field) in cases {
        let mut request = app.request(method.clone(), path);
        if let Some(body) = &body {
            request = request.json(body);
        }
        let response = request.send().await.unwrap();
        let got_status = response.status();
        let answer: Value = response.json().await.unwrap_or(Value::Null);
        let got = (
            got_status,
            answer["error"]["code"].as_str(),
            answer["error"]["field"].as_str(),
        );
        if got != (status, Some(code), field) {
            failures.push(format!("{method} {path} {body:?}: {answer} ({got_status})"));
        }
    }

    assert!(failures.is_empty(), "{failures:#?}");
    let listed = rules(&app).await;
    assert_eq!(
        rule(&listed, "number_type.voip")["params"],
        json!({"action": "allow"})
    );
    assert_eq!(rule(&listed, "number_type.voip")["mode"], "enforce");
}
