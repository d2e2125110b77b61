//! Webhooks to producers: endpoint URLs, the event types, signing secrets and Standard
//! Webhooks signatures, and which addresses an endpoint may never be on (SSRF).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use rand::TryRngCore;
use rand::rngs::OsRng;
use sha2::Sha256;

use super::otp::OtpError;

/// Every event a producer can subscribe to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WebhookEvent {
    VerificationApproved,
    VerificationCanceled,
    VerificationExpired,
    VerificationMaxAttemptsReached,
    SendSent,
    SendDelivered,
    SendUndelivered,
    SendFailed,
    AbuseBlocked,
}

impl WebhookEvent {
    pub const ALL: [Self; 9] = [
        Self::VerificationApproved,
        Self::VerificationCanceled,
        Self::VerificationExpired,
        Self::VerificationMaxAttemptsReached,
        Self::SendSent,
        Self::SendDelivered,
        Self::SendUndelivered,
        Self::SendFailed,
        Self::AbuseBlocked,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::VerificationApproved => "verification.approved",
            Self::VerificationCanceled => "verification.canceled",
            Self::VerificationExpired => "verification.expired",
            Self::VerificationMaxAttemptsReached => "verification.max_attempts_reached",
            Self::SendSent => "send.sent",
            Self::SendDelivered => "send.delivered",
            Self::SendUndelivered => "send.undelivered",
            Self::SendFailed => "send.failed",
            Self::AbuseBlocked => "abuse.blocked",
        }
    }

    /// Reads an event type's name.
    ///
    /// # Errors
    /// [`WebhookError::UnknownEvent`] naming it.
    pub fn parse(name: &str) -> Result<Self, WebhookError> {
        Self::ALL
            .into_iter()
            .find(|event| event.as_str() == name)
            .ok_or_else(|| WebhookError::UnknownEvent(name.to_owned()))
    }
}

impl fmt::Display for WebhookEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The `webhook-id` of every attempt to deliver the recorded delivery `delivery`: what a
/// producer deduplicates on, and what a verification's timeline names the delivery by.
pub fn webhook_message_id(delivery: uuid::Uuid) -> String {
    format!("msg_{}", delivery.simple())
}

/// Why an endpoint's URL, events or secret are refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    #[error("the url must be an absolute http or https URL with a host: {0}")]
    InvalidUrl(String),
    #[error("the url must not carry a user name or password")]
    CredentialsInUrl,
    #[error(
        "unknown event {0:?}; the events are verification.approved, verification.canceled, \
         verification.expired, verification.max_attempts_reached, send.sent, send.delivered, \
         send.undelivered, send.failed and abuse.blocked"
    )]
    UnknownEvent(String),
    #[error("subscribe to at least one event")]
    NoEvents,
    #[error("the signing secret is not whsec_ followed by base64")]
    InvalidSecret,
}

/// An endpoint's address: an absolute `http` or `https` URL with a host and no
/// credentials. Whether its host is allowed is a separate, network-dependent question
/// ([`is_public_address`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookUrl(url::Url);

impl WebhookUrl {
    /// Parses and checks a URL.
    ///
    /// # Errors
    /// [`WebhookError::InvalidUrl`] or [`WebhookError::CredentialsInUrl`].
    pub fn parse(raw: &str) -> Result<Self, WebhookError> {
        let url =
            url::Url::parse(raw.trim()).map_err(|e| WebhookError::InvalidUrl(e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(WebhookError::InvalidUrl(format!(
                "the scheme is {:?}",
                url.scheme()
            )));
        }
        if url.host().is_none() {
            return Err(WebhookError::InvalidUrl("there is no host".to_owned()));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(WebhookError::CredentialsInUrl);
        }
        Ok(Self(url))
    }

    /// A URL stored by [`WebhookUrl::parse`] earlier.
    pub fn from_trusted_storage(raw: &str) -> Result<Self, WebhookError> {
        Self::parse(raw)
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    pub fn as_url(&self) -> &url::Url {
        &self.0
    }

    /// The host and port to resolve: the port is the URL's, or its scheme's default.
    pub fn host_and_port(&self) -> (String, u16) {
        let host = match self.0.host() {
            Some(url::Host::Ipv6(ip)) => ip.to_string(),
            Some(host) => host.to_string(),
            None => String::new(),
        };
        (host, self.0.port_or_known_default().unwrap_or(80))
    }

    /// The host when it is an IP address written in the URL (no lookup is made for it).
    pub fn literal_ip(&self) -> Option<IpAddr> {
        match self.0.host()? {
            url::Host::Ipv4(ip) => Some(IpAddr::V4(ip)),
            url::Host::Ipv6(ip) => Some(IpAddr::V6(ip)),
            url::Host::Domain(_) => None,
        }
    }
}

/// Whether an endpoint may be reached at `ip`: false for the unspecified, loopback,
/// private (RFC 1918), CGNAT (100.64/10), link-local, multicast, broadcast, documentation
/// and other reserved IPv4 ranges, and for IPv6 loopback, unspecified, unique-local
/// (fc00::/7), link-local (fe80::/10), multicast, documentation, and IPv4-mapped or
/// IPv4-compatible addresses of refused IPv4 ones.
pub fn is_public_address(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_multicast()
        || ip.is_broadcast()
        || ip.is_documentation()
        || a == 0
        // CGNAT, 100.64.0.0/10.
        || (a == 100 && (64..128).contains(&b))
        // IETF protocol assignments, 192.0.0.0/24.
        || (a == 192 && b == 0 && c == 0)
        // Benchmarking, 198.18.0.0/15.
        || (a == 198 && (b == 18 || b == 19))
        // Reserved, 240.0.0.0/4.
        || a >= 240)
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    let segments = ip.segments();
    // IPv4-compatible (::a.b.c.d, deprecated but still routed by some stacks).
    if segments[..6].iter().all(|s| *s == 0) {
        return false;
    }
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        // Unique local, fc00::/7.
        || (segments[0] & 0xfe00) == 0xfc00
        // Link-local, fe80::/10.
        || (segments[0] & 0xffc0) == 0xfe80
        // Site-local (deprecated), fec0::/10.
        || (segments[0] & 0xffc0) == 0xfec0
        // Documentation, 2001:db8::/32.
        || (segments[0] == 0x2001 && segments[1] == 0x0db8)
        // NAT64, 64:ff9b::/96, reaches IPv4 addresses that may be internal.
        || (segments[0] == 0x0064 && segments[1] == 0xff9b))
}

/// Prefix of every signing secret (Standard Webhooks).
pub const SECRET_PREFIX: &str = "whsec_";

/// An endpoint's signing secret: `whsec_` and the base64 of 32 random bytes. `Debug`
/// never shows it.
#[derive(Clone)]
pub struct WebhookSecret {
    text: String,
    key: Vec<u8>,
}

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookSecret(<redacted>)")
    }
}

impl WebhookSecret {
    /// A new secret from the OS CSPRNG.
    ///
    /// # Errors
    /// [`OtpError::RandomUnavailable`] if the OS CSPRNG cannot be read.
    pub fn generate() -> Result<Self, OtpError> {
        let mut key = vec![0u8; 32];
        OsRng
            .try_fill_bytes(&mut key)
            .map_err(|e| OtpError::RandomUnavailable(e.to_string()))?;
        Ok(Self {
            text: format!("{SECRET_PREFIX}{}", BASE64.encode(&key)),
            key,
        })
    }

    /// Reads a secret in its `whsec_` form.
    ///
    /// # Errors
    /// [`WebhookError::InvalidSecret`].
    pub fn parse(text: &str) -> Result<Self, WebhookError> {
        let encoded = text
            .strip_prefix(SECRET_PREFIX)
            .ok_or(WebhookError::InvalidSecret)?;
        let key = BASE64
            .decode(encoded)
            .map_err(|_| WebhookError::InvalidSecret)?;
        if key.is_empty() {
            return Err(WebhookError::InvalidSecret);
        }
        Ok(Self {
            text: text.to_owned(),
            key,
        })
    }

    /// The `whsec_…` text, to store it and to show it once.
    pub fn expose(&self) -> &str {
        &self.text
    }

    /// The `webhook-signature` header's value for one attempt: `v1,` and the base64
    /// HMAC-SHA256, keyed with the decoded secret, of `{id}.{timestamp}.{body}`.
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC accepts a key of any length");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", BASE64.encode(mac.finalize().into_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_must_be_absolute_http_with_a_host_and_no_credentials() {
        assert!(WebhookUrl::parse("https://example.com/hooks").is_ok());
        assert!(WebhookUrl::parse("http://example.com:8080/h?x=1").is_ok());
        for bad in [
            "",
            "/relative",
            "example.com/hooks",
            "ftp://example.com/",
            "file:///etc/passwd",
            "https://user:pw@example.com/",
        ] {
            assert!(WebhookUrl::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn internal_addresses_are_refused_and_public_ones_allowed() {
        let refused = [
            "0.0.0.0",
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "fd00::1",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::127.0.0.1",
        ];
        for ip in refused {
            assert!(!is_public_address(ip.parse().unwrap()), "{ip} was allowed");
        }
        for ip in [
            "93.184.216.34",
            "8.8.8.8",
            "2606:4700::1111",
            "::ffff:1.1.1.1",
        ] {
            assert!(is_public_address(ip.parse().unwrap()), "{ip} was refused");
        }
    }

    #[test]
    fn every_event_name_reads_back_as_its_event() {
        for event in WebhookEvent::ALL {
            assert_eq!(WebhookEvent::parse(event.as_str()), Ok(event));
        }
        assert!(WebhookEvent::parse("verification.started").is_err());
    }

    #[test]
    fn a_secret_signs_as_the_standard_webhooks_example_does() {
        // The example of the Standard Webhooks specification.
        let secret = WebhookSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let signature = secret.sign(
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1_614_265_330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn generated_secrets_are_distinct_and_read_back() {
        let a = WebhookSecret::generate().unwrap();
        let b = WebhookSecret::generate().unwrap();
        assert_ne!(a.expose(), b.expose());
        assert!(a.expose().starts_with("whsec_"));
        assert_eq!(WebhookSecret::parse(a.expose()).unwrap().key.len(), 32);
        assert_eq!(format!("{a:?}"), "WebhookSecret(<redacted>)");
    }
}
