//! The dead-letter queue on the wire: what a dead letter carries, and reading the queue.
//!
//! A worker that gives up on a job republishes it, body unchanged, to `{p}.sms.dead`
//! with headers saying why ([`DeadLetterNote`], through
//! [`SmsPublisher::publish_dead`](super::SmsPublisher::publish_dead)), and only then
//! acks it. If that publish fails it nacks the job instead and RabbitMQ dead-letters it
//! with its own `x-death` header: the job is never lost, only less well described.
//! [`JobHistory`] counts dead-letterings and replays in headers that travel with the job
//! through retries and replays.
//!
//! [`DeadLetterBrowser`] reads the queue for `verify-worker dlq`. It takes messages with
//! `basic.get` and does not acknowledge them, so every message it neither replays nor
//! discards goes back to the queue, in its place, when the browser closes (or its
//! process dies).

use chrono::{DateTime, Utc};

use lapin::options::{BasicAckOptions, BasicGetOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Acker, BasicProperties, Channel, Connection};

use super::publisher::{PERSISTENT, publish_confirmed};
use super::topology::{QueueNames, SEND_ROUTING_KEY, declare};
use super::{BROKER_TIMEOUT, QueueError, connect};
use crate::config::RabbitSettings;

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

/// One message read from the dead-letter queue, not yet acknowledged. Dropping it
/// leaves it to return to the queue when its browser closes.
#[derive(Debug)]
pub struct DeadLetter {
    /// The body exactly as it was dead-lettered.
    pub body: Vec<u8>,
    /// The stable reason code; for a message RabbitMQ dead-lettered itself,
    /// `broker_` and its reason (`broker_rejected`); `unknown` with neither.
    pub reason_code: String,
    /// Why, for people.
    pub reason: String,
    pub dead_at: Option<DateTime<Utc>>,
    pub worker: Option<String>,
    pub original_routing_key: Option<String>,
    pub history: JobHistory,
    acker: Acker,
}

/// One entry of RabbitMQ's `x-death` header.
struct BrokerDeath {
    count: u32,
    reason: Option<String>,
    queue: Option<String>,
    time: Option<DateTime<Utc>>,
}

fn broker_deaths(headers: &FieldTable) -> impl Iterator<Item = BrokerDeath> + '_ {
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

fn string(headers: &FieldTable, name: &str) -> Option<String> {
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

impl DeadLetter {
    fn read(body: Vec<u8>, routing_key: &str, properties: &BasicProperties, acker: Acker) -> Self {
        let empty = FieldTable::default();
        let headers = properties.headers().as_ref().unwrap_or(&empty);
        let by_broker = broker_deaths(headers).find(|death| death.reason.is_some());
        let (reason_code, reason) = match (
            string(headers, REASON_CODE_HEADER),
            string(headers, REASON_HEADER),
        ) {
            (Some(code), reason) => (code, reason.unwrap_or_default()),
            (None, _) => match &by_broker {
                Some(death) => {
                    let why = death.reason.as_deref().unwrap_or("unknown");
                    let from = death.queue.as_deref().unwrap_or("a queue");
                    (
                        format!("broker_{why}"),
                        format!(
                            "dead-lettered by RabbitMQ ({why}) from {from}; the worker's log says why"
                        ),
                    )
                }
                None => ("unknown".to_owned(), "no reason was recorded".to_owned()),
            },
        };
        let dead_at = string(headers, DEAD_AT_HEADER)
            .and_then(|at| DateTime::parse_from_rfc3339(&at).ok())
            .map(|at| at.with_timezone(&Utc))
            .or_else(|| by_broker.and_then(|death| death.time));
        Self {
            body,
            reason_code,
            reason,
            dead_at,
            worker: string(headers, WORKER_HEADER),
            original_routing_key: string(headers, ORIGINAL_ROUTING_KEY_HEADER)
                .or_else(|| (!routing_key.is_empty()).then(|| routing_key.to_owned())),
            history: JobHistory::from_properties(properties),
            acker,
        }
    }
}

/// Reads the dead-letter queue message by message without removing anything it is not
/// told to remove.
pub struct DeadLetterBrowser {
    connection: Connection,
    channel: Channel,
    names: QueueNames,
}

impl DeadLetterBrowser {
    /// Connects and declares the topology (so an empty deployment has an empty queue to
    /// read). The channel is in confirm mode, for replays.
    ///
    /// # Errors
    /// [`QueueError`] when the broker cannot be reached or refuses a declaration.
    pub async fn open(settings: &RabbitSettings) -> Result<Self, QueueError> {
        let connection = connect(&settings.url, "verify-dlq").await?;
        let names = QueueNames::new(&settings.queue_prefix);
        let setup = async {
            let channel = connection.create_channel().await?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            declare(
                &channel,
                &names,
                settings
                    .queue_expires_secs
                    .map(std::time::Duration::from_secs),
            )
            .await?;
            Ok::<_, QueueError>(channel)
        };
        let channel = bounded(setup).await?;
        Ok(Self {
            connection,
            channel,
            names,
        })
    }

    /// The queue's name.
    pub fn queue(&self) -> &str {
        &self.names.dead_queue
    }

    /// Messages waiting in the queue, not counting those this browser holds.
    ///
    /// # Errors
    /// [`QueueError`] when the broker fails.
    pub async fn depth(&self) -> Result<u32, QueueError> {
        let declared = bounded(async {
            Ok(self
                .channel
                .queue_declare(
                    self.names.dead_queue.as_str().into(),
                    QueueDeclareOptions {
                        passive: true,
                        ..QueueDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await?)
        })
        .await?;
        Ok(declared.message_count())
    }

    /// The next message, or `None` when the queue has no more ready messages. The
    /// message stays unacknowledged: held by this browser until replayed, discarded or
    /// returned at [`Self::close`].
    ///
    /// # Errors
    /// [`QueueError`] when the broker fails.
    pub async fn next(&self) -> Result<Option<DeadLetter>, QueueError> {
        let message = bounded(async {
            Ok(self
                .channel
                .basic_get(
                    self.names.dead_queue.as_str().into(),
                    BasicGetOptions { no_ack: false },
                )
                .await?)
        })
        .await?;
        Ok(message.map(|message| {
            let delivery = message.delivery;
            DeadLetter::read(
                delivery.data,
                delivery.routing_key.as_str(),
                &delivery.properties,
                delivery.acker,
            )
        }))
    }

    /// Publishes the message's body unchanged to the work queue, waits for the confirm,
    /// and only then removes it from the dead-letter queue: a failure at any point
    /// leaves it in the dead-letter queue (at worst in both queues, which the worker's
    /// guarded claim makes harmless), never in neither.
    ///
    /// # Errors
    /// [`QueueError`] when the publish is not confirmed or the ack fails.
    pub async fn replay(&self, letter: DeadLetter) -> Result<(), QueueError> {
        let history = JobHistory {
            replayed: letter.history.replayed.saturating_add(1),
            ..letter.history
        };
        let properties = BasicProperties::default()
            .with_delivery_mode(PERSISTENT)
            .with_content_type(ShortString::from("application/json"))
            .with_headers(history.to_headers());
        bounded(publish_confirmed(
            &self.channel,
            &self.names.exchange,
            SEND_ROUTING_KEY,
            &letter.body,
            properties,
        ))
        .await?;
        self.discard(letter).await
    }

    /// Removes the message from the dead-letter queue for good.
    ///
    /// # Errors
    /// [`QueueError`] when the ack fails (the message then stays in the queue).
    pub async fn discard(&self, letter: DeadLetter) -> Result<(), QueueError> {
        bounded(async { Ok(letter.acker.ack(BasicAckOptions::default()).await?) }).await?;
        Ok(())
    }

    /// Closes the channel and the connection: RabbitMQ returns every message still held
    /// to the queue.
    pub async fn close(self) {
        let _ = self.channel.close(200, "done".into()).await;
        let _ = self.connection.close(200, "done".into()).await;
    }
}

/// Bounds one broker operation by [`BROKER_TIMEOUT`].
async fn bounded<T>(
    operation: impl Future<Output = Result<T, QueueError>>,
) -> Result<T, QueueError> {
    tokio::time::timeout(BROKER_TIMEOUT, operation)
        .await
        .map_err(|_| QueueError::Timeout(BROKER_TIMEOUT))?
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
