//! Does the memory queue stay off the hot path? Events pushed and popped with
//! 1 producer × 1 consumer and 2 × 2 threads (target ≤ 50 ns per push+pop, no
//! allocation per op).
//!
//! Two shapes, both allocation-free inside the timed loop (events and vectors are
//! recycled):
//! - `single`: one event per push and per pop (`offer` / `take`);
//! - `batch64`: batches of 64 events (`offer_all` / `take_up_to`), the way ingest
//!   appends a request and a worker polls a delivery.
//!
//! Each event goes through the measured queue and back through a second queue (the
//! recycling path), so one element = one push+pop, two per event per iteration.
//!
//! Run: `cargo bench -p sluice-queue --bench memory_queue`

use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sluice_core::Event;
use sluice_queue::MemoryQueue;

const POOL: usize = 1024;

fn queues() -> (MemoryQueue, MemoryQueue) {
    let q = MemoryQueue::new(4096, u64::MAX);
    let back = MemoryQueue::new(4096, u64::MAX);
    for _ in 0..POOL {
        back.offer(Event::new("s", Bytes::from_static(b"{\"a\":1}")))
            .unwrap();
    }
    (q, back)
}

/// Moves `events` events through `q` with `p` producer and `p` consumer threads,
/// `batch` events at a time.
fn run(p: usize, batch: usize, events: u64) -> Duration {
    let (q, back) = queues();
    let per = (events / (p * batch) as u64).max(1);
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..p {
            let (q1, back1) = (q.clone(), back.clone());
            s.spawn(move || move_batches(&back1, &q1, per, batch));
            let (q2, back2) = (q.clone(), back.clone());
            s.spawn(move || move_batches(&q2, &back2, per, batch));
        }
    });
    start.elapsed()
}

/// Takes `rounds` × `batch` events from `from` and offers them to `to`.
fn move_batches(from: &MemoryQueue, to: &MemoryQueue, rounds: u64, batch: usize) {
    let mut buf: Vec<Event> = Vec::with_capacity(batch);
    for _ in 0..rounds {
        while buf.len() < batch {
            if from.take_up_to(batch - buf.len(), &mut buf) == 0 {
                std::thread::yield_now();
            }
        }
        if batch == 1 {
            let mut e = buf.pop().expect("one event");
            loop {
                match to.offer(e) {
                    Ok(()) => break,
                    Err(back) => e = back,
                }
                std::thread::yield_now();
            }
        } else {
            while !to.offer_all(&mut buf) {
                std::thread::yield_now();
            }
        }
    }
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("memory_queue_push_pop");
    for (name, batch) in [("single", 1), ("batch64", 64)] {
        g.throughput(Throughput::Elements(2 * batch as u64));
        for p in [1, 2] {
            g.bench_function(format!("{name}/{p}x{p}"), |b| {
                b.iter_custom(|iters| run(p, batch, iters * batch as u64))
            });
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
