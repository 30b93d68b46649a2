//! The Kafka sink: one record per event, in the encoding of the Kafka queue
//! (the module docs of [`super`]: payload verbatim, key = event key or id, sluice's headers
//! first), produced by an idempotent `acks=all` producer.
//!
//! A delivery counts once every record is acknowledged. Records Kafka can never take
//! (larger than `message.max.bytes`, refused as invalid, or carrying a reserved
//! header name) are returned as [`SinkError::Rejected`] with their indexes while the
//! others are delivered; any other failure is retryable, and a retry may write some
//! records twice (at-least-once).

use super::{
    encode_record, topic, Error, KafkaSinkOptions, TracingContext, CONNECT_TIMEOUT,
    DELIVERY_TIMEOUT,
};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::FutureProducer;
use sluice_core::{BoxFuture, Event, Rejection, Sink, SinkError};

/// Produces events to one Kafka topic.
pub struct KafkaSink {
    producer: FutureProducer<TracingContext>,
    topic: String,
}

impl KafkaSink {
    /// A sink producing to `opts.topic`, which it creates with `opts.partitions`
    /// and `opts.replication` if it is missing (so the brokers must answer now);
    /// afterwards an unreachable broker shows as retryable delivery failures.
    pub async fn connect(opts: &KafkaSinkOptions) -> Result<KafkaSink, Error> {
        opts.validate()?;
        let topic = opts.topic();
        topic::create(&topic, CONNECT_TIMEOUT).await?;
        let producer = topic
            .producer_config(&opts.producer, &[])
            .create_with_context(TracingContext)
            .map_err(|e| topic.client_error("producer", e))?;
        Ok(KafkaSink {
            producer,
            topic: opts.topic.clone(),
        })
    }
}

/// True for errors that retrying the same record cannot cure.
fn is_permanent(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidMessageSize
                | RDKafkaErrorCode::InvalidMessage
                | RDKafkaErrorCode::InvalidRecord
                | RDKafkaErrorCode::InvalidTimestamp
        )
    )
}

impl Sink for KafkaSink {
    fn name(&self) -> &'static str {
        "kafka"
    }

    fn deliver<'a>(&'a self, events: &'a [Event]) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async move {
            let deadline = tokio::time::Instant::now() + DELIVERY_TIMEOUT;
            let mut rejected = Vec::new();
            let mut reports = Vec::with_capacity(events.len());
            for (index, event) in events.iter().enumerate() {
                let record = match encode_record(&self.topic, event) {
                    Ok(r) => r,
                    Err(e) => {
                        rejected.push(Rejection {
                            index,
                            reason: e.to_string(),
                        });
                        continue;
                    }
                };
                match self.producer.send_result(record) {
                    Ok(report) => reports.push((index, report)),
                    Err((e, _)) if is_permanent(&e) => rejected.push(Rejection {
                        index,
                        reason: format!("kafka refused the record: {e}"),
                    }),
                    // The records already sent still go out; the retry repeats them.
                    Err((e, _)) => return Err(SinkError::retryable(format!("kafka produce: {e}"))),
                }
            }
            for (index, report) in reports {
                let Ok(report) = tokio::time::timeout_at(deadline, report).await else {
                    return Err(SinkError::retryable(format!(
                        "kafka did not acknowledge the delivery within {DELIVERY_TIMEOUT:?}"
                    )));
                };
                match report {
                    Ok(Ok(_)) => {}
                    Ok(Err((e, _))) if is_permanent(&e) => rejected.push(Rejection {
                        index,
                        reason: format!("kafka refused the record: {e}"),
                    }),
                    Ok(Err((e, _))) => {
                        return Err(SinkError::retryable(format!("kafka delivery: {e}")))
                    }
                    Err(_canceled) => {
                        return Err(SinkError::retryable(
                            "kafka producer dropped a delivery report",
                        ))
                    }
                }
            }
            if rejected.is_empty() {
                return Ok(());
            }
            rejected.sort_unstable_by_key(|r| r.index);
            Err(SinkError::Rejected(rejected))
        })
    }
}
