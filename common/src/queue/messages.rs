//! Job messages. They carry ids only: the code and the phone number stay in Postgres
//! (the number) or are never stored at all (the code).

use serde::{Deserialize, Serialize};

use crate::domain::{DeliveryId, TraceParent};

/// The payload format version this build writes and reads.
pub const SEND_SMS_VERSION: u8 = 1;

/// Why a message body could not be read as a job.
#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    #[error("the message is not a valid send job: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error("the message has format version {0}; this build reads version {SEND_SMS_VERSION}")]
    UnsupportedVersion(u8),
}

/// "Send (or retry) this delivery." Everything else is read from Postgres at send time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendSms {
    pub v: u8,
    pub delivery_id: DeliveryId,
    /// The trace of the request that asked for the send. It travels in the message's
    /// `traceparent` header, not in the body: the publisher writes it, the consumer reads
    /// it back ([`crate::queue::headers::trace_parent`]).
    #[serde(skip)]
    pub trace: Option<TraceParent>,
}

impl SendSms {
    /// A job for one delivery.
    pub fn new(delivery_id: DeliveryId) -> Self {
        Self {
            v: SEND_SMS_VERSION,
            delivery_id,
            trace: None,
        }
    }

    /// This job, as part of the trace `trace`.
    #[must_use]
    pub fn traced(self, trace: Option<TraceParent>) -> Self {
        Self { trace, ..self }
    }

    /// The JSON body.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a struct of an integer and a UUID always serialises")
    }

    /// Reads a JSON body (without its trace: see [`SendSms::traced`]).
    ///
    /// # Errors
    /// [`MessageError`] for malformed JSON or an unknown version.
    pub fn decode(body: &[u8]) -> Result<Self, MessageError> {
        let job: Self = serde_json::from_slice(body)?;
        if job.v != SEND_SMS_VERSION {
            return Err(MessageError::UnsupportedVersion(job.v));
        }
        Ok(job)
    }
}

#[cfg(test)]
mod tests {
    use super::{MessageError, SendSms};
    use crate::domain::{DeliveryId, TraceParent};

    #[test]
    fn a_job_round_trips_through_its_json_form() {
        let job = SendSms::new(DeliveryId::generate());
        assert_eq!(SendSms::decode(&job.encode()).unwrap(), job);
    }

    #[test]
    fn the_trace_stays_out_of_the_body() {
        let trace = TraceParent::start();
        let job = SendSms::new(DeliveryId::generate()).traced(Some(trace));
        let body = String::from_utf8(job.encode()).unwrap();
        assert!(!body.contains(&trace.trace_id().to_string()), "{body}");
        assert_eq!(SendSms::decode(body.as_bytes()).unwrap().trace, None);
    }

    #[test]
    fn malformed_or_future_jobs_are_refused() {
        assert!(matches!(
            SendSms::decode(b"nope"),
            Err(MessageError::Malformed(_))
        ));
        let future = br#"{"v":2,"delivery_id":"0190c0de-0000-7000-8000-000000000000"}"#;
        assert!(matches!(
            SendSms::decode(future),
            Err(MessageError::UnsupportedVersion(2))
        ));
    }
}
