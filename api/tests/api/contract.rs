//! The OpenAPI document as a contract: every native answer the suite receives through
//! `TestApp::send` is checked against it ([`conforming`]), so the document cannot drift
//! from the code.

use std::sync::OnceLock;

use reqwest::{Method, Response, StatusCode};
use serde_json::{Value, json};

/// The document, and a validator for each JSON answer it describes.
pub(crate) struct Contract {
    pub document: Value,
    pub operations: Vec<Operation>,
}

/// One documented operation and its answers.
pub(crate) struct Operation {
    pub method: Method,
    /// The documented path, `{name}` for a parameter.
    pub path: String,
    /// Per documented status: a validator of its JSON body, or `None` when it has none.
    answers: Vec<(String, Option<jsonschema::Validator>)>,
}

impl Operation {
    /// Whether a request path is one of this operation's.
    fn matches(&self, path: &str) -> bool {
        let documented: Vec<&str> = self.path.split('/').collect();
        let actual: Vec<&str> = path.split('/').collect();
        documented.len() == actual.len()
            && documented.iter().zip(&actual).all(|(documented, actual)| {
                documented == actual || (documented.starts_with('{') && !actual.is_empty())
            })
    }

    /// How many path segments are literal: `/v1/templates/preview` wins over
    /// `/v1/templates/{id}`, as the routes order them.
    fn literal_segments(&self) -> usize {
        self.path.split('/').filter(|s| !s.starts_with('{')).count()
    }
}

/// The document as the API builds it, compiled once per test run.
pub(crate) fn contract() -> &'static Contract {
    static CONTRACT: OnceLock<Contract> = OnceLock::new();
    CONTRACT.get_or_init(|| {
        let document: Value = serde_json::from_str(&verify_api::openapi_document())
            .expect("the OpenAPI document is JSON");
        let mut operations = Vec::new();
        for (path, item) in document["paths"].as_object().expect("paths") {
            for (method, operation) in item.as_object().expect("a path item") {
                let answers = operation["responses"]
                    .as_object()
                    .expect("responses")
                    .iter()
                    .map(|(status, answer)| {
                        let validator = answer["content"]["application/json"]
                            .get("schema")
                            .map(|schema| compile(&document, schema, path, method, status));
                        (status.clone(), validator)
                    })
                    .collect();
                operations.push(Operation {
                    method: Method::from_bytes(method.to_ascii_uppercase().as_bytes())
                        .expect("an HTTP method"),
                    path: path.clone(),
                    answers,
                });
            }
        }
        Contract {
            document,
            operations,
        }
    })
}

/// A validator of one answer's schema. The schema's `$ref`s point into the document's
/// `components`, so they sit beside it at the root.
fn compile(
    document: &Value,
    schema: &Value,
    path: &str,
    method: &str,
    status: &str,
) -> jsonschema::Validator {
    let mut root = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "components": document["components"],
    });
    let (Value::Object(root_fields), Value::Object(schema_fields)) = (&mut root, schema) else {
        panic!("the schema of {method} {path} {status} is not an object: {schema}");
    };
    root_fields.extend(schema_fields.clone());
    jsonschema::draft202012::new(&root).unwrap_or_else(|e| {
        panic!("the schema of {method} {path} {status} does not compile: {e}\n{schema:#}")
    })
}

/// What is wrong with a native answer, by the document: `None` when it conforms or is
/// not a documented operation's (a probe, a PortaText route, a path no route serves).
pub(crate) fn nonconformance(
    method: &Method,
    path: &str,
    status: StatusCode,
    body: &[u8],
) -> Option<String> {
    let operation = contract()
        .operations
        .iter()
        .filter(|operation| operation.method == *method && operation.matches(path))
        .max_by_key(|operation| operation.literal_segments())?;
    let Some((_, validator)) = operation
        .answers
        .iter()
        .find(|(documented, _)| documented == status.as_str())
    else {
        return Some(format!(
            "{method} {path} answered {status}, a status the document does not list for {} {}",
            operation.method, operation.path
        ));
    };
    let Some(validator) = validator else {
        return (!body.is_empty()).then(|| {
            format!(
                "{method} {path} answered {status} with a body the document does not describe: {}",
                String::from_utf8_lossy(body)
            )
        });
    };
    let json: Value = match serde_json::from_slice(body) {
        Ok(json) => json,
        Err(e) => {
            return Some(format!(
                "{method} {path} answered {status} with a body that is not JSON ({e}): {}",
                String::from_utf8_lossy(body)
            ));
        }
    };
    let errors: Vec<String> = validator
        .iter_errors(&json)
        .map(|error| format!("  at {}: {error}", error.instance_path()))
        .collect();
    (!errors.is_empty()).then(|| {
        format!(
            "{method} {path} answered {status} with a body that does not match the document's \
             schema for {} {}:\n{}\nbody: {json:#}",
            operation.method,
            operation.path,
            errors.join("\n")
        )
    })
}

/// The answer as received, after failing the test unless it conforms to the document.
/// The body is read to check it, so the answer is rebuilt from what was read.
pub(crate) async fn conforming(method: &Method, path: &str, response: Response) -> Response {
    let status = response.status();
    let version = response.version();
    let headers = response.headers().clone();
    let body = response.bytes().await.expect("reading an answer's body");
    if let Some(problem) = nonconformance(method, path, status, &body) {
        panic!("the answer contradicts the OpenAPI document: {problem}");
    }
    let mut rebuilt = http::Response::builder().status(status).version(version);
    if let Some(rebuilt_headers) = rebuilt.headers_mut() {
        *rebuilt_headers = headers;
    }
    Response::from(
        rebuilt
            .body(body.to_vec())
            .expect("the parts of a received answer"),
    )
}
