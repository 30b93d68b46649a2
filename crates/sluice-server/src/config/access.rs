//! `[auth]` and `[limits]`: who may write which streams, and how fast.

use serde::{Deserialize, Serialize};

use super::{ByteSize, ConfigError};

/// `[auth]`. With no keys, every request is let in, which is refused on a
/// non-loopback listener unless `allow_unauthenticated` is set.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Serve a non-loopback listener with no keys configured. Default false.
    pub allow_unauthenticated: bool,
    /// The API keys (`[[auth.keys]]`); `sluice keys generate` makes one.
    pub keys: Vec<KeyConfig>,
}

/// One API key: only its SHA-256 is stored.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// A name for logs and metrics (e.g. the producer's team).
    pub name: String,
    /// Hex SHA-256 of the key.
    pub sha256: String,
    /// Stream patterns it may write: `*` matches any run of characters, `?` one.
    pub streams: Vec<String>,
    /// Its own rate limit in events per second; none by default.
    #[serde(default)]
    pub events_per_s: Option<u64>,
    /// Its own rate limit in payload bytes per second; none by default.
    #[serde(default)]
    pub bytes_per_s: Option<ByteSize>,
}

/// `[limits]`: token buckets over all requests of a node. A bucket holds one second
/// of its rate; a request is admitted while its bucket is not in debt and is charged
/// what it carried (checked and charged in one atomic step, so concurrent requests
/// cannot all slip in), so a large request is never starved.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Events per second over every key; none by default.
    pub events_per_s: Option<u64>,
    /// Payload bytes per second over every key; none by default.
    pub bytes_per_s: Option<ByteSize>,
}

impl AuthConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &'static str, value: String, message: &str| ConfigError::Invalid {
            key,
            value,
            message: message.to_string(),
        };
        let mut names = std::collections::HashSet::new();
        for k in &self.keys {
            if k.name.is_empty() || !names.insert(k.name.as_str()) {
                return Err(invalid(
                    "auth.keys.name",
                    format!("{:?}", k.name),
                    "must be non-empty and unique",
                ));
            }
            if k.sha256.len() != 64 || !k.sha256.bytes().all(|c| c.is_ascii_hexdigit()) {
                return Err(invalid(
                    "auth.keys.sha256",
                    format!("{:?} (key {})", k.sha256, k.name),
                    "must be 64 hex digits (the output of `sluice keys generate`)",
                ));
            }
            if k.streams.is_empty() {
                return Err(invalid(
                    "auth.keys.streams",
                    format!("[] (key {})", k.name),
                    "must list at least one stream pattern",
                ));
            }
            for p in &k.streams {
                let ok = !p.is_empty()
                    && p.len() <= 128
                    && p.bytes().all(|c| {
                        c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-' | b'*' | b'?')
                    });
                if !ok {
                    return Err(invalid(
                        "auth.keys.streams",
                        format!("{p:?} (key {})", k.name),
                        "must be a stream name with * and ? wildcards",
                    ));
                }
            }
            if k.events_per_s == Some(0) || k.bytes_per_s.is_some_and(|b| b.0 == 0) {
                return Err(invalid(
                    "auth.keys.events_per_s",
                    format!("0 (key {})", k.name),
                    "must be at least 1 (leave it out for no limit)",
                ));
            }
        }
        Ok(())
    }
}

impl LimitsConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.events_per_s == Some(0) || self.bytes_per_s.is_some_and(|b| b.0 == 0) {
            return Err(ConfigError::Invalid {
                key: "limits",
                value: "0".into(),
                message: "rates must be at least 1 (leave them out for no limit)".into(),
            });
        }
        Ok(())
    }
}
