//! The Verify HTTP API (warp).
//!
//! It validates requests, records verifications in Postgres, publishes send jobs to
//! RabbitMQ and answers at once; it checks codes against Postgres. It never talks to an
//! SMS provider: that is the workers' job.
//!
//! - [`startup`]: builds the application from settings and serves until shutdown.
//! - `server`: accepts and serves HTTP/1.1 connections under a cap, with header-read and
//!   idle deadlines, and stops gracefully.
//! - `trace`: each request's W3C trace (`traceparent` in and out) and the span its log
//!   lines are written in, with the trace id and the verification id.
//! - `abuse`: the abuse rules, allow list and blocks sends are judged by, cached and
//!   refreshed from Postgres, the velocity limits each send is counted under, and the
//!   counters of what the rules did.
//! - [`breaker`]: evaluates the conversion breaker in the background, one process at a
//!   time.
//! - [`expiry`]: notices expired verifications in the background, one process at a
//!   time, announcing each (`verification.expired`) and counting it.
//! - `receipts`: recording providers' delivery receipts (the one place a receipt changes
//!   a send), those held until their send is recorded, and Twilio's callback signature.
//! - `routes`: the native `/v1` API, PortaText-compatible routes, health probes, the
//!   table of every route ([`ENDPOINTS`]), the extractors they share (caller, bodies,
//!   ids) and the OpenAPI document of the native API ([`openapi_document`]).
//! - `operations`: what each request does, shared by both route shapes.
//! - `group_commit`: records concurrent start requests together, one statement per batch.
//! - `outbox`: publishing jobs after commit, and re-publishing any the broker never
//!   confirmed.
//! - `error`: `ApiError`, the one error type handlers return, and its JSON form.
//! - `metrics`: the names of the API's Prometheus metrics and the handles requests
//!   record through.
//! - `idempotency`: `Idempotency-Key` handling for start requests.
//! - `expiring`: the bounded, time-limited map behind the API's caches.
//! - `template_cache`: parsed templates for validating start requests without a query.
//! - `auth`: who is calling, from the API key a request presents; drops revoked keys.
//! - `notifications`: hears what other processes announce (key revocations, rule and
//!   block changes) on one Postgres session and hands it to `auth` and `abuse`.
//! - `body`, `state`, `views`: bounded JSON bodies, shared state and response
//!   representations.
#![forbid(unsafe_code)]

mod abuse;
mod auth;
mod body;
mod error;
mod expiring;
mod group_commit;
mod housekeeping;
mod idempotency;
mod metrics;
mod notifications;
mod operations;
mod outbox;
mod receipts;
mod routes;
mod server;
mod state;
mod template_cache;
mod trace;
mod views;

pub mod breaker;
pub mod expiry;
pub mod keys;
pub mod startup;

pub use routes::{ENDPOINTS, Endpoint, Family, openapi_document};
pub use startup::{ApiConfig, Application};
