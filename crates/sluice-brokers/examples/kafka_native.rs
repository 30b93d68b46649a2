//! The Kafka broker's ceiling on this machine, with nothing of sluice in the way: a
//! native librdkafka producer configured as sluice's (idempotent, `acks=all`), keeping
//! many records in flight, one record per event keyed by a unique id, and a consumer
//! group member reading the same topic and committing its offsets asynchronously
//! every 100 ms. `bench/brokers.py --native` runs it beside
//! `sluice serve --queue kafka://` so the two are compared in the same run.
//!
//! ```text
//! cargo run --release -p sluice-brokers --features kafka --example kafka_native -- \
//!     --brokers 127.0.0.1:9092 --payload event.json --seconds 15
//! ```
//!
//! Producing and consuming run at the same time for `--seconds` after a warm-up of
//! 3 s; prints one JSON line: records acknowledged per second (published), records
//! consumed per second (consumed), and the backlog left (published - consumed).

use std::time::{Duration, Instant};

use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;

struct Args {
    brokers: String,
    payload: Vec<u8>,
    seconds: u64,
    in_flight: usize,
    partitions: i32,
}

fn args() -> Args {
    let mut a = Args {
        brokers: "127.0.0.1:9092".into(),
        payload: vec![b'x'; 203],
        seconds: 15,
        in_flight: 4096,
        partitions: 12,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().unwrap_or_else(|| panic!("{k} needs a value"));
        match k.as_str() {
            "--brokers" => a.brokers = v().trim_start_matches("kafka://").into(),
            "--payload" => {
                let text = std::fs::read(v()).expect("reading --payload");
                a.payload = text.trim_ascii().to_vec();
            }
            "--seconds" => a.seconds = v().parse().expect("--seconds N"),
            "--in-flight" => a.in_flight = v().parse().expect("--in-flight N"),
            "--partitions" => a.partitions = v().parse().expect("--partitions N"),
            _ => panic!("unknown argument {k}"),
        }
    }
    a
}

const TOPIC: &str = "native";

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let a = args();
    let config = |extra: &[(&str, &str)]| {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &a.brokers);
        for (k, v) in extra {
            c.set(*k, *v);
        }
        c
    };
    let admin: AdminClient<DefaultClientContext> = config(&[]).create().expect("admin client");
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let _ = admin.delete_topics(&[TOPIC], &options).await;
    let topic = NewTopic::new(TOPIC, a.partitions, TopicReplication::Fixed(1));
    for r in admin
        .create_topics([&topic], &options)
        .await
        .expect("creating the topic")
    {
        r.expect("creating the topic");
    }

    let warmup = Duration::from_secs(3);
    let run = Duration::from_secs(a.seconds);
    let start = Instant::now();
    let end = start + warmup + run;

    let producer: FutureProducer = config(&[
        ("enable.idempotence", "true"),
        ("acks", "all"),
        ("message.timeout.ms", "10000"),
    ])
    .create()
    .expect("producer");
    let publisher = {
        let payload = a.payload.clone();
        let in_flight = a.in_flight;
        tokio::spawn(async move {
            let (mut acked, mut at_warmup) = (0u64, None);
            let mut pending = FuturesUnordered::new();
            let mut n = 0u64;
            while Instant::now() < end {
                while pending.len() < in_flight {
                    n += 1;
                    let key = format!("native-{n}");
                    let record = FutureRecord::to(TOPIC).key(&key).payload(&payload[..]);
                    match producer.send_result(record) {
                        Ok(report) => pending.push(report),
                        Err(_) => break, // librdkafka's queue is full: wait for reports
                    }
                }
                if let Some(r) = pending.next().await {
                    r.expect("delivery report").expect("delivered");
                    acked += 1;
                }
                if at_warmup.is_none() && start.elapsed() >= warmup {
                    at_warmup = Some(acked);
                }
            }
            while let Some(r) = pending.next().await {
                r.expect("delivery report").expect("delivered");
            }
            acked - at_warmup.unwrap_or(0)
        })
    };

    let consumer: StreamConsumer = config(&[
        ("group.id", "native"),
        ("enable.auto.commit", "false"),
        ("auto.offset.reset", "earliest"),
    ])
    .create()
    .expect("consumer");
    consumer.subscribe(&[TOPIC]).expect("subscribing");
    let consuming = tokio::spawn(async move {
        let (mut seen, mut at_warmup) = (0u64, None);
        let mut last_commit = Instant::now();
        while Instant::now() < end {
            let next = tokio::time::timeout(Duration::from_millis(100), consumer.recv()).await;
            if let Ok(m) = next {
                m.expect("a record");
                seen += 1;
            }
            if last_commit.elapsed() >= Duration::from_millis(100) {
                let _ = consumer.commit_consumer_state(CommitMode::Async);
                last_commit = Instant::now();
            }
            if at_warmup.is_none() && start.elapsed() >= warmup {
                at_warmup = Some(seen);
            }
        }
        (seen - at_warmup.unwrap_or(0), seen)
    });

    let published = publisher.await.expect("publisher");
    let (consumed, consumed_total) = consuming.await.expect("consumer");
    let secs = run.as_secs_f64();
    println!(
        "{{\"published_per_s\": {:.0}, \"consumed_per_s\": {:.0}, \"consumed_total\": {consumed_total}, \"payload_bytes\": {}, \"partitions\": {}}}",
        published as f64 / secs,
        consumed as f64 / secs,
        a.payload.len(),
        a.partitions
    );
    let _ = admin.delete_topics(&[TOPIC], &options).await;
}
