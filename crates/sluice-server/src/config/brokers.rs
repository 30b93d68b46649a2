//! `[queue.nats]` and `[queue.kafka]`: the broker queues' layout and timeouts. The
//! broker's address is `queue.url` (`--queue nats://HOST:PORT` sets both the kind
//! and the URL).

use std::time::Duration;

use serde::Deserialize;

use super::HumanDuration;

/// `[queue.nats]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsQueueConfig {
    /// The JetStream stream holding every sluice stream. Default `SLUICE`.
    pub stream: String,
    /// Events of stream `s` are published on `<subject_prefix>.s`. Default `sluice.events`.
    pub subject_prefix: String,
    /// Copies JetStream keeps (in a cluster). Default 1.
    pub replicas: usize,
    /// A delivery not acked nor kept alive for this long goes to another processor.
    /// Default `30s`.
    pub ack_wait: HumanDuration,
    /// Longest wait for JetStream's acks of one request (503 past it). Default `5s`.
    pub publish_timeout: HumanDuration,
    /// How long JetStream remembers event ids to drop duplicates. Default `2m`.
    pub duplicate_window: HumanDuration,
}

impl Default for NatsQueueConfig {
    fn default() -> Self {
        NatsQueueConfig {
            stream: "SLUICE".into(),
            subject_prefix: "sluice.events".into(),
            replicas: 1,
            ack_wait: HumanDuration(Duration::from_secs(30)),
            publish_timeout: HumanDuration(Duration::from_secs(5)),
            duplicate_window: HumanDuration(Duration::from_secs(120)),
        }
    }
}

/// `[queue.kafka]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaQueueConfig {
    /// The one topic holding every sluice stream. Default `sluice-events`.
    pub topic: String,
    /// Partitions of the topic when sluice creates it. Default 12.
    pub partitions: i32,
    /// Replication factor when sluice creates the topic. Default 1.
    pub replication: i32,
    /// Consumer-group session timeout: a processor silent this long loses its
    /// partitions to the others. Default `10s`.
    pub session_timeout: HumanDuration,
    /// Extra librdkafka properties for every Kafka client (producer, consumer,
    /// admin), e.g. `{ "security.protocol" = "sasl_ssl" }`.
    pub client: std::collections::BTreeMap<String, String>,
    /// Extra librdkafka producer properties, e.g. `{ "linger.ms" = "5" }`.
    pub producer: std::collections::BTreeMap<String, String>,
    /// Extra librdkafka consumer properties, e.g. `{ "fetch.max.bytes" = "1048576" }`.
    pub consumer: std::collections::BTreeMap<String, String>,
}

impl Default for KafkaQueueConfig {
    fn default() -> Self {
        KafkaQueueConfig {
            topic: "sluice-events".into(),
            partitions: 12,
            replication: 1,
            session_timeout: HumanDuration(Duration::from_secs(10)),
            client: Default::default(),
            producer: Default::default(),
            consumer: Default::default(),
        }
    }
}

/// Splits `nats://h:p` / `kafka://h:p,h:p` into the kind and the address list the
/// client wants (NATS takes the URL, Kafka the bare `host:port` list).
pub fn broker_address(url: &str) -> Option<(&str, String)> {
    let (scheme, rest) = url.split_once("://")?;
    match scheme {
        "nats" | "tls" => Some(("nats", url.to_string())),
        "kafka" => Some((
            "kafka",
            rest.split(',')
                .map(|a| a.trim_start_matches("kafka://"))
                .collect::<Vec<_>>()
                .join(","),
        )),
        "http" | "https" => Some(("http", url.to_string())),
        _ => None,
    }
}
