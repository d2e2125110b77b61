//! Reaching RabbitMQ: connections, the bound on every broker operation, and
//! [`QueueError`], what can go wrong on the way.

use std::time::Duration;

use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};

/// Longest wait for a connection, a declaration or a publisher confirm.
pub const BROKER_TIMEOUT: Duration = Duration::from_secs(5);

/// What can go wrong talking to RabbitMQ.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("cannot reach RabbitMQ: {0}")]
    Connect(#[source] lapin::Error),
    #[error("RabbitMQ operation failed: {0}")]
    Broker(#[from] lapin::Error),
    #[error("RabbitMQ did not answer within {0:?}")]
    Timeout(Duration),
    #[error("RabbitMQ refused the message: {0}")]
    Rejected(String),
}

impl QueueError {
    /// True when the broker could not be reached at all (as opposed to refusing an
    /// operation): worth waiting out at start-up.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, Self::Connect(_) | Self::Timeout(_))
    }
}

/// Opens a connection named after the process role (shown in the management UI).
///
/// # Errors
/// [`QueueError::Connect`] or [`QueueError::Timeout`].
pub async fn connect(url: &str, name: &str) -> Result<Connection, QueueError> {
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    tokio::time::timeout(BROKER_TIMEOUT, Connection::connect(url, properties))
        .await
        .map_err(|_| QueueError::Timeout(BROKER_TIMEOUT))?
        .map_err(QueueError::Connect)
}

/// Messages ready in one queue (a passive declare: the queue must exist). Used to inspect
/// the dead-letter queue.
///
/// # Errors
/// [`QueueError`] when the broker is unreachable or the queue does not exist.
pub async fn queue_depth(url: &str, queue: &str) -> Result<u32, QueueError> {
    let connection = connect(url, "verify-inspect").await?;
    let channel = connection.create_channel().await?;
    let declared = channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    let _ = connection.close(200, "done".into()).await;
    Ok(declared.message_count())
}

/// Bounds one broker operation by [`BROKER_TIMEOUT`].
///
/// # Errors
/// The operation's own error, or [`QueueError::Timeout`].
pub(super) async fn bounded<T>(
    operation: impl Future<Output = Result<T, QueueError>>,
) -> Result<T, QueueError> {
    tokio::time::timeout(BROKER_TIMEOUT, operation)
        .await
        .map_err(|_| QueueError::Timeout(BROKER_TIMEOUT))?
}
