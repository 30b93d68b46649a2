//! The one topic: checking the brokers answer and creating it when it is missing.

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::ClientContext;
use std::sync::Arc;
use std::time::Duration;

use super::{KafkaOptions, TracingContext};

/// Whether `topic` exists with at least one partition, asking the brokers through
/// `producer` (a blocking call, so on a blocking thread). `Err` when no broker
/// answered within `timeout`.
pub(super) async fn exists<C: ClientContext + 'static>(
    producer: Arc<FutureProducer<C>>,
    topic: &str,
    timeout: Duration,
) -> Result<bool, String> {
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || {
        producer
            .client()
            .fetch_metadata(None, timeout)
            .map(|m| {
                m.topics()
                    .iter()
                    .any(|t| t.name() == topic && !t.partitions().is_empty())
            })
            .map_err(|e| format!("kafka brokers did not answer within {timeout:?}: {e}"))
    })
    .await
    .map_err(|e| e.to_string())?
}

/// Creates the topic with the configured partitions and replication; one that
/// exists already is fine.
pub(super) async fn create(opts: &KafkaOptions, timeout: Duration) -> Result<(), String> {
    let admin: AdminClient<TracingContext> = super::client_config(opts)
        .create_with_context(TracingContext)
        .map_err(|e| format!("creating a kafka admin client: {e}"))?;
    let topic = NewTopic::new(
        &opts.topic,
        opts.partitions,
        TopicReplication::Fixed(opts.replication),
    );
    let created = admin
        .create_topics(
            [&topic],
            &AdminOptions::new().request_timeout(Some(timeout)),
        )
        .await;
    // The admin client's drop joins its thread; keep it off the runtime.
    let _ = tokio::task::spawn_blocking(move || drop(admin)).await;
    for result in created.map_err(|e| format!("creating kafka topic {}: {e}", opts.topic))? {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => return Err(format!("creating kafka topic {name}: {code}")),
        }
    }
    tracing::info!(
        topic = %opts.topic,
        partitions = opts.partitions,
        replication = opts.replication,
        "created kafka topic"
    );
    Ok(())
}
