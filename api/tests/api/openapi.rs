//! The OpenAPI document: it describes exactly the native routes the API serves, it is
//! served without a key, and the check every native answer of the suite goes through
//! (`helpers::contract`) can fail.

use std::collections::BTreeSet;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use verify_api::{ENDPOINTS, Family};

use crate::helpers::contract::{contract, nonconformance};
use crate::helpers::spawn_app;

#[test]
fn the_document_is_openapi_3_1() {
    let document = &contract().document;

    assert!(
        document["openapi"].as_str().unwrap().starts_with("3.1."),
        "{}",
        document["openapi"]
    );
}

#[test]
fn the_document_describes_exactly_the_native_routes() {
    let documented: BTreeSet<(String, String)> = contract()
        .operations
        .iter()
        .map(|operation| (operation.method.to_string(), table_path(&operation.path)))
        .collect();
    let native: BTreeSet<(String, String)> = ENDPOINTS
        .iter()
        .filter(|endpoint| endpoint.family == Family::Native)
        .map(|endpoint| (endpoint.method.to_owned(), endpoint.path.to_owned()))
        .collect();

    let undocumented: Vec<_> = native.difference(&documented).collect();
    let not_native: Vec<_> = documented.difference(&native).collect();
    assert!(
        undocumented.is_empty() && not_native.is_empty(),
        "native routes the document misses: {undocumented:?}; documented, but not native \
         routes: {not_native:?}"
    );
}

/// A documented path as the route table writes it: `{}` for each parameter.
fn table_path(path: &str) -> String {
    path.split('/')
        .map(|segment| {
            if segment.starts_with('{') {
                "{}"
            } else {
                segment
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[test]
fn every_keyed_operation_accepts_either_form_of_the_key() {
    let document = &contract().document;
    let schemes = &document["components"]["securitySchemes"];

    assert_eq!(schemes["api_key"]["in"], "header");
    assert_eq!(schemes["api_key"]["name"], "X-Api-Key");
    assert_eq!(schemes["bearer"]["scheme"], "bearer");
    for (path, item) in document["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            assert_eq!(
                operation["security"],
                json!([{"api_key": []}, {"bearer": []}]),
                "{method} {path}"
            );
            assert!(
                operation["responses"]["401"].is_object(),
                "{method} {path} lacks its 401"
            );
        }
    }
}

#[tokio::test]
async fn the_document_is_served_without_a_key() {
    let app = spawn_app().await;

    let response = app
        .client
        .get(app.url("/openapi.json"))
        .send()
        .await
        .unwrap();

    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()[reqwest::header::CONTENT_TYPE],
        "application/json"
    );
    let served: Value = response.json().await.unwrap();
    assert_eq!(served, contract().document);
}

#[tokio::test]
async fn an_answer_missing_a_required_field_is_refused() {
    let app = spawn_app().await;
    let verification = app
        .start_verification(&json!({ "to": "+14155550100" }))
        .await;
    let conforming_body = serde_json::to_vec(&verification).unwrap();
    let mut broken = verification.clone();
    broken.as_object_mut().unwrap().remove("status");
    let broken_body = serde_json::to_vec(&broken).unwrap();

    let as_received = nonconformance(
        &Method::POST,
        "/v1/verifications",
        StatusCode::ACCEPTED,
        &conforming_body,
    );
    let without_status = nonconformance(
        &Method::POST,
        "/v1/verifications",
        StatusCode::ACCEPTED,
        &broken_body,
    );

    assert_eq!(as_received, None);
    let problem = without_status.expect("an answer without its status is refused");
    assert!(problem.contains("status"), "{problem}");
}

#[test]
fn an_undocumented_status_is_refused() {
    let problem = nonconformance(
        &Method::GET,
        "/v1/templates/7",
        StatusCode::IM_A_TEAPOT,
        b"{}",
    );

    let problem = problem.expect("a status the document does not list is refused");
    assert!(problem.contains("418"), "{problem}");
}
