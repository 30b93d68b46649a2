//! Rate limits: lock-free token buckets (GCRA, one atomic per bucket).
//!
//! A bucket holds one second of its rate. A request is admitted while its bucket is
//! not in debt, and pays what it actually carried (its events and bytes are known
//! only once the body is parsed), so a request larger than the burst still passes
//! when the bucket is full and the debt is paid back by waiting. A refusal says how
//! long until the bucket is out of debt: that is the `Retry-After`.
//!
//! Invariants:
//! - [`Bucket::try_charge`] checks and charges in one compare-and-swap, so requests
//!   that arrive together cannot all see "not in debt" and then all pay: of several
//!   concurrent requests larger than the burst, at most one is admitted.
//! - The debt never exceeds one request's cost plus the burst, so a key is never
//!   locked out for longer than the `Retry-After` it was told.
//! - [`Bucket::check`] (before the body) is only a hint that saves reading a body
//!   that would be refused; `try_charge` is the decision.

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

    /// Charges `units` if the bucket is not in debt (which may put it in debt), in one
    /// atomic step; `Err(wait)` (nothing charged) while it is in debt.
    pub fn try_charge(&self, units: u64) -> Result<(), Duration> {
        let cost = self.cost(units);
        let now = now_nanos();
        let mut wait = Duration::ZERO;
        self.tat
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |tat| {
                if tat > now + BURST {
                    wait = Duration::from_nanos(tat - now - BURST);
                    None
                } else {
                    Some(tat.max(now).saturating_add(cost))
                }
            })
            .map(drop)
            .map_err(|_| wait)
    }

    /// Gives back `units` charged by a [`Bucket::try_charge`] whose request was then
    /// refused by another bucket.
    pub fn refund(&self, units: u64) {
        let cost = self.cost(units);
        let now = now_nanos();
        let _ = self
            .tat
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |tat| {
                Some(tat.saturating_sub(cost).max(now.min(tat)))
            });
    }

    fn cost(&self, units: u64) -> u64 {
        (units as f64 * self.unit_nanos) as u64
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
            b.try_charge(100).unwrap(); // 10 x 100 = one second's worth: the burst
        }
        assert!(b.check().is_ok(), "exactly at the burst is not debt");
        b.try_charge(500).unwrap();
        let wait = b.check().unwrap_err();
        let refused = b.try_charge(1).unwrap_err();
        assert!(refused <= wait, "{refused:?} vs {wait:?}");
        assert!(
            wait > Duration::from_millis(400) && wait <= Duration::from_millis(500),
            "{wait:?}"
        );
        std::thread::sleep(wait + Duration::from_millis(5));
        assert!(b.check().is_ok());
    }

    #[test]
    fn concurrent_requests_larger_than_the_burst_admit_one() {
        let b = std::sync::Arc::new(Bucket::new(100.0));
        let admitted: usize = (0..20)
            .map(|_| {
                let b = b.clone();
                std::thread::spawn(move || b.try_charge(1000).is_ok())
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| usize::from(t.join().unwrap()))
            .sum();
        assert_eq!(admitted, 1);
        // The debt is that one request's: ten seconds less the one-second burst.
        let wait = b.check().unwrap_err();
        assert!(wait > Duration::from_millis(8_900) && wait <= Duration::from_secs(9));
    }

    #[test]
    fn a_refund_gives_back_a_charge() {
        let b = Bucket::new(100.0);
        b.try_charge(1000).unwrap();
        assert!(b.check().is_err());
        b.refund(1000);
        assert!(b.check().is_ok());
        b.try_charge(50).unwrap();
        b.try_charge(50).unwrap();
        assert!(
            b.check().is_ok(),
            "refunding did not leave credit beyond the burst"
        );
    }
}
