//! `verify-chaos`: the fault-injection suite. It runs the real `verify-api`,
//! `verify-worker` and `verify-sink` binaries against a private Postgres cluster and a
//! private RabbitMQ node on spare ports (never the machine's own services), drives steady
//! traffic, injects one kind of fault per scenario, and audits every accepted verification
//! against what the SMS sink received.
//!
//! - [`settings`]: command-line flags and the scenario names.
//! - [`process`]: child processes: run to completion, signal, kill with -9.
//! - [`postgres`]: the private Postgres cluster (initdb, start, stop, terminate sessions).
//! - [`rabbitmq`]: the private RabbitMQ node (own epmd, start, stop, close connections).
//! - [`stack`]: the system under test as processes, and the sink's fault controls.
//! - [`traffic`]: verifications at a fixed rate, every answer recorded.
//! - [`pumping`]: the SMS-pumping simulation: an attack and legitimate sign-ups at once.
//! - [`audit`]: the figures: lost, stuck, late, duplicated, refused, recovery time.
//! - [`harness`]: sets everything up once and restores health between scenarios.
//! - [`scenarios`]: the fault timelines and the guarantees each must keep.
//! - [`report`]: the table and the JSON.
#![forbid(unsafe_code)]

pub mod audit;
pub mod harness;
pub mod postgres;
pub mod process;
pub mod pumping;
pub mod rabbitmq;
pub mod report;
pub mod scenarios;
pub mod settings;
pub mod stack;
pub mod traffic;

pub use harness::Harness;
pub use settings::{ChaosSettings, ScenarioName};
