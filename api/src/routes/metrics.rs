//! `GET /metrics`: the API's metrics in the Prometheus text format, for a scraper on the
//! operators' network. It needs no key, like the probes: put it behind the same
//! network boundary as them, not on the public listener's path (see the README).

use std::sync::Arc;

use warp::Filter;
use warp::http::header::CONTENT_TYPE;
use warp::reply::{Reply, Response};

use crate::metrics::ApiMetrics;

/// The content type of the text exposition format.
const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

pub(super) fn routes(
    metrics: Arc<ApiMetrics>,
) -> impl Filter<Extract = (Response,), Error = warp::Rejection> + Clone {
    endpoint!(Probe GET "metrics").map(move || {
        warp::reply::with_header(metrics.render(), CONTENT_TYPE, TEXT_FORMAT).into_response()
    })
}
