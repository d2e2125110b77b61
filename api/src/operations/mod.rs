//! What the API does, independent of which route shape (native `/v1` or PortaText) asked.
//! Routes parse requests into these calls and render their results.

pub(crate) mod abuse;
pub(crate) mod stats;
pub(crate) mod templates;
pub(crate) mod verifications;
pub(crate) mod webhooks;
