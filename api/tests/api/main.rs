//! Integration tests of the whole system: API, worker and fake provider in one process,
//! real Postgres and RabbitMQ.
#![allow(clippy::unwrap_used)]

mod abuse;
mod abuse_blocks;
mod abuse_velocity;
mod auth;
mod bad_inputs;
mod checks;
mod connections;
mod expiry;
mod health;
mod helpers;
mod idempotency;
mod message_length;
mod metrics;
mod modules;
mod openapi;
mod outbox;
mod portatext;
mod receipts;
mod startup;
mod stats;
mod templates;
mod timeline;
mod verifications;
mod webhooks;
