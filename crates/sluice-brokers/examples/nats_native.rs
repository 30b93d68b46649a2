//! The JetStream ceiling on this machine, with nothing of sluice in the way: a native
//! async-nats publisher keeping many publishes in flight and a pull consumer whose
//! acks are sent without waiting (batched on the connection), against a stream laid out as sluice's (work-queue retention, file storage,
//! discard new). `bench/brokers.py` runs it beside `sluice serve --queue nats://` so
//! the two are compared in the same run.
//!
//! ```text
//! cargo run --release -p sluice-queue --features nats --example nats_native -- \
//!     --url nats://127.0.0.1:4222 --payload event.json --seconds 15 [--msg-id]
//! ```
//!
//! Publishing and consuming run at the same time for `--seconds` after a warm-up of
//! 3 s; prints one JSON line: messages acked by the server per second (published) and
//! messages consumed and acked per second (consumed), and the backlog left.

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream};
use bytes::Bytes;
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;

struct Args {
    url: String,
    payload: Bytes,
    seconds: u64,
    in_flight: usize,
    batch: usize,
    msg_id: bool,
}

fn args() -> Args {
    let mut a = Args {
        url: "nats://127.0.0.1:4222".into(),
        payload: Bytes::from(vec![b'x'; 203]),
        seconds: 15,
        in_flight: 4096,
        batch: 5000,
        msg_id: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().unwrap_or_else(|| panic!("{k} needs a value"));
        match k.as_str() {
            "--url" => a.url = v(),
            "--payload" => {
                let text = std::fs::read(v()).expect("reading --payload");
                a.payload = Bytes::from(text.trim_ascii().to_vec());
            }
            "--seconds" => a.seconds = v().parse().expect("--seconds N"),
            "--in-flight" => a.in_flight = v().parse().expect("--in-flight N"),
            "--batch" => a.batch = v().parse().expect("--batch N"),
            "--msg-id" => a.msg_id = true,
            _ => panic!("unknown argument {k}"),
        }
    }
    a
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let a = args();
    let client = async_nats::connect(&a.url).await.expect("connecting");
    let js = jetstream::new(client);
    let _ = js.delete_stream("NATIVE").await;
    let st = js
        .get_or_create_stream(stream::Config {
            name: "NATIVE".into(),
            subjects: vec!["native.>".into()],
            retention: stream::RetentionPolicy::WorkQueue,
            discard: stream::DiscardPolicy::New,
            max_bytes: 1 << 30,
            storage: stream::StorageType::File,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await
        .expect("creating the stream");
    let pull = st
        .get_or_create_consumer(
            "native",
            consumer::pull::Config {
                durable_name: Some("native".into()),
                // A work-queue stream requires explicit acks: one per message, sent
                // without waiting (the client batches them on the connection).
                ack_policy: consumer::AckPolicy::Explicit,
                max_ack_pending: 1_000_000,
                ..Default::default()
            },
        )
        .await
        .expect("creating the consumer");

    let warmup = Duration::from_secs(3);
    let run = Duration::from_secs(a.seconds);
    let start = Instant::now();
    let end = start + warmup + run;

    let publisher = {
        let js = js.clone();
        let payload = a.payload.clone();
        tokio::spawn(async move {
            let (mut acked, mut at_warmup) = (0u64, None);
            let mut pending = FuturesUnordered::new();
            let mut n = 0u64;
            while Instant::now() < end {
                while pending.len() < a.in_flight {
                    n += 1;
                    let ack = if a.msg_id {
                        let mut h = async_nats::HeaderMap::new();
                        h.insert("Nats-Msg-Id", format!("native-{n}").as_str());
                        js.publish_with_headers("native.bench", h, payload.clone())
                            .await
                    } else {
                        js.publish("native.bench", payload.clone()).await
                    };
                    pending.push(std::future::IntoFuture::into_future(
                        ack.expect("sending a publish"),
                    ));
                }
                if let Some(r) = pending.next().await {
                    r.expect("publish ack");
                    acked += 1;
                }
                if at_warmup.is_none() && start.elapsed() >= warmup {
                    at_warmup = Some(acked);
                }
            }
            while let Some(r) = pending.next().await {
                r.expect("publish ack");
            }
            acked - at_warmup.unwrap_or(0)
        })
    };

    let consumer = tokio::spawn(async move {
        let mut messages = pull
            .stream()
            .max_messages_per_batch(a.batch)
            .messages()
            .await
            .expect("pulling");
        let (mut seen, mut at_warmup) = (0u64, None);
        while Instant::now() < end {
            let next = tokio::time::timeout(Duration::from_millis(100), messages.next()).await;
            if let Ok(Some(m)) = next {
                m.expect("a message").ack().await.expect("ack");
                seen += 1;
            }
            if at_warmup.is_none() && start.elapsed() >= warmup {
                at_warmup = Some(seen);
            }
        }
        seen - at_warmup.unwrap_or(0)
    });

    let published = publisher.await.expect("publisher");
    let consumed = consumer.await.expect("consumer");
    let backlog = js
        .get_stream("NATIVE")
        .await
        .expect("stream")
        .info()
        .await
        .expect("stream info")
        .state
        .messages;
    let secs = run.as_secs_f64();
    println!(
        "{{\"published_per_s\": {:.0}, \"consumed_per_s\": {:.0}, \"backlog_end\": {backlog}, \"payload_bytes\": {}, \"msg_id\": {}}}",
        published as f64 / secs,
        consumed as f64 / secs,
        a.payload.len(),
        a.msg_id
    );
    let _ = js.delete_stream("NATIVE").await;
}
