//! The node-wide budget of decoded bytes in flight (`http.max_inflight_bytes`).
//!
//! `http.max_concurrent_requests` bounds how many requests are served at once, not
//! how much memory they hold: 4,096 full bodies of `http.max_body_bytes` would be
//! 40 GiB. Every request therefore charges what it holds while it is read,
//! decompressed and decoded — the bytes received, the bytes decompressed, and
//! [`EVENT_MEMORY_BYTES`] per event — to one shared budget, and gives it back when
//! it is done. A request whose next charge does not fit is refused with 429
//! `overloaded` and `Retry-After`, having cost only what it held so far.
//!
//! Invariants: `used` is the sum of the `held` of every live [`Charge`]; a charge
//! that does not fit adds nothing; dropping a [`Charge`] releases all it holds.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;

use crate::error::ApiError;

/// What one decoded event costs in memory beyond its bytes in the body: the
/// `Event` (id, stream, key, headers, payload handle, ~140 bytes), its generated
/// 36-byte id, its protobuf form on gRPC, and its framing in the encoded record
/// (up to ~200 bytes), rounded up.
pub const EVENT_MEMORY_BYTES: u64 = 384;

/// What one decoded gRPC header entry costs beyond its bytes: two `String`s in a
/// map and then in a vector, and 8 bytes of record framing.
pub const HEADER_MEMORY_BYTES: u64 = 128;

/// The budget.
#[derive(Debug)]
pub struct Budget {
    limit: u64,
    used: AtomicU64,
}

impl Budget {
    /// A budget of `limit` bytes.
    pub fn new(limit: u64) -> Arc<Budget> {
        Arc::new(Budget {
            limit,
            used: AtomicU64::new(0),
        })
    }

    /// Bytes charged right now.
    pub fn in_use(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// An empty charge on this budget.
    pub fn charge(self: &Arc<Budget>) -> Charge {
        Charge {
            budget: self.clone(),
            held: 0,
        }
    }
}

/// Bytes one request (or one gRPC message) holds; released on drop.
#[derive(Debug)]
pub struct Charge {
    budget: Arc<Budget>,
    held: u64,
}

impl Charge {
    /// Adds `n` bytes, or refuses with 429 `overloaded` (adding nothing) when the
    /// node-wide budget has no room for them.
    pub fn add(&mut self, n: u64) -> Result<(), ApiError> {
        let b = &self.budget;
        let fits = b
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|&total| total <= b.limit)
            });
        if fits.is_err() {
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "overloaded",
                format!(
                    "the node holds http.max_inflight_bytes ({} bytes) of requests being decoded; retry later",
                    b.limit
                ),
            )
            .retry_after(Duration::from_secs(1)));
        }
        self.held += n;
        Ok(())
    }

    /// Gives back up to `n` of the bytes held (a buffer that was freed).
    pub fn release(&mut self, n: u64) {
        let n = n.min(self.held);
        self.held -= n;
        self.budget.used.fetch_sub(n, Ordering::AcqRel);
    }

    /// Takes over what `other` holds.
    pub fn absorb(&mut self, mut other: Charge) {
        debug_assert!(Arc::ptr_eq(&self.budget, &other.budget));
        self.held += std::mem::take(&mut other.held);
    }

    /// Moves up to `n` of the bytes held into a charge of their own.
    pub fn split_off(&mut self, n: u64) -> Charge {
        let n = n.min(self.held);
        self.held -= n;
        Charge {
            budget: self.budget.clone(),
            held: n,
        }
    }

    /// Bytes held.
    pub fn held(&self) -> u64 {
        self.held
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        if self.held > 0 {
            self.budget.used.fetch_sub(self.held, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn charges_fit_until_spent_and_come_back_on_drop() {
        let b = Budget::new(100);
        let mut one = b.charge();
        one.add(60).unwrap();
        let mut two = b.charge();
        let e = two.add(50).unwrap_err();
        assert_eq!((e.status.as_u16(), e.code), (429, "overloaded"));
        assert_eq!(b.in_use(), 60, "a refused charge adds nothing");
        two.add(40).unwrap();
        one.release(10);
        assert_eq!(b.in_use(), 90);
        two.absorb(one);
        assert_eq!(two.held(), 90);
        drop(two);
        assert_eq!(b.in_use(), 0);
    }
}
