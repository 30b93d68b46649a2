//! `[telemetry]` and the standard `OTEL_*` variables: where spans go, if anywhere.

use serde::{Deserialize, Serialize};

use crate::TelemetryError;

/// `[telemetry]`: distributed tracing. Off unless an endpoint is configured here or
/// in `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` / `OTEL_EXPORTER_OTLP_ENDPOINT`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// Where spans are exported with OTLP: a collector's base URL
    /// (`http://collector:4317` for gRPC, `http://collector:4318` for HTTP, where
    /// `/v1/traces` is added to a URL without a path). Default none: tracing is off
    /// unless `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (used as is) or
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` (a base URL) is set.
    pub endpoint: Option<String>,
    /// `grpc` or `http/protobuf`. Default: `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`,
    /// `OTEL_EXPORTER_OTLP_PROTOCOL`, else `http/protobuf` (the OTLP default).
    pub protocol: Option<Protocol>,
    /// The share of new traces recorded (0.0-1.0); a request that carries a
    /// `traceparent` follows its producer's sampling decision (parent-based ratio
    /// sampling). Default: `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG`, else
    /// every trace.
    pub sample_ratio: Option<f64>,
    /// The `service.name` of the spans. Default `OTEL_SERVICE_NAME`, else `sluice`.
    pub service_name: Option<String>,
}

/// The OTLP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum Protocol {
    /// OTLP/gRPC (port 4317 by convention).
    #[serde(rename = "grpc")]
    Grpc,
    /// OTLP/HTTP with protobuf bodies (port 4318 by convention).
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
}

impl Protocol {
    fn parse(v: &str) -> Result<Protocol, TelemetryError> {
        match v.trim() {
            "grpc" => Ok(Protocol::Grpc),
            "http/protobuf" => Ok(Protocol::HttpProtobuf),
            other => Err(TelemetryError::Config(format!(
                "OTLP protocol {other:?} is not supported; use grpc or http/protobuf"
            ))),
        }
    }
}

/// Where and how spans are exported, once config and environment are merged.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    /// The URL spans are sent to (for HTTP, the whole `/v1/traces` URL).
    pub endpoint: String,
    /// The transport.
    pub protocol: Protocol,
    /// Parent-based ratio sampling with this ratio; `None` leaves the sampler to
    /// `OTEL_TRACES_SAMPLER` (parent-based, always on, by default).
    pub sample_ratio: Option<f64>,
    /// `service.name`.
    pub service_name: String,
}

impl TelemetryConfig {
    /// Checks what the file and `SLUICE_TELEMETRY__*` set (not the `OTEL_*`
    /// variables, which [`TelemetryConfig::resolve`] reads).
    pub fn validate(&self) -> Result<(), TelemetryError> {
        if let Some(r) = self.sample_ratio {
            if !(0.0..=1.0).contains(&r) {
                return Err(TelemetryError::Config(format!(
                    "telemetry.sample_ratio must be between 0.0 and 1.0, not {r}"
                )));
            }
        }
        if let Some(e) = &self.endpoint {
            check_url(e, "telemetry.endpoint")?;
        }
        Ok(())
    }

    /// Merges this config with the `OTEL_*` variables `env` gives (config first);
    /// `None` when no endpoint is set anywhere or `OTEL_SDK_DISABLED=true`.
    pub fn resolve(
        &self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Resolved>, TelemetryError> {
        self.validate()?;
        let var = |k: &str| env(k).filter(|v| !v.trim().is_empty());
        if self.endpoint.is_none()
            && var("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
        {
            return Ok(None);
        }
        let protocol = match self.protocol {
            Some(p) => p,
            None => match var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                .or_else(|| var("OTEL_EXPORTER_OTLP_PROTOCOL"))
            {
                Some(v) => Protocol::parse(&v)?,
                None => Protocol::HttpProtobuf,
            },
        };
        // OTLP/HTTP: a signal-specific endpoint is the whole URL, a base one gets the
        // signal's path, and so does a configured one without a path. gRPC has none.
        let (endpoint, add_path, what) = if let Some(e) = &self.endpoint {
            (e.clone(), None, "telemetry.endpoint")
        } else if let Some(e) = var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
            (e, Some(false), "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        } else if let Some(e) = var("OTEL_EXPORTER_OTLP_ENDPOINT") {
            (e, Some(true), "OTEL_EXPORTER_OTLP_ENDPOINT")
        } else {
            return Ok(None);
        };
        let uri = check_url(&endpoint, what)?;
        let add_path = add_path.unwrap_or(matches!(uri.path(), "" | "/"));
        let endpoint = if protocol == Protocol::HttpProtobuf && add_path {
            format!("{}/v1/traces", endpoint.trim_end_matches('/'))
        } else {
            endpoint
        };
        let sample_ratio = self.sample_ratio;
        let service_name = self
            .service_name
            .clone()
            .or_else(|| var("OTEL_SERVICE_NAME"))
            .unwrap_or_else(|| "sluice".into());
        Ok(Some(Resolved {
            endpoint,
            protocol,
            sample_ratio,
            service_name,
        }))
    }
}

fn check_url(v: &str, what: &str) -> Result<http::Uri, TelemetryError> {
    let bad = |why: &str| TelemetryError::Config(format!("{what} {v:?} {why}"));
    let uri: http::Uri = v
        .parse()
        .map_err(|_| bad("is not a URL (http://host:port)"))?;
    match uri.scheme_str() {
        Some("http" | "https") if uri.host().is_some() => Ok(uri),
        _ => Err(bad("must be an http:// or https:// URL with a host")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn off_without_an_endpoint() {
        let c = TelemetryConfig::default();
        assert_eq!(c.resolve(env(&[])).unwrap(), None);
        assert_eq!(
            c.resolve(env(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")]))
                .unwrap(),
            None
        );
    }

    #[test]
    fn the_standard_variables_turn_it_on() {
        let c = TelemetryConfig::default();
        let r = c
            .resolve(env(&[(
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                "http://collector:4318",
            )]))
            .unwrap()
            .unwrap();
        assert_eq!(r.protocol, Protocol::HttpProtobuf, "the OTLP default");
        assert_eq!(r.endpoint, "http://collector:4318/v1/traces");
        assert_eq!(r.service_name, "sluice");
        assert_eq!(r.sample_ratio, None, "left to OTEL_TRACES_SAMPLER");
        // A base URL with a path gets the signal's path after it.
        let r = c
            .resolve(env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "https://gw/otlp/")]))
            .unwrap()
            .unwrap();
        assert_eq!(r.endpoint, "https://gw/otlp/v1/traces");
        // The signal's own variable is used as is and wins.
        let r = c
            .resolve(env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4318"),
                ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://b:4318/custom"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
                ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf"),
                ("OTEL_SERVICE_NAME", "edge-ingest"),
            ]))
            .unwrap()
            .unwrap();
        assert_eq!(r.endpoint, "http://b:4318/custom");
        assert_eq!(r.protocol, Protocol::HttpProtobuf);
        assert_eq!(r.service_name, "edge-ingest");
        let r = c
            .resolve(env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4317"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ]))
            .unwrap()
            .unwrap();
        assert_eq!(
            (r.endpoint.as_str(), r.protocol),
            ("http://a:4317", Protocol::Grpc),
            "gRPC has no path"
        );
        assert_eq!(
            c.resolve(env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4318"),
                ("OTEL_SDK_DISABLED", "true"),
            ]))
            .unwrap(),
            None
        );
    }

    #[test]
    fn the_config_file_wins_over_the_environment() {
        let c = TelemetryConfig {
            endpoint: Some("http://file:4317".into()),
            protocol: Some(Protocol::Grpc),
            sample_ratio: Some(0.25),
            service_name: Some("from-file".into()),
        };
        let r = c
            .resolve(env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://env:4318"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
                ("OTEL_SERVICE_NAME", "from-env"),
            ]))
            .unwrap()
            .unwrap();
        assert_eq!(r.endpoint, "http://file:4317");
        assert_eq!(r.protocol, Protocol::Grpc);
        assert_eq!(r.sample_ratio, Some(0.25));
        assert_eq!(r.service_name, "from-file");
        // A configured HTTP endpoint with a path is used as is.
        let c = TelemetryConfig {
            endpoint: Some("http://file:4318/v1/traces".into()),
            ..Default::default()
        };
        assert_eq!(
            c.resolve(env(&[])).unwrap().unwrap().endpoint,
            "http://file:4318/v1/traces"
        );
    }

    #[test]
    fn bad_settings_are_refused_by_name() {
        for (c, want) in [
            (
                TelemetryConfig {
                    sample_ratio: Some(1.5),
                    ..Default::default()
                },
                "telemetry.sample_ratio",
            ),
            (
                TelemetryConfig {
                    endpoint: Some("collector:4317".into()),
                    ..Default::default()
                },
                "telemetry.endpoint",
            ),
        ] {
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
        }
        let e = TelemetryConfig::default()
            .resolve(env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4318"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("http/json"), "{e}");
    }
}
