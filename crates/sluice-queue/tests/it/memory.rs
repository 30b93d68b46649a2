//! The bounded memory queue: batches as slots, the bounds, FIFO, wake-ups.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use sluice_core::{AppendError, Batch, Event, Queue};
use sluice_queue::MemoryQueue;

fn ev(n: usize) -> Event {
    Event::new("s", Bytes::from(format!("{{\"n\":{n}}}")))
}

#[tokio::test]
async fn a_batch_is_one_slot_and_polls_take_whole_batches() {
    let q = MemoryQueue::new(100, u64::MAX);
    for i in 0..3 {
        q.append(Batch::new((10 * i..10 * i + 4).map(ev).collect()))
            .await
            .unwrap();
    }
    let c = q.consumer("p").unwrap();
    let d = c.poll(6, Duration::from_millis(10)).await.unwrap().unwrap();
    assert_eq!(d.events.len(), 8, "two whole batches for 6 wanted");
    let d = c.poll(6, Duration::from_millis(10)).await.unwrap().unwrap();
    assert_eq!(d.events.len(), 4);
    assert_eq!(d.events[0].payload, "{\"n\":20}");
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
    // The producers' stale look at what was released is refreshed: room again.
    q.append(Batch::new((6..11).map(ev).collect()))
        .await
        .unwrap();
    assert_eq!(q.stats().depth_events, 5);
    assert!(q.append(Batch::new(vec![ev(11)])).await.is_err());
}

#[test]
fn concurrent_producers_and_consumers_account_for_every_event() {
    let q = MemoryQueue::new(64, u64::MAX);
    let (offered, taken) = (AtomicU64::new(0), AtomicU64::new(0));
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                for i in 0..20_000 {
                    let n = 1 + i % 7;
                    if q.offer((0..n).map(ev).collect()).is_ok() {
                        offered.fetch_add(n as u64, Ordering::Relaxed);
                    }
                }
            });
            s.spawn(|| {
                for _ in 0..20_000 {
                    if let Some(b) = q.take() {
                        taken.fetch_add(b.len() as u64, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    while let Some(b) = q.take() {
        taken.fetch_add(b.len() as u64, Ordering::Relaxed);
    }
    assert!(offered.load(Ordering::Relaxed) > 0);
    assert_eq!(
        offered.load(Ordering::Relaxed),
        taken.load(Ordering::Relaxed)
    );
    assert_eq!(q.stats().depth_events, 0, "every reservation released");
    assert_eq!(q.stats().depth_bytes, 0);
    // Drained, the whole bound is free again.
    assert!(q.offer((0..64).map(ev).collect()).is_ok());
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_poll_is_woken_when_its_batch_fills_and_not_lost_in_between() {
    let q = MemoryQueue::new(10_000, u64::MAX);
    let c = q.consumer("p").unwrap();
    // A poll holding part of its batch waits for its deadline...
    q.append(Batch::new((0..3).map(ev).collect()))
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let d = c
        .poll(10, Duration::from_millis(200))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(d.events.len(), 3);
    assert!(started.elapsed() >= Duration::from_millis(190));
    // ...and is woken as soon as appends fill it, however they trickle in, from
    // several producers at once.
    for round in 0..20 {
        let producers: Vec<_> = (0..4)
            .map(|p| {
                let q = q.clone();
                tokio::spawn(async move {
                    for i in 0..25 {
                        q.append(Batch::new(vec![ev(1000 * round + 100 * p + i)]))
                            .await
                            .unwrap();
                        if i % 5 == 0 {
                            tokio::task::yield_now().await;
                        }
                    }
                })
            })
            .collect();
        let started = std::time::Instant::now();
        let d = c.poll(100, Duration::from_secs(30)).await.unwrap().unwrap();
        assert_eq!(d.events.len(), 100, "round {round}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "round {round}: a full batch waited {:?}",
            started.elapsed()
        );
        for p in producers {
            p.await.unwrap();
        }
    }
    assert_eq!(q.stats().depth_events, 0);
}
