//! Results made on a foreign thread (the WAL writer), handed to the tasks awaiting
//! them by one task on the runtime.
//!
//! Why: a task woken from a thread outside the runtime goes to the runtime's shared
//! (inject) queue, a task woken by a worker (I/O readiness included) to that
//! worker's own queue. With the writer waking every acked request itself, acked
//! requests and connections whose next request has arrived waited in two different
//! queues, and whichever queue the workers favoured starved the other: with 1,000
//! connections a few requests waited hundreds of milliseconds before being read
//! (bench/RESULTS.md, "Where the 1,000-connection tail is"). Here the writer wakes
//! one task per group commit, and that task completes the group's acks from a
//! worker, so they join the same queue as everything else, in order.
//!
//! The task is spawned on the runtime of the first append and ends when the
//! [`Handoff`] is closed (its queue dropped) or its runtime shuts down; without it
//! (no runtime yet, or it has ended) results are sent straight from the writer, as
//! before, so nothing is ever left undelivered.

use std::mem;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{oneshot, Notify};

pub(crate) struct Handoff<T: Send + 'static> {
    shared: Arc<Shared<T>>,
}

struct Shared<T> {
    state: Mutex<State<T>>,
    /// Set while a task runs (a fast check on every append).
    running: AtomicBool,
    notify: Notify,
}

struct State<T> {
    ready: Vec<(oneshot::Sender<T>, T)>,
    running: bool,
    closed: bool,
}

impl<T: Send + 'static> Handoff<T> {
    pub fn new() -> Handoff<T> {
        Handoff {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    ready: Vec::new(),
                    running: false,
                    closed: false,
                }),
                running: AtomicBool::new(false),
                notify: Notify::new(),
            }),
        }
    }

    /// Makes sure a task runs on the current runtime (called by every append; one
    /// atomic load once it does).
    pub fn ensure_running(&self) {
        if self.shared.running.load(Ordering::Acquire) {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        {
            let mut st = self.shared.lock();
            if st.running || st.closed {
                return;
            }
            st.running = true;
            self.shared.running.store(true, Ordering::Release);
        }
        let task = Task(self.shared.clone());
        rt.spawn(task.run());
    }

    /// What the callback of one append sends its result with ([`Deliver::send`]).
    pub fn sender(&self) -> Deliver<T> {
        Deliver(self.shared.clone())
    }

    /// Ends the task once it has handed out what it holds.
    pub fn close(&self) {
        self.shared.lock().closed = true;
        self.shared.notify.notify_one();
    }
}

/// Delivers one result from any thread.
pub(crate) struct Deliver<T>(Arc<Shared<T>>);

impl<T: Send + 'static> Deliver<T> {
    pub fn send(self, tx: oneshot::Sender<T>, value: T) {
        let mut st = self.0.lock();
        if !st.running {
            drop(st);
            let _ = tx.send(value);
            return;
        }
        let first = st.ready.is_empty();
        st.ready.push((tx, value));
        drop(st);
        if first {
            self.0.notify.notify_one();
        }
    }
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes what is ready; with `stop`, also marks the task gone so later results
    /// are sent directly.
    fn take(&self, stop: bool) -> (Vec<(oneshot::Sender<T>, T)>, bool) {
        let mut st = self.lock();
        if stop {
            st.running = false;
            self.running.store(false, Ordering::Release);
        }
        (mem::take(&mut st.ready), st.closed)
    }
}

/// The runtime task. Dropped (its runtime shutting down, or after `close`), it hands
/// out what is left itself and lets results go straight to their tasks from then on.
struct Task<T>(Arc<Shared<T>>);

impl<T: Send + 'static> Task<T> {
    async fn run(self) {
        loop {
            self.0.notify.notified().await;
            let (ready, closed) = self.0.take(false);
            for (tx, value) in ready {
                let _ = tx.send(value);
            }
            if closed {
                return;
            }
        }
    }
}

impl<T> Drop for Task<T> {
    fn drop(&mut self) {
        let (ready, _) = self.0.take(true);
        for (tx, value) in ready {
            let _ = tx.send(value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    }

    /// Sends `n` results from a plain thread, as the WAL writer does.
    fn from_thread(h: &Handoff<u32>, n: u32) -> Vec<oneshot::Receiver<u32>> {
        let mut rxs = Vec::new();
        let mut jobs = Vec::new();
        for i in 0..n {
            let (tx, rx) = oneshot::channel();
            rxs.push(rx);
            jobs.push((h.sender(), tx, i));
        }
        std::thread::spawn(move || {
            for (d, tx, i) in jobs {
                d.send(tx, i);
            }
        })
        .join()
        .unwrap();
        rxs
    }

    #[test]
    fn results_from_a_foreign_thread_reach_their_tasks_through_the_runtime_task() {
        // A current-thread runtime runs its task only inside block_on: results sent
        // meanwhile must wait for the task, not go straight to their receivers.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let h = Handoff::new();
        rt.block_on(async { h.ensure_running() });
        assert!(h.shared.running.load(Ordering::Acquire));
        let mut rxs = from_thread(&h, 1_000);
        assert!(matches!(
            rxs[0].try_recv(),
            Err(oneshot::error::TryRecvError::Empty)
        ));
        assert_eq!(h.shared.lock().ready.len(), 1_000);
        let got = rt.block_on(async {
            let mut got = Vec::new();
            for rx in rxs {
                got.push(
                    tokio::time::timeout(Duration::from_secs(5), rx)
                        .await
                        .unwrap()
                        .unwrap(),
                );
            }
            got
        });
        assert_eq!(got, (0..1_000).collect::<Vec<_>>());
    }

    #[test]
    fn without_a_runtime_task_results_go_straight_to_their_receivers() {
        // Never started (no runtime yet), then started on a runtime that shuts down:
        // both times every result is still delivered, nothing waits forever.
        let h = Handoff::new();
        h.ensure_running(); // outside a runtime: a no-op
        let rxs = from_thread(&h, 3);
        for (i, mut rx) in rxs.into_iter().enumerate() {
            assert_eq!(rx.try_recv().unwrap(), i as u32);
        }
        let rt = runtime();
        rt.block_on(async { h.ensure_running() });
        drop(rt);
        assert!(!h.shared.running.load(Ordering::Acquire));
        let rxs = from_thread(&h, 3);
        for (i, mut rx) in rxs.into_iter().enumerate() {
            assert_eq!(rx.try_recv().unwrap(), i as u32);
        }
        // A later runtime gets a task of its own.
        let rt = runtime();
        rt.block_on(async { h.ensure_running() });
        assert!(h.shared.running.load(Ordering::Acquire));
    }

    #[test]
    fn closing_ends_the_task_after_what_it_holds() {
        let rt = runtime();
        let h = Handoff::new();
        rt.block_on(async { h.ensure_running() });
        let rxs = from_thread(&h, 10);
        h.close();
        rt.block_on(async {
            for rx in rxs {
                tokio::time::timeout(Duration::from_secs(5), rx)
                    .await
                    .unwrap()
                    .unwrap();
            }
            // The task has ended: nothing runs it any more, and later results go direct.
            for _ in 0..100 {
                if !h.shared.running.load(Ordering::Acquire) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        assert!(!h.shared.running.load(Ordering::Acquire));
        let mut rx = from_thread(&h, 1).pop().unwrap();
        assert_eq!(rx.try_recv().unwrap(), 0);
        rt.block_on(async { h.ensure_running() });
        assert!(
            !h.shared.running.load(Ordering::Acquire),
            "a closed handoff starts no task"
        );
    }
}
