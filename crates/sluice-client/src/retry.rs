//! Retries: which failures, how long to wait, and when to give up.
//!
//! A retryable failure (429, 503, gRPC `RESOURCE_EXHAUSTED` / `UNAVAILABLE`, or a
//! connection that could not be made) is retried after the server's `Retry-After`
//! (plus up to 10 % jitter, so a crowd of clients does not come back in step) or,
//! when the server named no delay, after an exponential backoff with jitter. The
//! budget stops it: at most `max_retries` retries, and no wait that would end past
//! `max_elapsed` from the first attempt; then the last error is returned.

use std::future::Future;
use std::time::{Duration, Instant};

use crate::error::ClientError;

/// How a request is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt (0: never retry). Default 3.
    pub max_retries: u32,
    /// The first backoff when the server gave no `Retry-After`. Default 100 ms.
    pub initial_backoff: Duration,
    /// The longest backoff (not a cap on `Retry-After`). Default 5 s.
    pub max_backoff: Duration,
    /// No retry starts later than this after the first attempt. Default 30 s.
    pub max_elapsed: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 3,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            max_elapsed: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// Never retry.
    pub fn none() -> RetryPolicy {
        RetryPolicy {
            max_retries: 0,
            ..RetryPolicy::default()
        }
    }

    /// The wait before retry number `retry` (0-based): at least the server's delay.
    pub fn delay(&self, retry: u32, server: Option<Duration>) -> Duration {
        match server {
            Some(d) => d + jitter(d / 10),
            None => {
                let exp = self
                    .initial_backoff
                    .saturating_mul(1u32.checked_shl(retry.min(31)).unwrap_or(u32::MAX));
                let cap = exp.min(self.max_backoff);
                cap / 2 + jitter(cap / 2)
            }
        }
    }

    /// Runs `attempt` until it succeeds, fails for good, or the budget is spent.
    /// Returns the outcome, the number of attempts and the time spent waiting.
    pub async fn run<T, F, Fut>(&self, mut attempt: F) -> (Result<T, ClientError>, u32, Duration)
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<T, ClientError>>,
    {
        let start = Instant::now();
        let mut waited = Duration::ZERO;
        let mut n = 0;
        loop {
            n += 1;
            let err = match attempt(n).await {
                Ok(v) => return (Ok(v), n, waited),
                Err(e) => e,
            };
            let retry = n - 1;
            if !err.is_retryable() || retry >= self.max_retries {
                return (Err(err), n, waited);
            }
            let delay = self.delay(retry, err.retry_after());
            if start.elapsed() + delay > self.max_elapsed {
                return (Err(err), n, waited);
            }
            tracing::debug!(
                error = %err,
                kind = %err.kind(),
                attempt = n,
                delay_ms = delay.as_millis() as u64,
                "request failed, retrying"
            );
            tokio::time::sleep(delay).await;
            waited += delay;
        }
    }
}

/// A uniformly random duration in `[0, max]`.
fn jitter(max: Duration) -> Duration {
    let nanos = max.as_nanos().min(u64::MAX as u128) as u64;
    Duration::from_nanos(fastrand::u64(0..=nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_delay_is_a_floor() {
        let p = RetryPolicy::default();
        for r in 0..5 {
            let d = p.delay(r, Some(Duration::from_secs(1)));
            assert!(
                d >= Duration::from_secs(1) && d <= Duration::from_millis(1100),
                "{d:?}"
            );
        }
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = RetryPolicy::default();
        assert!(p.delay(0, None) <= Duration::from_millis(100));
        assert!(p.delay(0, None) >= Duration::from_millis(50));
        assert!(p.delay(20, None) <= Duration::from_secs(5));
        assert!(p.delay(20, None) >= Duration::from_millis(2500));
    }
}
