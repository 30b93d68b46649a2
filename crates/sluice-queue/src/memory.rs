//! The bounded in-memory queue.
//!
//! A lock-free ring of events (`crossbeam_queue::ArrayQueue`) bounded in events, plus
//! an atomic byte budget. An append first reserves room for the whole batch in both
//! bounds, so it is all-or-nothing and the pushes that follow cannot fail. Not
//! durable: acks mean the events are in this process's memory.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_queue::ArrayQueue;
use sluice_core::{
    AppendError, Batch, BoxFuture, ConsumeError, Consumer, Delivery, Event, Queue, QueueStats,
};
use tokio::sync::Notify;

/// How long a producer refused by a full memory queue is told to wait.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// The bounded, non-durable memory queue.
#[derive(Clone)]
pub struct MemoryQueue {
    inner: Arc<Inner>,
}

struct Inner {
    ring: ArrayQueue<Event>,
    /// Events reserved or held (reserved before pushing, released after popping).
    events: AtomicU64,
    bytes: AtomicU64,
    max_bytes: u64,
    closed: AtomicBool,
    readable: Notify,
}

impl MemoryQueue {
    /// A queue holding at most `max_events` events and `max_bytes` bytes.
    pub fn new(max_events: usize, max_bytes: u64) -> MemoryQueue {
        MemoryQueue {
            inner: Arc::new(Inner {
                ring: ArrayQueue::new(max_events.max(1)),
                events: AtomicU64::new(0),
                bytes: AtomicU64::new(0),
                max_bytes,
                closed: AtomicBool::new(false),
                readable: Notify::new(),
            }),
        }
    }

    /// Pushes one event if there is room; hands it back otherwise. The hot path of
    /// [`Queue::append`], public for the benchmark. Handing the event back (not a
    /// boxed error) keeps the full path allocation-free.
    #[allow(clippy::result_large_err)]
    pub fn offer(&self, event: Event) -> Result<(), Event> {
        let size = event.size_hint() as u64;
        if !self.reserve(1, size) {
            return Err(event);
        }
        let pushed = self.inner.ring.push(event);
        debug_assert!(pushed.is_ok(), "a reserved push cannot fail");
        Ok(())
    }

    /// Pops one event. The hot path of [`Consumer::poll`], public for the benchmark.
    pub fn take(&self) -> Option<Event> {
        let e = self.inner.ring.pop()?;
        self.release(1, e.size_hint() as u64);
        Some(e)
    }

    fn reserve(&self, n: u64, bytes: u64) -> bool {
        let i = &self.inner;
        let cap = i.ring.capacity() as u64;
        if i.events.fetch_add(n, Ordering::AcqRel) + n > cap {
            i.events.fetch_sub(n, Ordering::AcqRel);
            return false;
        }
        if i.bytes.fetch_add(bytes, Ordering::AcqRel) + bytes > i.max_bytes {
            i.bytes.fetch_sub(bytes, Ordering::AcqRel);
            i.events.fetch_sub(n, Ordering::AcqRel);
            return false;
        }
        true
    }

    fn release(&self, n: u64, bytes: u64) {
        self.inner.events.fetch_sub(n, Ordering::AcqRel);
        self.inner.bytes.fetch_sub(bytes, Ordering::AcqRel);
    }

    /// Moves every event of `events` into the queue if there is room for all of them
    /// (leaving `events` empty, its capacity kept for reuse); otherwise moves none and
    /// returns false. One reservation per batch keeps the per-event cost to the ring.
    pub fn offer_all(&self, events: &mut Vec<Event>) -> bool {
        let bytes: u64 = events.iter().map(|e| e.size_hint() as u64).sum();
        if !self.reserve(events.len() as u64, bytes) {
            return false;
        }
        for e in events.drain(..) {
            let pushed = self.inner.ring.push(e);
            debug_assert!(pushed.is_ok(), "a reserved push cannot fail");
        }
        true
    }

    /// Pops up to `max` events into `out`; returns how many. One release per call.
    pub fn take_up_to(&self, max: usize, out: &mut Vec<Event>) -> usize {
        let (mut n, mut bytes) = (0, 0);
        while n < max {
            let Some(e) = self.inner.ring.pop() else {
                break;
            };
            bytes += e.size_hint() as u64;
            out.push(e);
            n += 1;
        }
        if n > 0 {
            self.release(n as u64, bytes);
        }
        n
    }
}

impl Queue for MemoryQueue {
    fn append(&self, batch: Batch) -> BoxFuture<'_, Result<(), AppendError>> {
        Box::pin(async move {
            if self.inner.closed.load(Ordering::Acquire) {
                return Err(AppendError::ShuttingDown);
            }
            let n = batch.len() as u64;
            let bytes = batch.size_hint() as u64;
            let cap = self.inner.ring.capacity() as u64;
            if n > cap || bytes > self.inner.max_bytes {
                return Err(AppendError::TooLarge {
                    bytes: bytes as usize,
                    limit: self.inner.max_bytes as usize,
                });
            }
            let mut batch = batch;
            if !self.offer_all(&mut batch.events) {
                return Err(AppendError::Full {
                    batch: Box::new(batch),
                    reason: "memory queue at its event or byte bound".into(),
                    retry_after: RETRY_AFTER,
                });
            }
            self.inner.readable.notify_one();
            Ok(())
        })
    }

    fn consumer(&self, _name: &str) -> Result<Box<dyn Consumer>, ConsumeError> {
        Ok(Box::new(self.clone()))
    }

    fn stats(&self) -> QueueStats {
        QueueStats {
            depth_events: self.inner.events.load(Ordering::Relaxed),
            depth_bytes: self.inner.bytes.load(Ordering::Relaxed),
            capacity_bytes: self.inner.max_bytes,
        }
    }

    fn close(&self) -> BoxFuture<'_, Result<(), ConsumeError>> {
        self.inner.closed.store(true, Ordering::Release);
        self.inner.readable.notify_waiters();
        Box::pin(async { Ok(()) })
    }
}

impl Consumer for MemoryQueue {
    fn poll(
        &self,
        max_events: usize,
        max_wait: Duration,
    ) -> BoxFuture<'_, Result<Option<Delivery>, ConsumeError>> {
        Box::pin(async move {
            let deadline = tokio::time::Instant::now() + max_wait;
            let max_events = max_events.max(1);
            let mut events = Vec::new();
            loop {
                let notified = self.inner.readable.notified();
                self.take_up_to(max_events - events.len(), &mut events);
                let expired = tokio::time::Instant::now() >= deadline;
                let closed = self.inner.closed.load(Ordering::Acquire);
                // Deliver a full batch at once, a partial one when the wait is over.
                if events.len() >= max_events || (!events.is_empty() && (expired || closed)) {
                    // Others may be waiting too and there may be more left.
                    if !self.inner.ring.is_empty() {
                        self.inner.readable.notify_one();
                    }
                    return Ok(Some(Delivery { events, token: 0 }));
                }
                if closed {
                    return Err(ConsumeError::Closed);
                }
                if expired {
                    return Ok(None);
                }
                let _ = tokio::time::timeout_at(deadline, notified).await;
            }
        })
    }

    fn commit(&self, _token: u64) -> BoxFuture<'_, Result<(), ConsumeError>> {
        Box::pin(async { Ok(()) })
    }

    fn flush(&self) -> BoxFuture<'_, Result<(), ConsumeError>> {
        Box::pin(async { Ok(()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn ev(n: usize) -> Event {
        Event::new("s", Bytes::from(format!("{{\"n\":{n}}}")))
    }

    #[tokio::test]
    async fn bounded_all_or_nothing_and_fifo() {
        let q = MemoryQueue::new(5, u64::MAX);
        q.append(Batch::new((0..3).map(ev).collect()))
            .await
            .unwrap();
        let err = q.append(Batch::new((3..6).map(ev).collect())).await;
        match err {
            Err(AppendError::Full { batch, .. }) => assert_eq!(batch.len(), 3),
            other => panic!("expected Full, got {other:?}"),
        }
        assert_eq!(
            q.stats().depth_events,
            3,
            "a refused batch left nothing behind"
        );
        let c = q.consumer("p").unwrap();
        let d = c
            .poll(10, Duration::from_millis(10))
            .await
            .unwrap()
            .unwrap();
        let got: Vec<_> = d.events.iter().map(|e| e.payload.clone()).collect();
        assert_eq!(got, vec!["{\"n\":0}", "{\"n\":1}", "{\"n\":2}"]);
        assert_eq!(q.stats().depth_events, 0);
        assert_eq!(q.stats().depth_bytes, 0);
        assert!(c
            .poll(10, Duration::from_millis(10))
            .await
            .unwrap()
            .is_none());
    }

    #[tokio::test]
    async fn byte_bound_refuses() {
        let one = ev(1).size_hint() as u64;
        let q = MemoryQueue::new(100, one * 2);
        q.append(Batch::new(vec![ev(1), ev(2)])).await.unwrap();
        assert!(matches!(
            q.append(Batch::new(vec![ev(3)])).await,
            Err(AppendError::Full { .. })
        ));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn waiting_consumer_is_woken() {
        let q = MemoryQueue::new(100, u64::MAX);
        let c = q.consumer("p").unwrap();
        let q2 = q.clone();
        let t = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            q2.append(Batch::new(vec![ev(7)])).await.unwrap();
        });
        let d = c.poll(1, Duration::from_secs(5)).await.unwrap().unwrap();
        assert_eq!(d.events.len(), 1);
        t.await.unwrap();
    }
}
