//! `ApiError`: the only error handlers return, and how every failure becomes a response.
//!
//! Each variant has an HTTP status and a stable machine `code` that clients can match on.
//! The body is `{"error": {"code", "message", "field"}}`. Internal errors are answered
//! opaquely; whoever turns an error into a response calls [`ApiError::log`] once, so
//! internal errors reach the log with their whole cause chain. This module depends on no
//! other module of the crate.

use std::convert::Infallible;
use std::time::Duration;

use serde::Serialize;
use utoipa::ToSchema;
use verify_common::db::DbError;
use verify_common::domain::abuse::{BlockScope, Refusal, RefusalReason, RuleId};
use verify_common::queue::QueueError;
use warp::http::{HeaderValue, StatusCode};
use warp::reply::{Reply, Response};

/// Seconds a client should wait before retrying after a 503.
const UNAVAILABLE_RETRY_AFTER: Duration = Duration::from_secs(2);

/// Every failure the API reports.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ApiError {
    /// The body is not JSON, or JSON of the wrong shape.
    #[error("{message}")]
    InvalidJson {
        message: String,
        field: Option<String>,
    },
    /// A field has an unacceptable value.
    #[error("{message}")]
    InvalidField {
        code: &'static str,
        field: String,
        message: String,
    },
    /// A header is present but unusable (not visible ASCII, or not of its form).
    #[error("{message}")]
    InvalidHeader {
        code: &'static str,
        header: String,
        message: String,
    },
    /// The query string cannot be read.
    #[error("{message}")]
    InvalidQuery { message: String },
    #[error("{0}")]
    Unauthorized(&'static str),
    /// The caller proved who it is, wrongly: a provider callback whose signature or token
    /// does not match, or a callback route this deployment has no secret for.
    #[error("{message}")]
    Forbidden { code: &'static str, message: String },
    #[error("{what} not found")]
    NotFound {
        code: &'static str,
        what: &'static str,
    },
    #[error("no route matches this path")]
    RouteNotFound,
    #[error("this path does not accept that method")]
    MethodNotAllowed,
    #[error("the request body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    /// The body did not arrive in time after the request's head.
    #[error("the request body did not arrive within {} s", .after.as_secs())]
    BodyTimedOut { after: Duration },
    #[error("send JSON with Content-Type: application/json")]
    UnsupportedMediaType,
    /// The request is well-formed, but what it asks for is refused: it contradicts an
    /// earlier one, or its text could not be sent as it is.
    #[error("{message}")]
    Unprocessable {
        code: &'static str,
        field: String,
        message: String,
    },
    /// An abuse rule in enforce mode refused the request: nothing was recorded or sent.
    #[error("{0}")]
    Refused(Refusal),
    /// A velocity limit in enforce mode refused the send: too many were made recently in
    /// the rule's scope. Nothing was recorded or sent.
    #[error("too many codes were sent to {} recently (rule {rule}); retry later", whom(*scope))]
    VelocityLimited {
        rule: RuleId,
        scope: BlockScope,
        retry_after: Duration,
    },
    /// The request is valid but the resource's state does not allow it.
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    #[error("{message}")]
    TooManyRequests {
        code: &'static str,
        message: String,
        retry_after: Duration,
    },
    /// Postgres or RabbitMQ cannot be reached; the request changed nothing durable.
    #[error("the service is temporarily unavailable: {0}")]
    Unavailable(String),
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

/// Who a velocity limit counted, for the refusal's message.
fn whom(scope: BlockScope) -> &'static str {
    match scope {
        BlockScope::Number => "this number",
        BlockScope::Prefix => "this number's range",
        BlockScope::Country => "this country",
        BlockScope::ClientIp => "this client address",
        BlockScope::Network => "this client network",
        BlockScope::ClientId => "this client",
        BlockScope::ApiKey => "this API key's requests",
        BlockScope::Global => "all numbers",
    }
}

impl ApiError {
    /// A field-level validation error.
    pub(crate) fn invalid(
        code: &'static str,
        field: impl Into<String>,
        message: impl ToString,
    ) -> Self {
        Self::InvalidField {
            code,
            field: field.into(),
            message: message.to_string(),
        }
    }

    /// A 422 about a field.
    pub(crate) fn unprocessable(
        code: &'static str,
        field: impl Into<String>,
        message: impl ToString,
    ) -> Self {
        Self::Unprocessable {
            code,
            field: field.into(),
            message: message.to_string(),
        }
    }

    /// A header that is present but cannot be read as visible ASCII text. It is refused,
    /// never taken for absent, so a client learns its header was not understood.
    pub(crate) fn unreadable_header(code: &'static str, header: &'static str) -> Self {
        Self::InvalidHeader {
            code,
            header: header.to_owned(),
            message: format!("the {header} header must be visible ASCII text"),
        }
    }

    /// The HTTP status.
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            Self::InvalidJson { .. }
            | Self::InvalidField { .. }
            | Self::InvalidHeader { .. }
            | Self::InvalidQuery { .. } => StatusCode::BAD_REQUEST,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden { .. } => StatusCode::FORBIDDEN,
            Self::NotFound { .. } | Self::RouteNotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BodyTimedOut { .. } => StatusCode::REQUEST_TIMEOUT,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Conflict { .. } => StatusCode::CONFLICT,
            Self::Refused(refusal) => match refusal.reason {
                RefusalReason::NumberType(_) => StatusCode::UNPROCESSABLE_ENTITY,
                RefusalReason::Country(_) => StatusCode::FORBIDDEN,
                // Waiting helps: the block has an end.
                RefusalReason::Blocked { .. } => StatusCode::TOO_MANY_REQUESTS,
            },
            Self::Unprocessable { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::TooManyRequests { .. } | Self::VelocityLimited { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable machine-readable code.
    pub(crate) fn code(&self) -> &'static str {
        match self {
            Self::InvalidJson { .. } => "invalid_json",
            Self::InvalidField { code, .. }
            | Self::InvalidHeader { code, .. }
            | Self::NotFound { code, .. }
            | Self::Conflict { code, .. }
            | Self::Forbidden { code, .. }
            | Self::Unprocessable { code, .. }
            | Self::TooManyRequests { code, .. } => code,
            Self::InvalidQuery { .. } => "invalid_query",
            Self::VelocityLimited { .. } => "velocity_limited",
            Self::Refused(refusal) => match refusal.reason {
                RefusalReason::NumberType(_) => "number_type_blocked",
                RefusalReason::Country(_) => "country_blocked",
                RefusalReason::Blocked {
                    scope: BlockScope::Number,
                    ..
                } => "number_locked",
                RefusalReason::Blocked { .. } => "destination_blocked",
            },
            Self::Unauthorized(_) => "unauthorized",
            Self::RouteNotFound => "route_not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::PayloadTooLarge { .. } => "payload_too_large",
            Self::BodyTimedOut { .. } => "request_timeout",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::Unavailable(_) => "service_unavailable",
            Self::Internal(_) => "internal_error",
        }
    }

    /// The field the error is about, if any.
    pub(crate) fn field(&self) -> Option<&str> {
        match self {
            Self::InvalidJson { field, .. } => field.as_deref(),
            Self::InvalidField { field, .. } => Some(field),
            Self::InvalidHeader { header, .. } => Some(header),
            Self::Unprocessable { field, .. } => Some(field),
            _ => None,
        }
    }

    /// What else the answer says about the error, beside its code and message: for a
    /// refusal, the rule (`rule`) and what it judged (`number_type`, `country`, or the
    /// `scope` of a block: `number`, `prefix`, `country`); for a velocity limit, the rule
    /// and its `scope`.
    pub(crate) fn details(&self) -> Vec<(&'static str, String)> {
        match self {
            Self::Refused(refusal) => {
                let judged = match refusal.reason {
                    RefusalReason::NumberType(kind) => ("number_type", kind.to_string()),
                    RefusalReason::Country(region) => ("country", region.to_string()),
                    RefusalReason::Blocked { scope, .. } => ("scope", scope.to_string()),
                };
                vec![("rule", refusal.rule.to_string()), judged]
            }
            Self::VelocityLimited { rule, scope, .. } => {
                vec![("rule", rule.to_string()), ("scope", scope.to_string())]
            }
            _ => Vec::new(),
        }
    }

    /// How long to wait before retrying, for 429 and 503.
    pub(crate) fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::TooManyRequests { retry_after, .. }
            | Self::VelocityLimited { retry_after, .. } => Some(*retry_after),
            Self::Refused(Refusal {
                reason: RefusalReason::Blocked { until, .. },
                ..
            }) => Some(
                (*until - chrono::Utc::now())
                    .to_std()
                    .unwrap_or(Duration::from_secs(1)),
            ),
            Self::Unavailable(_) => Some(UNAVAILABLE_RETRY_AFTER),
            _ => None,
        }
    }

    /// The message shown to clients; internal details stay in the log.
    pub(crate) fn public_message(&self) -> String {
        match self {
            Self::Internal(_) => "internal error".to_owned(),
            Self::Unavailable(_) => {
                "the service is temporarily unavailable; retry shortly".to_owned()
            }
            other => other.to_string(),
        }
    }

    /// Writes the error to the log if it is the server's fault or a dependency's: internal
    /// errors with their cause chain, outages as warnings. Client mistakes are not logged
    /// (their answer says everything). Call it once, where the error becomes a response.
    pub(crate) fn log(&self) {
        match self {
            Self::Internal(error) => tracing::error!(error = ?error, "request failed"),
            Self::Unavailable(reason) => tracing::warn!(%reason, "dependency unavailable"),
            _ => {}
        }
    }
}

impl From<DbError> for ApiError {
    fn from(error: DbError) -> Self {
        match error {
            DbError::Unavailable(reason) => Self::Unavailable(format!("Postgres: {reason}")),
            other => Self::Internal(other.into()),
        }
    }
}

impl From<QueueError> for ApiError {
    fn from(error: QueueError) -> Self {
        Self::Unavailable(format!("RabbitMQ: {error}"))
    }
}

/// The native error answer: `{"error": {code, message, field}}`.
#[derive(Serialize, ToSchema)]
#[schema(as = Error)]
pub(crate) struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

/// What went wrong. Refusals by the abuse rules also name the `rule` and what it judged
/// (`number_type`, `country`, or the `scope` of a block or velocity limit).
#[derive(Serialize, ToSchema)]
struct ErrorDetail<'a> {
    /// Stable and machine-readable: match on this, not on the message.
    code: &'a str,
    message: String,
    /// The body field, query parameter or header the error is about.
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
    #[serde(flatten)]
    details: std::collections::BTreeMap<&'static str, String>,
}

/// Adds `Retry-After` (whole seconds, at least 1) when the error has one.
pub(crate) fn with_retry_after(mut response: Response, retry_after: Option<Duration>) -> Response {
    if let Some(wait) = retry_after {
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        if let Ok(value) = HeaderValue::from_str(&secs.max(1).to_string()) {
            response.headers_mut().insert("retry-after", value);
        }
    }
    response
}

impl ApiError {
    /// The error's JSON answer, with `Retry-After` for 429 and 503. It logs nothing: see
    /// [`ApiError::log`].
    pub(crate) fn to_response(&self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code(),
                message: self.public_message(),
                field: self.field(),
                details: self.details().into_iter().collect(),
            },
        };
        let response =
            warp::reply::with_status(warp::reply::json(&body), self.status()).into_response();
        with_retry_after(response, self.retry_after())
    }
}

/// Turns routing failures (no route, wrong method, a request warp itself could not read)
/// into the same JSON shape as handler errors. Handler and extractor errors never get
/// here: each route family answers those in its own shape. A rejection of a kind not
/// listed is a defect of the routes, so it is logged and answered as an internal error.
pub(crate) async fn handle_rejection(rejection: warp::Rejection) -> Result<Response, Infallible> {
    let error = if rejection.is_not_found() {
        ApiError::RouteNotFound
    } else if rejection.find::<warp::reject::MethodNotAllowed>().is_some() {
        ApiError::MethodNotAllowed
    } else if rejection
        .find::<warp::reject::UnsupportedMediaType>()
        .is_some()
    {
        ApiError::UnsupportedMediaType
    } else if let Some(e) = rejection.find::<warp::reject::InvalidHeader>() {
        ApiError::InvalidHeader {
            code: "invalid_header",
            header: e.name().to_owned(),
            message: e.to_string(),
        }
    } else if let Some(e) = rejection.find::<warp::reject::MissingHeader>() {
        ApiError::InvalidHeader {
            code: "missing_header",
            header: e.name().to_owned(),
            message: e.to_string(),
        }
    } else if let Some(e) = rejection.find::<warp::reject::InvalidQuery>() {
        ApiError::InvalidQuery {
            message: format!("the query string cannot be read: {e}"),
        }
    } else {
        ApiError::Internal(anyhow::anyhow!("unhandled rejection: {rejection:?}"))
    };
    error.log();
    let status = error.status();
    let retry_after = error.retry_after();
    // Routing failures also carry PortaText's error fields, because their paths cannot be
    // told apart here and PortaText SDKs read `success` and `error_description`.
    let mut body = serde_json::json!({
        "success": false,
        "error_description": [error.public_message()],
        "error": {"code": error.code(), "message": error.public_message()},
    });
    if let Some(field) = error.field() {
        body["error"]["field"] = serde_json::Value::from(field);
    }
    let response = warp::reply::with_status(warp::reply::json(&body), status).into_response();
    Ok(with_retry_after(response, retry_after))
}
