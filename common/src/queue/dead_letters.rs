//! The dead-letter queue for operators: reading, replaying and discarding its messages.
//!
//! A worker that gives up on a job republishes it, body unchanged, to `{p}.sms.dead`
//! with headers saying why (a [`DeadLetterNote`](super::DeadLetterNote), through
//! [`SmsPublisher::publish_dead`](super::SmsPublisher::publish_dead)), and only then
//! acks it. If that publish fails it nacks the job instead and RabbitMQ dead-letters it
//! with its own `x-death` header: the job is never lost, only less well described.
//!
//! [`DeadLetterBrowser`] reads the queue for `verify-worker dlq`. It takes messages with
//! `basic.get` and does not acknowledge them, so every message it neither replays nor
//! discards goes back to the queue, in its place, when the browser closes (or its
//! process dies).

use chrono::{DateTime, Utc};
use lapin::options::{BasicAckOptions, BasicGetOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{Acker, BasicProperties, Channel, Connection};

use super::connection::{QueueError, bounded, connect};
use super::headers::{
    DEAD_AT_HEADER, JobHistory, ORIGINAL_ROUTING_KEY_HEADER, REASON_CODE_HEADER, REASON_HEADER,
    WORKER_HEADER, broker_deaths, string, trace_parent, write_trace,
};
use super::publisher::{PERSISTENT, publish_confirmed};
use super::topology::{QueueNames, SEND_ROUTING_KEY, declare};
use crate::config::RabbitSettings;
use crate::domain::TraceParent;

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
    /// The trace of the request that asked for the send; a replay keeps it.
    pub trace: Option<TraceParent>,
    acker: Acker,
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
            trace: trace_parent(properties),
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
        let mut headers = history.to_headers();
        write_trace(&mut headers, letter.trace);
        let properties = BasicProperties::default()
            .with_delivery_mode(PERSISTENT)
            .with_content_type(ShortString::from("application/json"))
            .with_headers(headers);
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
