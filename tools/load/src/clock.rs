//! One start time in two clocks: the monotonic one the tool schedules and measures with,
//! and the wall clock the sink stamps arrivals with.
//!
//! End-to-end latency is the sink's `received_at` minus the wall-clock time of a request's
//! send. That is only meaningful when the sink and this tool read the same clock: run them
//! on one machine (or in one compose project on one host). The wall clock is read once at
//! the start and the monotonic clock carries it forward, so a clock step during a run
//! cannot produce a negative or jumping latency on the tool's side.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

/// The run's start in both clocks.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    start: Instant,
    start_wall: DateTime<Utc>,
}

impl Clock {
    /// Reads both clocks now.
    pub fn start() -> Clock {
        Clock {
            start: Instant::now(),
            start_wall: Utc::now(),
        }
    }

    /// The monotonic start.
    pub fn started(&self) -> Instant {
        self.start
    }

    /// The wall-clock start.
    pub fn started_wall(&self) -> DateTime<Utc> {
        self.start_wall
    }

    /// The wall-clock time of `at`, an instant of this run.
    pub fn wall(&self, at: Instant) -> DateTime<Utc> {
        let since = at.saturating_duration_since(self.start);
        chrono::Duration::from_std(since)
            .ok()
            .and_then(|since| self.start_wall.checked_add_signed(since))
            .unwrap_or(DateTime::<Utc>::MAX_UTC)
    }
}

/// `later - earlier` as a duration, or `None` when `later` is earlier (clocks that
/// disagree).
pub fn between(earlier: DateTime<Utc>, later: DateTime<Utc>) -> Option<Duration> {
    (later - earlier).to_std().ok()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{Clock, between};

    #[test]
    fn instants_map_to_wall_time_by_their_offset_from_the_start() {
        let clock = Clock::start();
        let later = clock.started() + Duration::from_millis(1_500);
        let wall = clock.wall(later);
        assert_eq!(
            between(clock.started_wall(), wall),
            Some(Duration::from_millis(1_500))
        );
        assert_eq!(between(wall, clock.started_wall()), None);
    }
}
