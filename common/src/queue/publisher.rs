//! Publishing jobs, retries and dead letters with publisher confirms.
//!
//! A job counts as published only when the broker confirms it (it is then on disk for a
//! durable queue). The publisher keeps one connection and one confirm-mode channel; any
//! failure drops them and the next publish reconnects, so a broker restart heals without
//! restarting the process. Concurrent publishes share the channel: lapin matches each
//! confirm to its own publish.

use std::sync::Arc;
use std::time::Duration;

use lapin::Confirmation;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Connection};
use tokio::sync::{Mutex, RwLock};

use super::connection::{BROKER_TIMEOUT, QueueError, connect};
use super::headers::{DeadLetterNote, JobHistory, trace_parent, write_trace};
use super::messages::SendSms;
use super::topology::{QueueNames, SEND_ROUTING_KEY, declare};
use crate::config::RabbitSettings;

/// AMQP delivery mode 2: the broker writes the message to disk.
pub(super) const PERSISTENT: u8 = 2;

struct Link {
    // Kept so the connection lives as long as its channel.
    _connection: Connection,
    channel: Channel,
}

/// Publishes send jobs, retries and dead letters, waiting for each confirm.
pub struct SmsPublisher {
    url: String,
    connection_name: String,
    names: QueueNames,
    expires: Option<Duration>,
    link: RwLock<Option<Arc<Link>>>,
    reconnecting: Mutex<()>,
}

impl SmsPublisher {
    /// Connects, enables confirms and declares the topology.
    ///
    /// # Errors
    /// [`QueueError`] when the broker cannot be reached.
    pub async fn connect(
        settings: &RabbitSettings,
        connection_name: &str,
    ) -> Result<Self, QueueError> {
        let publisher = Self {
            url: settings.url.clone(),
            connection_name: connection_name.to_owned(),
            names: QueueNames::new(&settings.queue_prefix),
            expires: settings.queue_expires_secs.map(Duration::from_secs),
            link: RwLock::new(None),
            reconnecting: Mutex::new(()),
        };
        publisher.channel().await?;
        Ok(publisher)
    }

    /// The names this publisher publishes to.
    pub fn names(&self) -> &QueueNames {
        &self.names
    }

    async fn channel(&self) -> Result<Channel, QueueError> {
        if let Some(link) = self.link.read().await.as_ref()
            && link.channel.status().connected()
        {
            return Ok(link.channel.clone());
        }
        // One task reconnects; the others wait here and then reuse its link.
        let _reconnecting = self.reconnecting.lock().await;
        if let Some(link) = self.link.read().await.as_ref()
            && link.channel.status().connected()
        {
            return Ok(link.channel.clone());
        }
        let link = tokio::time::timeout(BROKER_TIMEOUT, self.open_link())
            .await
            .map_err(|_| QueueError::Timeout(BROKER_TIMEOUT))??;
        let channel = link.channel.clone();
        *self.link.write().await = Some(Arc::new(link));
        Ok(channel)
    }

    async fn open_link(&self) -> Result<Link, QueueError> {
        let connection = connect(&self.url, &self.connection_name).await?;
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        declare(&channel, &self.names, self.expires).await?;
        Ok(Link {
            _connection: connection,
            channel,
        })
    }

    async fn forget_link(&self) {
        *self.link.write().await = None;
    }

    /// Publishes a job to the work queue, its trace in the `traceparent` header, and
    /// waits for the broker's confirm.
    ///
    /// # Errors
    /// [`QueueError`] when the broker is unreachable, refuses the message or does not
    /// confirm within [`BROKER_TIMEOUT`].
    pub async fn publish(&self, job: &SendSms) -> Result<(), QueueError> {
        self.publish_to(
            &self.names.exchange,
            SEND_ROUTING_KEY,
            &job.encode(),
            job_properties(job).with_headers(job_headers(job, JobHistory::default())),
        )
        .await
    }

    /// Publishes a job to the delay queue for `delay`; it reaches the work queue when the
    /// delay has passed. `history` and the job's trace travel with it, so a replayed job
    /// that is retried still counts its replays and stays in its trace.
    ///
    /// # Errors
    /// As [`SmsPublisher::publish`].
    pub async fn publish_delayed(
        &self,
        job: &SendSms,
        delay: Duration,
        history: JobHistory,
    ) -> Result<(), QueueError> {
        let queue = self.names.retry_queue_for(delay);
        let properties = job_properties(job)
            .with_expiration(delay.as_millis().to_string().into())
            .with_headers(job_headers(job, history));
        self.publish_to("", &queue, &job.encode(), properties).await
    }

    /// Publishes a message the worker gives up on to the dead-letter queue, its body
    /// byte for byte (it may be unreadable, and must stay inspectable) and `note` in its
    /// headers. `original` are the message's own properties: its id, content type,
    /// history and trace are kept.
    ///
    /// # Errors
    /// As [`SmsPublisher::publish`]; the caller then lets RabbitMQ dead-letter the
    /// message itself, so it is not lost.
    pub async fn publish_dead(
        &self,
        body: &[u8],
        original: &BasicProperties,
        note: &DeadLetterNote<'_>,
    ) -> Result<(), QueueError> {
        let mut headers = note.to_headers(JobHistory::from_properties(original));
        write_trace(&mut headers, trace_parent(original));
        let mut properties = BasicProperties::default()
            .with_delivery_mode(PERSISTENT)
            .with_headers(headers);
        if let Some(content_type) = original.content_type() {
            properties = properties.with_content_type(content_type.clone());
        }
        if let Some(message_id) = original.message_id() {
            properties = properties.with_message_id(message_id.clone());
        }
        self.publish_to(
            &self.names.dead_exchange,
            note.original_routing_key,
            body,
            properties,
        )
        .await
    }

    /// Publishes `body` to the work queue exactly as given, as a broken or foreign
    /// producer would: for tests of unreadable jobs.
    ///
    /// # Errors
    /// As [`SmsPublisher::publish`].
    #[cfg(feature = "test-support")]
    pub async fn publish_raw(&self, body: &[u8]) -> Result<(), QueueError> {
        let properties = BasicProperties::default().with_delivery_mode(PERSISTENT);
        self.publish_to(&self.names.exchange, SEND_ROUTING_KEY, body, properties)
            .await
    }

    async fn publish_to(
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
        if matches!(
            result,
            Err(QueueError::Broker(_) | QueueError::Connect(_) | QueueError::Timeout(_))
        ) {
            self.forget_link().await;
        }
        result
    }

    /// Answers whether the broker is reachable, for readiness probes.
    ///
    /// # Errors
    /// [`QueueError`] when it is not.
    pub async fn ping(&self) -> Result<(), QueueError> {
        self.channel().await.map(drop)
    }
}

/// Properties of a job message: persistent, JSON, identified by its delivery.
pub(super) fn job_properties(job: &SendSms) -> BasicProperties {
    BasicProperties::default()
        .with_delivery_mode(PERSISTENT)
        .with_content_type("application/json".into())
        .with_message_id(job.delivery_id.to_string().into())
}

/// The headers of a job message: its history and its trace.
fn job_headers(job: &SendSms, history: JobHistory) -> lapin::types::FieldTable {
    let mut headers = history.to_headers();
    write_trace(&mut headers, job.trace);
    headers
}

/// Publishes on a confirm-mode channel and waits for the broker's confirm (no timeout of
/// its own: callers bound it).
///
/// # Errors
/// [`QueueError::Broker`] when the channel fails; [`QueueError::Rejected`] for a negative
/// confirm or an unroutable message.
pub(super) async fn publish_confirmed(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    properties: BasicProperties,
) -> Result<(), QueueError> {
    let confirmation = channel
        .basic_publish(
            exchange.into(),
            routing_key.into(),
            // Mandatory: an unroutable message (queue deleted) comes back instead of being
            // silently dropped.
            BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            },
            body,
            properties,
        )
        .await?
        .await?;
    match confirmation {
        Confirmation::Ack(None) => Ok(()),
        Confirmation::Ack(Some(returned)) => Err(QueueError::Rejected(format!(
            "unroutable: {}",
            returned.reply_text
        ))),
        Confirmation::Nack(_) => Err(QueueError::Rejected("negative confirm".to_owned())),
        Confirmation::NotRequested => {
            Err(QueueError::Rejected("confirms are not enabled".to_owned()))
        }
    }
}
