//! W3C Trace Context: the `traceparent` a request arrives with, carried through the
//! queue to the worker, so every log line of one verification can be found by its trace.
//!
//! Version 00 is `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`, lowercase only.
//! A later version is read as far as its first four fields, as the specification asks of
//! a reader that does not know it; version `ff` is never valid. An id of all zeros is
//! invalid. A header that does not parse is not an error for the request: the receiver
//! starts a trace of its own instead ([`TraceParent::parse_or_start`]).

use std::fmt;

/// The one version this build writes.
const VERSION: &str = "00";
/// Length of a version 00 header, and the least any version may have.
const LENGTH: usize = 55;
/// The only flag defined so far; the others are reserved and written as zero.
const SAMPLED: u8 = 0x01;

/// A trace's id: 16 bytes, never all zero.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceId([u8; 16]);

/// One span's id within a trace: 8 bytes, never all zero.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SpanId([u8; 8]);

/// A parsed `traceparent`: the trace, the span of the caller (the parent of ours) and
/// the flags.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceParent {
    trace_id: TraceId,
    parent_id: SpanId,
    sampled: bool,
}

/// Why a `traceparent` header was not read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TraceParentError {
    #[error("shorter than 55 characters, or not four dash-separated fields")]
    Shape,
    #[error("version 00 has exactly four fields")]
    TrailingData,
    #[error("version ff is invalid")]
    ForbiddenVersion,
    #[error("a field is not lowercase hexadecimal")]
    NotLowercaseHex,
    #[error("the trace id is all zeros")]
    ZeroTraceId,
    #[error("the parent id is all zeros")]
    ZeroParentId,
}

impl TraceId {
    /// A random trace id (never all zeros).
    pub fn generate() -> Self {
        loop {
            let bytes: [u8; 16] = rand::random();
            if bytes != [0; 16] {
                return Self(bytes);
            }
        }
    }

    /// The id from its 16 bytes, as stored.
    ///
    /// # Errors
    /// [`TraceParentError::Shape`] for another length, [`TraceParentError::ZeroTraceId`]
    /// for all zeros.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, TraceParentError> {
        let bytes: [u8; 16] = bytes.try_into().map_err(|_| TraceParentError::Shape)?;
        if bytes == [0; 16] {
            return Err(TraceParentError::ZeroTraceId);
        }
        Ok(Self(bytes))
    }

    /// The 16 bytes, for storage.
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }
}

impl SpanId {
    /// A random span id (never all zeros).
    pub fn generate() -> Self {
        loop {
            let bytes: [u8; 8] = rand::random();
            if bytes != [0; 8] {
                return Self(bytes);
            }
        }
    }
}

impl TraceParent {
    /// Reads a `traceparent` header value.
    ///
    /// # Errors
    /// [`TraceParentError`] saying what is wrong with it.
    pub fn parse(header: &str) -> Result<Self, TraceParentError> {
        let bytes = header.as_bytes();
        if bytes.len() < LENGTH || bytes[2] != b'-' || bytes[35] != b'-' || bytes[52] != b'-' {
            return Err(TraceParentError::Shape);
        }
        // Slices of the bytes, not of the text: a multibyte character must not split a
        // field boundary into a panic.
        let version = &bytes[0..2];
        if !is_lowercase_hex(version) {
            return Err(TraceParentError::NotLowercaseHex);
        }
        if version == b"ff" {
            return Err(TraceParentError::ForbiddenVersion);
        }
        if bytes.len() > LENGTH {
            // Version 00 ends here; a later version may add fields, each after a dash.
            if version == VERSION.as_bytes() {
                return Err(TraceParentError::TrailingData);
            }
            if bytes[LENGTH] != b'-' {
                return Err(TraceParentError::Shape);
            }
        }
        let trace_id = decode::<16>(&bytes[3..35])?;
        let parent_id = decode::<8>(&bytes[36..52])?;
        let [flags] = decode::<1>(&bytes[53..55])?;
        if trace_id == [0; 16] {
            return Err(TraceParentError::ZeroTraceId);
        }
        if parent_id == [0; 8] {
            return Err(TraceParentError::ZeroParentId);
        }
        Ok(Self {
            trace_id: TraceId(trace_id),
            parent_id: SpanId(parent_id),
            sampled: flags & SAMPLED != 0,
        })
    }

    /// The trace of `header` when there is one and it parses; otherwise a new trace, as
    /// the specification asks, so a bad header never fails a request.
    pub fn parse_or_start(header: Option<&str>) -> Self {
        header
            .and_then(|value| Self::parse(value).ok())
            .unwrap_or_else(Self::start)
    }

    /// A new trace with a random id, started here (sampled: every line is logged).
    pub fn start() -> Self {
        Self::continuing(TraceId::generate())
    }

    /// A `traceparent` for the trace `trace_id`, from a new span of ours; for a trace
    /// whose id was kept but whose parent span was not.
    pub fn continuing(trace_id: TraceId) -> Self {
        Self {
            trace_id,
            parent_id: SpanId::generate(),
            sampled: true,
        }
    }

    /// The same trace from a new span of ours: the header to send on to the next hop.
    pub fn child(&self) -> Self {
        Self {
            parent_id: SpanId::generate(),
            ..*self
        }
    }

    pub fn trace_id(&self) -> TraceId {
        self.trace_id
    }

    pub fn parent_id(&self) -> SpanId {
        self.parent_id
    }

    pub fn sampled(&self) -> bool {
        self.sampled
    }
}

fn is_lowercase_hex(digits: &[u8]) -> bool {
    digits.iter().all(|&b| hex_value(b).is_some())
}

/// The value of one lowercase hex digit.
fn hex_value(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        _ => None,
    }
}

/// `N` bytes from `2 * N` lowercase hex digits.
fn decode<const N: usize>(digits: &[u8]) -> Result<[u8; N], TraceParentError> {
    if digits.len() != 2 * N {
        return Err(TraceParentError::Shape);
    }
    let mut bytes = [0; N];
    for (byte, pair) in bytes.iter_mut().zip(digits.chunks_exact(2)) {
        let (Some(high), Some(low)) = (hex_value(pair[0]), hex_value(pair[1])) else {
            return Err(TraceParentError::NotLowercaseHex);
        };
        *byte = high << 4 | low;
    }
    Ok(bytes)
}

fn write_hex(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    bytes.iter().try_for_each(|b| write!(f, "{b:02x}"))
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

impl fmt::Debug for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TraceId({self})")
    }
}

impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

impl fmt::Debug for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpanId({self})")
    }
}

/// The version 00 header, whatever version was read: a later version's extra fields are
/// not passed on, as the specification asks.
impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let flags = if self.sampled { SAMPLED } else { 0 };
        write!(
            f,
            "{VERSION}-{}-{}-{flags:02x}",
            self.trace_id, self.parent_id
        )
    }
}

impl fmt::Debug for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TraceParent({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::{TraceId, TraceParent, TraceParentError};

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_version_00_header_parses_and_prints_back_unchanged() {
        let parsed = TraceParent::parse(VALID).unwrap();
        assert_eq!(
            parsed.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(parsed.parent_id().to_string(), "00f067aa0ba902b7");
        assert!(parsed.sampled());
        assert_eq!(parsed.to_string(), VALID);
    }

    #[test]
    fn an_unsampled_trace_stays_unsampled_and_reserved_flags_are_written_as_zero() {
        let unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        assert!(!TraceParent::parse(unsampled).unwrap().sampled());
        let reserved = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09";
        assert_eq!(
            TraceParent::parse(reserved).unwrap().to_string(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
    }

    #[test]
    fn a_later_version_is_read_as_far_as_its_first_four_fields() {
        for header in [
            "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-the-future-holds",
        ] {
            let parsed = TraceParent::parse(header).unwrap_or_else(|e| panic!("{header}: {e}"));
            assert_eq!(parsed.to_string(), VALID, "{header}");
        }
    }

    #[test]
    fn malformed_headers_are_refused_with_their_reason() {
        let cases = [
            ("", TraceParentError::Shape),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
                TraceParentError::Shape,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-011",
                TraceParentError::TrailingData,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
                TraceParentError::TrailingData,
            ),
            (
                "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
                TraceParentError::Shape,
            ),
            (
                "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
                TraceParentError::Shape,
            ),
            (
                "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                TraceParentError::ForbiddenVersion,
            ),
            (
                "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
                TraceParentError::NotLowercaseHex,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00F067AA0BA902B7-01",
                TraceParentError::NotLowercaseHex,
            ),
            (
                "0A-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                TraceParentError::NotLowercaseHex,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
                TraceParentError::NotLowercaseHex,
            ),
            (
                "00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                TraceParentError::NotLowercaseHex,
            ),
            (
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                TraceParentError::ZeroTraceId,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
                TraceParentError::ZeroParentId,
            ),
        ];
        for (header, reason) in cases {
            assert_eq!(TraceParent::parse(header), Err(reason), "{header:?}");
        }
    }

    #[test]
    fn a_multibyte_character_is_refused_not_a_panic() {
        let header = "00-4bf92f3577b34da6a3ce929d0e0e47é-00f067aa0ba902b7-01";
        assert!(TraceParent::parse(header).is_err());
        let header = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-é";
        assert!(TraceParent::parse(header).is_err());
    }

    #[test]
    fn a_missing_or_unreadable_header_starts_a_new_valid_trace() {
        let given = TraceParent::parse(VALID).unwrap();
        assert_eq!(TraceParent::parse_or_start(Some(VALID)), given);
        for header in [None, Some("nonsense"), Some("ff-")] {
            let started = TraceParent::parse_or_start(header);
            assert_ne!(started.trace_id(), given.trace_id(), "{header:?}");
            assert_eq!(
                TraceParent::parse(&started.to_string()),
                Ok(started),
                "{header:?}"
            );
        }
        assert_ne!(
            TraceParent::start().trace_id(),
            TraceParent::start().trace_id()
        );
    }

    #[test]
    fn a_child_keeps_the_trace_and_flags_with_a_span_of_its_own() {
        let parent = TraceParent::parse(VALID).unwrap();
        let child = parent.child();
        assert_eq!(child.trace_id(), parent.trace_id());
        assert_eq!(child.sampled(), parent.sampled());
        assert_ne!(child.parent_id(), parent.parent_id());
    }

    #[test]
    fn a_stored_trace_id_reads_back_and_bad_bytes_are_refused() {
        let id = TraceId::generate();
        assert_eq!(TraceId::from_bytes(id.as_bytes()), Ok(id));
        assert_eq!(
            TraceId::from_bytes(&[0; 16]),
            Err(TraceParentError::ZeroTraceId)
        );
        assert_eq!(TraceId::from_bytes(&[1; 15]), Err(TraceParentError::Shape));
    }
}
