//! Managing webhook endpoints: create (with its secret, shown once), list, read, change,
//! delete; and the check that refuses destinations on internal addresses (SSRF).

use verify_common::db::webhooks::{self, EndpointChange, EndpointRecord};
use verify_common::domain::webhook::is_public_address;
use verify_common::domain::{WebhookError, WebhookEvent, WebhookSecret, WebhookUrl};

use crate::error::ApiError;
use crate::state::AppState;
use crate::views::WebhookView;

fn not_found() -> ApiError {
    ApiError::NotFound {
        code: "webhook_not_found",
        what: "webhook",
    }
}

/// Reads an endpoint's URL.
///
/// # Errors
/// 400 `invalid_url` naming `url`.
pub(crate) fn parse_url(raw: &str) -> Result<WebhookUrl, ApiError> {
    WebhookUrl::parse(raw).map_err(|e| ApiError::invalid("invalid_url", "url", e))
}

/// Reads a list of event names: at least one, each known, each once.
///
/// # Errors
/// 400 `invalid_events` naming `events` (and the unknown name).
pub(crate) fn parse_events(names: &[String]) -> Result<Vec<WebhookEvent>, ApiError> {
    if names.is_empty() {
        return Err(ApiError::invalid(
            "invalid_events",
            "events",
            WebhookError::NoEvents,
        ));
    }
    let mut events = Vec::with_capacity(names.len());
    for name in names {
        let event = WebhookEvent::parse(name)
            .map_err(|e| ApiError::invalid("invalid_events", "events", e))?;
        if !events.contains(&event) {
            events.push(event);
        }
    }
    Ok(events)
}

/// Refuses a destination whose host is, or resolves to, an internal address, unless the
/// deployment allows them. Every address the name has must be public: a name with one
/// internal address among public ones could be reached inward.
///
/// # Errors
/// 422 `webhook_destination_refused` naming `url`; 422 `webhook_unresolvable` when the
/// name has no address.
async fn check_destination(state: &AppState, url: &WebhookUrl) -> Result<(), ApiError> {
    if state.webhooks_allow_private {
        return Ok(());
    }
    let refused = |detail: String| {
        ApiError::unprocessable(
            "webhook_destination_refused",
            "url",
            format!("webhooks cannot be sent to internal addresses: {detail}"),
        )
    };
    if let Some(ip) = url.literal_ip() {
        return if is_public_address(ip) {
            Ok(())
        } else {
            Err(refused(format!("{ip} is internal")))
        };
    }
    let (host, port) = url.host_and_port();
    let addresses: Vec<_> = tokio::net::lookup_host((host.as_str(), port))
        .await
        .map_err(|e| {
            ApiError::unprocessable(
                "webhook_unresolvable",
                "url",
                format!("{host} cannot be resolved: {e}"),
            )
        })?
        .collect();
    match addresses
        .iter()
        .find(|address| !is_public_address(address.ip()))
    {
        Some(internal) => Err(refused(format!("{host} resolves to {}", internal.ip()))),
        None if addresses.is_empty() => Err(ApiError::unprocessable(
            "webhook_unresolvable",
            "url",
            format!("{host} has no address"),
        )),
        None => Ok(()),
    }
}

/// Creates an endpoint; the answer is the only one that shows its secret.
///
/// # Errors
/// 422 for a refused destination; 503 when Postgres is down.
pub(crate) async fn create(
    state: &AppState,
    url: WebhookUrl,
    events: Vec<WebhookEvent>,
) -> Result<WebhookView, ApiError> {
    check_destination(state, &url).await?;
    let secret = WebhookSecret::generate().map_err(|e| ApiError::Internal(e.into()))?;
    let record = webhooks::insert_endpoint(&state.pool, &url, &events, &secret).await?;
    tracing::info!(webhook = record.id, "webhook endpoint created");
    Ok(WebhookView::new(&record, Some(secret.expose())))
}

/// Every endpoint.
///
/// # Errors
/// 503 when Postgres is down.
pub(crate) async fn list(state: &AppState) -> Result<Vec<WebhookView>, ApiError> {
    Ok(webhooks::list_endpoints(&state.pool)
        .await?
        .iter()
        .map(|record| WebhookView::new(record, None))
        .collect())
}

/// One endpoint.
///
/// # Errors
/// 404 `webhook_not_found`; 503 when Postgres is down.
pub(crate) async fn find(state: &AppState, id: i64) -> Result<WebhookView, ApiError> {
    let record: EndpointRecord = webhooks::find_endpoint(&state.pool, id)
        .await?
        .ok_or_else(not_found)?;
    Ok(WebhookView::new(&record, None))
}

/// Changes an endpoint's URL, events or whether it is enabled.
///
/// # Errors
/// 404 `webhook_not_found`, 422 for a refused destination; 503 when Postgres is down.
pub(crate) async fn update(
    state: &AppState,
    id: i64,
    change: EndpointChange,
) -> Result<WebhookView, ApiError> {
    if let Some(url) = &change.url {
        check_destination(state, url).await?;
    }
    let record = webhooks::update_endpoint(&state.pool, id, &change)
        .await?
        .ok_or_else(not_found)?;
    Ok(WebhookView::new(&record, None))
}

/// Deletes an endpoint and what was still to be delivered to it.
///
/// # Errors
/// 404 `webhook_not_found`; 503 when Postgres is down.
pub(crate) async fn delete(state: &AppState, id: i64) -> Result<(), ApiError> {
    if webhooks::delete_endpoint(&state.pool, id).await? {
        Ok(())
    } else {
        Err(not_found())
    }
}
