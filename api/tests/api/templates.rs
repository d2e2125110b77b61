//! Message templates: create, read, list, change, delete, and preview how a text renders
//! and what it costs as SMS.

use chrono::{DateTime, Utc};
use reqwest::{Method, Response, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{TestApp, phone_number, spawn_app};

async fn send_json(app: &TestApp, method: Method, path: &str, body: &Value) -> Response {
    app.request(method, path).json(body).send().await.unwrap()
}

async fn template_ids(app: &TestApp, path: &str) -> Vec<i64> {
    let response = app.get(path).await;
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    body["templates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|template| template["id"].as_i64().unwrap())
        .collect()
}

async fn preview(app: &TestApp, body: &Value) -> Value {
    let response = app.post_json("/v1/templates/preview", body).await;
    assert_eq!(response.status(), StatusCode::OK);
    response.json().await.unwrap()
}

fn timestamp(value: &Value) -> DateTime<Utc> {
    value.as_str().unwrap().parse().unwrap()
}

/// A template with every field set, for tests that change one of them.
async fn full_template(app: &TestApp) -> Value {
    app.create_template(&json!({
        "name": "acme",
        "description": "sign-in codes",
        "locale": "en-US",
        "text": "{{brand}}: your code is {{code}}"
    }))
    .await
}

#[tokio::test]
async fn creating_a_template_answers_201_with_its_fields_and_the_variables_it_needs() {
    let app = spawn_app().await;

    let response = app
        .post_json(
            "/v1/templates",
            &json!({
                "name": "  acme-pt  ",
                "description": "Brazilian customers",
                "locale": "pt_br",
                "text": "{{brand}}: seu código é {{code}}. Expira em {{ttl_minutes}} minutos."
            }),
        )
        .await;

    assert_eq!(response.status(), StatusCode::CREATED);
    let body: Value = response.json().await.unwrap();
    assert!(body["id"].as_i64().unwrap() > 0);
    assert_eq!(body["name"], "acme-pt");
    assert_eq!(body["description"], "Brazilian customers");
    assert_eq!(body["locale"], "pt-BR");
    assert_eq!(
        body["text"],
        "{{brand}}: seu código é {{code}}. Expira em {{ttl_minutes}} minutos."
    );
    assert_eq!(body["variables"], json!(["brand"]));
    assert_eq!(
        timestamp(&body["created_at"]),
        timestamp(&body["updated_at"])
    );
}

#[tokio::test]
async fn a_template_without_description_or_locale_gets_an_empty_description_and_no_locale() {
    let app = spawn_app().await;

    let body = app
        .create_template(&json!({"name": "plain", "text": "Code: {{code}}"}))
        .await;

    assert_eq!(body["description"], "");
    assert_eq!(body["locale"], Value::Null);
    assert_eq!(body["variables"], json!([]));
}

#[tokio::test]
async fn a_created_template_reads_back_by_id_as_it_was_created() {
    let app = spawn_app().await;
    let created = full_template(&app).await;
    let id = created["id"].as_i64().unwrap();

    let response = app.get(&format!("/v1/templates/{id}")).await;

    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.json::<Value>().await.unwrap(), created);
}

#[tokio::test]
async fn templates_are_listed_in_id_order() {
    let app = spawn_app().await;
    let mut created = Vec::new();
    for name in ["c", "a", "b"] {
        let template = app
            .create_template(&json!({"name": name, "text": "{{code}}"}))
            .await;
        created.push(template["id"].as_i64().unwrap());
    }

    let listed = template_ids(&app, "/v1/templates").await;

    assert_eq!(listed, created);
    assert!(listed.is_sorted());
}

#[tokio::test]
async fn limit_and_after_page_through_the_list() {
    let app = spawn_app().await;
    let mut ids = Vec::new();
    for name in ["first", "second", "third"] {
        let template = app
            .create_template(&json!({"name": name, "text": "{{code}}"}))
            .await;
        ids.push(template["id"].as_i64().unwrap());
    }

    let first_page = template_ids(&app, "/v1/templates?limit=1").await;
    let second_page = template_ids(&app, &format!("/v1/templates?limit=1&after={}", ids[0])).await;
    let last_page = template_ids(&app, &format!("/v1/templates?limit=2&after={}", ids[1])).await;
    let past_the_end = template_ids(&app, &format!("/v1/templates?after={}", ids[2])).await;

    assert_eq!(first_page, [ids[0]]);
    assert_eq!(second_page, [ids[1]]);
    assert_eq!(last_page, [ids[2]]);
    assert!(past_the_end.is_empty());
}

#[tokio::test]
async fn patch_changes_only_the_given_field() {
    let app = spawn_app().await;
    let created = full_template(&app).await;
    let path = format!("/v1/templates/{}", created["id"]);

    let response = send_json(&app, Method::PATCH, &path, &json!({"description": "new"})).await;

    assert_eq!(response.status(), StatusCode::OK);
    let patched: Value = response.json().await.unwrap();
    assert_eq!(patched["description"], "new");
    for field in ["id", "name", "locale", "text", "variables", "created_at"] {
        assert_eq!(patched[field], created[field], "{field} changed");
    }
    assert_eq!(app.get(&path).await.json::<Value>().await.unwrap(), patched);
}

#[tokio::test]
async fn put_also_changes_only_the_given_field() {
    let app = spawn_app().await;
    let created = full_template(&app).await;
    let path = format!("/v1/templates/{}", created["id"]);

    let response = send_json(
        &app,
        Method::PUT,
        &path,
        &json!({"text": "{{brand}} {{product}}: {{code}}"}),
    )
    .await;

    assert_eq!(response.status(), StatusCode::OK);
    let replaced: Value = response.json().await.unwrap();
    assert_eq!(replaced["text"], "{{brand}} {{product}}: {{code}}");
    assert_eq!(replaced["variables"], json!(["brand", "product"]));
    for field in ["id", "name", "description", "locale", "created_at"] {
        assert_eq!(replaced[field], created[field], "{field} changed");
    }
    assert_eq!(
        app.get(&path).await.json::<Value>().await.unwrap(),
        replaced
    );
}

#[tokio::test]
async fn an_update_moves_updated_at_and_keeps_created_at() {
    let app = spawn_app().await;
    let created = full_template(&app).await;
    let path = format!("/v1/templates/{}", created["id"]);

    let patched: Value = send_json(&app, Method::PATCH, &path, &json!({"name": "renamed"}))
        .await
        .json()
        .await
        .unwrap();

    assert_eq!(patched["name"], "renamed");
    assert_eq!(patched["created_at"], created["created_at"]);
    assert!(timestamp(&patched["updated_at"]) > timestamp(&created["updated_at"]));
}

#[tokio::test]
async fn a_null_locale_clears_the_locale() {
    let app = spawn_app().await;
    let created = full_template(&app).await;
    let path = format!("/v1/templates/{}", created["id"]);

    let response = send_json(&app, Method::PATCH, &path, &json!({"locale": null})).await;

    assert_eq!(response.status(), StatusCode::OK);
    let patched: Value = response.json().await.unwrap();
    assert_eq!(patched["locale"], Value::Null);
    assert_eq!(patched["name"], created["name"]);
    assert_eq!(
        app.get(&path).await.json::<Value>().await.unwrap()["locale"],
        Value::Null
    );
}

#[tokio::test]
async fn a_refused_update_leaves_the_template_unchanged() {
    let app = spawn_app().await;
    let created = full_template(&app).await;
    let path = format!("/v1/templates/{}", created["id"]);

    let response = send_json(
        &app,
        Method::PATCH,
        &path,
        &json!({"name": "renamed", "text": "no code here"}),
    )
    .await;

    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["field"], "text");
    assert_eq!(app.get(&path).await.json::<Value>().await.unwrap(), created);
}

#[tokio::test]
async fn delete_answers_204_and_the_template_is_then_gone() {
    let app = spawn_app().await;
    let created = full_template(&app).await;
    let path = format!("/v1/templates/{}", created["id"]);

    let response = app.request(Method::DELETE, &path).send().await.unwrap();

    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    assert!(response.bytes().await.unwrap().is_empty());
    let after = app.get(&path).await;
    assert_eq!(after.status(), StatusCode::NOT_FOUND);
    let body: Value = after.json().await.unwrap();
    assert_eq!(body["error"]["code"], "template_not_found");
    assert!(template_ids(&app, "/v1/templates").await.is_empty());
}

#[tokio::test]
async fn a_template_in_use_can_be_deleted_and_its_verification_stays_readable() {
    let app = spawn_app().await;
    let template = app
        .create_template(&json!({"name": "plain", "text": "Code: {{code}}"}))
        .await;
    let verification = app
        .start_verification(&json!({"to": phone_number(1), "template_id": template["id"]}))
        .await;
    let id = verification["id"].as_str().unwrap();

    let response = app
        .request(Method::DELETE, &format!("/v1/templates/{}", template["id"]))
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let read = app.get_verification(id).await;
    assert_eq!(read["template_id"], template["id"]);
}

#[tokio::test]
async fn a_preview_renders_the_text_with_a_sample_code_and_measures_the_sms() {
    let app = spawn_app().await;

    let body = preview(
        &app,
        &json!({"text": "{{brand}}: code {{code}}", "variables": {"brand": "Acme"}}),
    )
    .await;

    assert_eq!(
        body,
        json!({
            "text": "Acme: code 123456",
            "encoding": "GSM-7",
            "characters": 17,
            "segments": 1,
            "variables": ["brand"]
        })
    );
}

#[tokio::test]
async fn a_preview_fills_ttl_minutes_with_the_default_lifetime() {
    let app = spawn_app().await;

    let body = preview(
        &app,
        &json!({"text": "{{code}} lasts {{ttl_minutes}} minutes"}),
    )
    .await;

    assert_eq!(body["text"], "123456 lasts 10 minutes");
    assert_eq!(body["variables"], json!([]));
}

#[tokio::test]
async fn a_preview_with_a_character_outside_gsm_is_ucs2() {
    let app = spawn_app().await;

    let body = preview(&app, &json!({"text": "Código {{code}}"})).await;

    assert_eq!(body["text"], "Código 123456");
    assert_eq!(body["encoding"], "UCS-2");
    assert_eq!(body["characters"], 13);
    assert_eq!(body["segments"], 1);
}

#[tokio::test]
async fn a_preview_over_160_gsm_characters_needs_two_segments() {
    let app = spawn_app().await;
    let text = format!("{} {{{{code}}}}", "a".repeat(160));

    let body = preview(&app, &json!({ "text": text })).await;

    assert_eq!(body["encoding"], "GSM-7");
    assert_eq!(body["characters"], 167);
    assert_eq!(body["segments"], 2);
}

#[tokio::test]
async fn a_preview_stores_nothing() {
    let app = spawn_app().await;

    preview(&app, &json!({"text": "{{code}}"})).await;

    let count: i64 = app.sql("SELECT count(*) FROM templates").await[0].get(0);
    assert_eq!(count, 0);
}
