//! Builds a node's queue and sinks from the config: a dispatch on the backend, whose
//! options type knows how to open it.

use std::path::Path;
use std::sync::Arc;

use sluice_core::{Queue, Sink};
use sluice_pipeline::sinks::{BlackholeSink, HttpSink, StdoutSink};
use sluice_queue::WalQueue;

use crate::config::{Config, QueueConfig, SinkConfig};
use crate::metrics::{Metrics, WalMetrics};
use crate::node::StartError;

/// Opens the queue `config.queue` names (not for the gateway, whose queue is its
/// upstreams).
pub async fn open_queue(
    config: &Config,
    metrics: &Arc<Metrics>,
) -> Result<Arc<dyn Queue>, StartError> {
    Ok(match &config.queue {
        QueueConfig::Memory(o) => Arc::new(o.open()),
        QueueConfig::Wal(o) => {
            let dir = config.wal_dir();
            let opts = o.options(Some(Arc::new(WalMetrics(metrics.clone()))));
            let d = dir.clone();
            let opened = tokio::task::spawn_blocking(move || WalQueue::open(&d, opts))
                .await
                .expect("opening the WAL panicked");
            let (queue, recovery) = opened.map_err(|source| StartError::Wal {
                dir: dir.clone(),
                source,
            })?;
            tracing::info!(dir = %dir.display(), ?recovery, "write-ahead log opened");
            Arc::new(queue)
        }
        #[cfg(feature = "nats")]
        QueueConfig::Nats(o) => {
            let queue = sluice_brokers::nats::NatsQueue::connect(o.clone()).await?;
            tracing::info!(stream = %o.stream, "NATS JetStream queue connected");
            Arc::new(queue)
        }
        #[cfg(feature = "kafka")]
        QueueConfig::Kafka(o) => {
            let queue = sluice_brokers::kafka::KafkaQueue::connect(o.clone()).await?;
            tracing::info!(topic = %o.topic, "Kafka queue connected");
            Arc::new(queue)
        }
    })
}

/// Builds a sink; a file sink without a `dir` writes under `default_dir`.
pub async fn build_sink(
    sink: &SinkConfig,
    default_dir: &Path,
) -> Result<Arc<dyn Sink>, StartError> {
    let built: Arc<dyn Sink> = match sink {
        SinkConfig::File(o) => Arc::new(o.open(default_dir)),
        SinkConfig::Stdout(_) => Arc::new(StdoutSink),
        SinkConfig::Blackhole(_) => Arc::new(BlackholeSink::default()),
        SinkConfig::Http(o) => Arc::new(HttpSink::new(o.clone()).map_err(StartError::Sink)?),
        #[cfg(feature = "nats")]
        SinkConfig::Nats(o) => Arc::new(sluice_brokers::nats::NatsSink::connect(o.clone()).await?),
        #[cfg(feature = "kafka")]
        SinkConfig::Kafka(o) => Arc::new(sluice_brokers::kafka::KafkaSink::connect(o).await?),
    };
    Ok(built)
}
