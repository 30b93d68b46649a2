//! The batching helper sends when N events are buffered or T has passed.

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use sluice_client::{BatchOptions, Batcher, Client};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_on_count_and_on_time() {
    let node = start_fast(&[]).await;
    let client = Client::builder(&node.base).build().unwrap();
    let b = Batcher::new(
        client.clone(),
        client.endpoint("batched").unwrap(),
        BatchOptions {
            max_events: 10,
            max_wait: Duration::from_millis(300),
            ..BatchOptions::default()
        },
    );
    let stats = b.stats();
    for i in 0..25 {
        b.push(Bytes::from(format!("{{\"i\":{i}}}"))).await.unwrap();
    }
    // Two full batches go at once; the last 5 events wait for max_wait.
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(stats.events_accepted.load(Ordering::Relaxed), 20);
    assert_eq!(node.counter(REQUESTS).await, 2);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(stats.events_accepted.load(Ordering::Relaxed), 25);
    assert_eq!(node.counter(EVENTS).await, 25);
    let summary = b.close().await;
    assert_eq!((summary.batches, summary.events_accepted), (3, 25));
    assert!(summary.errors.is_empty());
}
