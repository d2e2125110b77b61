//! When to try a failed send again: exponential backoff with jitter, from one policy.

use std::time::Duration;

use backoff::SystemClock;
use backoff::backoff::Backoff;
use backoff::exponential::ExponentialBackoff;
use verify_common::config::WorkerSettings;

/// Exponential backoff from `base`, doubling, capped at `cap`, each delay spread by
/// ±`jitter`, at most `max_attempts` provider attempts in all.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub base: Duration,
    pub cap: Duration,
    pub jitter: f64,
}

impl RetryPolicy {
    pub fn from_settings(settings: &WorkerSettings) -> Self {
        Self {
            max_attempts: settings.retry_max_attempts.max(1),
            base: Duration::from_millis(settings.retry_base_ms),
            cap: Duration::from_millis(settings.retry_cap_ms),
            jitter: settings.retry_jitter.clamp(0.0, 1.0),
        }
    }

    /// The delay before the attempt after attempt number `attempt` (1 = after the first).
    pub fn delay_for(&self, attempt: u32) -> Duration {
        let mut schedule: ExponentialBackoff<SystemClock> = ExponentialBackoff {
            current_interval: self.base,
            initial_interval: self.base,
            randomization_factor: self.jitter,
            multiplier: 2.0,
            max_interval: self.cap,
            max_elapsed_time: None,
            ..ExponentialBackoff::default()
        };
        let mut delay = self.base;
        for _ in 0..attempt.max(1) {
            delay = schedule.next_backoff().unwrap_or(self.cap);
        }
        delay
    }

    /// True when `attempt` attempts have used up the budget.
    pub fn exhausted(&self, attempt: u32) -> bool {
        attempt >= self.max_attempts
    }
}

#[cfg(test)]
mod tests {
    use super::RetryPolicy;
    use std::time::Duration;

    fn policy(jitter: f64) -> RetryPolicy {
        RetryPolicy {
            max_attempts: 5,
            base: Duration::from_millis(1_000),
            cap: Duration::from_millis(10_000),
            jitter,
        }
    }

    #[test]
    fn without_jitter_delays_double_from_the_base_up_to_the_cap() {
        let p = policy(0.0);
        let delays: Vec<u128> = (1..=6).map(|a| p.delay_for(a).as_millis()).collect();
        assert_eq!(delays, [1_000, 2_000, 4_000, 8_000, 10_000, 10_000]);
    }

    #[test]
    fn jitter_stays_within_its_fraction() {
        let p = policy(0.2);
        for attempt in 1..=3u32 {
            let nominal = 1_000.0 * 2f64.powi(attempt as i32 - 1);
            for _ in 0..200 {
                let ms = p.delay_for(attempt).as_millis() as f64;
                assert!(
                    ms >= nominal * 0.8 - 1.0 && ms <= nominal * 1.2 + 1.0,
                    "{attempt}: {ms}"
                );
            }
        }
    }

    #[test]
    fn the_budget_is_spent_after_max_attempts() {
        let p = policy(0.0);
        assert!(!p.exhausted(4));
        assert!(p.exhausted(5));
    }
}
