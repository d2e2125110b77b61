//! Requests the API must refuse: each one answers with the right 4xx and a JSON error that
//! names the problem (and the field, when there is one), and none of them records anything.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{TestApp, phone_number, spawn_app};

const BAD_REQUEST: StatusCode = StatusCode::BAD_REQUEST;
const NOT_FOUND: StatusCode = StatusCode::NOT_FOUND;
const UNPROCESSABLE: StatusCode = StatusCode::UNPROCESSABLE_ENTITY;

/// A valid number for cases whose problem lies elsewhere in the body.
fn to() -> String {
    phone_number(1)
}

/// A well-formed verification id that no verification has.
const UNKNOWN_ID: &str = "0190c0de-0000-7000-8000-000000000001";

/// One bad request and the answer it must get.
struct Case {
    name: &'static str,
    method: Method,
    path: String,
    body: Option<String>,
    content_type: Option<&'static str>,
    status: StatusCode,
    code: &'static str,
    field: Option<&'static str>,
}

impl Case {
    fn new(name: &'static str, method: Method, path: impl Into<String>) -> Self {
        Self {
            name,
            method,
            path: path.into(),
            body: None,
            content_type: None,
            status: BAD_REQUEST,
            code: "",
            field: None,
        }
    }

    fn get(name: &'static str, path: impl Into<String>) -> Self {
        Self::new(name, Method::GET, path)
    }

    fn post(name: &'static str, path: impl Into<String>, body: &Value) -> Self {
        Self::new(name, Method::POST, path).raw(body.to_string(), "application/json")
    }

    fn with_json(
        name: &'static str,
        method: Method,
        path: impl Into<String>,
        body: &Value,
    ) -> Self {
        Self::new(name, method, path).raw(body.to_string(), "application/json")
    }

    fn raw(mut self, body: impl Into<String>, content_type: &'static str) -> Self {
        self.body = Some(body.into());
        self.content_type = Some(content_type);
        self
    }

    fn answers(
        mut self,
        status: StatusCode,
        code: &'static str,
        field: Option<&'static str>,
    ) -> Self {
        self.status = status;
        self.code = code;
        self.field = field;
        self
    }
}

/// Sends a case and describes every way the answer differs from the expected one.
async fn run(app: &TestApp, case: &Case) -> Result<(), String> {
    let mut request = app.request(case.method.clone(), &case.path);
    if let Some(content_type) = case.content_type {
        request = request.header("content-type", content_type);
    }
    if let Some(body) = &case.body {
        request = request.body(body.clone());
    }
    let response = request
        .send()
        .await
        .map_err(|e| format!("case {:?}: the request failed: {e}", case.name))?;
    let status = response.status();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let text = response.text().await.unwrap_or_default();

    let mut problems = Vec::new();
    if status != case.status {
        problems.push(format!("status {status}, expected {}", case.status));
    }
    if content_type.split(';').next().unwrap_or_default().trim() != "application/json" {
        problems.push(format!(
            "content-type {content_type:?}, expected application/json"
        ));
    }
    match serde_json::from_str::<Value>(&text) {
        Err(_) => problems.push("the body is not JSON".to_owned()),
        Ok(body) => {
            let error = &body["error"];
            if error["code"] != case.code {
                problems.push(format!(
                    "error.code {}, expected {:?}",
                    error["code"], case.code
                ));
            }
            if error["field"].as_str() != case.field {
                problems.push(format!(
                    "error.field {}, expected {:?}",
                    error["field"], case.field
                ));
            }
            if error["message"].as_str().is_none_or(str::is_empty) {
                problems.push("error.message is missing or empty".to_owned());
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "case {:?} ({} {}): {}; body: {text}",
            case.name,
            case.method,
            case.path,
            problems.join("; ")
        ))
    }
}

fn verification_cases(template_needing_brand: i64) -> Vec<Case> {
    let create = "/v1/verifications";
    let with_to = |extra: Value| {
        let mut body = json!({ "to": to() });
        for (key, value) in extra.as_object().expect("an object of extra fields") {
            body[key] = value.clone();
        }
        body
    };
    let many_variables: serde_json::Map<String, Value> =
        (0..21).map(|i| (format!("v{i}"), json!("x"))).collect();
    let too_large = format!(r#"{{"to": "{}"}}"#, "1".repeat(70 * 1024));
    vec![
        Case::post("an empty object", create, &json!({})).answers(
            BAD_REQUEST,
            "invalid_json",
            Some("to"),
        ),
        Case::post("an empty number", create, &json!({"to": ""})).answers(
            BAD_REQUEST,
            "invalid_phone_number",
            Some("to"),
        ),
        Case::post(
            "a number without the plus",
            create,
            &json!({"to": "14155550100"}),
        )
        .answers(BAD_REQUEST, "invalid_phone_number", Some("to")),
        Case::post(
            "a number with letters",
            create,
            &json!({"to": "+1415555010a"}),
        )
        .answers(BAD_REQUEST, "invalid_phone_number", Some("to")),
        Case::post("a number too short", create, &json!({"to": "+1234"})).answers(
            BAD_REQUEST,
            "invalid_phone_number",
            Some("to"),
        ),
        Case::post(
            "a number too long",
            create,
            &json!({"to": "+1234567890123456"}),
        )
        .answers(BAD_REQUEST, "invalid_phone_number", Some("to")),
        Case::post(
            "an unassigned country code",
            create,
            &json!({"to": "+99912345678"}),
        )
        .answers(BAD_REQUEST, "invalid_phone_number", Some("to")),
        Case::post(
            "a number invalid in its country",
            create,
            &json!({"to": "+10000000000"}),
        )
        .answers(BAD_REQUEST, "invalid_phone_number", Some("to")),
        Case::post(
            "a number sent as a JSON number",
            create,
            &json!({"to": 14_155_550_100_i64}),
        )
        .answers(BAD_REQUEST, "invalid_json", Some("to")),
        Case::post(
            "a code length of 3",
            create,
            &with_to(json!({"code_length": 3})),
        )
        .answers(BAD_REQUEST, "invalid_code_length", Some("code_length")),
        Case::post(
            "a code length of 11",
            create,
            &with_to(json!({"code_length": 11})),
        )
        .answers(BAD_REQUEST, "invalid_code_length", Some("code_length")),
        Case::post(
            "a code length of 5 where the operator allows no weak codes",
            create,
            &with_to(json!({"code_length": 5})),
        )
        .answers(BAD_REQUEST, "invalid_code_length", Some("code_length")),
        Case::post(
            "a code length of 4 where the operator allows no weak codes",
            create,
            &with_to(json!({"code_length": 4})),
        )
        .answers(BAD_REQUEST, "invalid_code_length", Some("code_length")),
        Case::post(
            "a code length in words",
            create,
            &with_to(json!({"code_length": "six"})),
        )
        .answers(BAD_REQUEST, "invalid_json", Some("code_length")),
        Case::post(
            "a ttl of 10 seconds",
            create,
            &with_to(json!({"ttl_seconds": 10})),
        )
        .answers(BAD_REQUEST, "invalid_ttl", Some("ttl_seconds")),
        Case::post(
            "a ttl of 601 seconds where the operator allows no weak codes",
            create,
            &with_to(json!({"ttl_seconds": 601})),
        )
        .answers(BAD_REQUEST, "invalid_ttl", Some("ttl_seconds")),
        Case::post(
            "a ttl of an hour where the operator allows no weak codes",
            create,
            &with_to(json!({"ttl_seconds": 3_600})),
        )
        .answers(BAD_REQUEST, "invalid_ttl", Some("ttl_seconds")),
        Case::post(
            "a ttl over a day",
            create,
            &with_to(json!({"ttl_seconds": 100_000})),
        )
        .answers(BAD_REQUEST, "invalid_ttl", Some("ttl_seconds")),
        Case::post(
            "a ttl as a string",
            create,
            &with_to(json!({"ttl_seconds": "600"})),
        )
        .answers(BAD_REQUEST, "invalid_json", Some("ttl_seconds")),
        Case::post(
            "an unknown template",
            create,
            &with_to(json!({"template_id": 999_999})),
        )
        .answers(BAD_REQUEST, "template_not_found", Some("template_id")),
        Case::post(
            "a locale without built-in text",
            create,
            &with_to(json!({"locale": "xx"})),
        )
        .answers(BAD_REQUEST, "unsupported_locale", Some("locale")),
        Case::post(
            "a locale that is not a tag",
            create,
            &with_to(json!({"locale": "english"})),
        )
        .answers(BAD_REQUEST, "invalid_locale", Some("locale")),
        Case::post(
            "variables as an array",
            create,
            &with_to(json!({"variables": [1]})),
        )
        .answers(BAD_REQUEST, "invalid_variables", Some("variables")),
        Case::post(
            "the reserved variable code",
            create,
            &with_to(json!({"variables": {"code": "1"}})),
        )
        .answers(BAD_REQUEST, "invalid_variables", Some("variables.code")),
        Case::post(
            "a nested variable value",
            create,
            &with_to(json!({"variables": {"a": {"b": 1}}})),
        )
        .answers(BAD_REQUEST, "invalid_variables", Some("variables.a")),
        Case::post(
            "21 variables",
            create,
            &with_to(json!({"variables": many_variables})),
        )
        .answers(BAD_REQUEST, "invalid_variables", Some("variables")),
        Case::post(
            "a variable name starting with a digit",
            create,
            &with_to(json!({"variables": {"1bad": "x"}})),
        )
        .answers(BAD_REQUEST, "invalid_variables", Some("variables.1bad")),
        Case::post(
            "a variable value over 200 characters",
            create,
            &with_to(json!({"variables": {"t": "x".repeat(201)}})),
        )
        .answers(BAD_REQUEST, "invalid_variables", Some("variables.t")),
        Case::post(
            "a variable that starts new lines of its own",
            create,
            &with_to(
                json!({"variables": {"brand": "Acme\n\nIGNORE THE NEXT MESSAGE. USE 111111"}}),
            ),
        )
        .answers(UNPROCESSABLE, "unsafe_characters", Some("variables.brand")),
        Case::post(
            "a variable with a carriage return",
            create,
            &with_to(json!({"variables": {"brand": "Acme\rUSE 111111"}})),
        )
        .answers(UNPROCESSABLE, "unsafe_characters", Some("variables.brand")),
        Case::post(
            "a variable with a line separator",
            create,
            &with_to(json!({"variables": {"brand": "Acme\u{2028}USE 111111"}})),
        )
        .answers(UNPROCESSABLE, "unsafe_characters", Some("variables.brand")),
        Case::post(
            "a variable with a tab",
            create,
            &with_to(json!({"variables": {"brand": "Ac\tme"}})),
        )
        .answers(UNPROCESSABLE, "unsafe_characters", Some("variables.brand")),
        Case::post(
            "a variable with a right-to-left override",
            create,
            &with_to(json!({"variables": {"brand": "\u{202E}111111 si edoc ruoY"}})),
        )
        .answers(UNPROCESSABLE, "unsafe_characters", Some("variables.brand")),
        Case::post(
            "a variable with a left-to-right embedding",
            create,
            &with_to(json!({"variables": {"brand": "\u{202A}Acme"}})),
        )
        .answers(UNPROCESSABLE, "unsafe_characters", Some("variables.brand")),
        Case::post(
            "a variable with a directional isolate",
            create,
            &with_to(json!({"variables": {"brand": "\u{2067}Acme\u{2069}"}})),
        )
        .answers(UNPROCESSABLE, "unsafe_characters", Some("variables.brand")),
        Case::post(
            "a variable with a right-to-left mark",
            create,
            &with_to(json!({"variables": {"brand": "Acme\u{200F}"}})),
        )
        .answers(UNPROCESSABLE, "unsafe_characters", Some("variables.brand")),
        Case::post(
            "a variable with a zero-width space",
            create,
            &with_to(json!({"variables": {"brand": "Ac\u{200B}me"}})),
        )
        .answers(UNPROCESSABLE, "unsafe_characters", Some("variables.brand")),
        Case::post(
            "a variable with a zero-width joiner",
            create,
            &with_to(json!({"variables": {"brand": "Ac\u{200D}me"}})),
        )
        .answers(UNPROCESSABLE, "unsafe_characters", Some("variables.brand")),
        Case::post(
            "a variable with a word joiner",
            create,
            &with_to(json!({"variables": {"brand": "Ac\u{2060}me"}})),
        )
        .answers(UNPROCESSABLE, "unsafe_characters", Some("variables.brand")),
        Case::post(
            "a variable with a NUL",
            create,
            &with_to(json!({"variables": {"brand": "Ac\u{0}me"}})),
        )
        .answers(UNPROCESSABLE, "unsafe_characters", Some("variables.brand")),
        Case::post(
            "a variable with a byte order mark",
            create,
            &with_to(json!({"variables": {"brand": "\u{FEFF}Acme"}})),
        )
        .answers(UNPROCESSABLE, "unsafe_characters", Some("variables.brand")),
        Case::post(
            "a sender that is only a plus and a digit",
            create,
            &with_to(json!({"from": "+1"})),
        )
        .answers(BAD_REQUEST, "invalid_sender", Some("from")),
        Case::post(
            "a sender with punctuation",
            create,
            &with_to(json!({"from": "Acme!"})),
        )
        .answers(BAD_REQUEST, "invalid_sender", Some("from")),
        Case::post(
            "a misspelt field",
            create,
            &with_to(json!({"tempalte_id": 1})),
        )
        .answers(BAD_REQUEST, "invalid_json", Some("tempalte_id")),
        Case::post(
            "a template whose variable is not supplied",
            create,
            &with_to(json!({"template_id": template_needing_brand})),
        )
        .answers(BAD_REQUEST, "missing_variable", Some("variables.brand")),
        Case::new("a body that is not JSON", Method::POST, create)
            .raw("not json", "application/json")
            .answers(BAD_REQUEST, "invalid_json", None),
        Case::new("an empty body", Method::POST, create)
            .raw("", "application/json")
            .answers(BAD_REQUEST, "invalid_json", None),
        Case::new("a JSON array body", Method::POST, create)
            .raw("[]", "application/json")
            .answers(BAD_REQUEST, "invalid_json", None),
        Case::new("a text/plain body", Method::POST, create)
            .raw(json!({ "to": to() }).to_string(), "text/plain")
            .answers(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                None,
            ),
        Case::new("a 70 KB body", Method::POST, create)
            .raw(too_large, "application/json")
            .answers(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", None),
        Case::get(
            "reading a verification by a malformed id",
            "/v1/verifications/not-a-uuid",
        )
        .answers(BAD_REQUEST, "invalid_id", Some("id")),
        Case::get(
            "reading the events of a verification by a malformed id",
            "/v1/verifications/not-a-uuid/events",
        )
        .answers(BAD_REQUEST, "invalid_id", Some("id")),
        Case::get(
            "reading the events of an unknown verification",
            format!("/v1/verifications/{UNKNOWN_ID}/events"),
        )
        .answers(NOT_FOUND, "verification_not_found", None),
        Case::post(
            "resending an unknown verification",
            format!("/v1/verifications/{UNKNOWN_ID}/resend"),
            &json!({}),
        )
        .answers(NOT_FOUND, "verification_not_found", None),
        Case::post(
            "canceling an unknown verification",
            format!("/v1/verifications/{UNKNOWN_ID}/cancel"),
            &json!({}),
        )
        .answers(NOT_FOUND, "verification_not_found", None),
        Case::new(
            "deleting the verification collection",
            Method::DELETE,
            create,
        )
        .answers(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", None),
    ]
}

fn check_cases() -> Vec<Case> {
    let check = format!("/v1/verifications/{UNKNOWN_ID}/check");
    let by_number = "/v1/verifications/check";
    vec![
        Case::post(
            "checking a malformed id",
            "/v1/verifications/not-a-uuid/check",
            &json!({"code": "123456"}),
        )
        .answers(BAD_REQUEST, "invalid_id", Some("id")),
        Case::post(
            "checking a code with letters",
            check.clone(),
            &json!({"code": "12ab56"}),
        )
        .answers(BAD_REQUEST, "invalid_code", Some("code")),
        Case::post(
            "checking a code of 3 digits",
            check.clone(),
            &json!({"code": "123"}),
        )
        .answers(BAD_REQUEST, "invalid_code", Some("code")),
        Case::post(
            "checking a code sent as a JSON number",
            check.clone(),
            &json!({"code": 123_456}),
        )
        .answers(BAD_REQUEST, "invalid_json", Some("code")),
        Case::post("checking without a code", check, &json!({})).answers(
            BAD_REQUEST,
            "invalid_json",
            Some("code"),
        ),
        Case::post(
            "checking by a malformed number",
            by_number,
            &json!({"to": "bad", "code": "123456"}),
        )
        .answers(BAD_REQUEST, "invalid_phone_number", Some("to")),
        Case::post(
            "checking by number without a code",
            by_number,
            &json!({ "to": to() }),
        )
        .answers(BAD_REQUEST, "invalid_json", Some("code")),
    ]
}

fn template_cases(fixture: i64) -> Vec<Case> {
    let create = "/v1/templates";
    let preview = "/v1/templates/preview";
    let fixture_path = format!("/v1/templates/{fixture}");
    vec![
        Case::post(
            "a template without {{code}}",
            create,
            &json!({"name": "x", "text": "no code here"}),
        )
        .answers(BAD_REQUEST, "invalid_template", Some("text")),
        Case::post(
            "a template with a block",
            create,
            &json!({"name": "x", "text": "{% if code %}{{code}}{% endif %}"}),
        )
        .answers(BAD_REQUEST, "invalid_template", Some("text")),
        Case::post(
            "a template that does not compile",
            create,
            &json!({"name": "x", "text": "{{code"}),
        )
        .answers(BAD_REQUEST, "invalid_template", Some("text")),
        Case::post(
            "a template reading a nested variable",
            create,
            &json!({"name": "x", "text": "{{user.name}} {{code}}"}),
        )
        .answers(BAD_REQUEST, "invalid_template", Some("text")),
        Case::post(
            "a template over 1000 characters",
            create,
            &json!({"name": "x", "text": format!("{{{{code}}}} {}", "x".repeat(1_000))}),
        )
        .answers(BAD_REQUEST, "invalid_template", Some("text")),
        Case::post(
            "an empty template name",
            create,
            &json!({"name": "", "text": "{{code}}"}),
        )
        .answers(BAD_REQUEST, "invalid_template_name", Some("name")),
        Case::post(
            "a template name over 100 characters",
            create,
            &json!({"name": "n".repeat(101), "text": "{{code}}"}),
        )
        .answers(BAD_REQUEST, "invalid_template_name", Some("name")),
        Case::post("a template without text", create, &json!({"name": "x"})).answers(
            BAD_REQUEST,
            "missing_field",
            Some("text"),
        ),
        Case::post(
            "a template without a name",
            create,
            &json!({"text": "{{code}}"}),
        )
        .answers(BAD_REQUEST, "missing_field", Some("name")),
        Case::post(
            "a description of 501 characters",
            create,
            &json!({"name": "x", "text": "{{code}}", "description": "d".repeat(501)}),
        )
        .answers(BAD_REQUEST, "invalid_description", Some("description")),
        Case::post(
            "a template locale that is not a tag",
            create,
            &json!({"name": "x", "text": "{{code}}", "locale": "english"}),
        )
        .answers(BAD_REQUEST, "invalid_locale", Some("locale")),
        Case::post(
            "a template with a right-to-left override",
            create,
            &json!({"name": "x", "text": "Your code is {{code}}\u{202E}"}),
        )
        .answers(UNPROCESSABLE, "unsafe_characters", Some("text")),
        Case::post(
            "a template with a directional isolate",
            create,
            &json!({"name": "x", "text": "\u{2066}{{code}}\u{2069} is your code"}),
        )
        .answers(UNPROCESSABLE, "unsafe_characters", Some("text")),
        Case::post(
            "a template with a zero-width space",
            create,
            &json!({"name": "x", "text": "Code:\u{200B} {{code}}"}),
        )
        .answers(UNPROCESSABLE, "unsafe_characters", Some("text")),
        Case::post(
            "a template with a byte order mark",
            create,
            &json!({"name": "x", "text": "\u{FEFF}{{code}}"}),
        )
        .answers(UNPROCESSABLE, "unsafe_characters", Some("text")),
        Case::get("a template id that is not a number", "/v1/templates/abc").answers(
            BAD_REQUEST,
            "invalid_id",
            Some("id"),
        ),
        Case::get("a template id of 0", "/v1/templates/0").answers(
            BAD_REQUEST,
            "invalid_id",
            Some("id"),
        ),
        Case::get("a page limit of 0", "/v1/templates?limit=0").answers(
            BAD_REQUEST,
            "invalid_limit",
            Some("limit"),
        ),
        Case::get("a page limit over 1000", "/v1/templates?limit=1001").answers(
            BAD_REQUEST,
            "invalid_limit",
            Some("limit"),
        ),
        Case::get("a page limit in words", "/v1/templates?limit=ten").answers(
            BAD_REQUEST,
            "invalid_query",
            Some("limit"),
        ),
        Case::get("an unknown query parameter", "/v1/templates?sort=name").answers(
            BAD_REQUEST,
            "invalid_query",
            Some("sort"),
        ),
        Case::get("reading an unknown template", "/v1/templates/999999").answers(
            NOT_FOUND,
            "template_not_found",
            None,
        ),
        Case::with_json(
            "changing an unknown template",
            Method::PATCH,
            "/v1/templates/999999",
            &json!({"name": "x"}),
        )
        .answers(NOT_FOUND, "template_not_found", None),
        Case::new(
            "deleting an unknown template",
            Method::DELETE,
            "/v1/templates/999999",
        )
        .answers(NOT_FOUND, "template_not_found", None),
        Case::with_json(
            "patching a template's text to one without {{code}}",
            Method::PATCH,
            fixture_path.clone(),
            &json!({"text": "no code"}),
        )
        .answers(BAD_REQUEST, "invalid_template", Some("text")),
        Case::with_json(
            "patching a template's text to one with a left-to-right override",
            Method::PATCH,
            fixture_path.clone(),
            &json!({"text": "{{brand}}: \u{202D}{{code}}"}),
        )
        .answers(UNPROCESSABLE, "unsafe_characters", Some("text")),
        Case::with_json(
            "putting an empty name on a template",
            Method::PUT,
            fixture_path,
            &json!({"name": ""}),
        )
        .answers(BAD_REQUEST, "invalid_template_name", Some("name")),
        Case::with_json(
            "replacing the template collection",
            Method::PUT,
            create,
            &json!({}),
        )
        .answers(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", None),
        Case::post(
            "a preview missing a variable",
            preview,
            &json!({"text": "hi {{code}} {{brand}}"}),
        )
        .answers(BAD_REQUEST, "missing_variable", Some("variables.brand")),
        Case::post(
            "a preview with variables as an array",
            preview,
            &json!({"text": "{{code}}", "variables": [1]}),
        )
        .answers(BAD_REQUEST, "invalid_variables", Some("variables")),
        Case::post(
            "a preview with a right-to-left override in its text",
            preview,
            &json!({"text": "{{code}}\u{202E}"}),
        )
        .answers(UNPROCESSABLE, "unsafe_characters", Some("text")),
        Case::post(
            "a preview with a line break in a variable",
            preview,
            &json!({"text": "{{brand}} {{code}}", "variables": {"brand": "a\nb"}}),
        )
        .answers(UNPROCESSABLE, "unsafe_characters", Some("variables.brand")),
        Case::post("a preview without text", preview, &json!({})).answers(
            BAD_REQUEST,
            "invalid_json",
            Some("text"),
        ),
        Case::get("an unknown route", "/v1/nothing").answers(NOT_FOUND, "route_not_found", None),
    ]
}

/// Sends every case in order; returns one description per failed case.
async fn run_all(app: &TestApp, cases: &[Case]) -> Vec<String> {
    let mut failures = Vec::new();
    for case in cases {
        if let Err(failure) = run(app, case).await {
            failures.push(failure);
        }
    }
    failures
}

async fn count(app: &TestApp, table: &str) -> i64 {
    app.sql(&format!("SELECT count(*) FROM {table}")).await[0].get(0)
}

#[tokio::test]
async fn every_bad_request_answers_its_4xx_in_json_naming_the_field_and_records_nothing() {
    let app = spawn_app().await;
    let fixture = app
        .create_template(&json!({"name": "needs-brand", "text": "{{brand}}: {{code}}"}))
        .await;
    let fixture_id = fixture["id"].as_i64().unwrap();
    let cases: Vec<Case> = verification_cases(fixture_id)
        .into_iter()
        .chain(check_cases())
        .chain(template_cases(fixture_id))
        .collect();

    let mut failures = run_all(&app, &cases).await;

    for (table, expected) in [
        ("verifications", 0),
        ("sms_deliveries", 0),
        ("templates", 1),
    ] {
        let rows = count(&app, table).await;
        if rows != expected {
            failures.push(format!(
                "{table} has {rows} rows after the refused requests, expected {expected}"
            ));
        }
    }
    let after: Value = app
        .get(&format!("/v1/templates/{fixture_id}"))
        .await
        .json()
        .await
        .unwrap();
    if after != fixture {
        failures.push(format!(
            "refused updates changed the fixture template: {after}"
        ));
    }

    assert!(cases.len() >= 35, "only {} cases", cases.len());
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[tokio::test]
async fn a_nul_character_in_any_stored_text_answers_400_naming_the_field() {
    // Postgres cannot store U+0000 in text or jsonb, so it must be refused up front like
    // any other bad value, never reach the database as a 500. (In a variable value it is
    // refused with every other control character: 422 `unsafe_characters`, in the table of
    // `every_bad_request_…`.)
    let app = spawn_app().await;
    let fixture = app
        .create_template(&json!({"name": "plain", "text": "{{code}}"}))
        .await;
    let fixture_path = format!("/v1/templates/{}", fixture["id"]);
    let create = "/v1/verifications";
    let templates = "/v1/templates";
    let cases = [
        Case::post(
            "a NUL in the sender",
            create,
            &json!({"to": to(), "from": "Ac\u{0}me"}),
        )
        .answers(BAD_REQUEST, "invalid_sender", Some("from")),
        Case::post(
            "a NUL in a template name",
            templates,
            &json!({"name": "a\u{0}b", "text": "{{code}}"}),
        )
        .answers(BAD_REQUEST, "invalid_template_name", Some("name")),
        Case::post(
            "a NUL in a template text",
            templates,
            &json!({"name": "x", "text": "{{code}}\u{0}"}),
        )
        .answers(BAD_REQUEST, "invalid_template", Some("text")),
        Case::post(
            "a NUL in a template description",
            templates,
            &json!({"name": "x", "text": "{{code}}", "description": "a\u{0}b"}),
        )
        .answers(BAD_REQUEST, "invalid_description", Some("description")),
        Case::with_json(
            "a NUL in a changed template text",
            Method::PATCH,
            fixture_path.clone(),
            &json!({"text": "{{code}}\u{0}"}),
        )
        .answers(BAD_REQUEST, "invalid_template", Some("text")),
        Case::with_json(
            "a NUL in a changed template description",
            Method::PATCH,
            fixture_path,
            &json!({"description": "a\u{0}b"}),
        )
        .answers(BAD_REQUEST, "invalid_description", Some("description")),
    ];

    let failures = run_all(&app, &cases).await;

    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    assert_eq!(count(&app, "verifications").await, 0);
    assert_eq!(count(&app, "templates").await, 1);
}
