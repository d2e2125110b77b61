//! Waiting for Postgres or RabbitMQ at start-up.
//!
//! Processes and their dependencies start in no particular order (a compose stack, a
//! Kubernetes rollout, a machine rebooting), so a dependency that is not there yet is
//! waited for, with a log line per attempt, rather than treated as fatal. Only once the
//! patience runs out does start-up fail, naming the dependency.

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// First pause between attempts; it doubles up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(250);
const MAX_PAUSE: Duration = Duration::from_secs(5);

/// Calls `connect` until it succeeds or `patience` has passed, and returns its last result.
///
/// `is_transient` decides which errors are worth waiting out (a refused connection is;
/// a malformed URL is not).
///
/// # Errors
/// The last error, when `connect` never succeeded within `patience` or failed for good.
pub async fn wait_for<T, E, F, Fut>(
    what: &str,
    patience: Duration,
    is_transient: impl Fn(&E) -> bool,
    mut connect: F,
) -> Result<T, E>
where
    E: Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let give_up_at = Instant::now() + patience;
    let mut pause = FIRST_PAUSE;
    loop {
        match connect().await {
            Ok(value) => return Ok(value),
            Err(error) if is_transient(&error) && Instant::now() + pause < give_up_at => {
                tracing::warn!(%error, retry_in_ms = pause.as_millis() as u64, "waiting for {what}");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(MAX_PAUSE);
            }
            Err(error) => return Err(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    use super::wait_for;

    #[tokio::test(start_paused = true)]
    async fn a_dependency_that_comes_up_late_is_waited_for() {
        let calls = AtomicU32::new(0);
        let result: Result<u32, String> = wait_for(
            "the test dependency",
            Duration::from_secs(30),
            |_| true,
            || async {
                let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
                if n < 4 {
                    Err(format!("not yet ({n})"))
                } else {
                    Ok(n)
                }
            },
        )
        .await;
        assert_eq!(result, Ok(4));
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_ends_with_the_last_error_once_patience_runs_out() {
        let calls = AtomicU32::new(0);
        let result: Result<(), String> = wait_for(
            "the test dependency",
            Duration::from_secs(2),
            |_| true,
            || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err("connection refused".to_owned())
            },
        )
        .await;
        assert_eq!(result, Err("connection refused".to_owned()));
        // 250 + 500 + 1000 ms of pauses fit in 2 s; the next (2 s) does not.
        assert_eq!(calls.load(Ordering::SeqCst), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn a_permanent_error_is_not_waited_out() {
        let calls = AtomicU32::new(0);
        let result: Result<(), String> = wait_for(
            "the test dependency",
            Duration::from_secs(60),
            |_| false,
            || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err("malformed URL".to_owned())
            },
        )
        .await;
        assert!(result.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
