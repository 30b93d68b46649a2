//! The processor's dead letters: refused events, a sink failing past `max_attempts`,
//! events handed out too often.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sluice_core::{
    Batch, BoxFuture, ConsumeError, Consumer, Delivery, Event, Queue, Rejection, Sink, SinkError,
};
use sluice_pipeline::sinks::FileSink;
use sluice_pipeline::{Processor, ProcessorOptions, ProcessorStats};
use sluice_queue::MemoryQueue;
use tokio_util::sync::CancellationToken;

use crate::read_lines;

/// Keeps what it accepts; refuses for good events whose payload says "poison";
/// fails every attempt when `always_fail`.
#[derive(Default)]
struct Picky {
    got: Mutex<Vec<String>>,
    always_fail: bool,
}

impl Sink for Picky {
    fn name(&self) -> &'static str {
        "picky"
    }

    fn deliver<'a>(&'a self, events: &'a [Event]) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async move {
            if self.always_fail {
                return Err(SinkError::retryable("down"));
            }
            let mut refused = Vec::new();
            for (index, e) in events.iter().enumerate() {
                let text = String::from_utf8_lossy(&e.payload).to_string();
                match text.contains("poison") {
                    true => refused.push(Rejection {
                        index,
                        reason: format!("cannot take {text}"),
                    }),
                    false => self.got.lock().unwrap().push(text),
                }
            }
            match refused.is_empty() {
                true => Ok(()),
                false => Err(SinkError::Rejected(refused)),
            }
        })
    }
}

/// Reports every other event as handed out 11 times.
struct Redelivering(MemoryQueue);
struct RedeliveringConsumer(Box<dyn Consumer>);

impl Queue for Redelivering {
    fn append(
        &self,
        b: Batch,
    ) -> BoxFuture<'_, Result<sluice_core::Committed, sluice_core::AppendError>> {
        self.0.append(b)
    }
    fn consumer(&self, name: &str) -> Result<Box<dyn Consumer>, ConsumeError> {
        Ok(Box::new(RedeliveringConsumer(self.0.consumer(name)?)))
    }
    fn stats(&self) -> sluice_core::QueueStats {
        self.0.stats()
    }
    fn close(&self) -> BoxFuture<'_, Result<(), ConsumeError>> {
        self.0.close()
    }
}

impl Consumer for RedeliveringConsumer {
    fn poll(
        &self,
        max_events: usize,
        max_wait: Duration,
    ) -> BoxFuture<'_, Result<Option<Delivery>, ConsumeError>> {
        Box::pin(async move {
            let mut d = self.0.poll(max_events, max_wait).await?;
            if let Some(d) = &mut d {
                d.attempts = d
                    .events
                    .iter()
                    .map(|e| if e.payload.ends_with(b"1}") { 11 } else { 1 })
                    .collect();
            }
            Ok(d)
        })
    }
    fn commit(&self, token: u64) -> BoxFuture<'_, Result<(), ConsumeError>> {
        self.0.commit(token)
    }
    fn flush(&self) -> BoxFuture<'_, Result<(), ConsumeError>> {
        self.0.flush()
    }
}

/// Runs a processor over `payloads` until `done` holds, returns the dead letters
/// (payload, reason) read back from the dead-letter files.
async fn run(
    queue: Arc<dyn Queue>,
    sink: Arc<Picky>,
    opts: ProcessorOptions,
    payloads: Vec<String>,
    done: impl Fn(&ProcessorStats) -> bool,
) -> Vec<(String, String)> {
    let dir = tempfile::tempdir().unwrap();
    let dead = Arc::new(FileSink::new(dir.path(), 1 << 20));
    let p = Processor::new(queue.clone(), sink, opts).with_dead_letter(dead.clone());
    let stats = p.stats();
    let stop = CancellationToken::new();
    let task = tokio::spawn(p.run(stop.clone()));
    let events = payloads.into_iter().map(|p| Event::new("s", p)).collect();
    queue.append(Batch::new(events)).await.unwrap();
    let end = std::time::Instant::now() + Duration::from_secs(10);
    while !done(&stats) && std::time::Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.cancel();
    task.await.unwrap().unwrap();
    let mut out: Vec<(String, String)> = read_lines(&dead.stream_dir("s"))
        .iter()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(v["headers"]["sluice-dead-letter-sink"], "picky");
            let reason = v["headers"]["sluice-dead-letter-reason"].as_str().unwrap();
            (v["data"].to_string(), reason.to_string())
        })
        .collect();
    out.sort();
    out
}

fn opts() -> ProcessorOptions {
    ProcessorOptions {
        workers: 2,
        retry_initial: Duration::from_millis(1),
        retry_max: Duration::from_millis(5),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_the_rejected_events_are_dead_lettered_with_their_reasons() {
    let sink = Arc::new(Picky::default());
    let payloads: Vec<String> = (0..100)
        .map(|i| match i % 40 {
            5 => format!("{{\"poison\":{i}}}"),
            _ => format!("{{\"ok\":{i}}}"),
        })
        .collect();
    let q = Arc::new(MemoryQueue::new(1000, 1 << 20));
    let dead = run(q, sink.clone(), opts(), payloads, |s| {
        s.dead_lettered_events.load(Ordering::Relaxed) == 3
            && s.delivered_events.load(Ordering::Relaxed) == 97
    })
    .await;
    let mut want: Vec<(String, String)> = [5, 45, 85]
        .iter()
        .map(|i| {
            let p = format!("{{\"poison\":{i}}}");
            (p.clone(), format!("cannot take {p}"))
        })
        .collect();
    want.sort();
    assert_eq!(dead, want);
    assert_eq!(sink.got.lock().unwrap().len(), 97);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_failing_past_max_attempts_dead_letters_the_delivery() {
    let sink = Arc::new(Picky {
        always_fail: true,
        ..Default::default()
    });
    let q = Arc::new(MemoryQueue::new(1000, 1 << 20));
    let opts = ProcessorOptions {
        max_attempts: 3,
        ..opts()
    };
    let payloads = (0..10).map(|i| format!("{{\"n\":{i}}}")).collect();
    let dead = run(q, sink, opts, payloads, |s| {
        s.dead_lettered_events.load(Ordering::Relaxed) == 10
    })
    .await;
    assert_eq!(dead.len(), 10);
    assert!(
        dead.iter()
            .all(|(_, r)| r == "gave up after 3 attempts: down"),
        "{dead:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_handed_out_too_often_skip_the_sink() {
    let sink = Arc::new(Picky::default());
    let q = Arc::new(Redelivering(MemoryQueue::new(1000, 1 << 20)));
    let payloads = (0..20).map(|i| format!("{{\"n\":{i}}}")).collect();
    let dead = run(q, sink.clone(), opts(), payloads, |s| {
        s.dead_lettered_events.load(Ordering::Relaxed) == 2
            && s.delivered_events.load(Ordering::Relaxed) == 18
    })
    .await;
    let keys: Vec<&str> = dead.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(keys, ["{\"n\":11}", "{\"n\":1}"]);
    assert!(dead[0].1.contains("handed out 11 times"), "{}", dead[0].1);
    assert_eq!(sink.got.lock().unwrap().len(), 18);
}
