//! What does the worker pool cost per delivery? One-event deliveries go from a
//! memory queue through the reader task, the bounded dispatch channel and a worker
//! to a blackhole sink, and are committed: the whole processor overhead per batch
//! (target ≤ 500 ns).
//!
//! Run: `cargo bench -p sluice-pipeline --bench dispatch`

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sluice_core::{Batch, Event, Queue};
use sluice_pipeline::sinks::BlackholeSink;
use sluice_pipeline::{Processor, ProcessorOptions};
use sluice_queue::MemoryQueue;
use tokio_util::sync::CancellationToken;

/// The memory queue holds at most 65,536 batches: larger runs go in chunks, each a
/// full processor start, drain and stop (that overhead is counted, amortised over
/// 50,000 deliveries).
const CHUNK: u64 = 50_000;

fn run(rt: &tokio::runtime::Runtime, n: u64) -> Duration {
    let mut total = Duration::ZERO;
    let mut left = n;
    while left > 0 {
        let k = left.min(CHUNK);
        total += run_chunk(rt, k);
        left -= k;
    }
    total
}

fn run_chunk(rt: &tokio::runtime::Runtime, n: u64) -> Duration {
    rt.block_on(async move {
        let queue = MemoryQueue::new(n as usize + 1, u64::MAX);
        for _ in 0..n {
            queue
                .append(Batch::new(vec![Event::new("s", Bytes::from_static(b"{}"))]))
                .await
                .unwrap();
        }
        let sink = Arc::new(BlackholeSink::default());
        let opts = ProcessorOptions {
            batch_max_events: 1,
            batch_max_wait: Duration::from_millis(1),
            drain_on_shutdown: true,
            ..ProcessorOptions::default()
        };
        let p = Processor::new(Arc::new(queue), sink.clone(), opts);
        let stop = CancellationToken::new();
        stop.cancel(); // drain everything, then stop
        let start = Instant::now();
        tokio::spawn(p.run(stop)).await.unwrap().unwrap();
        assert_eq!(sink.count(), n);
        start.elapsed()
    })
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("worker_pool");
    g.throughput(Throughput::Elements(1));
    g.bench_function("dispatch_one_event_batch", |b| {
        b.iter_custom(|iters| run(&rt, iters.max(1)))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
