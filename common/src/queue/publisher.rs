//! Publishing jobs with publisher confirms.
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

use super::topology::{QueueNames, SEND_ROUTING_KEY, declare};
use super::{BROKER_TIMEOUT, QueueError, SendSms, connect};
use crate::config::RabbitSettings;

/// AMQP delivery mode 2: the broker writes the message to disk.
const PERSISTENT: u8 = 2;

struct Link {
    // Kept so the connection lives as long as its channel.
    _connection: Connection,
    channel: Channel,
}

/// Publishes send jobs and retries, waiting for each confirm.
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

    /// Publishes a job to the work queue and waits for the broker's confirm.
    ///
    /// # Errors
    /// [`QueueError`] when the broker is unreachable, refuses the message or does not
    /// confirm within [`BROKER_TIMEOUT`].
    pub async fn publish(&self, job: &SendSms) -> Result<(), QueueError> {
        self.publish_to(&self.names.exchange, SEND_ROUTING_KEY, job, None)
            .await
    }

    /// Publishes a job to the delay queue for `delay`; it reaches the work queue when the
    /// delay has passed.
    ///
    /// # Errors
    /// As [`SmsPublisher::publish`].
    pub async fn publish_delayed(&self, job: &SendSms, delay: Duration) -> Result<(), QueueError> {
        let queue = self.names.retry_queue_for(delay);
        self.publish_to("", &queue, job, Some(delay)).await
    }

    async fn publish_to(
        &self,
        exchange: &str,
        routing_key: &str,
        job: &SendSms,
        delay: Option<Duration>,
    ) -> Result<(), QueueError> {
        let result = tokio::time::timeout(
            BROKER_TIMEOUT,
            self.publish_once(exchange, routing_key, job, delay),
        )
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

    async fn publish_once(
        &self,
        exchange: &str,
        routing_key: &str,
        job: &SendSms,
        delay: Option<Duration>,
    ) -> Result<(), QueueError> {
        let channel = self.channel().await?;
        let mut properties = BasicProperties::default()
            .with_delivery_mode(PERSISTENT)
            .with_content_type("application/json".into())
            .with_message_id(job.delivery_id.to_string().into());
        if let Some(delay) = delay {
            properties = properties.with_expiration(delay.as_millis().to_string().into());
        }
        let confirmation = channel
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                // Mandatory: an unroutable job (queue deleted) comes back instead of
                // being silently dropped.
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                &job.encode(),
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

    /// Answers whether the broker is reachable, for readiness probes.
    ///
    /// # Errors
    /// [`QueueError`] when it is not.
    pub async fn ping(&self) -> Result<(), QueueError> {
        self.channel().await.map(drop)
    }
}
