//! What does the client itself cost per request? One `Client::send_once` of a
//! one-event NDJSON body to a local node, multiplexed over one HTTP/2 connection
//! with 64 requests in flight (target ≤ 3,000 ns/op; the Go client this replaces
//! measured 7,623 ns/op and 1,024 B/op).
//!
//! The figure is the **client's CPU time per request**, not wall time: the client
//! runs on a current-thread tokio runtime on the bench thread, the node (memory
//! queue, blackhole sink) on its own runtime threads, and each sample is the bench
//! thread's on-CPU time (`/proc/thread-self/schedstat`, nanoseconds) divided by the
//! requests sent. It includes everything the client does for a request: building
//! the request, the pool checkout, HTTP/2 framing, HPACK and flow control (the
//! client's own `http2` connection, whose driver task runs on the same thread), the
//! socket syscalls, reading the response and parsing `{"accepted":N}`. It excludes
//! the server's work and the time spent waiting for it. `http1_closed_loop` is the
//! same over 16 pooled HTTP/1.1 connections (hyper's). (Allocations per request are
//! not counted: the node runs in this process, so a counting global allocator
//! would count the server's allocations too.)
//!
//! Run: `cargo bench -p sluice-client --bench client`

use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use futures_util::StreamExt;
use sluice_client::{Body, Client, Endpoint, Protocol};

/// The bench thread's on-CPU time so far.
fn thread_cpu() -> Duration {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").expect("Linux schedstat");
    let ns: u64 = s
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .expect("schedstat starts with the on-CPU nanoseconds");
    Duration::from_nanos(ns)
}

/// Sends `n` requests, `in_flight` at a time, and returns the client thread's CPU time.
async fn burst(client: &Client, ep: &Endpoint, body: &Body, n: u64, in_flight: usize) -> Duration {
    let start = thread_cpu();
    futures_util::stream::iter(0..n)
        .for_each_concurrent(in_flight, |_| async {
            let a = client.send_once(ep, body).await.expect("accepted");
            debug_assert_eq!(a.accepted, 1);
        })
        .await;
    thread_cpu() - start
}

fn client_cost(c: &mut Criterion) {
    // The node: its own runtime on two worker threads, kept for the whole bench.
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let node = server_rt.block_on(sluice_server::test_util::start_fast(&[]));
    let url = node.base.clone();

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let body = Body::ndjson(&b"{\"page\":\"/\",\"user\":42}\n"[..]);
    let mut g = c.benchmark_group("client");
    g.throughput(Throughput::Elements(1));
    g.measurement_time(Duration::from_secs(8));

    let h2 = Client::builder(&url)
        .protocol(Protocol::Http2)
        .build()
        .unwrap();
    let ep2 = h2.endpoint("bench").unwrap();
    rt.block_on(h2.warm(1)).unwrap();
    g.bench_function("http2_multiplexed_cpu_per_request", |b| {
        b.iter_custom(|iters| rt.block_on(burst(&h2, &ep2, &body, iters, 64)))
    });

    let h1 = Client::builder(&url)
        .protocol(Protocol::Http1)
        .max_connections(16)
        .build()
        .unwrap();
    let ep1 = h1.endpoint("bench").unwrap();
    rt.block_on(h1.warm(16)).unwrap();
    g.bench_function("http1_closed_loop_cpu_per_request", |b| {
        b.iter_custom(|iters| rt.block_on(burst(&h1, &ep1, &body, iters, 16)))
    });
    g.finish();
    node.node.shutdown();
    drop(server_rt);
}

criterion_group!(benches, client_cost);
criterion_main!(benches);
