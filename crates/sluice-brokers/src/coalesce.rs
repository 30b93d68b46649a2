//! Group commit for single-event appends, shared by the broker queues. A broker's
//! cost is per message (a JetStream publish and ack, a Kafka record stored and
//! fetched), so the events of concurrent single-event requests travel together: an
//! append waits in [`Coalescer::append`] while the [`Coalescer::run`] task publishes
//! the group before it, then goes out with every append that arrived meanwhile.

use std::future::Future;
use std::sync::Mutex;

use sluice_core::{AppendError, Batch, Event};

/// Where a coalesced append hears the outcome of its group.
type Answer = tokio::sync::oneshot::Sender<Result<(), AppendError>>;

/// Single-event appends waiting for the [`Coalescer::run`] task.
#[derive(Default)]
pub(crate) struct Coalescer {
    pending: Mutex<Vec<(Event, Answer)>>,
    wake: tokio::sync::Notify,
}

impl Coalescer {
    /// Queues `event` (checked by the caller) for the next group; resolves with the
    /// outcome of the message that carried it. A `Full` outcome hands back an empty
    /// batch: the queue puts the caller's own back.
    pub(crate) async fn append(&self, event: Event) -> Result<(), AppendError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.pending
            .lock()
            .expect("coalescer lock poisoned")
            .push((event, tx));
        self.wake.notify_one();
        rx.await.unwrap_or(Err(AppendError::ShuttingDown))
    }

    /// Forever: takes every append waiting, hands their events to `publish` (sorted
    /// by stream, each append's order kept) and answers each append with the outcome
    /// `publish` gives its event (one per event, in the order given).
    pub(crate) async fn run<F, Fut>(&self, publish: F)
    where
        F: Fn(Vec<Event>) -> Fut,
        Fut: Future<Output = Vec<Result<(), AppendError>>>,
    {
        loop {
            self.wake.notified().await;
            loop {
                let mut group =
                    std::mem::take(&mut *self.pending.lock().expect("coalescer lock poisoned"));
                if group.is_empty() {
                    break;
                }
                // An append that gave up (its deadline passed, the producer heard
                // 503) is not published late: pending holds only appends still waiting.
                group.retain(|(_, tx)| !tx.is_closed());
                group.sort_by(|a, b| a.0.stream.cmp(&b.0.stream));
                let (events, waiters): (Vec<Event>, Vec<_>) = group.into_iter().unzip();
                let results = publish(events).await;
                debug_assert_eq!(results.len(), waiters.len());
                for (w, r) in waiters.into_iter().zip(results) {
                    let _ = w.send(r);
                }
            }
        }
    }
}

/// The same outcome for another append of a shared message (`Full` hands back an
/// empty batch: the queue puts the caller's own back).
pub(crate) fn share(r: &Result<(), AppendError>) -> Result<(), AppendError> {
    match r {
        Ok(()) => Ok(()),
        Err(AppendError::Full {
            reason,
            retry_after,
            ..
        }) => Err(AppendError::Full {
            batch: Box::new(Batch::new(Vec::new())),
            reason: reason.clone(),
            retry_after: *retry_after,
        }),
        Err(AppendError::ShuttingDown) => Err(AppendError::ShuttingDown),
        Err(AppendError::TooLarge { bytes, limit }) => Err(AppendError::TooLarge {
            bytes: *bytes,
            limit: *limit,
        }),
        Err(AppendError::Backend { message }) => Err(AppendError::Backend {
            message: message.clone(),
        }),
    }
}
