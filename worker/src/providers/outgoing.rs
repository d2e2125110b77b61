//! The message a provider is handed.

/// One message to hand to the provider.
#[derive(Debug, Clone)]
pub struct OutgoingSms<'a> {
    pub to: &'a str,
    pub from: &'a str,
    pub body: &'a str,
}
