//! What travels in a job's headers through retries, dead-letterings and replays.
//!
//! The job's W3C `traceparent` ([`TRACEPARENT_HEADER`]) is written by the API's
//! publisher and copied onto every republished copy, so the worker's log lines of a
//! retried or replayed job carry the trace of the request that started it.
//!
//! A worker that gives up on a job writes a [`DeadLetterNote`] (why, when, by whom) on
//! the copy it dead-letters. [`JobHistory`] counts dead-letterings and replays; it is
//! carried along every time the job is republished (a retry, a dead letter, a replay),
//! so a job that keeps failing shows it. RabbitMQ's own `x-death` header is read too, for
//! messages it dead-lettered itself.

use chrono::{DateTime, Utc};
use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString};

use crate::domain::TraceParent;

/// The job's W3C trace context, in the header name (and format) of HTTP.
pub const TRACEPARENT_HEADER: &str = "traceparent";

/// Why the job was dead-lettered, for people.
pub const REASON_HEADER: &str = "x-verify-reason";
/// Why the job was dead-lettered, as a stable code for scripts (`template_missing`, …).
pub const REASON_CODE_HEADER: &str = "x-verify-reason-code";
/// When it was dead-lettered (RFC 3339).
pub const DEAD_AT_HEADER: &str = "x-verify-dead-at";
/// Which worker dead-lettered it (`host/pid`).
pub const WORKER_HEADER: &str = "x-verify-worker";
/// The exchange the job was consumed from.
pub const ORIGINAL_EXCHANGE_HEADER: &str = "x-verify-original-exchange";
/// The routing key the job was consumed with.
pub const ORIGINAL_ROUTING_KEY_HEADER: &str = "x-verify-original-routing-key";
/// How many times the job was dead-lettered.
pub const DEAD_COUNT_HEADER: &str = "x-verify-dead-count";
/// How many times the job was replayed from the dead-letter queue.
pub const REPLAY_COUNT_HEADER: &str = "x-verify-replays";

/// How often a job has been dead-lettered and replayed. Missing or malformed headers
/// count as zero.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JobHistory {
    pub dead_lettered: u32,
    pub replayed: u32,
}

impl JobHistory {
    /// Reads the counts from a message's headers. Dead-letterings done by RabbitMQ
    /// itself (a worker's fallback nack) are counted from its `x-death` header; its
    /// entries for expired retry delays are not dead-letterings and are ignored.
    pub fn from_properties(properties: &BasicProperties) -> Self {
        let Some(headers) = properties.headers() else {
            return Self::default();
        };
        let by_broker: u32 = broker_deaths(headers)
            .filter(|death| death.reason.as_deref() == Some("rejected"))
            .map(|death| death.count)
            .sum();
        Self {
            dead_lettered: count(headers, DEAD_COUNT_HEADER).saturating_add(by_broker),
            replayed: count(headers, REPLAY_COUNT_HEADER),
        }
    }

    /// The counts as headers; zero counts are left out.
    pub fn to_headers(self) -> FieldTable {
        let mut headers = FieldTable::default();
        self.write_to(&mut headers);
        headers
    }

    fn write_to(self, headers: &mut FieldTable) {
        for (name, value) in [
            (DEAD_COUNT_HEADER, self.dead_lettered),
            (REPLAY_COUNT_HEADER, self.replayed),
        ] {
            if value > 0 {
                headers.insert(name.into(), AMQPValue::LongLongInt(i64::from(value)));
            }
        }
    }
}

/// The trace a message belongs to: its `traceparent` header, if it has one that parses.
pub fn trace_parent(properties: &BasicProperties) -> Option<TraceParent> {
    let headers = properties.headers().as_ref()?;
    TraceParent::parse(&string(headers, TRACEPARENT_HEADER)?).ok()
}

/// Adds `trace` (if any) to `headers` as the `traceparent` header.
pub(super) fn write_trace(headers: &mut FieldTable, trace: Option<TraceParent>) {
    if let Some(trace) = trace {
        headers.insert(TRACEPARENT_HEADER.into(), text(&trace.to_string()));
    }
}

/// What a worker writes on a job it dead-letters.
#[derive(Debug, Clone)]
pub struct DeadLetterNote<'a> {
    pub reason_code: &'a str,
    pub reason: &'a str,
    pub dead_at: DateTime<Utc>,
    pub worker: &'a str,
    pub original_exchange: &'a str,
    pub original_routing_key: &'a str,
}

impl DeadLetterNote<'_> {
    /// The headers of the dead letter: this note, and `history` with this
    /// dead-lettering counted.
    pub(super) fn to_headers(&self, history: JobHistory) -> FieldTable {
        let mut headers = FieldTable::default();
        for (name, value) in [
            (REASON_CODE_HEADER, self.reason_code),
            (REASON_HEADER, self.reason),
            (WORKER_HEADER, self.worker),
            (ORIGINAL_EXCHANGE_HEADER, self.original_exchange),
            (ORIGINAL_ROUTING_KEY_HEADER, self.original_routing_key),
        ] {
            headers.insert(name.into(), text(value));
        }
        headers.insert(DEAD_AT_HEADER.into(), text(&self.dead_at.to_rfc3339()));
        JobHistory {
            dead_lettered: history.dead_lettered.saturating_add(1),
            ..history
        }
        .write_to(&mut headers);
        headers
    }
}

/// One entry of RabbitMQ's `x-death` header.
pub(super) struct BrokerDeath {
    pub(super) count: u32,
    pub(super) reason: Option<String>,
    pub(super) queue: Option<String>,
    pub(super) time: Option<DateTime<Utc>>,
}

pub(super) fn broker_deaths(headers: &FieldTable) -> impl Iterator<Item = BrokerDeath> + '_ {
    let entries = match headers.inner().get("x-death") {
        Some(AMQPValue::FieldArray(entries)) => entries.as_slice(),
        _ => &[],
    };
    entries.iter().filter_map(|entry| match entry {
        AMQPValue::FieldTable(death) => Some(BrokerDeath {
            count: count(death, "count").max(1),
            reason: string(death, "reason"),
            queue: string(death, "queue"),
            time: match death.inner().get("time") {
                Some(AMQPValue::Timestamp(secs)) => i64::try_from(*secs)
                    .ok()
                    .and_then(|secs| DateTime::from_timestamp(secs, 0)),
                _ => None,
            },
        }),
        _ => None,
    })
}

fn text(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value))
}

pub(super) fn string(headers: &FieldTable, name: &str) -> Option<String> {
    match headers.inner().get(name)? {
        AMQPValue::LongString(value) => Some(String::from_utf8_lossy(value.as_bytes()).into()),
        AMQPValue::ShortString(value) => Some(value.as_str().to_owned()),
        _ => None,
    }
}

fn count(headers: &FieldTable, name: &str) -> u32 {
    let value = match headers.inner().get(name) {
        Some(AMQPValue::LongLongInt(n)) => *n,
        Some(AMQPValue::LongInt(n)) => i64::from(*n),
        Some(AMQPValue::LongUInt(n)) => i64::from(*n),
        Some(AMQPValue::ShortInt(n)) => i64::from(*n),
        Some(AMQPValue::ShortShortUInt(n)) => i64::from(*n),
        _ => 0,
    };
    u32::try_from(value.max(0)).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use lapin::BasicProperties;
    use lapin::types::{AMQPValue, FieldArray, FieldTable};

    use super::{DEAD_COUNT_HEADER, DeadLetterNote, JobHistory, REPLAY_COUNT_HEADER};

    fn death(reason: &str, count: i64) -> AMQPValue {
        let mut entry = FieldTable::default();
        entry.insert("reason".into(), super::text(reason));
        entry.insert("count".into(), AMQPValue::LongLongInt(count));
        AMQPValue::FieldTable(entry)
    }

    #[test]
    fn a_message_without_headers_has_no_history() {
        assert_eq!(
            JobHistory::from_properties(&BasicProperties::default()),
            JobHistory::default()
        );
        assert!(JobHistory::default().to_headers().inner().is_empty());
    }

    #[test]
    fn a_trace_round_trips_through_headers_and_a_bad_one_reads_as_none() {
        let trace = crate::domain::TraceParent::start();
        let mut headers = FieldTable::default();
        super::write_trace(&mut headers, Some(trace));
        let properties = BasicProperties::default().with_headers(headers);
        assert_eq!(super::trace_parent(&properties), Some(trace));

        let mut headers = FieldTable::default();
        headers.insert(super::TRACEPARENT_HEADER.into(), super::text("00-nope"));
        let properties = BasicProperties::default().with_headers(headers);
        assert_eq!(super::trace_parent(&properties), None);
        assert_eq!(super::trace_parent(&BasicProperties::default()), None);
    }

    #[test]
    fn history_round_trips_through_headers() {
        let history = JobHistory {
            dead_lettered: 2,
            replayed: 1,
        };
        let properties = BasicProperties::default().with_headers(history.to_headers());
        assert_eq!(JobHistory::from_properties(&properties), history);
    }

    #[test]
    fn broker_rejections_count_as_dead_letterings_but_expired_retry_delays_do_not() {
        let mut headers = JobHistory {
            dead_lettered: 1,
            replayed: 1,
        }
        .to_headers();
        headers.insert(
            "x-death".into(),
            AMQPValue::FieldArray(FieldArray::from(vec![
                death("rejected", 1),
                death("expired", 3),
            ])),
        );
        let properties = BasicProperties::default().with_headers(headers);
        assert_eq!(
            JobHistory::from_properties(&properties),
            JobHistory {
                dead_lettered: 2,
                replayed: 1
            }
        );
    }

    #[test]
    fn a_note_counts_its_own_dead_lettering_and_keeps_the_replays() {
        let note = DeadLetterNote {
            reason_code: "template_missing",
            reason: "template 7 no longer exists",
            dead_at: chrono::Utc.with_ymd_and_hms(2025, 1, 2, 3, 4, 5).unwrap(),
            worker: "host/42",
            original_exchange: "verify.sms",
            original_routing_key: "send",
        };
        let headers = note.to_headers(JobHistory {
            dead_lettered: 0,
            replayed: 2,
        });
        let get = |name: &str| headers.inner().get(name).cloned();
        assert_eq!(get(DEAD_COUNT_HEADER), Some(AMQPValue::LongLongInt(1)));
        assert_eq!(get(REPLAY_COUNT_HEADER), Some(AMQPValue::LongLongInt(2)));
        assert_eq!(
            get(super::DEAD_AT_HEADER),
            Some(super::text("2025-01-02T03:04:05+00:00"))
        );
        assert_eq!(
            get(super::REASON_CODE_HEADER),
            Some(super::text("template_missing"))
        );
    }
}
