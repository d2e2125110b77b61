//! Each request's W3C trace: read from its `traceparent` header or started here, the span
//! every log line of the request is written in, and the `traceparent` of the answer.
//!
//! A request with a readable `traceparent` joins the caller's trace; without one (or with
//! one that does not parse, which never fails a request) it starts a new trace. Either
//! way the API takes a span id of its own within the trace: the answer's `traceparent`
//! names it, so a caller that sent none learns the trace id, and the send jobs the
//! request publishes carry it as their parent. The span (`request`) carries `trace_id`
//! and, once the request names or creates a verification, `verification_id`
//! ([`record_verification`]).

use tracing::Span;
use tracing::field::{Empty, display};
use verify_common::domain::{TraceParent, VerificationId};
use warp::Filter;
use warp::http::HeaderMap;
use warp::http::header::HeaderValue;

/// The header, in requests, answers and (the same name) job messages.
pub(crate) const TRACEPARENT: &str = "traceparent";

/// The API's own span within the trace of a request with these headers. A header sent
/// more than once is as good as none, as the specification asks.
pub(crate) fn of_request(headers: &HeaderMap) -> TraceParent {
    let mut values = headers.get_all(TRACEPARENT).iter();
    match (values.next(), values.next()) {
        (Some(value), None) => value
            .to_str()
            .ok()
            .and_then(|header| TraceParent::parse(header).ok())
            .map_or_else(TraceParent::start, |caller| caller.child()),
        _ => TraceParent::start(),
    }
}

/// The span a request with this trace is served in.
pub(crate) fn request_span(trace: &TraceParent) -> Span {
    tracing::info_span!(
        "request",
        trace_id = %trace.trace_id(),
        verification_id = Empty
    )
}

/// Adds the trace to an answer's headers.
pub(crate) fn answer_with(headers: &mut HeaderMap, trace: &TraceParent) {
    if let Ok(value) = HeaderValue::from_str(&trace.to_string()) {
        headers.insert(TRACEPARENT, value);
    }
}

/// Names the verification the current request is about in its span, so every later log
/// line of the request carries it.
pub(crate) fn record_verification(id: VerificationId) {
    Span::current().record("verification_id", display(id));
}

/// The request's trace, as the server put it in the request's extensions. A request
/// that reached the routes some other way gets a trace of its own.
pub(crate) fn current()
-> impl Filter<Extract = (TraceParent,), Error = std::convert::Infallible> + Clone {
    warp::ext::optional::<TraceParent>()
        .map(|trace: Option<TraceParent>| trace.unwrap_or_else(TraceParent::start))
}

#[cfg(test)]
mod tests {
    use verify_common::domain::TraceParent;
    use warp::http::HeaderMap;
    use warp::http::header::HeaderValue;

    use super::{TRACEPARENT, of_request};

    const CALLER: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn headers(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(TRACEPARENT, HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    #[test]
    fn a_request_joins_its_callers_trace_with_a_span_of_its_own() {
        let caller = TraceParent::parse(CALLER).unwrap();
        let ours = of_request(&headers(&[CALLER]));
        assert_eq!(ours.trace_id(), caller.trace_id());
        assert_ne!(ours.parent_id(), caller.parent_id());
    }

    #[test]
    fn without_one_readable_header_a_request_starts_a_trace() {
        let caller = TraceParent::parse(CALLER).unwrap();
        for values in [&[][..], &["00-nope"], &[CALLER, CALLER]] {
            let ours = of_request(&headers(values));
            assert_ne!(ours.trace_id(), caller.trace_id(), "{values:?}");
        }
    }
}
