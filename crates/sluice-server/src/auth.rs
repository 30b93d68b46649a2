//! API keys: who may write which streams.
//!
//! Only a key's SHA-256 is configured. A request's key is hashed and compared with
//! every configured hash in constant time (no early exit, no lookup table), so the
//! answer's timing says nothing about how close a guess was. HTTP carries the key as
//! `Authorization: Bearer KEY` or `x-api-key: KEY`; gRPC as the same metadata.

use std::sync::Arc;

use http::{HeaderMap, StatusCode};

use crate::config::{AuthConfig, KeyConfig};
use crate::error::ApiError;
use crate::limit::Bucket;

/// A configured key, as matched.
#[derive(Debug)]
pub struct Key {
    pub name: String,
    hash: [u8; 32],
    streams: Vec<String>,
    /// Its own rate limits, if any.
    pub events: Option<Bucket>,
    pub bytes: Option<Bucket>,
}

/// Who sent a request: a key, or nobody when no keys are configured.
pub type Principal = Option<Arc<Key>>;

/// The name metrics give `principal`: its key's name, or `_anonymous` on a node
/// without API keys.
pub fn key_name(principal: &Principal) -> &str {
    principal.as_deref().map_or("_anonymous", |k| &k.name)
}

/// The configured keys.
#[derive(Debug, Default)]
pub struct Keys {
    keys: Vec<Arc<Key>>,
}

impl Keys {
    pub fn new(config: &AuthConfig) -> Keys {
        Keys {
            keys: config.keys.iter().map(|k| Arc::new(Key::new(k))).collect(),
        }
    }

    /// True when requests must carry a key.
    pub fn required(&self) -> bool {
        !self.keys.is_empty()
    }

    /// Finds the key an HTTP request carries: 401 when it is missing or unknown.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Principal, ApiError> {
        self.authenticate_by(|name| headers.get(name).and_then(|v| v.to_str().ok()))
    }

    /// Finds the key in headers (or gRPC metadata) read through `get`.
    pub fn authenticate_by<'a>(
        &self,
        get: impl Fn(&str) -> Option<&'a str>,
    ) -> Result<Principal, ApiError> {
        if !self.required() {
            return Ok(None);
        }
        let Some(presented) = presented_key(get) else {
            return Err(unauthorized(
                "missing API key: send Authorization: Bearer KEY or x-api-key: KEY",
            ));
        };
        let hash = sha256(presented.as_bytes());
        let mut found = None;
        for k in &self.keys {
            // Every hash is compared; the match is remembered without branching early.
            if constant_time_eq(&hash, &k.hash) {
                found = Some(k.clone());
            }
        }
        found
            .map(Some)
            .ok_or_else(|| unauthorized("unknown API key"))
    }
}

impl Key {
    fn new(c: &KeyConfig) -> Key {
        let mut hash = [0u8; 32];
        for (i, b) in hash.iter_mut().enumerate() {
            *b = u8::from_str_radix(&c.sha256[2 * i..2 * i + 2], 16)
                .expect("validated: 64 hex digits");
        }
        Key {
            name: c.name.clone(),
            hash,
            streams: c.streams.clone(),
            events: c.events_per_s.map(|r| Bucket::new(r as f64)),
            bytes: c.bytes_per_s.map(|r| Bucket::new(r.0 as f64)),
        }
    }

    /// 403 unless the key may write `stream`.
    pub fn check_stream(&self, stream: &str) -> Result<(), ApiError> {
        if self
            .streams
            .iter()
            .any(|p| glob(p.as_bytes(), stream.as_bytes()))
        {
            return Ok(());
        }
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("API key {} may not write stream {stream:?}", self.name),
        ))
    }
}

/// 403 unless the principal may write `stream`.
pub fn check_stream(principal: &Principal, stream: &str) -> Result<(), ApiError> {
    match principal {
        None => Ok(()),
        Some(k) => k.check_stream(stream),
    }
}

fn unauthorized(message: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
}

fn presented_key<'a>(get: impl Fn(&str) -> Option<&'a str>) -> Option<&'a str> {
    if let Some(v) = get("authorization") {
        let (scheme, rest) = v.split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| rest.trim())
            .filter(|k| !k.is_empty());
    }
    get("x-api-key").map(str::trim).filter(|k| !k.is_empty())
}

pub(crate) fn sha256(data: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, data);
    d.as_ref().try_into().expect("SHA-256 is 32 bytes")
}

pub(crate) fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// `*` matches any run of characters (also none), `?` exactly one.
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, t));
                p += 1;
            }
            Some(&c) if c == b'?' || c == text[t] => {
                p += 1;
                t += 1;
            }
            _ => match star {
                // Let the last star swallow one more character and retry.
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// A new random key and the hex SHA-256 to configure: (`key`, `sha256`).
pub fn generate_key() -> (String, String) {
    use ring::rand::SecureRandom;
    let mut raw = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut raw)
        .expect("the OS random number generator failed");
    let key = format!("sk_{}", hex(&raw));
    let hash = hex(&sha256(key.as_bytes()));
    (key, hash)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_matches_like_a_shell() {
        let m = |p: &str, t: &str| glob(p.as_bytes(), t.as_bytes());
        assert!(m("*", "anything"));
        assert!(m("logs.*", "logs.app"));
        assert!(m("logs.*", "logs."));
        assert!(!m("logs.*", "logs"));
        assert!(m("a*b*c", "aXXbYYc"));
        assert!(!m("a*b*c", "aXXbYY"));
        assert!(m("a?c", "abc"));
        assert!(!m("a?c", "ac"));
        assert!(m("clicks", "clicks"));
        assert!(!m("clicks", "clicks2"));
        assert!(m("*-prod", "billing-prod"));
        assert!(m("**x", "x"));
    }

    #[test]
    fn generated_keys_authenticate_and_others_do_not() {
        let (key, hash) = generate_key();
        assert!(key.starts_with("sk_") && key.len() == 67);
        let config = AuthConfig {
            allow_unauthenticated: false,
            keys: vec![KeyConfig {
                name: "t".into(),
                sha256: hash,
                streams: vec!["a.*".into()],
                events_per_s: None,
                bytes_per_s: None,
            }],
        };
        let keys = Keys::new(&config);
        let mut h = HeaderMap::new();
        assert_eq!(keys.authenticate(&h).unwrap_err().status, 401);
        h.insert("x-api-key", "sk_wrong".parse().unwrap());
        assert_eq!(keys.authenticate(&h).unwrap_err().status, 401);
        h.insert("x-api-key", key.parse().unwrap());
        let p = keys.authenticate(&h).unwrap();
        assert!(check_stream(&p, "a.b").is_ok());
        assert_eq!(check_stream(&p, "b").unwrap_err().status, 403);
        let mut h = HeaderMap::new();
        h.insert("authorization", format!("Bearer {key}").parse().unwrap());
        assert_eq!(keys.authenticate(&h).unwrap().unwrap().name, "t");
    }
}
