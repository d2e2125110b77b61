//! API-key authentication: the configured key and stored keys, in `X-Api-Key` or as a
//! bearer token; requests without a valid key are refused with a JSON 401.

use std::time::Duration;

use reqwest::header::HeaderValue;
use reqwest::{Method, Response, StatusCode};
use serde_json::{Value, json};
use tokio::time::Instant;
use uuid::Uuid;
use verify_api::keys::{create_key, list_keys, revoke_key};
use verify_api::{ENDPOINTS, Endpoint, Family};
use verify_common::db::notifications::LISTENER_APPLICATION_NAME;

use crate::helpers::{API_KEY, ApiProcess, TestApp, WAIT, spawn_app, wait_until};

/// `GET /v1/templates` with the given headers and no others.
async fn list_templates_with(app: &TestApp, headers: &[(&str, &str)]) -> Response {
    let mut request = app.client.get(app.url("/v1/templates"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    app.send(request).await.unwrap()
}

/// Asserts a 401 with the JSON error shape, and returns the error's message.
async fn assert_unauthorized(response: Response) -> String {
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(response.headers()["content-type"], "application/json");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unauthorized");
    body["error"]["message"].as_str().unwrap().to_owned()
}

/// The id of the stored key called `name`, read from `list_keys`.
async fn key_id(app: &TestApp, name: &str) -> Uuid {
    let lines = list_keys(&app.database.settings).await.unwrap();
    let line = lines
        .iter()
        .find(|line| line.split_whitespace().nth(1) == Some(name))
        .unwrap_or_else(|| panic!("no key named {name} in {lines:?}"));
    line.split_whitespace().next().unwrap().parse().unwrap()
}

#[tokio::test]
async fn a_missing_api_key_answers_401_unauthorized_in_json() {
    let app = spawn_app().await;

    let response = list_templates_with(&app, &[]).await;

    let message = assert_unauthorized(response).await;
    assert!(message.contains("X-Api-Key"), "{message}");
}

#[tokio::test]
async fn a_wrong_api_key_answers_401() {
    let app = spawn_app().await;

    let response = list_templates_with(&app, &[("x-api-key", "not-the-key")]).await;

    let message = assert_unauthorized(response).await;
    assert_eq!(message, "invalid API key");
}

#[tokio::test]
async fn the_configured_key_is_accepted_in_x_api_key() {
    let app = spawn_app().await;

    let response = list_templates_with(&app, &[("x-api-key", API_KEY)]).await;

    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({"templates": []})
    );
}

#[tokio::test]
async fn the_configured_key_is_accepted_as_a_bearer_token() {
    let app = spawn_app().await;
    let bearer = format!("Bearer {API_KEY}");

    let response = list_templates_with(&app, &[("authorization", &bearer)]).await;

    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({"templates": []})
    );
}

#[tokio::test]
async fn the_bearer_scheme_is_matched_without_regard_to_case() {
    let app = spawn_app().await;
    let bearer = format!("bearer {API_KEY}");

    let response = list_templates_with(&app, &[("authorization", &bearer)]).await;

    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_wrong_bearer_token_answers_401() {
    let app = spawn_app().await;

    let response = list_templates_with(&app, &[("authorization", "Bearer not-the-key")]).await;

    assert_unauthorized(response).await;
}

#[tokio::test]
async fn the_key_in_another_authorization_scheme_answers_401() {
    let app = spawn_app().await;
    let basic = format!("Basic {API_KEY}");

    let response = list_templates_with(&app, &[("authorization", &basic)]).await;

    let message = assert_unauthorized(response).await;
    assert!(message.contains("missing API key"), "{message}");
}

#[tokio::test]
async fn a_request_without_a_key_answers_401_even_when_its_body_is_invalid() {
    let app = spawn_app().await;

    let response = app
        .send(
            app.client
                .post(app.url("/v1/verifications"))
                .json(&json!({})),
        )
        .await
        .unwrap();

    assert_unauthorized(response).await;
    let count: i64 = app.sql("SELECT count(*) FROM verifications").await[0].get(0);
    assert_eq!(count, 0);
}

#[tokio::test]
async fn a_created_key_is_accepted_in_x_api_key() {
    let app = spawn_app().await;
    let key = create_key(&app.database.settings, "ci").await.unwrap();

    let response = list_templates_with(&app, &[("x-api-key", &key)]).await;

    assert!(key.starts_with("vk_"), "{key}");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({"templates": []})
    );
}

#[tokio::test]
async fn a_created_key_is_accepted_as_a_bearer_token() {
    let app = spawn_app().await;
    let key = create_key(&app.database.settings, "ci").await.unwrap();
    let bearer = format!("Bearer {key}");

    let response = list_templates_with(&app, &[("authorization", &bearer)]).await;

    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.json::<Value>().await.unwrap(),
        json!({"templates": []})
    );
}

#[tokio::test]
async fn a_created_key_is_listed_as_active_and_never_shown_again() {
    let app = spawn_app().await;
    let key = create_key(&app.database.settings, "ci").await.unwrap();

    let lines = list_keys(&app.database.settings).await.unwrap();

    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0].split_whitespace().nth(1), Some("ci"));
    assert!(lines[0].ends_with("active"), "{}", lines[0]);
    assert!(
        !lines[0].contains(&key),
        "the key itself is listed: {}",
        lines[0]
    );
}

#[tokio::test]
async fn a_revoked_key_is_listed_as_revoked() {
    let app = spawn_app().await;
    create_key(&app.database.settings, "ci").await.unwrap();
    let id = key_id(&app, "ci").await;

    revoke_key(&app.database.settings, id).await.unwrap();

    let lines = list_keys(&app.database.settings).await.unwrap();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].starts_with(&id.to_string()), "{}", lines[0]);
    assert!(lines[0].contains("  revoked "), "{}", lines[0]);
}

#[tokio::test]
async fn a_key_revoked_before_its_first_use_is_refused_at_once() {
    let app = spawn_app().await;
    let key = create_key(&app.database.settings, "ci").await.unwrap();
    let id = key_id(&app, "ci").await;
    revoke_key(&app.database.settings, id).await.unwrap();

    let response = list_templates_with(&app, &[("x-api-key", &key)]).await;

    let message = assert_unauthorized(response).await;
    assert_eq!(message, "invalid API key");
}

#[tokio::test]
async fn a_revoked_key_is_refused_by_every_api_process_within_a_second() {
    let app = spawn_app().await;
    let key = create_key(&app.database.settings, "ci").await.unwrap();
    let id = key_id(&app, "ci").await;
    let apis = [app.spawn_api_process().await, app.spawn_api_process().await];
    for api in &apis {
        let status = list_templates_on(&app, api, &key).await;
        assert_eq!(status, StatusCode::OK, "{}", api.logged());
    }

    revoke_key(&app.database.settings, id).await.unwrap();
    let revoked = Instant::now();

    let deadline = revoked + Duration::from_secs(1);
    for api in &apis {
        loop {
            let status = list_templates_on(&app, api, &key).await;
            if status == StatusCode::UNAUTHORIZED {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{} still accepts the key {:?} after it was revoked (last answer {status})\n{}",
                api.address,
                revoked.elapsed(),
                api.logged()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test]
async fn a_key_revoked_or_deleted_by_hand_in_sql_is_refused_within_a_second() {
    let app = spawn_app().await;
    let revoked = create_key(&app.database.settings, "revoked").await.unwrap();
    let deleted = create_key(&app.database.settings, "deleted").await.unwrap();
    for key in [&revoked, &deleted] {
        let status = list_templates_with(&app, &[("x-api-key", key)])
            .await
            .status();
        assert_eq!(status, StatusCode::OK, "the key works and is now cached");
    }

    app.sql("UPDATE api_keys SET revoked_at = now() WHERE name = 'revoked'")
        .await;
    app.sql("DELETE FROM api_keys WHERE name = 'deleted'").await;

    for key in [&revoked, &deleted] {
        wait_until("the key is refused", Duration::from_secs(1), || async {
            list_templates_with(&app, &[("x-api-key", key)])
                .await
                .status()
                == StatusCode::UNAUTHORIZED
        })
        .await;
    }
}

#[tokio::test]
async fn keys_cached_before_the_revocation_session_was_lost_are_looked_up_again() {
    let app = spawn_app().await;
    let key = create_key(&app.database.settings, "ci").await.unwrap();
    let listener = format!(
        "FROM pg_stat_activity WHERE datname = current_database() \
         AND application_name = '{LISTENER_APPLICATION_NAME}'"
    );
    wait_until("the API listens for revocations", WAIT, || async {
        !app.sql(&format!("SELECT pid {listener}")).await.is_empty()
    })
    .await;
    let status = list_templates_with(&app, &[("x-api-key", &key)])
        .await
        .status();
    assert_eq!(status, StatusCode::OK);
    // A revocation that is not announced (its trigger off for the moment) stands for one
    // announced while nobody listened.
    app.sql("ALTER TABLE api_keys DISABLE TRIGGER api_keys_announce_revocation")
        .await;
    app.sql("UPDATE api_keys SET revoked_at = now()").await;
    app.sql("ALTER TABLE api_keys ENABLE TRIGGER api_keys_announce_revocation")
        .await;
    let status = list_templates_with(&app, &[("x-api-key", &key)])
        .await
        .status();
    assert_eq!(status, StatusCode::OK, "the key is cached");

    app.sql(&format!("SELECT pg_terminate_backend(pid) {listener}"))
        .await;

    wait_until("the key is refused", Duration::from_secs(1), || async {
        list_templates_with(&app, &[("x-api-key", &key)])
            .await
            .status()
            == StatusCode::UNAUTHORIZED
    })
    .await;
}

/// The status of `GET /v1/templates` with `key` on another API process.
async fn list_templates_on(app: &TestApp, api: &ApiProcess, key: &str) -> StatusCode {
    app.send(
        app.client
            .get(api.url("/v1/templates"))
            .header("x-api-key", key),
    )
    .await
    .unwrap()
    .status()
}

#[tokio::test]
async fn revoking_a_key_twice_fails_the_second_time() {
    let app = spawn_app().await;
    create_key(&app.database.settings, "ci").await.unwrap();
    let id = key_id(&app, "ci").await;
    revoke_key(&app.database.settings, id).await.unwrap();

    let again = revoke_key(&app.database.settings, id).await;

    let error = again.unwrap_err().to_string();
    assert!(error.contains("no active key"), "{error}");
}

#[tokio::test]
async fn a_key_name_must_not_be_blank() {
    let app = spawn_app().await;

    let created = create_key(&app.database.settings, "   ").await;

    assert!(created.is_err());
    assert!(list_keys(&app.database.settings).await.unwrap().is_empty());
}

#[tokio::test]
async fn the_health_probes_need_no_key() {
    let app = spawn_app().await;

    let healthz = app.client.get(app.url("/healthz")).send().await.unwrap();
    let readyz = app.client.get(app.url("/readyz")).send().await.unwrap();

    assert_eq!(healthz.status(), StatusCode::OK);
    assert_eq!(readyz.status(), StatusCode::OK);
}

/// Sends `endpoint` (every path parameter set to "1", a JSON body) with `headers`, and
/// describes how the answer differs from the family's 401, or from a probe's 200.
async fn refusal_problems(
    app: &TestApp,
    endpoint: &Endpoint,
    headers: &[(&str, &str)],
) -> Vec<String> {
    let method = Method::from_bytes(endpoint.method.as_bytes()).unwrap();
    let path = endpoint.path.replace("{}", "1");
    let mut request = app
        .client
        .request(method, app.url(&path))
        .header("content-type", "application/json")
        .body("{}");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    let mut problems = Vec::new();
    let expected: &[StatusCode] = match endpoint.family {
        _ if endpoint.family.needs_key() => &[StatusCode::UNAUTHORIZED],
        // A provider's callback proves itself with its signature or token, not our key.
        Family::Receipt => &[StatusCode::UNAUTHORIZED, StatusCode::FORBIDDEN],
        _ => &[StatusCode::OK],
    };
    if !expected.contains(&status) {
        problems.push(format!("status {status}, expected one of {expected:?}"));
    }
    match endpoint.family {
        Family::Receipt if body["error"]["code"].as_str().is_none() => {
            problems.push(format!("not the native error body: {body}"));
        }
        Family::Native if body["error"]["code"] != "unauthorized" => {
            problems.push(format!("not the native 401 body: {body}"));
        }
        Family::PortaText if body["success"] != false || !body["error_description"].is_array() => {
            problems.push(format!("not the PortaText 401 body: {body}"));
        }
        _ => {}
    }
    problems
        .into_iter()
        .map(|problem| {
            format!(
                "{} {} {headers:?}: {problem}",
                endpoint.method, endpoint.path
            )
        })
        .collect()
}

#[tokio::test]
async fn every_route_that_needs_a_key_refuses_requests_without_a_valid_one() {
    let app = spawn_app().await;
    let mut failures = Vec::new();

    for endpoint in ENDPOINTS {
        for headers in [
            &[][..],
            &[("x-api-key", "not-the-key")][..],
            &[("authorization", "Bearer not-the-key")][..],
        ] {
            failures.extend(refusal_problems(&app, endpoint, headers).await);
        }
    }

    let keyed = ENDPOINTS.iter().filter(|e| e.family.needs_key()).count();
    assert!(keyed >= 19, "only {keyed} routes need a key");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let count: i64 = app.sql("SELECT count(*) FROM templates").await[0].get(0);
    assert_eq!(count, 0, "a refused request changed something");
}

#[tokio::test]
async fn an_unreadable_api_key_header_answers_400_naming_the_header() {
    let app = spawn_app().await;
    for (header, name) in [
        ("x-api-key", "X-Api-Key"),
        ("authorization", "Authorization"),
    ] {
        let value = HeaderValue::from_bytes("Bearer ключ".as_bytes()).unwrap();

        let response = app
            .send(
                app.client
                    .get(app.url("/v1/templates"))
                    .header(header, value),
            )
            .await
            .unwrap();

        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{header}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "invalid_header", "{body}");
        assert_eq!(body["error"]["field"], name, "{body}");
    }
}

#[tokio::test]
async fn an_unknown_path_still_answers_404_and_a_wrong_method_405_without_a_key() {
    let app = spawn_app().await;

    let unknown = app.client.get(app.url("/v1/nothing")).send().await.unwrap();
    let wrong_method = app
        .client
        .delete(app.url("/v1/verifications"))
        .send()
        .await
        .unwrap();

    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    assert_eq!(wrong_method.status(), StatusCode::METHOD_NOT_ALLOWED);
}
