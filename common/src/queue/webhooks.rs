//! Webhook jobs: their own exchange, work queue and retry queues, apart from the send
//! jobs', so a dead endpoint's backlog never sits in front of an SMS.
//!
//! ```text
//! {p}.webhooks (direct) ──"deliver"──► {p}.webhooks.deliver ──(worker)──► ack
//!      ▲ dead-letter on expiry
//! {p}.webhooks.retry.{n} ◄── the n-th retry, with its own (jittered) expiration
//! {p}.webhooks.dead      ◄── a job no worker can read, kept for an operator to look at
//! ```
//! One delay queue per step of the retry schedule: the messages of one queue all wait
//! about as long, so one rarely waits behind another (a message expires only at the
//! head of its queue).

use std::sync::Arc;
use std::time::Duration;

use lapin::options::{
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ExchangeKind};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use uuid::Uuid;

use super::connection::{BROKER_TIMEOUT, QueueError, connect};
use super::headers::REASON_HEADER;
use super::messages::MessageError;
use super::publisher::{PERSISTENT, publish_confirmed};
use crate::config::RabbitSettings;

/// Routing key of webhook jobs on their exchange.
pub const DELIVER_ROUTING_KEY: &str = "deliver";

/// The payload format version this build writes and reads.
const DELIVER_WEBHOOK_VERSION: u8 = 1;

/// "Make attempt `attempt` of this webhook delivery." The rest is read from Postgres.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliverWebhook {
    pub v: u8,
    pub delivery_id: Uuid,
    /// 1 for the first attempt.
    pub attempt: u32,
}

impl DeliverWebhook {
    /// The first attempt of a delivery.
    pub fn first(delivery_id: Uuid) -> Self {
        Self {
            v: DELIVER_WEBHOOK_VERSION,
            delivery_id,
            attempt: 1,
        }
    }

    /// The attempt after this one.
    pub fn next(self) -> Self {
        Self {
            attempt: self.attempt + 1,
            ..self
        }
    }

    /// The JSON body.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a struct of integers and a UUID always serialises")
    }

    /// Reads a JSON body.
    ///
    /// # Errors
    /// [`MessageError`] for malformed JSON or an unknown version.
    pub fn decode(body: &[u8]) -> Result<Self, MessageError> {
        let job: Self = serde_json::from_slice(body)?;
        if job.v != DELIVER_WEBHOOK_VERSION {
            return Err(MessageError::UnsupportedVersion(job.v));
        }
        Ok(job)
    }
}

/// The broker names of webhook jobs, under the deployment's prefix.
#[derive(Debug, Clone)]
pub struct WebhookQueueNames {
    pub exchange: String,
    pub deliver_queue: String,
    /// Jobs no worker can read: parked here with the reason, not dropped.
    pub dead_queue: String,
    retry_prefix: String,
}

impl WebhookQueueNames {
    pub fn new(prefix: &str) -> Self {
        Self {
            exchange: format!("{prefix}.webhooks"),
            deliver_queue: format!("{prefix}.webhooks.deliver"),
            dead_queue: format!("{prefix}.webhooks.dead"),
            retry_prefix: format!("{prefix}.webhooks.retry"),
        }
    }

    /// The delay queue of retry `step` (1 for the first retry).
    pub fn retry_queue(&self, step: usize) -> String {
        format!("{}.{step}", self.retry_prefix)
    }
}

fn text(value: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(value))
}

/// Declares the exchange, the work queue, the dead queue and `retry_steps` delay queues
/// (idempotent).
/// `expires` deletes unused queues after that long, for test deployments only.
///
/// # Errors
/// [`QueueError`] when the broker refuses a declaration.
pub async fn declare_webhooks(
    channel: &Channel,
    names: &WebhookQueueNames,
    retry_steps: usize,
    expires: Option<Duration>,
) -> Result<(), QueueError> {
    let arguments = |entries: &[(&str, AMQPValue)]| {
        let mut table = FieldTable::default();
        for (key, value) in entries {
            table.insert(ShortString::from(*key), value.clone());
        }
        if let Some(expires) = expires {
            let ms = i64::try_from(expires.as_millis()).unwrap_or(i64::MAX);
            table.insert("x-expires".into(), AMQPValue::LongLongInt(ms));
        }
        table
    };
    let durable_queue = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .exchange_declare(
            names.exchange.as_str().into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_declare(
            names.deliver_queue.as_str().into(),
            durable_queue,
            arguments(&[]),
        )
        .await?;
    channel
        .queue_bind(
            names.deliver_queue.as_str().into(),
            names.exchange.as_str().into(),
            DELIVER_ROUTING_KEY.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_declare(
            names.dead_queue.as_str().into(),
            durable_queue,
            arguments(&[]),
        )
        .await?;
    for step in 1..=retry_steps {
        channel
            .queue_declare(
                names.retry_queue(step).as_str().into(),
                durable_queue,
                arguments(&[
                    ("x-dead-letter-exchange", text(&names.exchange)),
                    ("x-dead-letter-routing-key", text(DELIVER_ROUTING_KEY)),
                ]),
            )
            .await?;
    }
    Ok(())
}

struct Link {
    // Kept so the connection lives as long as its channel.
    _connection: Connection,
    channel: Channel,
}

/// Publishes webhook jobs and retries, waiting for each confirm; reconnects on the next
/// publish after a failure.
pub struct WebhookPublisher {
    url: String,
    names: WebhookQueueNames,
    retry_steps: usize,
    expires: Option<Duration>,
    link: Mutex<Option<Arc<Link>>>,
}

impl WebhookPublisher {
    /// Connects, enables confirms and declares the webhook topology.
    ///
    /// # Errors
    /// [`QueueError`] when the broker cannot be reached.
    pub async fn connect(
        settings: &RabbitSettings,
        retry_steps: usize,
    ) -> Result<Self, QueueError> {
        let publisher = Self {
            url: settings.url.clone(),
            names: WebhookQueueNames::new(&settings.queue_prefix),
            retry_steps,
            expires: settings.queue_expires_secs.map(Duration::from_secs),
            link: Mutex::new(None),
        };
        publisher.channel().await?;
        Ok(publisher)
    }

    pub fn names(&self) -> &WebhookQueueNames {
        &self.names
    }

    async fn channel(&self) -> Result<Channel, QueueError> {
        let mut link = self.link.lock().await;
        if let Some(current) = link.as_ref()
            && current.channel.status().connected()
        {
            return Ok(current.channel.clone());
        }
        let opened = tokio::time::timeout(BROKER_TIMEOUT, async {
            let connection = connect(&self.url, "verify-webhooks-publisher").await?;
            let channel = connection.create_channel().await?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            declare_webhooks(&channel, &self.names, self.retry_steps, self.expires).await?;
            Ok::<_, QueueError>(Link {
                _connection: connection,
                channel,
            })
        })
        .await
        .map_err(|_| QueueError::Timeout(BROKER_TIMEOUT))??;
        let channel = opened.channel.clone();
        *link = Some(Arc::new(opened));
        Ok(channel)
    }

    /// Publishes a job to the work queue, or, with a `delay`, to the delay queue of
    /// retry `step`, from which it reaches the work queue once `delay` has passed.
    ///
    /// # Errors
    /// [`QueueError`] when the broker is unreachable, refuses the message or does not
    /// confirm within [`BROKER_TIMEOUT`].
    pub async fn publish(
        &self,
        job: &DeliverWebhook,
        delay: Option<(usize, Duration)>,
    ) -> Result<(), QueueError> {
        let mut properties = BasicProperties::default()
            .with_delivery_mode(PERSISTENT)
            .with_content_type("application/json".into())
            .with_message_id(job.delivery_id.to_string().into());
        let (exchange, routing_key) = match delay {
            None => (self.names.exchange.clone(), DELIVER_ROUTING_KEY.to_owned()),
            Some((step, delay)) => {
                properties = properties.with_expiration(delay.as_millis().to_string().into());
                (String::new(), self.names.retry_queue(step))
            }
        };
        self.send_confirmed(&exchange, &routing_key, &job.encode(), properties)
            .await
    }

    /// Parks a job no worker can read in the dead queue, body unchanged, with `reason`
    /// in its headers: acknowledging it without this would lose the only trace of it.
    ///
    /// # Errors
    /// As [`WebhookPublisher::publish`]; the caller then leaves the job where it was.
    pub async fn park_unreadable(&self, body: &[u8], reason: &str) -> Result<(), QueueError> {
        let mut headers = FieldTable::default();
        headers.insert(REASON_HEADER.into(), text(reason));
        let properties = BasicProperties::default()
            .with_delivery_mode(PERSISTENT)
            .with_headers(headers);
        let queue = self.names.dead_queue.clone();
        self.send_confirmed("", &queue, body, properties).await
    }

    /// Publishes `body` to the work queue exactly as given, as a broken or foreign
    /// producer would: for tests of unreadable jobs.
    ///
    /// # Errors
    /// As [`WebhookPublisher::publish`].
    #[cfg(feature = "test-support")]
    pub async fn publish_raw(&self, body: &[u8]) -> Result<(), QueueError> {
        let properties = BasicProperties::default().with_delivery_mode(PERSISTENT);
        let exchange = self.names.exchange.clone();
        self.send_confirmed(&exchange, DELIVER_ROUTING_KEY, body, properties)
            .await
    }

    /// Takes the next parked job off the dead queue: its body and the reason it was
    /// parked. For tests; operators read the queue with RabbitMQ's own tools.
    ///
    /// # Errors
    /// [`QueueError`] when the broker cannot be reached.
    #[cfg(feature = "test-support")]
    pub async fn take_parked(&self) -> Result<Option<(Vec<u8>, String)>, QueueError> {
        let channel = self.channel().await?;
        let message = channel
            .basic_get(
                self.names.dead_queue.as_str().into(),
                lapin::options::BasicGetOptions { no_ack: true },
            )
            .await?;
        Ok(message.map(|message| {
            let delivery = message.delivery;
            let reason = delivery
                .properties
                .headers()
                .as_ref()
                .and_then(|headers| super::headers::string(headers, REASON_HEADER))
                .unwrap_or_default();
            (delivery.data, reason)
        }))
    }

    /// Publishes and waits for the confirm; forgets the link after a failure, so the
    /// next publish reconnects.
    async fn send_confirmed(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<(), QueueError> {
        let result = tokio::time::timeout(BROKER_TIMEOUT, async {
            let channel = self.channel().await?;
            publish_confirmed(&channel, exchange, routing_key, body, properties).await
        })
        .await
        .map_err(|_| QueueError::Timeout(BROKER_TIMEOUT))
        .and_then(|inner| inner);
        if result.is_err() {
            *self.link.lock().await = None;
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::{DeliverWebhook, WebhookQueueNames};

    #[test]
    fn a_job_round_trips_and_its_next_attempt_keeps_the_delivery() {
        let job = DeliverWebhook::first(uuid::Uuid::new_v4());
        assert_eq!(DeliverWebhook::decode(&job.encode()).unwrap(), job);
        let next = job.next();
        assert_eq!((next.delivery_id, next.attempt), (job.delivery_id, 2));
    }

    #[test]
    fn names_carry_the_prefix() {
        let names = WebhookQueueNames::new("p");
        assert_eq!(names.deliver_queue, "p.webhooks.deliver");
        assert_eq!(names.retry_queue(3), "p.webhooks.retry.3");
        assert_eq!(names.dead_queue, "p.webhooks.dead");
    }
}
