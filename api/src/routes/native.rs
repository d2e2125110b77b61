//! The native `/v1` answer shape: a handler's reply as it is, an error as
//! `{"error": {code, message, field}}`. Native errors, from handlers and extractors alike,
//! become responses here only, so this is where they are logged.

use warp::reply::{Reply, Response};

use crate::error::ApiError;

/// A native route's answer: the handler's reply, or its error in the native shape.
pub(super) fn respond<T: Reply>(result: Result<T, ApiError>) -> Response {
    result.map_or_else(|error| error_response(&error), Reply::into_response)
}

/// The native answer to an error, logged.
pub(super) fn error_response(error: &ApiError) -> Response {
    error.log();
    error.to_response()
}
