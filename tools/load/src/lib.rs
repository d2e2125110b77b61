//! `verify-load`: drives Verify's HTTP API with verification requests and checks, through
//! the fake SMS provider, that every accepted one really sent its SMS.
//!
//! A run POSTs `/v1/verifications` open loop (a fixed rate on a fixed schedule, latency
//! counted from each request's due time) or closed loop (a fixed number in flight), each to
//! a phone number of its own, then waits for the SMS at verify-sink and matches them to the
//! accepted verifications. With `--check` it also reads each code from its SMS and checks
//! it. The report gives throughput, losses, duplicates, errors by status and HDR latency
//! percentiles, as a table and as JSON for scripts.
//!
//! Modules:
//! - [`settings`]: flags and environment variables, duration parsing.
//! - [`numbers`]: distinct, valid, run-unique phone numbers.
//! - [`schedule`]: the open-loop timetable.
//! - [`signals`]: the end-user signals (`client_ip`, `client_id`) of `--client-signals`.
//! - [`client`]: typed calls to the API and the sink; failure classification.
//! - [`clock`]: relating the tool's monotonic clock to the sink's wall-clock stamps.
//! - [`tally`]: what the send phase records.
//! - [`delivery`]: matching SMS at the sink to accepted verifications.
//! - [`check`]: the `--check` path.
//! - [`latency`]: HDR histograms and their millisecond summaries.
//! - [`progress`]: the once-a-second progress line.
//! - [`report`]: the JSON document, the summary table and the verdict.
//! - `run`: one run from preflight to report.
#![forbid(unsafe_code)]

pub mod check;
pub mod client;
pub mod clock;
pub mod delivery;
pub mod latency;
pub mod numbers;
pub mod progress;
pub mod report;
mod run;
pub mod schedule;
pub mod settings;
pub mod signals;
pub mod tally;

pub use crate::report::Report;
pub use crate::run::run;
pub use crate::settings::LoadSettings;
