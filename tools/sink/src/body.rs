//! Reading request bodies with a size cap.
//!
//! warp's own limit needs a `Content-Length` header and answers in plain text; reading the
//! stream ourselves caps chunked bodies too and lets the handler answer in its API's
//! error shape.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use warp::http::StatusCode;
use warp::{Filter, Rejection};

/// Largest body a send or control request may have; an SMS is at most a few KiB of form data.
pub(crate) const LIMIT: usize = 64 * 1024;

/// Why a body could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum BodyError {
    #[error("the request body is larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("the request body could not be read")]
    Unreadable,
}

impl BodyError {
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            BodyError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            BodyError::Unreadable => StatusCode::BAD_REQUEST,
        }
    }
}

/// Extracts the whole body, or why it could not be had; never rejects, so the handler
/// always gets to answer.
pub(crate) fn limited(
    limit: usize,
) -> impl Filter<Extract = (Result<Bytes, BodyError>,), Error = Rejection> + Clone {
    warp::body::stream().then(move |stream| collect(stream, limit))
}

async fn collect<S, B>(stream: S, limit: usize) -> Result<Bytes, BodyError>
where
    S: Stream<Item = Result<B, warp::Error>>,
    B: Buf,
{
    let mut stream = std::pin::pin!(stream);
    let mut collected = BytesMut::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|_| BodyError::Unreadable)?;
        if collected.len().saturating_add(chunk.remaining()) > limit {
            return Err(BodyError::TooLarge { limit });
        }
        collected.put(chunk);
    }
    Ok(collected.freeze())
}
