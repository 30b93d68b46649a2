//! Does the memory queue stay off the hot path? Push+pop with 1 producer × 1
//! consumer and 2 × 2 threads (target ≤ 50 ns per op, no allocation per op).
//!
//! The queue's unit is a request's batch (one ring slot per batch), so one op is a
//! push and a pop of one batch; the bench runs batches of 1 event (the worst case:
//! one event per request) and of 64 events, and reports elements as events, so
//! per-event cost = time per iteration / events per batch.
//!
//! Batches are recycled (each goes through the measured queue and back through a
//! second one), so nothing is allocated in the timed loop; an iteration therefore is
//! two push+pop ops.
//!
//! Run: `cargo bench -p sluice-queue --bench memory_queue`

use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sluice_core::Event;
use sluice_queue::MemoryQueue;

/// Batches in circulation.
const POOL: usize = 256;

fn run(p: usize, batch: usize, iters: u64) -> Duration {
    let q = MemoryQueue::new(1 << 20, u64::MAX);
    let back = MemoryQueue::new(1 << 20, u64::MAX);
    for _ in 0..POOL {
        let events = (0..batch)
            .map(|_| Event::new("s", Bytes::from_static(b"{\"a\":1}")))
            .collect();
        back.offer(events).unwrap();
    }
    let per = (iters / p as u64).max(1);
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..p {
            let (q1, back1) = (q.clone(), back.clone());
            s.spawn(move || move_batches(&back1, &q1, per));
            let (q2, back2) = (q.clone(), back.clone());
            s.spawn(move || move_batches(&q2, &back2, per));
        }
    });
    start.elapsed()
}

/// Takes `rounds` batches from `from` and offers each to `to`.
fn move_batches(from: &MemoryQueue, to: &MemoryQueue, rounds: u64) {
    for _ in 0..rounds {
        let mut b = loop {
            match from.take() {
                Some(b) => break b,
                None => std::thread::yield_now(),
            }
        };
        loop {
            match to.offer(b) {
                Ok(()) => break,
                Err(back) => b = back,
            }
            std::thread::yield_now();
        }
    }
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("memory_queue_push_pop");
    for batch in [1usize, 64] {
        g.throughput(Throughput::Elements(batch as u64));
        for p in [1, 2] {
            g.bench_function(format!("batch{batch}/{p}x{p}"), |b| {
                b.iter_custom(|iters| run(p, batch, iters))
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
