//! Everything the Verify API and the send workers share.
//!
//! - [`config`]: settings sections read from flags and environment variables.
//! - [`telemetry`]: tracing set-up for the binaries.
//! - [`domain`]: types that cannot hold invalid values (phone numbers, codes, templates,
//!   verification and delivery states, delivery receipts, webhook endpoints and
//!   signatures, stats windows and duration histograms, W3C trace contexts) and the rules
//!   between them.
//! - [`dependency`]: waiting for Postgres and RabbitMQ at start-up instead of failing.
//! - [`db`]: the only place that speaks SQL; pools, migrations and one module per table.
//! - [`group_commit`]: many callers' writes recorded by one statement, each with its own
//!   result.
//! - [`queue`]: the only place (with the worker's consumer) that speaks AMQP; topology,
//!   job messages, the confirming publisher and the dead-letter queue's headers and
//!   browser.
//! - [`metrics`]: one Prometheus registry per application and the Postgres pool gauges;
//!   the names each crate records live in that crate.
//!
//! Nothing here knows about HTTP: the API crate turns these errors into responses.
#![forbid(unsafe_code)]

pub mod config;
pub mod db;
pub mod dependency;
pub mod domain;
pub mod group_commit;
pub mod metrics;
pub mod queue;
pub mod telemetry;
#[cfg(any(test, feature = "test-support"))]
pub mod testing;
