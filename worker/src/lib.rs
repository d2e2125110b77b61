//! Verify's send workers.
//!
//! A worker consumes send jobs from RabbitMQ, renders the message from the verification's
//! template, sends it through the configured provider, records the outcome in Postgres and
//! only then acknowledges the job. Any number of worker processes can share the queue.
//! Workers also deliver webhooks to producers, on a connection and concurrency limit of
//! their own.
//!
//! - [`startup`]: builds a worker from settings and runs it until shutdown.
//! - [`consumer`]: the consume loop, concurrency bound and acknowledgement policy (the
//!   only module that touches AMQP).
//! - [`deliver`]: one job start to finish, returning an [`Outcome`](outcome::Outcome);
//!   knows nothing of AMQP.
//! - [`outcome`]: what delivering decided: done, retry later, or dead-letter with a
//!   [`DeadLetterReason`](outcome::DeadLetterReason).
//! - [`metrics`]: the worker's Prometheus metrics and the `GET /metrics` it serves at
//!   `VERIFY_WORKER_METRICS_ADDR`.
//! - [`dlq`]: the operator's `verify-worker dlq list|replay`; off the send path.
//! - [`render`]: template rendering with the derived code, within the segment cap.
//! - [`retry`]: the backoff policy.
//! - [`providers`]: Twilio, generic HTTP/JSON and log-only providers.
//! - [`webhooks`]: webhooks to producers: the relay that publishes recorded events, and
//!   one signed attempt start to finish (consumed by [`consumer::webhooks`]).
//! - `testing` (feature `test-support`): the workers of a system under test, and a drain
//!   that runs the pipeline until nothing is left to do.
#![forbid(unsafe_code)]

pub mod consumer;
pub mod deliver;
pub mod dlq;
pub mod metrics;
pub mod outcome;
pub mod providers;
pub mod render;
pub mod retry;
pub mod startup;
#[cfg(feature = "test-support")]
pub mod testing;
pub mod webhooks;

pub use startup::{Worker, WorkerConfig};
