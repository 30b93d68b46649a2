//! The WAL queue: commits in any order checkpoint only the committed prefix, and a
//! reopened queue resumes after it.

use std::time::Duration;

use bytes::Bytes;
use sluice_core::{Batch, Event, Queue};
use sluice_queue::{WalQueue, WalQueueOptions};

fn ev(n: usize) -> Event {
    Event::new("s", Bytes::from(format!("{{\"n\":{n}}}")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_poll_commit_and_resume_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let opts = WalQueueOptions {
        checkpoint_interval: Duration::ZERO,
        ..Default::default()
    };
    {
        let (q, _) = WalQueue::open(dir.path(), opts.clone()).unwrap();
        for i in 0..10 {
            q.append(Batch::new(vec![ev(2 * i), ev(2 * i + 1)]))
                .await
                .unwrap();
        }
        let c = q.consumer("p").unwrap();
        let d = c.poll(4, Duration::from_secs(1)).await.unwrap().unwrap();
        assert_eq!(d.events.len(), 4, "two whole records");
        assert_eq!(d.events[0].payload, "{\"n\":0}");
        let d2 = c.poll(4, Duration::from_secs(1)).await.unwrap().unwrap();
        // Commit the second delivery only: nothing may be checkpointed yet.
        c.commit(d2.token).await.unwrap();
        c.flush().await.unwrap();
        assert_eq!(
            q.wal().committed("p"),
            None,
            "a gap must hold the checkpoint back"
        );
        c.commit(d.token).await.unwrap();
        c.flush().await.unwrap();
        assert_eq!(q.wal().committed("p"), Some(d2.token));
        q.close().await.unwrap();
    }
    let (q, _) = WalQueue::open(dir.path(), opts).unwrap();
    let c = q.consumer("p").unwrap();
    let d = c.poll(100, Duration::from_secs(1)).await.unwrap().unwrap();
    assert_eq!(d.events.len(), 12, "resumed after the committed prefix");
    assert_eq!(d.events[0].payload, "{\"n\":8}");
    q.close().await.unwrap();
}
