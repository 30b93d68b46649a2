//! How many events per second can the WAL make durable (Fsync mode, group commit)?
//!
//! Answers: what one appender waiting for each fsync gets, what 64 concurrent
//! appenders sharing fsyncs get, and what a request batch of 100 events of 256 bytes
//! in one record gets. Throughput is in events (one 256-byte event each); MB/s is
//! events/s × 256 bytes. After the criterion runs, a p99 of single-append latency
//! under 64 concurrent appenders is printed.
//!
//! Run: `cargo bench -p sluice-wal --bench append -- --warm-up-time 1 --measurement-time 5`
//! (the temp dir is on whatever disk `TMPDIR` points to; fsync cost depends on it).

use std::sync::mpsc::sync_channel;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use sluice_wal::{SyncMode, Wal, WalOptions};

const EVENT: usize = 256;

fn open() -> (tempfile::TempDir, Wal) {
    let dir = tempfile::tempdir().expect("temp dir");
    let opts = WalOptions {
        sync: SyncMode::Fsync,
        max_bytes: 64 << 30,
        ..WalOptions::default()
    };
    let (wal, _) = Wal::open(dir.path(), opts).expect("open wal");
    (dir, wal)
}

/// Appends `n` records with `concurrency` in flight at a time (callback style, as the
/// async queue adapter does) and waits for all acks.
fn run(wal: &Wal, n: u64, concurrency: usize, record: &[u8]) {
    let (tx, rx) = sync_channel::<()>(concurrency);
    let mut in_flight = 0;
    for _ in 0..n {
        if in_flight == concurrency {
            rx.recv().expect("ack");
            in_flight -= 1;
        }
        let tx = tx.clone();
        wal.append(
            record.to_vec(),
            Box::new(move |r| {
                r.expect("append");
                let _ = tx.send(());
            }),
        )
        .expect("queue");
        in_flight += 1;
    }
    for _ in 0..in_flight {
        rx.recv().expect("ack");
    }
}

fn append(c: &mut Criterion) {
    let mut group = c.benchmark_group("wal_append_fsync");
    group.sample_size(10);
    let (_dir, wal) = open();
    let event = vec![b'e'; EVENT];
    for concurrency in [1usize, 64] {
        group.throughput(Throughput::Elements(1));
        group.bench_with_input(
            BenchmarkId::new("256B_event", concurrency),
            &concurrency,
            |b, &conc| {
                b.iter_custom(|iters| {
                    let t = Instant::now();
                    run(&wal, iters, conc, &event);
                    t.elapsed()
                })
            },
        );
    }
    let batch = vec![b'b'; EVENT * 100];
    for concurrency in [1usize, 64] {
        group.throughput(Throughput::Elements(100));
        group.bench_with_input(
            BenchmarkId::new("batch_100x256B", concurrency),
            &concurrency,
            |b, &conc| {
                b.iter_custom(|iters| {
                    let t = Instant::now();
                    run(&wal, iters, conc, &batch);
                    t.elapsed()
                })
            },
        );
    }
    group.finish();
    wal.close().expect("close");
    latency_p99();
}

/// 64 threads appending 256-byte events for two seconds; prints append→ack percentiles.
fn latency_p99() {
    let (_dir, wal) = open();
    let samples = Arc::new(Mutex::new(Vec::new()));
    let deadline = Instant::now() + Duration::from_secs(2);
    let threads: Vec<_> = (0..64)
        .map(|_| {
            let (wal, samples) = (wal.clone(), samples.clone());
            std::thread::spawn(move || {
                let mut mine = Vec::new();
                while Instant::now() < deadline {
                    let t = Instant::now();
                    wal.append_blocking(vec![b'e'; EVENT]).expect("append");
                    mine.push(t.elapsed());
                }
                samples.lock().expect("samples").extend(mine);
            })
        })
        .collect();
    for t in threads {
        t.join().expect("appender");
    }
    let mut s = samples.lock().expect("samples").clone();
    s.sort_unstable();
    let pct = |p: f64| s[((s.len() as f64 * p) as usize).min(s.len() - 1)];
    println!(
        "append latency, 64 concurrent appenders, 256 B, fsync: n={} p50={:?} p99={:?} p99.9={:?} max={:?} ({:.0} events/s)",
        s.len(),
        pct(0.50),
        pct(0.99),
        pct(0.999),
        s[s.len() - 1],
        s.len() as f64 / 2.0
    );
}

criterion_group!(benches, append);
criterion_main!(benches);
