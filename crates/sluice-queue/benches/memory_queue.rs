//! Does the memory queue stay off the hot path? One push plus one pop of an event,
//! with 1 producer × 1 consumer and 2 × 2 threads (target ≤ 50 ns per op, no
//! allocation per op: events are moved in and out of a preallocated ring).
//!
//! Each iteration moves one event through the measured queue and back through a
//! second one (so that nothing is allocated), i.e. two push+pop operations: the
//! reported element rate counts operations, and ns/op = time per iteration / 2.
//!
//! Run: `cargo bench -p sluice-queue --bench memory_queue`

use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sluice_core::Event;
use sluice_queue::MemoryQueue;

/// Moves `ops` events through the queue with `p` producers and `p` consumers; each
/// producer recycles the events its consumer hands back over a second queue, so no
/// event is allocated inside the timed loop.
fn run(p: usize, ops: u64) -> Duration {
    let q = MemoryQueue::new(4096, u64::MAX);
    let back = MemoryQueue::new(4096, u64::MAX);
    for _ in 0..1024 {
        back.offer(Event::new("s", Bytes::from_static(b"{\"a\":1}")))
            .unwrap();
    }
    let per = ops / p as u64;
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..p {
            let (q1, back1) = (q.clone(), back.clone());
            s.spawn(move || {
                let (q, back) = (q1, back1);
                for _ in 0..per {
                    let mut e = loop {
                        if let Some(e) = back.take() {
                            break e;
                        }
                        std::thread::yield_now();
                    };
                    loop {
                        match q.offer(e) {
                            Ok(()) => break,
                            Err(x) => e = x,
                        }
                        std::thread::yield_now();
                    }
                }
            });
            let (q2, back2) = (q.clone(), back.clone());
            s.spawn(move || {
                let (q, back) = (q2, back2);
                for _ in 0..per {
                    let e = loop {
                        if let Some(e) = q.take() {
                            break e;
                        }
                        std::thread::yield_now();
                    };
                    let _ = back.offer(e);
                }
            });
        }
    });
    start.elapsed()
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("memory_queue_push_pop");
    g.throughput(Throughput::Elements(2));
    for p in [1, 2] {
        g.bench_function(format!("{p}x{p}"), |b| {
            b.iter_custom(|iters| run(p, iters.max(p as u64)))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
