//! PortaText compatibility: the requests PortaText's SDKs send, and the answers they
//! can read (`success`, `error_description` as an array, ASCII-only bodies).

use reqwest::{Method, Response, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::{API_KEY, CheckedRequest, TestApp, code_in, spawn_app, wrong_code};

/// A number as PortaText callers write it: E.164 without the '+'.
const NUMBER: &str = "14155550100";

/// A request with the headers every PortaText SDK sends.
fn sdk_request(app: &TestApp, method: Method, path: &str) -> CheckedRequest {
    app.request(method, path)
        .header("content-type", "application/json")
        .header("accept", "application/json")
}

async fn sdk_send(app: &TestApp, method: Method, path: &str, body: Option<&Value>) -> Response {
    let request = sdk_request(app, method, path);
    let request = match body {
        Some(body) => request.body(body.to_string()),
        None => request,
    };
    request.send().await.unwrap()
}

/// Asserts the PortaText error shape: `success: false` and an array of message strings.
fn assert_portatext_error(body: &Value) {
    assert_eq!(body["success"], false, "{body}");
    let descriptions = body["error_description"].as_array().expect("an array");
    assert!(!descriptions.is_empty(), "{body}");
    assert!(descriptions.iter().all(Value::is_string), "{body}");
}

/// Creates a template through the PortaText route and returns its id.
async fn create_portatext_template(app: &TestApp, text: &str) -> i64 {
    let response = sdk_send(
        app,
        Method::POST,
        "/templates",
        Some(&json!({ "name": "sdk", "description": "from an SDK", "text": text })),
    )
    .await;
    assert!(response.status().is_success(), "{}", response.status());
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["success"], true);
    body["template"]["id"].as_i64().unwrap()
}

/// Starts a verification of [`NUMBER`] with an empty body and returns the code sent.
async fn started_with_code(app: &TestApp) -> String {
    let response = sdk_send(app, Method::POST, &format!("/number_verify/{NUMBER}"), None).await;
    assert!(response.status().is_success(), "{}", response.status());
    app.wait_for_code(NUMBER).await
}

#[tokio::test]
async fn starting_with_a_template_variables_and_a_sender_answers_success() {
    let app = spawn_app().await;
    let template_id = create_portatext_template(&app, "Code {{code}} for {{var1}}").await;

    let response = sdk_send(
        &app,
        Method::POST,
        &format!("/number_verify/{NUMBER}"),
        Some(&json!({
            "from": "13334445555",
            "template_id": template_id,
            "variables": {"var1": "value"}
        })),
    )
    .await;

    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert!(status.is_success(), "{status}: {body}");
    assert_eq!(body["success"], true);
    assert!(body["id"].is_string());
    let sms = app.wait_for_sms(NUMBER, 1).await;
    let code = code_in(&sms[0].body);
    assert_eq!(sms[0].body, format!("Code {code} for value"));
    assert_eq!(sms[0].from, "+13334445555");
}

#[tokio::test]
async fn starting_with_variables_as_an_empty_array_answers_success() {
    let app = spawn_app().await;

    let response = sdk_send(
        &app,
        Method::POST,
        &format!("/number_verify/{NUMBER}"),
        Some(&json!({ "variables": [] })),
    )
    .await;

    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert!(status.is_success(), "{status}: {body}");
    assert_eq!(body["success"], true);
    app.wait_for_sms(NUMBER, 1).await;
}

#[tokio::test]
async fn a_variable_with_line_breaks_answers_400_in_the_portatext_shape_naming_it() {
    let app = spawn_app().await;
    let template_id = create_portatext_template(&app, "{{brand}}: code {{code}}").await;

    let response = sdk_send(
        &app,
        Method::POST,
        &format!("/number_verify/{NUMBER}"),
        Some(&json!({
            "template_id": template_id,
            "variables": {"brand": "Acme\n\nIGNORE THE NEXT MESSAGE. USE 111111"}
        })),
    )
    .await;

    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body: Value = response.json().await.unwrap();
    assert_portatext_error(&body);
    assert_eq!(body["error_code"], "unsafe_characters", "{body}");
    assert_eq!(body["field"], "variables.brand", "{body}");
    let count: i64 = app.sql("SELECT count(*) FROM verifications").await[0].get(0);
    assert_eq!(count, 0);
}

#[tokio::test]
async fn starting_with_an_empty_body_answers_success() {
    let app = spawn_app().await;

    let response = sdk_send(
        &app,
        Method::POST,
        &format!("/number_verify/{NUMBER}"),
        None,
    )
    .await;

    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert!(status.is_success(), "{status}: {body}");
    assert_eq!(body["success"], true);
    assert_eq!(body["verification"]["to"], format!("+{NUMBER}"));
    app.wait_for_sms(NUMBER, 1).await;
}

#[tokio::test]
async fn checking_the_right_code_answers_verified() {
    let app = spawn_app().await;
    let code = started_with_code(&app).await;

    let response = sdk_send(
        &app,
        Method::GET,
        &format!("/number_verify/{NUMBER}?code={code}"),
        None,
    )
    .await;

    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["success"], true);
    assert_eq!(body["verified"], true);
    assert_eq!(body["status"], "approved");
}

#[tokio::test]
async fn checking_a_wrong_code_answers_400_with_an_error_description_array() {
    let app = spawn_app().await;
    let code = started_with_code(&app).await;

    let response = sdk_send(
        &app,
        Method::GET,
        &format!("/number_verify/{NUMBER}?code={}", wrong_code(&code)),
        None,
    )
    .await;

    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let body: Value = response.json().await.unwrap();
    assert_portatext_error(&body);
    assert_eq!(body["verified"], false);
    assert_eq!(body["error_description"], json!(["invalid code"]));
}

#[tokio::test]
async fn a_number_with_an_encoded_plus_in_the_path_is_decoded() {
    let app = spawn_app().await;

    let started = sdk_send(
        &app,
        Method::POST,
        &format!("/number_verify/%2B{NUMBER}"),
        None,
    )
    .await;

    let status = started.status();
    let body: Value = started.json().await.unwrap();
    assert!(status.is_success(), "{status}: {body}");
    assert_eq!(body["verification"]["to"], format!("+{NUMBER}"));
    let code = app.wait_for_code(NUMBER).await;
    let checked = sdk_send(
        &app,
        Method::GET,
        &format!("/number_verify/%2b{NUMBER}?code={code}"),
        None,
    )
    .await;
    let status = checked.status();
    let body: Value = checked.json().await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["verified"], true);
}

#[tokio::test]
async fn a_path_number_that_is_not_valid_percent_encoding_answers_400_naming_it() {
    let app = spawn_app().await;
    let mut failures = Vec::new();

    for (case, path) in [
        ("a truncated escape", format!("/number_verify/{NUMBER}%2")),
        (
            "an escape of non-hex digits",
            format!("/number_verify/%zz{NUMBER}"),
        ),
        (
            "an escape that is not UTF-8",
            format!("/number_verify/%FF{NUMBER}"),
        ),
    ] {
        let response = sdk_send(&app, Method::POST, &path, None).await;
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        if status != StatusCode::BAD_REQUEST
            || body["success"] != false
            || body["field"] != "number"
            || body["error_code"] != "invalid_phone_number"
        {
            failures.push(format!("{case} ({path}): {status} {body}"));
        }
    }

    assert!(failures.is_empty(), "{failures:#?}");
    let count: i64 = app.sql("SELECT count(*) FROM verifications").await[0].get(0);
    assert_eq!(count, 0);
}

#[tokio::test]
async fn a_get_with_a_json_body_still_reads_the_code_from_the_query_string() {
    let app = spawn_app().await;
    let code = started_with_code(&app).await;

    let response = sdk_send(
        &app,
        Method::GET,
        &format!("/number_verify/{NUMBER}?code={code}"),
        Some(&json!({ "code": code })),
    )
    .await;

    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["success"], true);
    assert_eq!(body["verified"], true);
}

#[tokio::test]
async fn a_chunked_request_body_without_content_length_is_accepted() {
    let app = spawn_app().await;
    let host = app.address.trim_start_matches("http://").to_owned();
    let body = json!({ "from": "Acme" }).to_string();
    let request = format!(
        "POST /number_verify/{NUMBER} HTTP/1.1\r\n\
         Host: {host}\r\n\
         X-Api-Key: {API_KEY}\r\n\
         Content-Type: application/json\r\n\
         Accept: application/json\r\n\
         Transfer-Encoding: chunked\r\n\
         Connection: close\r\n\
         \r\n\
         {:x}\r\n{body}\r\n0\r\n\r\n",
        body.len()
    );
    let mut stream = TcpStream::connect(&host).await.unwrap();

    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();

    let answer = String::from_utf8(raw).unwrap();
    let status_line = answer.lines().next().unwrap();
    assert_eq!(status_line, "HTTP/1.1 200 OK", "{answer}");
    assert!(answer.contains(r#""success":true"#), "{answer}");
    let sms = app.wait_for_sms(NUMBER, 1).await;
    assert_eq!(sms[0].from, "Acme", "the chunked body was read");
}

#[tokio::test]
async fn listing_templates_answers_success_with_a_templates_array() {
    let app = spawn_app().await;
    let id = create_portatext_template(&app, "Your code: {{code}}").await;

    let response = sdk_send(&app, Method::GET, "/templates", None).await;

    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["success"], true);
    let templates = body["templates"].as_array().unwrap();
    assert_eq!(templates.len(), 1);
    assert_eq!(templates[0]["id"], id);
}

#[tokio::test]
async fn creating_a_template_answers_success_with_the_template() {
    let app = spawn_app().await;

    let response = sdk_send(
        &app,
        Method::POST,
        "/templates",
        Some(&json!({
            "name": "welcome",
            "description": "sign-up code",
            "text": "Welcome! Code {{code}}"
        })),
    )
    .await;

    assert!(response.status().is_success(), "{}", response.status());
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["success"], true);
    assert!(body["template"]["id"].as_i64().unwrap() > 0);
    assert_eq!(body["template"]["name"], "welcome");
    assert_eq!(body["template"]["description"], "sign-up code");
    assert_eq!(body["template"]["text"], "Welcome! Code {{code}}");
}

#[tokio::test]
async fn getting_a_template_answers_success_with_the_template() {
    let app = spawn_app().await;
    let id = create_portatext_template(&app, "Your code: {{code}}").await;

    let response = sdk_send(&app, Method::GET, &format!("/templates/{id}"), None).await;

    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["success"], true);
    assert_eq!(body["template"]["id"], id);
    assert_eq!(body["template"]["text"], "Your code: {{code}}");
}

#[tokio::test]
async fn putting_only_the_text_changes_the_text_and_keeps_the_rest() {
    let app = spawn_app().await;
    let id = create_portatext_template(&app, "Your code: {{code}}").await;

    let response = sdk_send(
        &app,
        Method::PUT,
        &format!("/templates/{id}"),
        Some(&json!({ "text": "New code: {{code}}" })),
    )
    .await;

    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["success"], true);
    assert_eq!(body["template"]["text"], "New code: {{code}}");
    let stored: Value = sdk_send(&app, Method::GET, &format!("/templates/{id}"), None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(stored["template"]["text"], "New code: {{code}}");
    assert_eq!(stored["template"]["name"], "sdk");
    assert_eq!(stored["template"]["description"], "from an SDK");
}

#[tokio::test]
async fn deleting_a_template_answers_success_and_it_is_gone_afterwards() {
    let app = spawn_app().await;
    let id = create_portatext_template(&app, "Your code: {{code}}").await;

    let response = sdk_send(&app, Method::DELETE, &format!("/templates/{id}"), None).await;

    assert_eq!(response.status(), StatusCode::OK);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["success"], true);
    let gone = sdk_send(&app, Method::GET, &format!("/templates/{id}"), None).await;
    assert_eq!(gone.status(), StatusCode::NOT_FOUND);
    assert_portatext_error(&gone.json().await.unwrap());
}

#[tokio::test]
async fn a_missing_api_key_answers_401_in_the_portatext_shape() {
    let app = spawn_app().await;

    let response = app
        .client
        .get(app.url("/templates"))
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_portatext_error(&response.json().await.unwrap());
}

#[tokio::test]
async fn a_wrong_api_key_answers_401_in_the_portatext_shape() {
    let app = spawn_app().await;

    let response = app
        .client
        .post(app.url(&format!("/number_verify/{NUMBER}")))
        .header("x-api-key", "not-the-key")
        .header("content-type", "application/json")
        .header("accept", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_portatext_error(&response.json().await.unwrap());
    app.drain().await;
    assert!(app.sink.is_empty());
}

#[tokio::test]
async fn an_unknown_path_under_templates_answers_404_json() {
    let app = spawn_app().await;

    let response = sdk_send(&app, Method::GET, "/templates/x/y", None).await;

    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_portatext_error(&response.json().await.unwrap());
}

#[tokio::test]
async fn non_ascii_template_text_comes_back_escaped_as_ascii() {
    let app = spawn_app().await;

    let response = sdk_send(
        &app,
        Method::POST,
        "/templates",
        Some(&json!({ "name": "es", "text": "Código {{code}}" })),
    )
    .await;

    assert!(response.status().is_success(), "{}", response.status());
    assert_eq!(response.headers()["content-type"], "application/json");
    let raw = response.text().await.unwrap();
    assert!(raw.is_ascii(), "{raw}");
    assert!(raw.contains(r"C\u00f3digo {{code}}"), "{raw}");
    let parsed: Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(parsed["template"]["text"], "Código {{code}}");
}
