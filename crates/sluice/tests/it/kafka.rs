//! The Kafka queue and sink against a real broker: `tansu`, a Kafka-compatible
//! broker, started on a free port with in-memory storage, one per test.
//!
//! The binary is found through `TANSU_BIN`, then `PATH`, then `~/.cargo/bin/tansu`
//! (`cargo install --locked tansu --version 0.6.0 --features dynostore`). Without
//! it the tests print a notice and pass, except under `CI=true`, where they fail.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rdkafka::producer::{BaseProducer, Producer};
use rdkafka::ClientConfig;
use sluice_brokers::kafka::{KafkaOptions, KafkaQueue, KafkaSink, KafkaSinkOptions};
use sluice_core::units::HumanDuration;
use sluice_core::{AppendError, Batch, Consumer, Delivery, Event, Queue, Sink, SinkError};

use crate::brokers::{find_binary, missing, Broker};
use crate::support::free_addr;

/// A tansu broker on 127.0.0.1, killed when dropped.
///
/// As a [`Broker`] for the shared scenarios, "away" is a frozen process (SIGSTOP,
/// then SIGCONT): the only storage this tansu build has is memory, which a restart
/// wipes, so a restart would test tansu losing data, not sluice.
pub struct Tansu {
    bin: PathBuf,
    port: u16,
    child: Option<tokio::process::Child>,
    /// Holds the broker's log.
    dir: tempfile::TempDir,
}

impl Tansu {
    /// Starts a broker and waits until it answers metadata. `None` (after a notice)
    /// when no tansu binary is installed and this is not CI: the caller skips.
    pub async fn start() -> Option<Tansu> {
        let Some(bin) = find_binary(
            "tansu",
            "TANSU_BIN",
            &[PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cargo/bin/tansu")],
        ) else {
            return missing("tansu");
        };
        let port = free_addr().port();
        let mut tansu = Tansu {
            bin,
            port,
            child: None,
            dir: tempfile::tempdir().unwrap(),
        };
        tansu.spawn().await;
        Some(tansu)
    }

    /// `host:port` for `bootstrap.servers`.
    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Kills the broker (its in-memory data is lost).
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.expect("killing tansu");
        }
    }

    /// Starts the broker again on the same port, empty.
    pub async fn restart(&mut self) {
        self.kill().await;
        self.spawn().await;
    }

    async fn spawn(&mut self) {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let child = tokio::process::Command::new(&self.bin)
            .args(["broker", "--listener-url", &url])
            .args(["--advertised-listener-url", &url])
            .args(["--storage-engine", "memory://tansu/"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", self.bin.display()));
        self.child = Some(child);
        self.wait_ready().await;
    }

    async fn wait_ready(&mut self) {
        let brokers = self.brokers();
        let deadline = Instant::now() + Duration::from_secs(30);
        let probe: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .create()
            .unwrap();
        let probe = Arc::new(probe);
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("tansu exited with {status}; log:\n{}", self.log());
            }
            let p = probe.clone();
            let answered = tokio::task::spawn_blocking(move || {
                p.client()
                    .fetch_metadata(None, Duration::from_secs(1))
                    .is_ok_and(|m| !m.brokers().is_empty())
            })
            .await
            .unwrap();
            if answered {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "tansu did not answer metadata on {brokers} within 30s; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = tokio::task::spawn_blocking(move || drop(probe)).await;
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("tansu.log")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }
}

impl Broker for Tansu {
    fn url(&self) -> String {
        format!("kafka://{}", self.brokers())
    }

    async fn stop(&mut self) {
        self.signal("-STOP");
    }

    async fn start(&mut self) {
        self.signal("-CONT");
    }
}

impl Tansu {
    fn signal(&self, sig: &str) {
        let pid = self
            .child
            .as_ref()
            .and_then(|c| c.id())
            .expect("tansu runs");
        let ok = std::process::Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig} {pid}");
    }
}

fn opts(tansu: &Tansu) -> KafkaOptions {
    KafkaOptions {
        url: tansu.brokers(),
        partitions: 4,
        session_timeout: HumanDuration(Duration::from_secs(6)),
        ..KafkaOptions::default()
    }
}

/// `n` events with a mix of keys, producer timestamps and headers.
fn events(stream: &str, n: usize, tag: &str) -> Vec<Event> {
    (0..n)
        .map(|i| {
            let mut e = Event::new(stream, format!("{{\"tag\":\"{tag}\",\"n\":{i}}}"));
            if i % 3 == 0 {
                e.key = Some(format!("user-{}", i % 5));
            }
            if i % 2 == 0 {
                e.timestamp_unix_nanos = Some(1_700_000_000_000_000_000 + i as i64);
            }
            if i % 4 == 0 {
                e.headers = vec![
                    ("trace".into(), format!("t-{i}")),
                    ("empty".into(), String::new()),
                ];
            }
            e
        })
        .collect()
}

async fn append_all(q: &KafkaQueue, batches: &[Vec<Event>]) {
    for b in batches {
        q.append(Batch::new(b.clone())).await.expect("append");
    }
}

/// Appends one event at a time, each acknowledged before the next is sent, so that
/// every record is a Kafka record batch of its own.
///
/// Needed where a consumer resumes from a committed offset: tansu 0.6.0 answers a
/// fetch from an offset inside a record batch with the batches after it, skipping
/// the rest of that batch (a broker bug; Kafka returns the containing batch and the
/// client drops the records before the offset).
async fn append_one_by_one(q: &KafkaQueue, events: &[Event]) {
    for e in events {
        q.append(Batch::new(vec![e.clone()])).await.expect("append");
    }
}

/// Polls until `want` events arrived or `within` passed; returns the deliveries,
/// uncommitted.
async fn poll_until(
    c: &dyn Consumer,
    want: usize,
    max_events: usize,
    within: Duration,
) -> Vec<Delivery> {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    let mut n = 0;
    while n < want && Instant::now() < deadline {
        match c.poll(max_events, Duration::from_millis(300)).await {
            Ok(Some(d)) => {
                n += d.events.len();
                got.push(d);
            }
            Ok(None) => {}
            // Passing errors (a coordinator not yet known) are the processor's to
            // retry too.
            Err(e) => {
                eprintln!("poll failed, retrying: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    got
}

/// Polls until `want` events arrived or `within` passed, committing each delivery.
async fn take(c: &dyn Consumer, want: usize, within: Duration) -> Vec<Event> {
    let mut events = Vec::new();
    for d in poll_until(c, want, 100, within).await {
        c.commit(d.token).await.expect("commit");
        events.extend(d.events);
    }
    events
}

/// Asserts every event of `got` is one of `sent`, identical, and each arrived once.
fn assert_identical(sent: &[Event], got: &[Event]) {
    let by_id: HashMap<&str, &Event> = sent.iter().map(|e| (e.id.as_str(), e)).collect();
    let mut seen = HashSet::new();
    for e in got {
        let original = by_id
            .get(e.id.as_str())
            .unwrap_or_else(|| panic!("unexpected event {e:?}"));
        assert_eq!(e, *original, "event changed on its way through kafka");
        assert!(seen.insert(&e.id), "event {} arrived twice", e.id);
    }
}

fn ids(events: &[Event]) -> HashSet<String> {
    events.iter().map(|e| e.id.to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appended_batches_arrive_identical_through_a_consumer() {
    let Some(tansu) = Tansu::start().await else {
        return;
    };
    let q = KafkaQueue::connect(opts(&tansu)).await.unwrap();
    let batches: Vec<Vec<Event>> = (0..5)
        .map(|b| events(&format!("s{}", b % 2), 20, &format!("b{b}")))
        .collect();
    append_all(&q, &batches).await;
    let sent: Vec<Event> = batches.concat();

    let c = q.consumer("round-trip").unwrap();
    let got = take(c.as_ref(), sent.len(), Duration::from_secs(60)).await;
    assert_eq!(got.len(), sent.len(), "every event arrives");
    assert_identical(&sent, &got);
    // One key is one partition: its events keep their append order.
    for key in (0..5).map(|k| format!("user-{k}")) {
        let order = |v: &[Event]| -> Vec<String> {
            v.iter()
                .filter(|e| e.key.as_deref() == Some(&key))
                .map(|e| e.id.to_string())
                .collect()
        };
        assert_eq!(order(&got), order(&sent), "order of key {key}");
    }
    c.flush().await.unwrap();
}

/// A multi-event append is written as a few batch records (one per stream and key),
/// read back whole and in order, with the documented headers; the topic holds
/// records, not one per event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_of_many_events_is_a_few_records() {
    let Some(tansu) = Tansu::start().await else {
        return;
    };
    let o = opts(&tansu);
    let q = KafkaQueue::connect(o.clone()).await.unwrap();
    let pad = "x".repeat(150);
    let mut sent: Vec<Event> = (0..1000)
        .map(|i| Event::new("clicks", format!("{{\"n\":{i},\"pad\":\"{pad}\"}}")))
        .collect();
    for (i, e) in sent.iter_mut().enumerate().filter(|(i, _)| i % 100 == 7) {
        e.key = Some("user-1".into());
        e.headers = vec![("trace".into(), format!("t-{i}"))];
    }
    q.append(Batch::new(sent.clone())).await.unwrap();

    let (records, got) = read_raw(&tansu, &o, sent.len()).await;
    assert_eq!(got.len(), sent.len(), "every event, once");
    assert_eq!(records.len(), 2, "one record per key: {records:?}");
    for (key, names) in &records {
        assert_eq!(names, &["sluice-batch", "sluice-stream"], "{key:?}");
    }
    assert!(records.iter().any(|(k, _)| k.as_deref() == Some("user-1")));
    // Each record's events in append order; together, the whole append.
    let position: HashMap<String, usize> = sent
        .iter()
        .enumerate()
        .map(|(i, e)| (e.id.to_string(), i))
        .collect();
    let mut last: HashMap<Option<String>, usize> = HashMap::new();
    for e in &got {
        let at = position[&e.id.to_string()];
        if let Some(prev) = last.insert(e.key.clone(), at) {
            assert!(prev < at, "key {:?} out of order", e.key);
        }
    }
    assert_identical(&sent, &got);
}

/// Reads the queue's topic raw (every partition from the beginning, no group) until
/// `want` events came or 30 s passed: each record's key and header names, and the
/// events decoded.
async fn read_raw(
    tansu: &Tansu,
    o: &KafkaOptions,
    want: usize,
) -> (Vec<(Option<String>, Vec<String>)>, Vec<Event>) {
    use rdkafka::consumer::{BaseConsumer, Consumer as _};
    use rdkafka::message::{Headers, Message};
    use rdkafka::{Offset, TopicPartitionList};

    let raw: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", tansu.brokers())
        .set("group.id", "raw-reader")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..o.partitions {
        tpl.add_partition_offset(&o.topic, p, Offset::Beginning)
            .unwrap();
    }
    raw.assign(&tpl).unwrap();
    let (mut records, mut got) = (Vec::new(), Vec::new());
    let deadline = Instant::now() + Duration::from_secs(30);
    while got.len() < want && Instant::now() < deadline {
        let Some(m) = raw.poll(Duration::from_millis(200)) else {
            continue;
        };
        let m = m.unwrap();
        let names = m.headers().unwrap().iter().map(|h| h.key.to_string());
        let key = m.key().map(|k| String::from_utf8_lossy(k).into_owned());
        records.push((key, names.collect()));
        got.extend(sluice_brokers::kafka::decode_records(&m).unwrap());
    }
    (records, got)
}

/// Concurrent single-event appends are produced together (the group commit): far
/// fewer records than events, every event once, and a bad event fails only its own
/// append.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_single_event_appends_share_records() {
    let Some(tansu) = Tansu::start().await else {
        return;
    };
    let o = opts(&tansu);
    let q = Arc::new(KafkaQueue::connect(o.clone()).await.unwrap());
    let tasks: Vec<_> = (0..200u64)
        .map(|i| {
            let q = q.clone();
            tokio::spawn(async move {
                let stream = if i.is_multiple_of(2) { "a" } else { "b" };
                let mut e = Event::new(stream, format!("{{\"i\":{i}}}"));
                if i.is_multiple_of(5) {
                    e.key = Some(format!("user-{}", i % 3));
                }
                if i == 7 {
                    e.headers = vec![("sluice-key".into(), "forged".into())];
                }
                (i, q.append(Batch::new(vec![e])).await)
            })
        })
        .collect();
    for t in tasks {
        let (i, r) = t.await.unwrap();
        assert_eq!(r.is_err(), i == 7, "append {i}: {r:?}");
    }
    let (records, got) = read_raw(&tansu, &o, 199).await;
    assert!(
        records.len() < 100,
        "{} records for 199 events",
        records.len()
    );
    let mut seen = std::collections::BTreeSet::new();
    for e in &got {
        let v: serde_json::Value = serde_json::from_slice(&e.payload).unwrap();
        let i = v["i"].as_u64().unwrap();
        assert_eq!(&*e.stream, if i.is_multiple_of(2) { "a" } else { "b" });
        let key = i.is_multiple_of(5).then(|| format!("user-{}", i % 3));
        assert_eq!(e.key, key, "event {i}");
        assert!(seen.insert(i), "event {i} once");
    }
    assert_eq!(seen.len(), 199);
    assert!(!seen.contains(&7));
}

/// The queue's depth is the group's lag: what is appended and not committed, back
/// to 0 once everything is committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_depth_is_the_groups_lag() {
    let Some(tansu) = Tansu::start().await else {
        return;
    };
    let q = KafkaQueue::connect(KafkaOptions {
        // The group watch measures every session timeout. Not 1 s: with heartbeats
        // every ~330 ms a member under the whole suite's load missed its session, and
        // the group kept rebalancing (the consumer got nothing within 30 s, twice).
        session_timeout: HumanDuration(Duration::from_secs(3)),
        ..opts(&tansu)
    })
    .await
    .unwrap();
    assert_eq!(q.stats().depth_events, 0);
    // One record per record batch: tansu 0.6.0 answers ListOffsets(latest) with
    // the last batch's base offset + 1, not the offset after its last record.
    append_one_by_one(&q, &events("lag", 40, "l")).await;
    let c = q.consumer("lag").unwrap();
    let depth_becomes = |want: u64| {
        let q = q.clone();
        async move {
            let end = Instant::now() + Duration::from_secs(20);
            while q.stats().depth_events != want && Instant::now() < end {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            q.stats().depth_events
        }
    };
    assert_eq!(depth_becomes(40).await, 40, "nothing committed yet");
    let got = take(c.as_ref(), 40, Duration::from_secs(30)).await;
    assert_eq!(got.len(), 40);
    c.flush().await.unwrap();
    assert_eq!(depth_becomes(0).await, 0, "everything committed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_consumer_resumes_after_the_committed_offsets() {
    let Some(tansu) = Tansu::start().await else {
        return;
    };
    let q = KafkaQueue::connect(opts(&tansu)).await.unwrap();
    let sent = events("resume", 60, "r");
    append_one_by_one(&q, &sent).await;

    let first = q.consumer("resume").unwrap();
    let mut done = Vec::new();
    for d in poll_until(first.as_ref(), 30, 5, Duration::from_secs(60)).await {
        first.commit(d.token).await.unwrap();
        done.extend(d.events);
    }
    assert!(
        done.len() >= 30 && done.len() < sent.len(),
        "{}",
        done.len()
    );
    first.flush().await.unwrap();
    drop(first);

    let second = q.consumer("resume").unwrap();
    let rest = take(
        second.as_ref(),
        sent.len() - done.len(),
        Duration::from_secs(60),
    )
    .await;
    assert_identical(&sent, &[done.clone(), rest.clone()].concat());
    assert_eq!(
        ids(&rest),
        &ids(&sent) - &ids(&done),
        "exactly the uncommitted rest"
    );
    let late = take(second.as_ref(), 1, Duration::from_secs(3)).await;
    assert!(late.is_empty(), "committed events came again: {late:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_later_delivery_committed_first_does_not_commit_the_earlier_one() {
    let Some(tansu) = Tansu::start().await else {
        return;
    };
    let q = KafkaQueue::connect(opts(&tansu)).await.unwrap();
    // One key: one partition, so the deliveries follow each other in it.
    let mut sent = events("order", 10, "o");
    for e in &mut sent {
        e.key = Some("one".into());
    }
    // One record each (a multi-event append of one key would be one batch record).
    append_one_by_one(&q, &sent).await;

    let c = q.consumer("order").unwrap();
    let ds = poll_until(c.as_ref(), 10, 5, Duration::from_secs(60)).await;
    assert!(ds.len() >= 2, "two deliveries at least");
    let (earlier, later) = (&ds[0], &ds[1]);
    c.commit(later.token).await.unwrap();
    c.flush().await.unwrap();
    drop(c);

    let c = q.consumer("order").unwrap();
    let again = poll_until(c.as_ref(), 10, 5, Duration::from_secs(60)).await;
    let again_events: Vec<Event> = again.iter().flat_map(|d| d.events.clone()).collect();
    assert!(
        ids(&earlier.events).is_subset(&ids(&again_events)),
        "the uncommitted earlier delivery is redelivered"
    );
    assert_eq!(
        again_events, sent,
        "redelivered from the earlier one on, in order"
    );
    // Out of order again, then complete: the whole prefix is committed.
    for d in again.iter().rev() {
        c.commit(d.token).await.unwrap();
    }
    c.flush().await.unwrap();
    drop(c);
    let c = q.consumer("order").unwrap();
    let late = take(c.as_ref(), 1, Duration::from_secs(8)).await;
    assert!(
        late.is_empty(),
        "all committed, nothing comes again: {late:?}"
    );
}

/// Runs a consumer in a task, committing what it gets, until `stop`; hands the
/// consumer back.
fn run_member(
    c: Box<dyn Consumer>,
    got: Arc<Mutex<Vec<Event>>>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Box<dyn Consumer>> {
    tokio::spawn(async move {
        while !stop.load(Ordering::Relaxed) {
            match c.poll(20, Duration::from_millis(200)).await {
                Ok(Some(d)) => {
                    c.commit(d.token).await.unwrap();
                    got.lock().unwrap().extend(d.events);
                }
                Ok(None) => {}
                Err(e) => {
                    eprintln!("poll failed, retrying: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        c
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_members_share_the_partitions_and_one_takes_over_when_the_other_leaves() {
    let Some(tansu) = Tansu::start().await else {
        return;
    };
    let q = KafkaQueue::connect(opts(&tansu)).await.unwrap();
    let (got1, got2) = (Arc::default(), Arc::default());
    let (stop1, stop2) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let m1 = run_member(
        q.consumer("pair").unwrap(),
        Arc::clone(&got1),
        stop1.clone(),
    );
    let m2 = run_member(
        q.consumer("pair").unwrap(),
        Arc::clone(&got2),
        stop2.clone(),
    );
    let len = |g: &Arc<Mutex<Vec<Event>>>| g.lock().unwrap().len();

    // Produce until both members have had something.
    let mut sent = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut round = 0;
    while len(&got1) == 0 || len(&got2) == 0 {
        assert!(
            Instant::now() < deadline,
            "both members receive: {} and {}",
            len(&got1),
            len(&got2)
        );
        let batch = events("pair", 10, &format!("a{round}"));
        round += 1;
        append_one_by_one(&q, &batch).await;
        sent.extend(batch);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The second member leaves mid-run; the first gets the rest.
    stop2.store(true, Ordering::Relaxed);
    drop(m2.await.unwrap());
    for round in 0..10 {
        let batch = events("pair", 10, &format!("b{round}"));
        append_one_by_one(&q, &batch).await;
        sent.extend(batch);
    }
    let all = ids(&sent);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let seen: HashSet<String> = &ids(&got1.lock().unwrap()) | &ids(&got2.lock().unwrap());
        if all.is_subset(&seen) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} events never delivered",
            all.difference(&seen).count(),
            all.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop1.store(true, Ordering::Relaxed);
    let c1 = m1.await.unwrap();
    c1.flush().await.unwrap();
    // At-least-once: duplicates are allowed, changed events are not.
    let by_id: HashMap<String, Event> = sent.into_iter().map(|e| (e.id.to_string(), e)).collect();
    for e in got1
        .lock()
        .unwrap()
        .iter()
        .chain(got2.lock().unwrap().iter())
    {
        assert_eq!(e, &by_id[e.id.as_str()]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_broker_fails_appends_in_bounded_time_and_a_restarted_one_takes_them() {
    let Some(mut tansu) = Tansu::start().await else {
        return;
    };
    let q = KafkaQueue::connect(opts(&tansu)).await.unwrap();
    append_all(&q, &[events("down", 5, "before")]).await;

    tansu.kill().await;
    let started = Instant::now();
    let r = q.append(Batch::new(events("down", 5, "during"))).await;
    let took = started.elapsed();
    assert!(
        matches!(r, Err(AppendError::Backend { .. })),
        "a dead broker is a backend error: {r:?}"
    );
    assert!(took < Duration::from_secs(15), "answered in {took:?}");
    assert_eq!(q.stats().depth_bytes, 0, "nothing left counted as buffered");

    // The in-memory broker comes back empty; the producer reconnects on its own.
    tansu.restart().await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut attempts = 0;
    loop {
        attempts += 1;
        match q.append(Batch::new(events("down", 5, "after"))).await {
            Ok(_) => break,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "appends fail after the restart ({attempts} attempts): {e}; log:\n{}",
                    tansu.log()
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sink_delivers_readable_records_and_rejects_only_the_oversized_one() {
    let Some(tansu) = Tansu::start().await else {
        return;
    };
    // The queue on the sink's topic creates it and reads it back.
    let q = KafkaQueue::connect(KafkaOptions {
        topic: "sunk".into(),
        ..opts(&tansu)
    })
    .await
    .unwrap();
    let sink = KafkaSink::connect(&KafkaSinkOptions {
        url: tansu.brokers(),
        topic: "sunk".into(),
        ..KafkaSinkOptions::default()
    })
    .await
    .unwrap();
    assert_eq!(sink.name(), "kafka");

    let first = events("out", 10, "first");
    sink.deliver(&first).await.unwrap();
    let mut second = events("out", 3, "second");
    second[1].payload = Bytes::from(vec![b'x'; 2 << 20]);
    match sink.deliver(&second).await {
        Err(SinkError::Rejected(r)) => {
            assert_eq!(r.len(), 1, "{r:?}");
            assert_eq!(r[0].index, 1);
            assert!(r[0].reason.contains("size"), "{}", r[0].reason);
        }
        other => panic!("expected the oversized event rejected, got {other:?}"),
    }

    let delivered: Vec<Event> = [&first[..], &second[..1], &second[2..]].concat();
    let c = q.consumer("sink-check").unwrap();
    let got = take(c.as_ref(), delivered.len(), Duration::from_secs(60)).await;
    assert_eq!(ids(&got), ids(&delivered), "all but the oversized event");
    assert_identical(&delivered, &got);
}

// The scenarios every broker passes (see `brokers`), on Kafka.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_ingest_through_kafka_to_files() {
    let Some(tansu) = Tansu::start().await else {
        return;
    };
    crate::brokers::ingest_to_file(&tansu, &[("queue.partitions", "4")]).await;
}

/// tansu frozen (SIGSTOP) under load, then let go: producers get 503 + Retry-After
/// meanwhile, and every acked event is delivered.
///
/// The group session (30 s) outlasts the freeze (~12 s). When it does not, the
/// consumer gives up its member id, and tansu 0.6.0 keeps waiting for that member
/// as the group's leader: no member is ever assigned anything again in that group
/// (seen with cgrp debug logs). Apache Kafka's coordinator expires the old member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_away_under_load_loses_no_acked_event() {
    let Some(mut tansu) = Tansu::start().await else {
        return;
    };
    crate::brokers::broker_restart_under_load(
        &mut tansu,
        &[("queue.partitions", "4"), ("queue.session_timeout", "30s")],
    )
    .await;
}

/// Two `sluice ingest` + two `sluice process` on tansu; one processor SIGKILLed
/// mid-run. tansu 0.6.0 never hands a dead member's partitions to anyone (see the
/// queue's `watch` module); the survivor's group watch rejoins the group and takes
/// them, so everything acked is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_two_ingest_two_processors_one_killed() {
    let Some(tansu) = Tansu::start().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("sluice.toml");
    // A short session, so the killed processor's partitions move over quickly.
    std::fs::write(&conf, "[queue]\npartitions = 4\nsession_timeout = \"6s\"\n").unwrap();
    crate::brokers::scale_out(&tansu, &["--config", conf.to_str().unwrap()]).await;
}

/// `--sink kafka://…` with the sink's own options from the config file: a producer
/// property (`message.max.bytes` = 4,096) and the topic's partitions reach the
/// client and the broker. Events over that limit go to the dead-letter files with
/// the reason; the others are in the topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_the_kafka_sink_refuses_are_dead_lettered() {
    let Some(tansu) = Tansu::start().await else {
        return;
    };
    let url = tansu.url();
    let dir = tempfile::tempdir().unwrap();
    let config = crate::support::test_config_file(
        dir.path(),
        "[sink]\nkind = \"kafka\"\ntopic = \"out\"\npartitions = 3\n\
         producer = { \"message.max.bytes\" = 4096 }\n",
        &[("sink.url", &url)],
    );
    let node = crate::support::start_config(config, dir, Default::default()).await;
    let partitions = {
        use rdkafka::consumer::Consumer as _;
        let c: rdkafka::consumer::BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", tansu.brokers())
            .create()
            .unwrap();
        let m = c
            .fetch_metadata(Some("out"), Duration::from_secs(5))
            .unwrap();
        m.topics()[0].partitions().len()
    };
    assert_eq!(partitions, 3, "sink.partitions made the topic");
    let big = "x".repeat(5000);
    let body: String = (0..20)
        .map(|i| match i % 7 {
            3 => format!("{{\"k\":\"big-{i}\",\"pad\":\"{big}\"}}\n"),
            _ => format!("{{\"k\":\"ok-{i}\"}}\n"),
        })
        .collect();
    let http = crate::support::Http::h1();
    let a = http
        .post(&node.events_url("load"), &[crate::support::NDJSON], body)
        .await;
    assert_eq!(a.status, hyper::StatusCode::ACCEPTED, "{:?}", a.body);
    let dead_dir = node.dir.path().join("dead").join("load");
    let dead = || crate::support::sink_lines(&dead_dir);
    assert!(crate::support::wait_until(Duration::from_secs(60), || dead().len() >= 3).await);
    let mut keys: Vec<String> = dead()
        .iter()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let reason = v["headers"]["sluice-dead-letter-reason"].as_str().unwrap();
            assert!(reason.to_lowercase().contains("too large"), "{reason}");
            assert_eq!(v["headers"]["sluice-dead-letter-sink"], "kafka");
            v["data"]["k"].as_str().unwrap().to_string()
        })
        .collect();
    keys.sort();
    assert_eq!(keys, ["big-10", "big-17", "big-3"]);
    // The counters move once the delivery is done, a moment after the files.
    let dead_series = "sluice_dead_lettered_events_total{sink=\"kafka\"}";
    let delivered_series = "sluice_sink_delivered_events_total{sink=\"kafka\"}";
    crate::support::wait_until_async(Duration::from_secs(10), || async {
        let page = node.metrics().await;
        crate::support::metric(&page, dead_series) >= 3.0
            && crate::support::metric(&page, delivered_series) >= 17.0
    })
    .await;
    let page = node.metrics().await;
    assert_eq!(crate::support::metric(&page, dead_series), 3.0);
    assert_eq!(crate::support::metric(&page, delivered_series), 17.0);
    node.node.shutdown();
    node.node.wait().await;
}
