//! Per-stream, per-key series with bounded cardinality: what each tenant sends and
//! what of it is refused. A stream name is a producer's string, so the set of series
//! is capped: the first [`MAX_TENANT_SERIES`] (stream, key) pairs get series of their
//! own, later pairs are counted under stream `_other` (keeping their key: key names
//! come from the config, a bounded set). Rejections before a stream name is known or
//! valid count under `_none` / `_invalid`, gRPC calls (whose stream is per message)
//! under `_grpc`; before authentication, key `_unauthenticated`; without API keys,
//! key `_anonymous`.

use std::collections::HashMap;
use std::sync::Mutex;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use sluice_core::validate_stream_name;

/// Most (stream, key) pairs with series of their own.
pub const MAX_TENANT_SERIES: usize = 256;

type Tenant = [(&'static str, String); 2];
type TenantReason = [(&'static str, String); 3];

/// The per-tenant counters.
pub struct Tenants {
    /// stream -> key -> its accepted counters: looked up by `&str` on every accepted
    /// request, so the hot path allocates nothing once a pair is known.
    seen: Mutex<Seen>,
    events: Family<Tenant, Counter>,
    bytes: Family<Tenant, Counter>,
    rejected: Family<TenantReason, Counter>,
}

#[derive(Default)]
struct Seen {
    pairs: HashMap<String, HashMap<String, (Counter, Counter)>>,
    /// stream label -> key -> reason -> its rejection counter: only the names the
    /// cap let in, and `_other`.
    rejected: HashMap<String, HashMap<String, HashMap<&'static str, Counter>>>,
    /// Pairs with series of their own (`_other` pairs not counted).
    count: usize,
}

impl Tenants {
    pub(super) fn register(r: &mut Registry) -> Tenants {
        let t = Tenants {
            seen: Mutex::default(),
            events: Family::default(),
            bytes: Family::default(),
            rejected: Family::default(),
        };
        r.register(
            "sluice_stream_events",
            "Events accepted by ingest, by stream and API key name (bounded: see the docs)",
            t.events.clone(),
        );
        r.register(
            "sluice_stream_bytes",
            "Payload bytes accepted by ingest, by stream and API key name",
            t.bytes.clone(),
        );
        r.register(
            "sluice_stream_rejected_requests",
            "Ingest requests rejected, by stream (_grpc for gRPC calls), API key name and reason",
            t.rejected.clone(),
        );
        t
    }

    /// Runs `f` on the accepted counters of (`stream`, `key`), or of (`_other`,
    /// `key`) once the cap is reached; a pair takes its place on first sight.
    fn with<R>(&self, stream: &str, key: &str, f: impl FnOnce(&(Counter, Counter)) -> R) -> R {
        let mut seen = self.seen.lock().expect("tenants lock poisoned");
        if let Some(c) = seen.pairs.get(stream).and_then(|keys| keys.get(key)) {
            return f(c);
        }
        let stream = if seen.count < MAX_TENANT_SERIES {
            seen.count += 1;
            stream
        } else {
            "_other"
        };
        let labels: Tenant = [("stream", stream.to_string()), ("key", key.to_string())];
        let counters = (
            self.events.get_or_create(&labels).clone(),
            self.bytes.get_or_create(&labels).clone(),
        );
        let r = f(&counters);
        seen.pairs
            .entry(stream.to_string())
            .or_default()
            .insert(key.to_string(), counters);
        r
    }

    /// Counts `events` accepted events of `bytes` payload bytes of one stream.
    pub fn accepted(&self, stream: &str, key: &str, events: u64, bytes: u64) {
        self.with(stream, key, |(e, b)| {
            e.inc_by(events);
            b.inc_by(bytes);
        });
    }

    /// Counts a rejected request; `stream` as the request named it, if it did. A
    /// known (stream, key, reason) is counted without allocating: refusals are the
    /// cheap answer under overload and stay cheap.
    pub fn rejected(&self, stream: Option<&str>, key: &str, reason: &'static str) {
        let stream = match stream {
            None => "_none",
            Some(s) if validate_stream_name(s).is_err() => "_invalid",
            Some(s) => s,
        };
        {
            let seen = self.seen.lock().expect("tenants lock poisoned");
            let known = seen.rejected.get(stream).and_then(|keys| keys.get(key));
            if let Some(c) = known.and_then(|reasons| reasons.get(reason)) {
                c.inc();
                return;
            }
        }
        // First sight: the pair takes a place under the cap (or is `_other`).
        self.with(stream, key, |_| ());
        let mut seen = self.seen.lock().expect("tenants lock poisoned");
        let own = seen
            .pairs
            .get(stream)
            .is_some_and(|keys| keys.contains_key(key));
        let label = if own { stream } else { "_other" };
        let counter = self
            .rejected
            .get_or_create(&[
                ("stream", label.to_string()),
                ("key", key.to_string()),
                ("reason", reason.to_string()),
            ])
            .clone();
        counter.inc();
        // Keyed by the label, not the name: names past the cap never enter the map
        // (they take this slow path each time), so it stays bounded too.
        seen.rejected
            .entry(label.to_string())
            .or_default()
            .entry(key.to_string())
            .or_default()
            .insert(reason, counter);
    }
}
