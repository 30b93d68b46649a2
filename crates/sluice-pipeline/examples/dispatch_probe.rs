use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice_core::{Batch, Event, Queue};
use sluice_pipeline::sinks::BlackholeSink;
use sluice_pipeline::{Processor, ProcessorOptions};
use sluice_queue::MemoryQueue;
use tokio_util::sync::CancellationToken;

fn main() {
    for threads in [1, 2] {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
            .unwrap();
        let n = 200_000u64;
        let el = rt.block_on(async move {
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
                workers: 2,
                ..ProcessorOptions::default()
            };
            let p = Processor::new(Arc::new(queue), sink.clone(), opts);
            let stop = CancellationToken::new();
            stop.cancel();
            let start = Instant::now();
            tokio::spawn(p.run(stop)).await.unwrap().unwrap();
            start.elapsed()
        });
        println!("threads {threads}: {:?} per batch", el / n as u32);
    }
}
