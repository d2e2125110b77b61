//! What a producer tells us about the person asking for a code: the end user's IP address
//! and an opaque client id (session, device or account). Both are optional; rules that need
//! one skip requests without it.

use std::fmt;
use std::net::IpAddr;

/// Longest accepted client id, in bytes (all of them visible ASCII).
pub const MAX_CLIENT_ID_LEN: usize = 128;

/// Why a client id is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientIdError {
    #[error("the client id is empty; leave it out instead")]
    Empty,
    #[error("the client id has {0} characters; at most {MAX_CLIENT_ID_LEN} are accepted")]
    TooLong(usize),
    #[error("the client id may contain only visible ASCII characters (no spaces or controls)")]
    InvalidCharacter,
}

/// An opaque identifier of the end user's session, device or account, chosen by the
/// producer: 1–128 visible ASCII characters (`!` to `~`), kept as given.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ClientId(String);

impl ClientId {
    /// # Errors
    /// [`ClientIdError`] for an empty or overlong id, or one with other characters.
    pub fn parse(input: &str) -> Result<Self, ClientIdError> {
        if input.is_empty() {
            return Err(ClientIdError::Empty);
        }
        if !input.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
            return Err(ClientIdError::InvalidCharacter);
        }
        if input.len() > MAX_CLIENT_ID_LEN {
            return Err(ClientIdError::TooLong(input.len()));
        }
        Ok(Self(input.to_owned()))
    }

    /// Wraps an id read back from the database, where only parsed ids are written.
    pub fn from_trusted_storage(id: String) -> Self {
        Self(id)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // An account or session id can identify a person: logs get its length only.
        write!(f, "ClientId(<{} chars>)", self.0.len())
    }
}

/// The signals a start request carried about its end user.
///
/// An IP address that cannot be read is not an error: the request goes on without it
/// (rules that need one skip it) and its risk record says so. Refusing it would let a
/// producer's formatting bug stop every verification; trusting a garbled one would count
/// unrelated people together.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientSignals {
    pub ip: Option<IpAddr>,
    pub id: Option<ClientId>,
    /// A `client_ip` was sent but is not an IPv4 or IPv6 address.
    pub unreadable_ip: bool,
}

impl ClientSignals {
    /// Reads the optional `client_ip` and `client_id` of a request. IPv4 addresses mapped
    /// into IPv6 (`::ffff:192.0.2.1`) become plain IPv4, so one person has one address.
    ///
    /// # Errors
    /// [`ClientIdError`] for a client id that is not of the accepted form.
    pub fn parse(ip: Option<&str>, id: Option<&str>) -> Result<Self, ClientIdError> {
        let id = id.map(ClientId::parse).transpose()?;
        let (ip, unreadable_ip) = match ip.map(|text| text.trim().parse::<IpAddr>()) {
            None => (None, false),
            Some(Ok(address)) => (Some(address.to_canonical()), false),
            Some(Err(_)) => (None, true),
        };
        Ok(Self {
            ip,
            id,
            unreadable_ip,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::{ClientId, ClientIdError, ClientSignals, MAX_CLIENT_ID_LEN};

    #[test]
    fn client_ids_are_visible_ascii_of_bounded_length() {
        assert!(ClientId::parse("session-42:abc/DEF=").is_ok());
        assert!(ClientId::parse(&"x".repeat(MAX_CLIENT_ID_LEN)).is_ok());
        let cases = [
            ("", ClientIdError::Empty),
            ("has space", ClientIdError::InvalidCharacter),
            ("tab\there", ClientIdError::InvalidCharacter),
            ("naïve", ClientIdError::InvalidCharacter),
            ("line\n", ClientIdError::InvalidCharacter),
        ];
        for (input, expected) in cases {
            assert_eq!(ClientId::parse(input), Err(expected), "{input:?}");
        }
        assert_eq!(
            ClientId::parse(&"x".repeat(MAX_CLIENT_ID_LEN + 1)),
            Err(ClientIdError::TooLong(MAX_CLIENT_ID_LEN + 1))
        );
    }

    #[test]
    fn debug_never_shows_a_client_id() {
        let id = ClientId::parse("account-1234").unwrap();
        assert_eq!(format!("{id:?}"), "ClientId(<12 chars>)");
    }

    #[test]
    fn addresses_are_read_leniently_and_canonically() {
        let read = |ip: &str| ClientSignals::parse(Some(ip), None).unwrap();
        let v4: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(read(" 192.0.2.1 ").ip, Some(v4));
        assert_eq!(read("::ffff:192.0.2.1").ip, Some(v4));
        assert_eq!(read("2001:db8::1").ip, Some("2001:db8::1".parse().unwrap()));
        for unreadable in [
            "",
            "999.1.1.1",
            "not an address",
            "192.0.2.1:443",
            "fe80::1%eth0",
        ] {
            let signals = read(unreadable);
            assert_eq!(signals.ip, None, "{unreadable:?}");
            assert!(signals.unreadable_ip, "{unreadable:?}");
        }
        let none = ClientSignals::parse(None, None).unwrap();
        assert_eq!(none, ClientSignals::default());
    }
}
