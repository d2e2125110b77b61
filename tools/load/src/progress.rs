//! The live progress line, printed to stderr once a second: plain lines that read the same
//! on a terminal, in a CI log or through a pipe.
//!
//! Deliveries during the run come from the sink's `/stats` counter (one tiny request a
//! second), not from listing messages, so watching costs the measured system nothing worth
//! counting. The counter covers every sender of the sink; the exact per-verification
//! figures come from the final matching.

use std::time::Duration;

use crate::latency::format_ms;
use crate::tally::Counters;

/// Which part of the run a line reports on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// POSTs are being sent.
    Sending,
    /// Sending is over; waiting for outstanding SMS.
    Draining,
}

/// What one progress line shows.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Snapshot {
    /// Since the run started.
    pub elapsed: Duration,
    /// Send-phase counters.
    pub counters: Counters,
    /// SMS the sink accepted since the run started; `None` when the sink did not answer.
    pub delivered: Option<u64>,
    /// API p99 over the last interval.
    pub recent_p99: Option<Duration>,
    /// `--check`: checks done.
    pub checked: Option<u64>,
}

/// One progress line; rates are per second over the interval since `previous`.
pub fn line(phase: Phase, now: &Snapshot, previous: &Snapshot) -> String {
    let secs = now
        .elapsed
        .saturating_sub(previous.elapsed)
        .as_secs_f64()
        .max(0.001);
    let rate = |now: u64, before: u64| now.saturating_sub(before) as f64 / secs;
    let c = &now.counters;
    let p = &previous.counters;
    let mut line = format!(
        "[{:>5.1}s {}] sent {} ({:.0}/s)  accepted {} ({:.0}/s)  errors {}  in flight {}",
        now.elapsed.as_secs_f64(),
        match phase {
            Phase::Sending => "send ",
            Phase::Draining => "drain",
        },
        c.sent,
        rate(c.sent, p.sent),
        c.accepted,
        rate(c.accepted, p.accepted),
        c.failed,
        c.in_flight,
    );
    match now.delivered {
        Some(delivered) => line.push_str(&format!(
            "  delivered {delivered} ({:.0}/s)",
            rate(delivered, previous.delivered.unwrap_or(delivered))
        )),
        None => line.push_str("  delivered ? (sink silent)"),
    }
    if let Some(checked) = now.checked {
        line.push_str(&format!("  checked {checked}"));
    }
    if let Some(p99) = now.recent_p99 {
        line.push_str(&format!(
            "  api p99 {} ms",
            format_ms(Some(p99.as_secs_f64() * 1_000.0))
        ));
    }
    line
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{Phase, Snapshot, line};
    use crate::tally::Counters;

    #[test]
    fn a_line_shows_totals_and_rates_over_the_last_interval() {
        let previous = Snapshot {
            elapsed: Duration::from_secs(1),
            counters: Counters {
                sent: 1_000,
                accepted: 990,
                failed: 10,
                in_flight: 0,
            },
            delivered: Some(900),
            ..Snapshot::default()
        };
        let now = Snapshot {
            elapsed: Duration::from_secs(2),
            counters: Counters {
                sent: 2_000,
                accepted: 1_980,
                failed: 12,
                in_flight: 8,
            },
            delivered: Some(1_850),
            recent_p99: Some(Duration::from_micros(12_345)),
            checked: Some(1_700),
        };
        assert_eq!(
            line(Phase::Sending, &now, &previous),
            "[  2.0s send ] sent 2000 (1000/s)  accepted 1980 (990/s)  errors 12  in flight 8  \
             delivered 1850 (950/s)  checked 1700  api p99 12.3 ms"
        );
    }

    #[test]
    fn a_silent_sink_is_shown_as_unknown() {
        let now = Snapshot {
            elapsed: Duration::from_secs(3),
            ..Snapshot::default()
        };
        let text = line(Phase::Draining, &now, &Snapshot::default());
        assert!(text.contains("drain"), "{text}");
        assert!(text.contains("delivered ? (sink silent)"), "{text}");
    }
}
