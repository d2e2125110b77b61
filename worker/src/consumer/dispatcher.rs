//! Running queued jobs one at a time on request (feature `test-support`): each job is
//! fetched with `basic.get` and goes through the same [`settle`] as in the consume loop,
//! so a test can run the pipeline until nothing is left instead of waiting and hoping.

use std::time::Duration;

use lapin::options::{BasicGetOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use verify_common::queue::topology::{RETRY_TIERS_MS, declare};
use verify_common::queue::{BROKER_TIMEOUT, QueueError, QueueNames, connect};

use super::{Consumer, settle};

/// Runs a worker's jobs one at a time on request instead of consuming them.
pub struct Dispatcher {
    consumer: Consumer,
    // Kept so the connection lives as long as its channel; both close when the
    // dispatcher is dropped.
    _connection: lapin::Connection,
    channel: lapin::Channel,
    names: QueueNames,
}

impl Dispatcher {
    /// Opens a channel of its own for `consumer`'s jobs and declares the topology.
    pub(crate) async fn open(consumer: Consumer) -> Result<Self, QueueError> {
        let names = QueueNames::new(&consumer.rabbit.queue_prefix);
        let connection = connect(&consumer.rabbit.url, "verify-worker-dispatcher").await?;
        let channel = connection.create_channel().await?;
        declare(
            &channel,
            &names,
            consumer.rabbit.queue_expires_secs.map(Duration::from_secs),
        )
        .await?;
        Ok(Self {
            consumer,
            _connection: connection,
            channel,
            names,
        })
    }

    /// Runs the next job of the work queue to its acknowledgement; `false` when the
    /// queue is empty.
    ///
    /// # Errors
    /// [`QueueError`] when RabbitMQ fails.
    pub async fn dispatch_one(&self) -> Result<bool, QueueError> {
        let message = tokio::time::timeout(
            BROKER_TIMEOUT,
            self.channel.basic_get(
                self.names.send_queue.as_str().into(),
                BasicGetOptions { no_ack: false },
            ),
        )
        .await
        .map_err(|_| QueueError::Timeout(BROKER_TIMEOUT))??;
        let Some(message) = message else {
            return Ok(false);
        };
        settle(
            message.delivery,
            &self.consumer.deps,
            &self.consumer.publisher,
            &self.consumer.identity,
        )
        .await;
        Ok(true)
    }

    /// Jobs waiting out a retry delay, over every delay queue. Nothing consumes those
    /// queues, so this counts every job in them.
    ///
    /// # Errors
    /// [`QueueError`] when RabbitMQ fails.
    pub async fn waiting_retries(&self) -> Result<u32, QueueError> {
        let mut waiting = 0;
        for tier in RETRY_TIERS_MS {
            let queue = self.names.retry_queue(tier);
            let declared = self
                .channel
                .queue_declare(
                    queue.as_str().into(),
                    QueueDeclareOptions {
                        passive: true,
                        ..QueueDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await?;
            waiting += declared.message_count();
        }
        Ok(waiting)
    }
}
