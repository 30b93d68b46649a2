//! Builds a node's queue and sinks from the config.

use std::path::PathBuf;
use std::sync::Arc;

use sluice_core::{Queue, Sink};
use sluice_pipeline::sinks::{
    BlackholeSink, FileSink, HttpSink, HttpSinkOptions, KafkaSink, NatsSink, NatsSinkOptions,
    StdoutSink,
};
use sluice_queue::{
    KafkaOptions, KafkaQueue, MemoryQueue, NatsOptions, NatsQueue, WalQueue, WalQueueOptions,
};
use sluice_wal::{SyncMode, WalOptions};

use crate::config::{broker_address, AckMode, Config, QueueKind, SinkConfig, SinkKind};
use crate::metrics::{Metrics, WalMetrics};
use crate::node::StartError;

/// Opens the queue `config.queue` names (not for the gateway, whose queue is its
/// upstreams).
pub async fn open_queue(
    config: &Config,
    metrics: &Arc<Metrics>,
) -> Result<Arc<dyn Queue>, StartError> {
    let q = &config.queue;
    let url = || q.url.clone().unwrap_or_default();
    Ok(match q.kind {
        QueueKind::Memory => Arc::new(MemoryQueue::new(q.max_events, q.max_bytes.0)),
        QueueKind::Wal => {
            let dir = config.wal_dir();
            let wal_opts = WalQueueOptions {
                wal: WalOptions {
                    segment_bytes: q.segment_bytes.0,
                    max_bytes: q.max_bytes.0,
                    max_record_bytes: q.segment_bytes.0 / 2,
                    sync: match q.ack {
                        AckMode::Fsync => SyncMode::Fsync,
                        AckMode::Write => SyncMode::Write,
                    },
                    observer: Some(Arc::new(WalMetrics(metrics.clone()))),
                },
                checkpoint_interval: q.checkpoint_interval.0,
                ..WalQueueOptions::default()
            };
            let d = dir.clone();
            let opened = tokio::task::spawn_blocking(move || WalQueue::open(&d, wal_opts))
                .await
                .expect("opening the WAL panicked");
            let (queue, recovery) = opened.map_err(|source| StartError::Wal {
                dir: dir.clone(),
                source,
            })?;
            tracing::info!(dir = %dir.display(), ?recovery, "write-ahead log opened");
            Arc::new(queue)
        }
        QueueKind::Nats => {
            let n = &q.nats;
            let queue = NatsQueue::connect(NatsOptions {
                url: url(),
                stream: n.stream.clone(),
                subject_prefix: n.subject_prefix.clone(),
                max_bytes: q.max_bytes.0,
                replicas: n.replicas,
                duplicate_window: n.duplicate_window.0,
                ack_wait: n.ack_wait.0,
                publish_timeout: n.publish_timeout.0,
            })
            .await
            .map_err(StartError::Broker)?;
            tracing::info!(url = %url(), stream = %n.stream, "NATS JetStream queue connected");
            Arc::new(queue)
        }
        QueueKind::Kafka => {
            let k = &q.kafka;
            let brokers = broker_address(&url()).map_or_else(url, |(_, a)| a);
            let queue = KafkaQueue::connect(KafkaOptions {
                brokers: brokers.clone(),
                topic: k.topic.clone(),
                partitions: k.partitions,
                replication: k.replication,
                // What waits in memory for broker acks; the backlog itself is in Kafka.
                max_buffered_bytes: q.max_bytes.0.min(64 << 20) as usize,
                session_timeout: k.session_timeout.0,
                client: k.client.clone().into_iter().collect(),
                producer: k.producer.clone().into_iter().collect(),
                consumer: k.consumer.clone().into_iter().collect(),
            })
            .await
            .map_err(StartError::Broker)?;
            tracing::info!(%brokers, topic = %k.topic, "Kafka queue connected");
            Arc::new(queue)
        }
    })
}

/// Builds a sink; `dir` is the file sink's directory.
pub async fn build_sink(sink: &SinkConfig, dir: PathBuf) -> Result<Arc<dyn Sink>, StartError> {
    let url = sink.url.clone().unwrap_or_default();
    Ok(match sink.kind {
        SinkKind::File => Arc::new(
            FileSink::new(dir, sink.max_file_bytes.0).keep_page_cache(sink.keep_page_cache),
        ),
        SinkKind::Stdout => Arc::new(StdoutSink),
        SinkKind::Blackhole => Arc::new(BlackholeSink::default()),
        SinkKind::Nats => Arc::new(
            NatsSink::connect(NatsSinkOptions {
                url,
                subject_prefix: sink.subject_prefix.clone(),
                stream: sink.nats_stream.clone(),
                timeout: sink.timeout.0,
            })
            .await
            .map_err(StartError::Broker)?,
        ),
        SinkKind::Kafka => {
            let brokers = broker_address(&url).map_or_else(|| url.clone(), |(_, a)| a);
            let opts = KafkaOptions {
                brokers,
                topic: sink.topic.clone(),
                ..KafkaOptions::default()
            };
            sluice_queue::kafka::ensure_topic(&opts)
                .await
                .map_err(StartError::Broker)?;
            Arc::new(KafkaSink::new(&opts).map_err(StartError::Broker)?)
        }
        SinkKind::Http => Arc::new(
            HttpSink::new(HttpSinkOptions {
                url,
                concurrency: sink.concurrency,
                timeout: sink.timeout.0,
                gzip: sink.gzip,
                ..HttpSinkOptions::default()
            })
            .map_err(StartError::Broker)?,
        ),
    })
}

/// The kind and address a `--queue` / `--sink` value names: `wal`, `memory`, ...
/// or a broker URL (`nats://HOST:PORT` sets the kind to `nats` and the URL).
pub fn kind_and_url(value: &str) -> (String, Option<String>) {
    match broker_address(value) {
        Some((kind, _)) => (kind.to_string(), Some(value.to_string())),
        None => (value.to_string(), None),
    }
}
