//! Rate limits: lock-free token buckets (GCRA, one atomic per bucket).
//!
//! A bucket holds one second of its rate. A request is admitted while its bucket is
//! not in debt, and is then charged what it actually carried (its events and bytes
//! are known only once the body is parsed), so a request larger than the burst still
//! passes when the bucket is full and the debt is paid back by waiting. A refusal
//! says how long until the bucket is out of debt: that is the `Retry-After`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A token bucket of `rate` units per second with one second of burst.
#[derive(Debug)]
pub struct Bucket {
    /// Nanoseconds of cost per unit.
    unit_nanos: f64,
    /// The theoretical arrival time: when the bucket will be full again, in
    /// nanoseconds since [`epoch`]. At most `BURST` ahead of now means "not in debt".
    tat: AtomicU64,
}

const BURST: u64 = 1_000_000_000;

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_nanos() -> u64 {
    epoch().elapsed().as_nanos() as u64
}

impl Bucket {
    pub fn new(rate_per_s: f64) -> Bucket {
        Bucket {
            unit_nanos: 1e9 / rate_per_s,
            tat: AtomicU64::new(0),
        }
    }

    /// `Err(wait)` while the bucket is in debt.
    pub fn check(&self) -> Result<(), Duration> {
        let now = now_nanos();
        let tat = self.tat.load(Ordering::Relaxed);
        if tat <= now + BURST {
            Ok(())
        } else {
            Err(Duration::from_nanos(tat - now - BURST))
        }
    }

    /// Charges `units` (which may put the bucket in debt).
    pub fn charge(&self, units: u64) {
        let cost = (units as f64 * self.unit_nanos) as u64;
        let now = now_nanos();
        let _ = self
            .tat
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |tat| {
                Some(tat.max(now).saturating_add(cost))
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_admits_its_burst_then_refuses_until_paid_back() {
        let b = Bucket::new(1000.0);
        for _ in 0..10 {
            assert!(b.check().is_ok());
            b.charge(100); // 10 x 100 = one second's worth: the burst
        }
        assert!(b.check().is_ok(), "exactly at the burst is not debt");
        b.charge(500);
        let wait = b.check().unwrap_err();
        assert!(
            wait > Duration::from_millis(400) && wait <= Duration::from_millis(500),
            "{wait:?}"
        );
        std::thread::sleep(wait + Duration::from_millis(5));
        assert!(b.check().is_ok());
    }
}
