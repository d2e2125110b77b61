//! `GET /openapi.json`: the OpenAPI 3.1 document of the native `/v1` API, derived from
//! the request and response types the routes use and the `#[utoipa::path]` description
//! next to each handler. This is the one place that lists the documented paths.
//!
//! What every route of a family answers alike is added here from the route table rather
//! than repeated on each handler: the API-key schemes and the 401 of keyed routes, the 400
//! of an unreadable key header, body or path id, the body's 408/413/415, and the 500 and
//! 503 any route can give. The document is built once, when the routes are.

use utoipa::openapi::path::{Operation, PathItem};
use utoipa::openapi::security::{
    ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
};
use utoipa::openapi::{
    ContentBuilder, Ref, RefOr, Response, ResponseBuilder, header::HeaderBuilder, schema::Type,
};
use utoipa::{Modify, OpenApi};
use warp::Filter;
use warp::http::header::CONTENT_TYPE;
use warp::reply::{Reply, Response as WarpResponse};

use super::table::{ENDPOINTS, Family};

/// The native API's document. The paths are the handlers'; the schemas they name are
/// collected from them.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Verify",
        description = "Self-hosted SMS verification: send a one-time code to a phone number, \
            then check the code the user typed. Every `/v1` route needs an API key, sent as \
            `X-Api-Key` or as `Authorization: Bearer`. Errors are \
            `{\"error\": {\"code\", \"message\", \"field\"}}`; match on `code`."
    ),
    paths(
        super::verifications::create,
        super::verifications::check_by_number,
        super::verifications::get,
        super::verifications::events,
        super::verifications::check_by_id,
        super::verifications::resend,
        super::verifications::cancel,
        super::templates::list,
        super::templates::create,
        super::templates::preview,
        super::templates::get,
        super::templates::update,
        super::templates::delete,
        super::abuse::list_rules,
        super::abuse::put_rule,
        super::abuse::delete_rule,
        super::abuse::list_allow,
        super::abuse::add_allow,
        super::abuse::delete_allow,
        super::abuse::list_blocks,
        super::abuse::lift_block,
        super::webhooks::list,
        super::webhooks::create,
        super::webhooks::find,
        super::webhooks::update,
        super::webhooks::delete,
        super::stats::report,
    ),
    modifiers(&SharedAnswers),
    tags(
        (name = "verifications", description = "Send a code, check it, resend or cancel it"),
        (name = "templates", description = "The texts codes are sent in"),
        (name = "abuse", description = "Rules, allow list and blocks that guard the sends"),
        (name = "webhooks", description = "Endpoints that hear about verifications"),
        (name = "stats", description = "Traffic figures"),
    ),
)]
struct NativeApi;

/// The API's OpenAPI document, as JSON.
pub fn openapi_document() -> String {
    NativeApi::openapi()
        .to_pretty_json()
        .expect("an OpenAPI document always serializes")
}

/// `GET /openapi.json`, open to everyone like the probes.
pub(super) fn routes() -> impl Filter<Extract = (WarpResponse,), Error = warp::Rejection> + Clone {
    let document = openapi_document();
    endpoint!(Probe GET "openapi.json").map(move || {
        warp::reply::with_header(document.clone(), CONTENT_TYPE, "application/json").into_response()
    })
}

/// Adds what each route answers by virtue of its family and its shape (see the module
/// docs), the two ways to present a key, and one operation id per method.
struct SharedAnswers;

impl Modify for SharedAnswers {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            API_KEY_SCHEME,
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-Api-Key"))),
        );
        components.add_security_scheme(
            BEARER_SCHEME,
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        let mut operation_ids = Vec::new();
        for (path, item) in openapi.paths.paths.iter_mut() {
            for (method, operation) in operations(item) {
                let family = family_of(method, path);
                add_shared_answers(operation, family);
                // A handler serving two methods (PATCH and PUT) describes both with its
                // one id; ids must be unique, so the second gets its method appended.
                if let Some(id) = &mut operation.operation_id {
                    if operation_ids.contains(id) {
                        *id = format!("{id}_{}", method.to_ascii_lowercase());
                    }
                    operation_ids.push(id.clone());
                }
            }
        }
    }
}

const API_KEY_SCHEME: &str = "api_key";
const BEARER_SCHEME: &str = "bearer";

/// The operations of a path, with their methods as the route table writes them.
fn operations(item: &mut PathItem) -> impl Iterator<Item = (&'static str, &mut Operation)> {
    [
        ("GET", &mut item.get),
        ("PUT", &mut item.put),
        ("POST", &mut item.post),
        ("DELETE", &mut item.delete),
        ("PATCH", &mut item.patch),
    ]
    .into_iter()
    .filter_map(|(method, operation)| operation.as_mut().map(|operation| (method, operation)))
}

/// The family the route table gives this route; `None` for a documented route the table
/// does not list, which the tests refuse.
fn family_of(method: &str, path: &str) -> Option<Family> {
    let mut table_path = String::with_capacity(path.len());
    let mut in_parameter = false;
    for c in path.chars() {
        match c {
            '{' => {
                in_parameter = true;
                table_path.push_str("{}");
            }
            '}' => in_parameter = false,
            _ if in_parameter => {}
            _ => table_path.push(c),
        }
    }
    ENDPOINTS
        .iter()
        .find(|endpoint| endpoint.method == method && endpoint.path == table_path)
        .map(|endpoint| endpoint.family)
}

fn add_shared_answers(operation: &mut Operation, family: Option<Family>) {
    let mut bad_request = Vec::new();
    if family.is_some_and(Family::needs_key) {
        operation.security = Some(vec![
            SecurityRequirement::new(API_KEY_SCHEME, Vec::<String>::new()),
            SecurityRequirement::new(BEARER_SCHEME, Vec::<String>::new()),
        ]);
        add_error(
            operation,
            "401",
            "`unauthorized`: no API key, or one that is unknown or revoked",
        );
        bad_request.push(
            "`invalid_header`: an `X-Api-Key` or `Authorization` header that is not visible ASCII",
        );
    }
    let parameters = operation.parameters.iter().flatten();
    let in_path = parameters.clone().any(|parameter| {
        matches!(
            parameter.parameter_in,
            utoipa::openapi::path::ParameterIn::Path
        )
    });
    let in_query = parameters.clone().any(|parameter| {
        matches!(
            parameter.parameter_in,
            utoipa::openapi::path::ParameterIn::Query
        )
    });
    if in_path {
        bad_request
            .push("`invalid_id` (`invalid_rule_id` for a rule): a path id of the wrong form");
    }
    if in_query {
        bad_request.push("`invalid_query` or a parameter's own code, naming the parameter");
    }
    if operation.request_body.is_some() {
        bad_request.push("`invalid_json` or a field's own code, naming the field");
        add_error(
            operation,
            "408",
            "`request_timeout`: the body did not arrive in time",
        );
        add_error(
            operation,
            "413",
            "`payload_too_large`: the body is over 64 KiB",
        );
        add_error(
            operation,
            "415",
            "`unsupported_media_type`: a body that is not declared JSON",
        );
    }
    if !bad_request.is_empty() {
        add_error(operation, "400", &bad_request.join("; "));
    }
    add_error(operation, "500", "`internal_error`: logged with its cause");
    add_error(
        operation,
        "503",
        "`service_unavailable`: Postgres or RabbitMQ cannot be reached; nothing was changed",
    );
    // Every 429 and 503 says when to try again (`ApiError::retry_after`).
    for (status, response) in &mut operation.responses.responses {
        if let ("429" | "503", RefOr::T(response)) = (status.as_str(), response) {
            response.headers.insert(
                "Retry-After".to_owned(),
                HeaderBuilder::new()
                    .schema(utoipa::openapi::ObjectBuilder::new().schema_type(Type::Integer))
                    .description(Some("Seconds to wait before retrying"))
                    .build(),
            );
        }
    }
}

/// Adds an error answer in the native shape; a status the handler already documents keeps
/// its description, with this one appended.
fn add_error(operation: &mut Operation, status: &str, description: &str) {
    match operation.responses.responses.get_mut(status) {
        Some(RefOr::T(response)) => {
            response.description = format!("{}; {description}", response.description);
        }
        Some(RefOr::Ref(_)) => {}
        None => {
            operation
                .responses
                .responses
                .insert(status.to_owned(), RefOr::T(error_response(description)));
        }
    }
}

fn error_response(description: &str) -> Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(Ref::from_schema_name("Error")))
                .build(),
        )
        .build()
}
