//! The gateway's merge queue: producers' requests waiting for an upstream call slot.
//!
//! Invariants: `waiting_bytes` is the sum of `bytes` over `waiting`; the queue holds
//! at most `gateway.max_queued_requests` requests and `gateway.max_queued_bytes`
//! bytes (one request of any size may always wait alone); a waiter whose producer
//! went away (its answer receiver dropped) is dropped when reached, never sent.

use std::collections::VecDeque;

use sluice_core::{AppendError, Batch};

use crate::config::GatewayConfig;

/// Requests waiting for an upstream call slot, and the calls running.
#[derive(Default)]
pub(super) struct Merge {
    pub(super) waiting: VecDeque<Waiter>,
    /// Sum of `bytes` over `waiting`.
    pub(super) waiting_bytes: usize,
    /// Tasks sending merged calls.
    pub(super) senders: usize,
}

/// One producer's request, waiting to go out in the next merged call.
pub(super) struct Waiter {
    pub(super) batch: Batch,
    pub(super) bytes: usize,
    pub(super) done: tokio::sync::oneshot::Sender<Result<(), AppendError>>,
}

/// Which bound of the gateway's merge queue a request found reached.
#[derive(Debug, thiserror::Error)]
pub(super) enum Full {
    #[error("gateway.max_queued_requests ({0}) reached")]
    Requests(usize),
    #[error("gateway.max_queued_bytes ({0}) reached")]
    Bytes(sluice_core::units::ByteSize),
}

impl Merge {
    /// Whether a request of `bytes` may join the queue: `Err(bound)` past
    /// `gateway.max_queued_requests` or `gateway.max_queued_bytes`; a lone request
    /// always may.
    pub(super) fn has_room(&self, bytes: usize, config: &GatewayConfig) -> Result<(), Full> {
        if self.waiting.is_empty() {
            return Ok(());
        }
        if self.waiting.len() >= config.max_queued_requests {
            return Err(Full::Requests(config.max_queued_requests));
        }
        if (self.waiting_bytes + bytes) as u64 > config.max_queued_bytes.0 {
            return Err(Full::Bytes(config.max_queued_bytes));
        }
        Ok(())
    }

    /// Queues `w`.
    pub(super) fn push(&mut self, w: Waiter) {
        self.waiting_bytes += w.bytes;
        self.waiting.push_back(w);
    }

    /// The next waiter whose producer is still there; the others are dropped.
    pub(super) fn pop(&mut self) -> Option<Waiter> {
        while let Some(w) = self.waiting.pop_front() {
            self.waiting_bytes -= w.bytes;
            if !w.done.is_closed() {
                return Some(w);
            }
        }
        None
    }

    /// The next live waiter, if `fits` it; dropped waiters are skipped.
    pub(super) fn pop_if(&mut self, fits: impl Fn(&Waiter) -> bool) -> Option<Waiter> {
        while let Some(w) = self.waiting.front() {
            if w.done.is_closed() {
                if let Some(w) = self.waiting.pop_front() {
                    self.waiting_bytes -= w.bytes;
                }
                continue;
            }
            return if fits(w) { self.pop() } else { None };
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use sluice_core::Event;

    fn waiter(
        bytes: usize,
    ) -> (
        Waiter,
        tokio::sync::oneshot::Receiver<Result<(), AppendError>>,
    ) {
        let (done, answer) = tokio::sync::oneshot::channel();
        let batch = Batch::new(vec![Event::new("s", Bytes::from_static(b"{}"))]);
        (Waiter { batch, bytes, done }, answer)
    }

    #[test]
    fn waiters_whose_producer_left_are_dropped_not_sent() {
        let mut m = Merge::default();
        let mut live = Vec::new();
        for (i, bytes) in [10, 20, 30, 40].into_iter().enumerate() {
            let (w, answer) = waiter(bytes);
            m.push(w);
            if i % 2 == 1 {
                live.push(answer); // the producers of 20 and 40 are still there
            }
        }
        assert_eq!(m.pop().map(|w| w.bytes), Some(20));
        assert_eq!(m.waiting_bytes, 70);
        assert_eq!(m.pop_if(|_| true).map(|w| w.bytes), Some(40));
        assert!(m.pop().is_none());
        assert_eq!(m.waiting_bytes, 0);
        drop(live);
    }

    #[test]
    fn the_queue_is_bounded_by_count_and_bytes_but_a_lone_request_may_wait() {
        let config = GatewayConfig {
            max_queued_requests: 2,
            max_queued_bytes: crate::config::ByteSize(100),
            ..GatewayConfig::default()
        };
        let mut m = Merge::default();
        let mut answers = Vec::new();
        assert!(m.has_room(500, &config).is_ok(), "alone, any size waits");
        let (w, a) = waiter(60);
        m.push(w);
        answers.push(a);
        let err = m.has_room(50, &config).unwrap_err();
        assert!(matches!(err, Full::Bytes(_)), "{err}");
        assert!(
            err.to_string().contains("gateway.max_queued_bytes"),
            "{err}"
        );
        let (w, a) = waiter(30);
        m.push(w);
        answers.push(a);
        let err = m.has_room(1, &config).unwrap_err();
        assert!(matches!(err, Full::Requests(2)), "{err}");
    }
}
