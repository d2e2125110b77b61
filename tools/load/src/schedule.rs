//! The open-loop timetable: when each request is due.
//!
//! Request `i` is due at `i / rate` seconds after the start, fixed in advance. Latency is
//! measured from that due time, not from when the request actually left, so a server that
//! stalls is charged for every request it delayed (no coordinated omission, as in wrk2).

use std::time::Duration;

/// Due times of the requests of one open-loop run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Schedule {
    rate: f64,
    total: u64,
}

impl Schedule {
    /// `rate` requests per second for `duration`: the requests due before `duration` ends,
    /// at least one.
    pub fn new(rate: f64, duration: Duration) -> Schedule {
        // Requests are due at i / rate for every i with i / rate < duration.
        let total = (rate * duration.as_secs_f64()).ceil().max(1.0) as u64;
        Schedule { rate, total }
    }

    /// How many requests the run sends.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// When request `index` is due, counted from the start.
    pub fn due(&self, index: u64) -> Duration {
        Duration::from_secs_f64(index as f64 / self.rate)
    }

    /// How many requests are due `elapsed` after the start (those due at or before it).
    pub fn due_by(&self, elapsed: Duration) -> u64 {
        let due = (elapsed.as_secs_f64() * self.rate).floor() as u64 + 1;
        due.min(self.total)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::Schedule;

    #[test]
    fn requests_are_spread_evenly_over_the_duration() {
        let schedule = Schedule::new(1_000.0, Duration::from_secs(2));
        assert_eq!(schedule.total(), 2_000);
        assert_eq!(schedule.due(0), Duration::ZERO);
        assert_eq!(schedule.due(1), Duration::from_millis(1));
        assert_eq!(schedule.due(1_500), Duration::from_millis(1_500));
    }

    #[test]
    fn due_by_counts_the_requests_whose_time_has_come() {
        let schedule = Schedule::new(10.0, Duration::from_secs(1));
        assert_eq!(schedule.due_by(Duration::ZERO), 1);
        assert_eq!(schedule.due_by(Duration::from_millis(99)), 1);
        assert_eq!(schedule.due_by(Duration::from_millis(100)), 2);
        assert_eq!(schedule.due_by(Duration::from_millis(950)), 10);
        assert_eq!(schedule.due_by(Duration::from_secs(60)), 10);
    }

    #[test]
    fn a_slow_rate_still_sends_once() {
        let schedule = Schedule::new(0.1, Duration::from_secs(1));
        assert_eq!(schedule.total(), 1);
        assert_eq!(Schedule::new(2.5, Duration::from_secs(1)).total(), 3);
    }
}
