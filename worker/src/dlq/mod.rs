//! The operator's commands on the dead-letter queue (`verify-worker dlq list|replay`).
//!
//! - [`list`]: reads the queue without removing anything, as a table or JSON lines.
//! - [`replay`]: moves chosen jobs back to the work queue, re-arming their failed sends
//!   in Postgres while their verification is still open; the rest stay in the queue.
//! - `body`: how a job's body is shown to people.
//!
//! Why a job is dead-lettered is decided while delivering it (see
//! [`DeadLetterReason`](crate::outcome::DeadLetterReason)); the AMQP side lives in
//! `verify_common::queue::dead_letters`. Nothing here runs on the send path.

mod body;
pub mod list;
pub mod replay;

pub use list::{DeadLetterListing, ListedDeadLetter, list_dead_letters};
pub use replay::{
    ReplayError, ReplayOptions, ReplayReport, ReplaySelection, ReplayVerdict, SkipReason,
    replay_dead_letters,
};
