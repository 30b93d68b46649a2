//! Exponential backoff with full jitter (the AWS architecture blog's "full jitter":
//! sleep a uniform random time in `[0, min(max, initial * 2^attempt)]`).

use std::time::Duration;

/// Retry delays for one delivery.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// Delays start near `initial` and grow to at most `max`.
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            initial,
            max,
            attempt: 0,
        }
    }

    /// The delay before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let cap = self
            .initial
            .saturating_mul(1u32.checked_shl(self.attempt.min(20)).unwrap_or(u32::MAX))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        // Full jitter, but never below a tenth of the cap, so a retry storm still spreads.
        let floor = cap / 10;
        floor + cap.saturating_sub(floor).mul_f64(fastrand::f64())
    }

    /// How many delays were handed out.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }
}
