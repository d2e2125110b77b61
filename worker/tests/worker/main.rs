//! Integration tests of the worker: jobs published as the API publishes them, run
//! through the real Postgres and RabbitMQ to the fake provider, without the HTTP API.
#![allow(clippy::unwrap_used)]

mod dead_letters;
mod delivery;
mod helpers;
mod metrics;
mod replay;
mod retries;
