//! The bounded in-memory queue.
//!
//! A lock-free ring (`crossbeam_queue::ArrayQueue`) of whole batches — one slot per
//! request — bounded in events and bytes. An append reserves room for the whole batch
//! first, so it is all-or-nothing, and then moves the batch's vector into one slot:
//! the per-event cost is nothing, the per-request cost one reservation and one CAS.
//! A poll pops whole batches, so a delivery may pass `max_events` by less than one
//! batch (as with the WAL). Not durable: acks mean the events are in this process's
//! memory.
//!
//! The bound is kept without a counter both sides write. Producers count what they
//! ever reserved, consumers what they ever released, each on a cache line of its
//! own; the depth is the difference. A producer compares against its side's last
//! look at the consumers' count and reads theirs only when that stale look says the
//! queue is full, so while there is room a push touches no line a consumer writes
//! (besides the ring's slot). A stale look only ever overstates the depth, so the
//! bound holds.

use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_queue::ArrayQueue;
use serde::{Deserialize, Serialize};
use sluice_core::units::ByteSize;
use sluice_core::{
    AppendError, Batch, BoxFuture, Committed, ConsumeError, Consumer, Delivery, Event, OptionError,
    Queue, QueueStats,
};
use tokio::sync::Notify;

/// How long a producer refused by a full memory queue is told to wait.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Most batches held at once (the ring is allocated up front: 32 bytes a slot).
const MAX_SLOTS: usize = 1 << 16;

/// The bounded, non-durable memory queue.
#[derive(Clone)]
pub struct MemoryQueue {
    inner: Arc<Inner>,
}

/// Events and bytes ever counted by one side (monotonic but for a producer's undo of
/// its own refused reservation).
#[derive(Default)]
#[repr(align(128))]
struct Counts {
    events: AtomicU64,
    bytes: AtomicU64,
}

/// The producers' side: what they reserved, and their last look at [`Counts`] of the
/// consumers (never ahead of it).
#[derive(Default)]
#[repr(align(128))]
struct Produced {
    reserved: Counts,
    seen_events: AtomicU64,
    seen_bytes: AtomicU64,
}

struct Inner {
    /// Each slot holds a batch and its byte size (so a pop need not touch the events).
    ring: ArrayQueue<(Vec<Event>, u64)>,
    /// Written by producers only.
    produced: Produced,
    /// Written by consumers only.
    consumed: Counts,
    max_events: u64,
    max_bytes: u64,
    closed: AtomicBool,
    readable: Notify,
    /// When producers' reserved events reach this, a waiting poll has a full batch
    /// and is woken (`u64::MAX`: no poll is waiting for one). A poll holding a
    /// partial batch delivers at its deadline anyway, so waking it on every append
    /// only made it look and wait again: with single-event requests, a context
    /// switch to the processor's thread per request.
    wake_at: AtomicU64,
}

/// `[queue]` with `kind = "memory"`: bounded memory, fastest, lost on a crash.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MemoryConfig {
    /// Most bytes of events held; appends past it get 429. Default `1 GiB`.
    pub max_bytes: ByteSize,
    /// Most events held. Default 1,000,000.
    pub max_events: usize,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig {
            max_bytes: ByteSize(1 << 30),
            max_events: 1_000_000,
        }
    }
}

impl MemoryConfig {
    pub fn validate(&self) -> Result<(), OptionError> {
        if self.max_events == 0 {
            return Err(OptionError::new("max_events", 0, "must be at least 1"));
        }
        if self.max_bytes < ByteSize(1 << 20) {
            return Err(OptionError::new(
                "max_bytes",
                self.max_bytes,
                "must be at least 1 MiB",
            ));
        }
        Ok(())
    }

    pub fn open(&self) -> MemoryQueue {
        MemoryQueue::new(self.max_events, self.max_bytes.0)
    }
}

impl MemoryQueue {
    /// A queue holding at most `max_events` events and `max_bytes` bytes (and at most
    /// 65,536 batches).
    pub fn new(max_events: usize, max_bytes: u64) -> MemoryQueue {
        MemoryQueue {
            inner: Arc::new(Inner {
                ring: ArrayQueue::new(max_events.clamp(1, MAX_SLOTS)),
                produced: Produced::default(),
                consumed: Counts::default(),
                max_events: max_events.max(1) as u64,
                max_bytes,
                closed: AtomicBool::new(false),
                readable: Notify::new(),
                wake_at: AtomicU64::new(u64::MAX),
            }),
        }
    }

    /// Moves a whole batch into the queue if both budgets and a slot have room;
    /// otherwise hands it back untouched. The hot path of [`Queue::append`], public
    /// for the benchmark: no allocation, one reservation and one push per batch.
    pub fn offer(&self, events: Vec<Event>) -> Result<(), Vec<Event>> {
        let bytes: u64 = events.iter().map(|e| e.size_hint() as u64).sum();
        let n = events.len() as u64;
        if !self.reserve(n, bytes) {
            return Err(events);
        }
        match self.inner.ring.push((events, bytes)) {
            Ok(()) => Ok(()),
            Err((events, _)) => {
                // Out of slots (many tiny batches): as full as any other bound.
                self.unreserve(n, bytes);
                Err(events)
            }
        }
    }

    /// Pops one batch. The hot path of [`Consumer::poll`], public for the benchmark.
    pub fn take(&self) -> Option<Vec<Event>> {
        let (events, bytes) = self.inner.ring.pop()?;
        self.release(events.len() as u64, bytes);
        Some(events)
    }

    fn reserve(&self, n: u64, bytes: u64) -> bool {
        let i = &self.inner;
        let p = &i.produced;
        let events = p.reserved.events.fetch_add(n, Ordering::Relaxed) + n;
        let total = p.reserved.bytes.fetch_add(bytes, Ordering::Relaxed) + bytes;
        let over = |seen_events: u64, seen_bytes: u64| {
            events.saturating_sub(seen_events) > i.max_events
                || total.saturating_sub(seen_bytes) > i.max_bytes
        };
        if !over(
            p.seen_events.load(Ordering::Relaxed),
            p.seen_bytes.load(Ordering::Relaxed),
        ) {
            return true;
        }
        // Full by the last look; look again at what the consumers released.
        let seen_events = i.consumed.events.load(Ordering::Acquire);
        let seen_bytes = i.consumed.bytes.load(Ordering::Acquire);
        p.seen_events.fetch_max(seen_events, Ordering::Relaxed);
        p.seen_bytes.fetch_max(seen_bytes, Ordering::Relaxed);
        if over(seen_events, seen_bytes) {
            self.unreserve(n, bytes);
            return false;
        }
        true
    }

    fn unreserve(&self, n: u64, bytes: u64) {
        let r = &self.inner.produced.reserved;
        r.events.fetch_sub(n, Ordering::Relaxed);
        r.bytes.fetch_sub(bytes, Ordering::Relaxed);
    }

    fn release(&self, n: u64, bytes: u64) {
        let c = &self.inner.consumed;
        c.events.fetch_add(n, Ordering::Release);
        c.bytes.fetch_add(bytes, Ordering::Release);
    }

    /// Wakes a waiting poll if what producers reserved reaches what it asked for.
    fn wake_if_wanted(&self) {
        let i = &self.inner;
        fence(Ordering::SeqCst);
        let wanted = i.wake_at.load(Ordering::SeqCst);
        if i.produced.reserved.events.load(Ordering::SeqCst) >= wanted {
            // Every waiting poll looks (one takes the batch, the others ask again):
            // a wake-up per batch, not per append. A poll that lowered `wake_at`
            // meanwhile keeps its wish.
            let _ =
                i.wake_at
                    .compare_exchange(wanted, u64::MAX, Ordering::SeqCst, Ordering::SeqCst);
            i.readable.notify_waiters();
        }
    }

    /// Events and bytes held (reserved and not yet released).
    fn depth(&self) -> (u64, u64) {
        let (released, reserved) = (&self.inner.consumed, &self.inner.produced.reserved);
        let load = |c: &AtomicU64| c.load(Ordering::Acquire);
        let (ce, cb) = (load(&released.events), load(&released.bytes));
        let (re, rb) = (load(&reserved.events), load(&reserved.bytes));
        (re.saturating_sub(ce), rb.saturating_sub(cb))
    }

    /// Pops batches into `out` until it holds at least `max` events or the queue is
    /// empty; the first batch becomes `out` itself when `out` is empty (no copy).
    fn take_into(&self, max: usize, out: &mut Vec<Event>) {
        while out.len() < max {
            let Some(mut batch) = self.take() else { break };
            if out.is_empty() {
                std::mem::swap(out, &mut batch);
            } else {
                out.append(&mut batch);
            }
        }
    }
}

impl Queue for MemoryQueue {
    fn append(&self, batch: Batch) -> BoxFuture<'_, Result<Committed, AppendError>> {
        Box::pin(async move {
            if self.inner.closed.load(Ordering::Acquire) {
                return Err(AppendError::ShuttingDown);
            }
            let n = batch.len() as u64;
            let bytes = batch.size_hint() as u64;
            if n > self.inner.max_events || bytes > self.inner.max_bytes {
                return Err(AppendError::TooLarge {
                    bytes: bytes as usize,
                    limit: self.inner.max_bytes as usize,
                });
            }
            if let Err(events) = self.offer(batch.events) {
                return Err(AppendError::Full {
                    batch: Box::new(Batch::new(events)),
                    reason: "memory queue at queue.max_events or queue.max_bytes".into(),
                    retry_after: RETRY_AFTER,
                });
            }
            self.wake_if_wanted();
            Ok(Committed::default())
        })
    }

    fn consumer(&self, _name: &str) -> Result<Box<dyn Consumer>, ConsumeError> {
        Ok(Box::new(self.clone()))
    }

    fn stats(&self) -> QueueStats {
        let (depth_events, depth_bytes) = self.depth();
        QueueStats {
            depth_events,
            depth_bytes,
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
                // Enabled first: `wake_if_wanted` wakes the polls waiting then.
                let notified = self.inner.readable.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                self.take_into(max_events, &mut events);
                // Deliver a full batch at once, a partial one when the wait is over
                // (the clock is read only when the batch is not full).
                let full = events.len() >= max_events;
                let closed = !full && self.inner.closed.load(Ordering::Acquire);
                let expired = !full && tokio::time::Instant::now() >= deadline;
                if full || (!events.is_empty() && (expired || closed)) {
                    // Others may be waiting too and there may be more left.
                    if !self.inner.ring.is_empty() {
                        self.inner.readable.notify_one();
                    }
                    return Ok(Some(Delivery::new(events, 0)));
                }
                if closed {
                    return Err(ConsumeError::Closed);
                }
                if expired {
                    return Ok(None);
                }
                // Woken once enough has been reserved to fill this batch (or at the
                // deadline, or on close); pairs with the fence in `wake_if_wanted`.
                let need = (max_events - events.len()) as u64;
                let i = &self.inner;
                let target = i
                    .consumed
                    .events
                    .load(Ordering::SeqCst)
                    .saturating_add(need);
                i.wake_at.fetch_min(target, Ordering::SeqCst);
                fence(Ordering::SeqCst);
                if i.produced.reserved.events.load(Ordering::SeqCst) >= target {
                    continue; // it arrived meanwhile
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
