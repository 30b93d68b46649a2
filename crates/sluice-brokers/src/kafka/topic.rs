//! The one topic: checking the brokers answer and creating it when it is missing.

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::ClientContext;
use std::sync::Arc;
use std::time::Duration;

use super::{Error, Topic, TracingContext};

/// Whether `topic` exists with at least one partition, asking the brokers through
/// `producer` (a blocking call, so on a blocking thread). `Err` when no broker
/// answered within `timeout`.
pub(super) async fn exists<C: ClientContext + 'static>(
    producer: Arc<FutureProducer<C>>,
    topic: &Topic<'_>,
    timeout: Duration,
) -> Result<bool, Error> {
    let brokers = topic.brokers();
    let topic = topic.name.to_string();
    tokio::task::spawn_blocking(move || {
        producer
            .client()
            .fetch_metadata(None, timeout)
            .map(|m| {
                m.topics()
                    .iter()
                    .any(|t| t.name() == topic && !t.partitions().is_empty())
            })
            .map_err(|e| Error::Unreachable {
                brokers,
                timeout,
                message: e.to_string(),
            })
    })
    .await
    .expect("a metadata lookup panicked")
}

/// Creates the topic with the configured partitions and replication; one that
/// exists already is fine.
pub(super) async fn create(t: &Topic<'_>, timeout: Duration) -> Result<(), Error> {
    let admin: AdminClient<TracingContext> = t
        .client_config()
        .create_with_context(TracingContext)
        .map_err(|e| t.client_error("admin client", e))?;
    let topic = NewTopic::new(t.name, t.partitions, TopicReplication::Fixed(t.replication));
    let created = admin
        .create_topics(
            [&topic],
            &AdminOptions::new().request_timeout(Some(timeout)),
        )
        .await;
    // The admin client's drop joins its thread; keep it off the runtime.
    let _ = tokio::task::spawn_blocking(move || drop(admin)).await;
    let failed = |message: String| Error::Topic {
        topic: t.name.to_string(),
        message,
    };
    for result in created.map_err(|e| failed(e.to_string()))? {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((_, code)) => return Err(failed(code.to_string())),
        }
    }
    tracing::info!(
        topic = %t.name,
        partitions = t.partitions,
        replication = t.replication,
        "created kafka topic"
    );
    Ok(())
}
