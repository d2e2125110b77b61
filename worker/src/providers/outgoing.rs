//! The message a provider is handed.

use verify_common::domain::TraceParent;

/// One message to hand to the provider.
#[derive(Debug, Clone)]
pub struct OutgoingSms<'a> {
    pub to: &'a str,
    pub from: &'a str,
    pub body: &'a str,
    /// The trace of the send, from a span of this attempt: providers that speak HTTP and
    /// take a `traceparent` (the generic one) are sent it.
    pub trace: Option<TraceParent>,
}
