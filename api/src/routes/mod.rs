//! The HTTP surface: native `/v1` routes, PortaText-compatible routes and health probes.
//!
//! - `table`: every route ([`ENDPOINTS`]) and `endpoint!`, which declares them.
//! - `extract`: the extractors every family shares (caller, bodies, `Idempotency-Key`,
//!   ids); handlers take a `Caller`, so no handler can be reached without one.
//! - `native`: the `/v1` answer shape; `verifications`, `templates`, `abuse` (rules,
//!   allow list, blocks), `webhooks` (producers' endpoints) and `stats` (traffic
//!   figures from rollups) are its routes.
//! - `portatext`: PortaText's routes and answer shape; `health`: the probes;
//!   `metrics`: the Prometheus scrape; `openapi`: the native API's OpenAPI document,
//!   derived from the routes' types.
//! - `receipts`: providers' delivery receipts, authenticated by the provider's signature
//!   or token instead of an API key.
//!
//! This module combines the families, answers each family's refusals in its own error
//! shape, and adds request logging and the handler for routing failures.

#[macro_use]
mod table;

mod abuse;
mod extract;
mod health;
mod metrics;
mod native;
mod openapi;
mod portatext;
mod receipts;
mod stats;
mod templates;
mod verifications;
mod webhooks;

use std::sync::Arc;

use warp::Filter;
use warp::reply::Reply;

pub use openapi::openapi_document;
pub use table::{ENDPOINTS, Endpoint, Family};

use crate::error::handle_rejection;
use crate::state::AppState;

/// Every route of the API.
pub(crate) fn routes(
    state: AppState,
) -> impl Filter<Extract = (impl Reply,), Error = std::convert::Infallible> + Clone {
    let counted = Arc::clone(&state.metrics);
    let native = verifications::routes(state.clone())
        .or(templates::routes(state.clone()))
        .unify()
        .or(abuse::routes(state.clone()))
        .unify()
        .or(receipts::routes(state.clone()))
        .unify()
        .or(webhooks::routes(state.clone()))
        .unify()
        .or(stats::routes(state.clone()))
        .unify();
    health::routes(state.clone())
        .or(metrics::routes(Arc::clone(&state.metrics)))
        .unify()
        .or(openapi::routes())
        .unify()
        .or(extract::answering_refusals(native, native::error_response))
        .unify()
        .or(extract::answering_refusals(
            portatext::routes(state),
            portatext::error_response,
        ))
        .unify()
        .recover(handle_rejection)
        .unify()
        .with(warp::log::custom(log_request))
        .with(warp::log::custom(move |info: warp::log::Info<'_>| {
            counted.request(info.method(), info.path(), info.status(), info.elapsed());
        }))
}

fn log_request(info: warp::log::Info<'_>) {
    tracing::debug!(
        method = %info.method(),
        path = %mask_digits(info.path()),
        status = info.status().as_u16(),
        elapsed_ms = info.elapsed().as_secs_f64() * 1000.0,
        "request"
    );
}

/// Masks long digit runs (phone numbers in PortaText paths) for logs.
fn mask_digits(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut run = String::new();
    let flush = |run: &mut String, out: &mut String| {
        if run.len() >= 7 {
            out.push_str(&verify_common::domain::phone_number::mask(run));
        } else {
            out.push_str(run);
        }
        run.clear();
    };
    for c in path.chars() {
        if c.is_ascii_digit() {
            run.push(c);
        } else {
            flush(&mut run, &mut out);
            out.push(c);
        }
    }
    flush(&mut run, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::mask_digits;

    #[test]
    fn phone_numbers_in_paths_are_masked_for_logs() {
        assert_eq!(
            mask_digits("/number_verify/14155550100"),
            "/number_verify/1415*****00"
        );
        assert_eq!(mask_digits("/templates/42"), "/templates/42");
    }
}
