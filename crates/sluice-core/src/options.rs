//! What every backend's options type shares: the error of an option out of range, and
//! secrets that `sluice config check` prints redacted.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An option a backend refused: `key` is the option's name within its section (the
/// config adds the section, e.g. `queue.partitions`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key} {message}; got {value}")]
pub struct OptionError {
    pub key: &'static str,
    pub value: String,
    pub message: String,
}

impl OptionError {
    pub fn new(key: &'static str, value: impl fmt::Display, message: impl Into<String>) -> Self {
        OptionError {
            key,
            value: value.to_string(),
            message: message.into(),
        }
    }
}

/// What a redacted value prints as.
pub const REDACTED: &str = "<redacted>";

/// A value that must not be printed or logged (a token, a password): its `Debug`
/// and its serialization are [`REDACTED`].
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The value itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(REDACTED)
    }
}

/// Whether a property or header of this name holds a secret: a password, a token,
/// a key, a credential, a cookie or a signature (`sasl.password`,
/// `ssl.key.password`, `Authorization`, `X-Api-Key`, ...). Errs on the side of
/// redacting.
pub fn is_secret_name(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    [
        "password",
        "secret",
        "token",
        "key",
        "auth",
        "credential",
        "cookie",
        "signature",
    ]
    .iter()
    .any(|word| name.contains(word))
}

/// Free-form properties (librdkafka's, HTTP headers) whose values are redacted
/// when [`is_secret_name`] says so.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Properties(pub BTreeMap<String, String>);

impl Properties {
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Properties {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Properties(
            iter.into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }
}

impl fmt::Debug for Properties {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.redacted()).finish()
    }
}

impl Properties {
    fn redacted(&self) -> impl Iterator<Item = (&str, &str)> {
        self.iter()
            .map(|(k, v)| (k, if is_secret_name(k) { REDACTED } else { v }))
    }
}

impl Serialize for Properties {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.redacted())
    }
}

impl<'de> Deserialize<'de> for Properties {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Values may be written as TOML strings, integers or booleans
        // (`"linger.ms" = 5`); librdkafka and HTTP take them as text.
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Value {
            S(String),
            I(i64),
            B(bool),
        }
        let map = BTreeMap::<String, Value>::deserialize(d)?;
        Ok(Properties(
            map.into_iter()
                .map(|(k, v)| {
                    let v = match v {
                        Value::S(s) => s,
                        Value::I(i) => i.to_string(),
                        Value::B(b) => b.to_string(),
                    };
                    (k, v)
                })
                .collect(),
        ))
    }
}

/// A URL with the password of its user info (`scheme://user:password@host`)
/// redacted, for messages and `sluice config check`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            let shown = if userinfo.contains(':') {
                format!("{user}:{REDACTED}")
            } else {
                // A lone user part is a token (`nats://TOKEN@host`).
                REDACTED.to_string()
            };
            format!("{scheme}://{shown}@{host}{path}")
        }
        None => url.to_string(),
    }
}

/// Serializes a URL through [`redact_url`] (`#[serde(serialize_with = ...)]`).
pub fn serialize_redacted_url<S: Serializer>(url: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&redact_url(url))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), REDACTED);
        let props: Properties = [
            ("sasl.password", "hunter2"),
            ("ssl.key.password", "hunter2"),
            ("Authorization", "Bearer hunter2"),
            ("linger.ms", "5"),
        ]
        .into_iter()
        .collect();
        let shown = format!("{props:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("\"linger.ms\": \"5\""), "{shown}");
        assert_eq!(
            redact_url("nats://me:hunter2@h:4222/x"),
            format!("nats://me:{REDACTED}@h:4222/x")
        );
        assert_eq!(
            redact_url("nats://hunter2@h:4222"),
            format!("nats://{REDACTED}@h:4222")
        );
        assert_eq!(redact_url("kafka://h:9092,g:9092"), "kafka://h:9092,g:9092");
    }
}
