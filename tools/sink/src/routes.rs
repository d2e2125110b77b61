//! The HTTP surface: which path and method reach which handler, plus the small
//! inspection and control endpoints that need no module of their own.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use serde::Serialize;
use serde_json::json;
use warp::http::{HeaderValue, StatusCode};
use warp::reply::Response;
use warp::{Filter, Rejection};

use crate::body::{self, BodyError};
use crate::faults::{ControlUpdate, FaultSettings};
use crate::number;
use crate::provider::Provider;
use crate::receipts::Receipts;
use crate::reply;
use crate::twilio::{self, Credentials};
use crate::webhooks::{self as inbox, InboxControl, WebhookInbox};

/// Everything the handlers share.
#[derive(Debug)]
pub(crate) struct AppState {
    pub(crate) provider: Arc<Provider>,
    pub(crate) twilio: Arc<Credentials>,
    pub(crate) receipts: Arc<Receipts>,
    pub(crate) webhooks: Arc<WebhookInbox>,
}

/// The whole service. Every answer with a body is JSON: unmatched paths and methods are
/// turned into JSON errors too, so clients never have to parse warp's plain-text ones.
pub(crate) fn all(
    state: Arc<AppState>,
) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone + Send + Sync + 'static {
    let provider = {
        let provider = Arc::clone(&state.provider);
        warp::any().map(move || Arc::clone(&provider))
    };
    let credentials = {
        let credentials = Arc::clone(&state.twilio);
        warp::any().map(move || Arc::clone(&credentials))
    };
    let receipts = {
        let receipts = Arc::clone(&state.receipts);
        warp::any().map(move || Arc::clone(&receipts))
    };

    let twilio_send = warp::path!("2010-04-01" / "Accounts" / String / "Messages.json")
        .and(warp::post())
        .and(provider.clone())
        .and(credentials)
        .and(receipts.clone())
        .and(authorization())
        .and(body::limited(body::LIMIT))
        .then(twilio::send);

    let generic_send = warp::path!("send")
        .and(warp::post())
        .and(provider.clone())
        .and(receipts.clone())
        .and(body::limited(body::LIMIT))
        .then(crate::generic::send);

    let list_messages = warp::path!("messages")
        .and(warp::get())
        .and(provider.clone())
        .and(raw_query())
        .then(list_messages);

    let clear_messages = warp::path!("messages")
        .and(warp::delete())
        .and(provider.clone())
        .then(clear_messages);

    let healthz = warp::path!("healthz")
        .and(warp::get())
        .then(|| async { reply::json(StatusCode::OK, &json!({ "status": "ok" })) });

    let get_control = warp::path!("control")
        .and(warp::get())
        .and(provider.clone())
        .and(receipts.clone())
        .then(get_control);

    let put_control = warp::path!("control")
        .and(warp::put())
        .and(provider.clone())
        .and(receipts.clone())
        .and(body::limited(body::LIMIT))
        .then(put_control);

    let stats = warp::path!("stats")
        .and(warp::get())
        .and(provider)
        .and(receipts)
        .then(stats);

    let webhooks = {
        let webhooks = Arc::clone(&state.webhooks);
        warp::any().map(move || Arc::clone(&webhooks))
    };
    let receive_webhook = warp::path!("webhooks")
        .and(warp::post())
        .and(webhooks.clone())
        .and(optional_header("webhook-id"))
        .and(optional_header("webhook-timestamp"))
        .and(optional_header("webhook-signature"))
        .and(body::limited(body::LIMIT))
        .then(receive_webhook);
    let webhook_stats = warp::path!("webhooks" / "stats")
        .and(warp::get())
        .and(webhooks.clone())
        .map(|webhooks: Arc<WebhookInbox>| reply::json(StatusCode::OK, &webhooks.stats()));
    let webhook_control = warp::path!("webhooks" / "control")
        .and(warp::put())
        .and(webhooks)
        .and(body::limited(body::LIMIT))
        .then(control_webhooks);

    // Each group is boxed: one chain of every route nests deeply enough to overflow the
    // compiler's recursion limit in release builds.
    let sends = twilio_send.or(generic_send).unify().boxed();
    let inspection = list_messages
        .or(clear_messages)
        .unify()
        .or(healthz)
        .unify()
        .or(get_control)
        .unify()
        .or(put_control)
        .unify()
        .or(stats)
        .unify()
        .boxed();
    let webhooks = receive_webhook
        .or(webhook_stats)
        .unify()
        .or(webhook_control)
        .unify()
        .boxed();
    sends
        .or(inspection)
        .unify()
        .or(webhooks)
        .unify()
        .recover(rejection_to_json)
        .unify()
}

/// The `Authorization` header if it is readable text. An unreadable one counts as absent
/// so the Twilio route answers its own 401 rather than a generic 400.
fn authorization() -> impl Filter<Extract = (Option<String>,), Error = Infallible> + Clone {
    warp::header::value("authorization")
        .map(|value: HeaderValue| value.to_str().ok().map(str::to_owned))
        .or(warp::any().map(|| None))
        .unify()
}

/// A header's value if present and readable text.
fn optional_header(
    name: &'static str,
) -> impl Filter<Extract = (Option<String>,), Error = Infallible> + Clone {
    warp::header::optional::<String>(name)
        .or(warp::any().map(|| None))
        .unify()
}

/// The query string, or an empty one: warp rejects a missing query string, but
/// "no filter" is a perfectly good request here.
fn raw_query() -> impl Filter<Extract = (String,), Error = Infallible> + Clone {
    warp::query::raw().or(warp::any().map(String::new)).unify()
}

async fn list_messages(provider: Arc<Provider>, query: String) -> Response {
    let Ok(params) = serde_urlencoded::from_str::<Vec<(String, String)>>(&query) else {
        return reply::error(StatusCode::BAD_REQUEST, "malformed query string");
    };
    // A `to` that is empty once normalised (`?to=` or `?to=+`) filters nothing, rather than
    // matching nothing, which would look like "no messages yet" to a polling test.
    let to = params
        .iter()
        .find(|(key, value)| key == "to" && !number::normalise(value).is_empty())
        .map(|(_, value)| value.as_str());
    let messages = match to {
        Some(number) => provider.log.to(number),
        None => provider.log.all(),
    };
    reply::json(StatusCode::OK, &messages)
}

async fn clear_messages(provider: Arc<Provider>) -> Response {
    provider.log.clear();
    warp::Reply::into_response(StatusCode::NO_CONTENT)
}

/// `GET /control` and `PUT /control` answer the same document.
#[derive(Serialize)]
struct ControlView {
    #[serde(flatten)]
    settings: FaultSettings,
    fail_first_remaining: u64,
    receipt_delay_ms: u64,
}

fn control_view(provider: &Provider, receipts: &Receipts, settings: FaultSettings) -> Response {
    reply::json(
        StatusCode::OK,
        &ControlView {
            settings,
            fail_first_remaining: provider.faults.fail_first_remaining(),
            receipt_delay_ms: receipts.delay_ms(),
        },
    )
}

async fn get_control(provider: Arc<Provider>, receipts: Arc<Receipts>) -> Response {
    control_view(&provider, &receipts, provider.faults.current())
}

async fn put_control(
    provider: Arc<Provider>,
    receipts: Arc<Receipts>,
    body: Result<Bytes, BodyError>,
) -> Response {
    let body = match body {
        Ok(body) => body,
        Err(e) => return reply::error(e.status(), e.to_string()),
    };
    let update = match ControlUpdate::parse(&body) {
        Ok(update) => update,
        Err(e) => return reply::error(StatusCode::BAD_REQUEST, e.to_string()),
    };
    let settings = provider.faults.apply(&update);
    if let Some(delay_ms) = update.receipt_delay_ms {
        receipts.set_delay_ms(delay_ms);
    }
    // At info because a chaos run's log should show when each outage window opened.
    tracing::info!(
        ?settings,
        receipt_delay_ms = receipts.delay_ms(),
        "failure injection changed"
    );
    control_view(&provider, &receipts, settings)
}

/// The send counters, and the receipt counters under `receipts`.
#[derive(Serialize)]
struct StatsView {
    #[serde(flatten)]
    sends: crate::provider::StatsSnapshot,
    receipts: crate::receipts::ReceiptStatsSnapshot,
}

async fn stats(provider: Arc<Provider>, receipts: Arc<Receipts>) -> Response {
    reply::json(
        StatusCode::OK,
        &StatsView {
            sends: provider.stats.snapshot(),
            receipts: receipts.snapshot(),
        },
    )
}

async fn receive_webhook(
    webhooks: Arc<WebhookInbox>,
    id: Option<String>,
    timestamp: Option<String>,
    signature: Option<String>,
    body: Result<Bytes, BodyError>,
) -> Response {
    let body = match body {
        Ok(body) => body,
        Err(e) => return reply::error(e.status(), e.to_string()),
    };
    let delivery = inbox::Delivery {
        id: id.as_deref(),
        timestamp: timestamp.as_deref(),
        signature: signature.as_deref(),
    };
    match webhooks.receive(&delivery, &body) {
        inbox::Answer::Accepted => warp::Reply::into_response(StatusCode::NO_CONTENT),
        inbox::Answer::Down => reply::error(
            StatusCode::SERVICE_UNAVAILABLE,
            "this webhook endpoint is down",
        ),
        inbox::Answer::BadSignature => reply::error(
            StatusCode::UNAUTHORIZED,
            "webhook-signature is missing or does not match the secret",
        ),
    }
}

async fn control_webhooks(webhooks: Arc<WebhookInbox>, body: Result<Bytes, BodyError>) -> Response {
    let body = match body {
        Ok(body) => body,
        Err(e) => return reply::error(e.status(), e.to_string()),
    };
    match InboxControl::parse(&body) {
        Ok(control) => {
            let stats = webhooks.apply(control);
            // At info because a chaos run's log should show when the endpoint went down.
            tracing::info!(
                down = stats.down,
                checking_signatures = stats.checking_signatures,
                "webhook endpoint changed"
            );
            reply::json(StatusCode::OK, &stats)
        }
        Err(e) => reply::error(StatusCode::BAD_REQUEST, e.to_string()),
    }
}

async fn rejection_to_json(rejection: Rejection) -> Result<Response, Infallible> {
    let (status, message) = if rejection.is_not_found() {
        (StatusCode::NOT_FOUND, "no such endpoint")
    } else if rejection.find::<warp::reject::MethodNotAllowed>().is_some() {
        (StatusCode::METHOD_NOT_ALLOWED, "method not allowed")
    } else if rejection.find::<warp::reject::InvalidHeader>().is_some() {
        (StatusCode::BAD_REQUEST, "malformed header")
    } else {
        (StatusCode::BAD_REQUEST, "bad request")
    };
    Ok(reply::error(status, message))
}
