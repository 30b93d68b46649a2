//! Distributed tracing for sluice, with OpenTelemetry.
//!
//! Off by default, and then free: every entry point first checks [`enabled`] (one
//! atomic load) and returns `None`, so no span, header or allocation is made.
//! [`install`] turns it on when `[telemetry]` or the standard `OTEL_*` variables
//! name an OTLP endpoint.
//!
//! What a traced event leaves behind:
//!
//! ```text
//! producer span (its traceparent)          one process or several, across a broker queue
//!  └─ POST /v1/streams/{stream}/events      (or sluice.v1.IngestService/<rpc>; server)
//!      ├─ append                            the group commit it waited for
//!      ├─ queued                            receive time → taken by a processor worker
//!      └─ deliver <sink>                    one per attempt (client); links to the
//!                                           other requests' spans of the same delivery
//! ```
//!
//! The request span's context is kept with each of its events as a W3C
//! `traceparent` event header (only for sampled requests), so it travels through the
//! WAL, NATS and Kafka to whichever process delivers it; the HTTP sink sends the
//! delivery attempt's `traceparent` on, and the broker sinks write the event's.

mod config;
mod context;
mod spans;

use std::sync::OnceLock;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{
    span_processor_with_async_runtime::BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider,
};
use opentelemetry_sdk::Resource;

pub use config::{Protocol, Resolved, TelemetryConfig};
pub use context::{format_traceparent, parse_traceparent, TRACEPARENT};
pub use opentelemetry::KeyValue;
pub use spans::{
    current_traceparent, AttemptSpan, DeliveryTrace, RequestSpan, MAX_LINKS, STAMP_BYTES_PER_EVENT,
    STAMP_MAX_BYTES,
};

/// The tracer, once [`install`] ran with an endpoint.
static TRACER: OnceLock<SdkTracer> = OnceLock::new();

/// Whether spans are being made (an endpoint is configured).
#[inline]
pub fn enabled() -> bool {
    TRACER.get().is_some()
}

fn tracer() -> Option<&'static SdkTracer> {
    TRACER.get()
}

/// Why tracing could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// A setting is wrong.
    #[error("{0}")]
    Config(String),
    /// The OTLP exporter could not be built.
    #[error("the OTLP exporter could not be built: {0}")]
    Exporter(String),
    /// [`install`] ran twice in one process.
    #[error("tracing is already installed in this process")]
    AlreadyInstalled,
}

/// The running trace pipeline; [`Telemetry::shutdown`] exports what is buffered.
pub struct Telemetry {
    provider: SdkTracerProvider,
    resolved: Resolved,
}

impl Telemetry {
    /// Where spans go.
    pub fn resolved(&self) -> &Resolved {
        &self.resolved
    }

    /// Exports the spans still buffered and stops the exporter.
    pub fn shutdown(&self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!(error = %e, "exporting the last spans failed");
        }
    }
}

/// Turns tracing on when `cfg` or the `OTEL_*` environment names an endpoint;
/// `Ok(None)` leaves it off. Must run inside the tokio runtime (the exporter runs
/// there). `role` (`serve`, `ingest`, `process`, `gateway`) becomes the
/// `sluice.role` resource attribute.
pub fn install(cfg: &TelemetryConfig, role: &str) -> Result<Option<Telemetry>, TelemetryError> {
    let Some(resolved) = cfg.resolve(|k| std::env::var(k).ok())? else {
        return Ok(None);
    };
    if enabled() {
        return Err(TelemetryError::AlreadyInstalled);
    }
    use opentelemetry_otlp::WithExportConfig;
    let exporter = match resolved.protocol {
        Protocol::Grpc => opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(resolved.endpoint.clone())
            .build(),
        Protocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_endpoint(resolved.endpoint.clone())
            .build(),
    }
    .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
    // Spans wait in a bounded queue (2,048 by default, `OTEL_BSP_MAX_QUEUE_SIZE`) and
    // are dropped past it: a slow collector costs spans, never memory or latency.
    let processor =
        BatchSpanProcessor::builder(exporter, opentelemetry_sdk::runtime::Tokio).build();
    let resource = Resource::builder()
        .with_service_name(resolved.service_name.clone())
        .with_attribute(KeyValue::new("sluice.role", role.to_string()))
        .build();
    let mut builder = SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_resource(resource);
    if let Some(ratio) = resolved.sample_ratio {
        builder = builder.with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            ratio,
        ))));
    }
    let provider = builder.build();
    TRACER
        .set(provider.tracer("sluice"))
        .map_err(|_| TelemetryError::AlreadyInstalled)?;
    Ok(Some(Telemetry { provider, resolved }))
}
