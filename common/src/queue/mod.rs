//! RabbitMQ: the only module (with the worker's consumer) that uses lapin.
//!
//! - [`connection`]: connecting, the bound on every broker operation, and
//!   [`QueueError`].
//! - [`topology`]: exchange and queue names (with the deployment's prefix) and their
//!   declaration, including the retry delay queues and the dead-letter queue.
//! - [`messages`]: the job payload, versioned JSON that carries ids only, never a code.
//! - [`headers`]: what travels in a job's headers: its W3C `traceparent`, how often it
//!   was dead-lettered and replayed, and why, when and by whom it was dead-lettered.
//! - [`publisher`]: publishes jobs, retries and dead letters and waits for the broker's
//!   confirm, reconnecting after a lost connection.
//! - [`dead_letters`]: a browser that reads, replays or discards dead letters for
//!   operators.
//! - [`webhooks`]: webhook jobs on their own exchange and queues, their retry delay
//!   queues, and their confirming publisher.
//!
//! Each module uses only those listed before it, so none depends on this one.

pub mod connection;
pub mod dead_letters;
pub mod headers;
pub mod messages;
pub mod publisher;
pub mod topology;
pub mod webhooks;

pub use connection::{BROKER_TIMEOUT, QueueError, connect, queue_depth};
pub use dead_letters::{DeadLetter, DeadLetterBrowser};
pub use headers::{DeadLetterNote, JobHistory};
pub use messages::{MessageError, SendSms};
pub use publisher::SmsPublisher;
pub use topology::QueueNames;
