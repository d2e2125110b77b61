//! The HTTP surface: native `/v1` routes, PortaText-compatible routes and health probes.
//! Each resource module builds its filters; this module combines them and adds request
//! logging and the rejection handler for routing failures.

mod health;
mod portatext;
mod templates;
mod verifications;

use warp::Filter;
use warp::reply::{Reply, Response};

use crate::error::{ApiError, handle_rejection};
use crate::state::AppState;

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Every route of the API.
pub fn routes(
    state: AppState,
) -> impl Filter<Extract = (impl Reply,), Error = std::convert::Infallible> + Clone {
    health::routes(state.clone())
        .or(verifications::routes(state.clone()))
        .unify()
        .or(templates::routes(state.clone()))
        .unify()
        .or(portatext::routes(state))
        .unify()
        .recover(handle_rejection)
        .unify()
        .with(warp::log::custom(log_request))
}

/// Turns a handler's result into a response.
pub fn respond<T: Reply>(result: Result<T, ApiError>) -> Response {
    match result {
        Ok(reply) => reply.into_response(),
        Err(error) => error.into_response(),
    }
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
