//! Events and batches.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;

/// One event as sluice stores and delivers it.
///
/// `payload` holds the producer's bytes verbatim (for HTTP, the JSON object exactly
/// as sent); nothing in sluice rewrites it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Unique, time-ordered id (UUIDv7 text) unless the producer supplied one.
    pub id: EventId,
    /// The stream the event was written to; shared by the events of a batch.
    pub stream: Arc<str>,
    /// Optional partition / ordering key.
    pub key: Option<String>,
    /// When ingest received the event, in nanoseconds since the Unix epoch.
    pub received_at_unix_nanos: i64,
    /// The producer's own timestamp, if it sent one. (gRPC and the record encoding
    /// write none as 0, so `Some(0)` is never made: see [`producer_timestamp`].)
    pub timestamp_unix_nanos: Option<i64>,
    /// Free-form headers; usually empty.
    pub headers: Vec<(String, String)>,
    /// The producer's bytes, verbatim.
    pub payload: Bytes,
}

impl Event {
    /// An event with a fresh id, received now, with no key and no headers.
    pub fn new(stream: impl Into<Arc<str>>, payload: impl Into<Bytes>) -> Event {
        Event {
            id: new_event_id(),
            stream: stream.into(),
            key: None,
            received_at_unix_nanos: crate::now_unix_nanos(),
            timestamp_unix_nanos: None,
            headers: Vec::new(),
            payload: payload.into(),
        }
    }

    /// An approximation of the memory and disk this event costs, used for byte bounds.
    pub fn size_hint(&self) -> usize {
        self.id.len()
            + self.stream.len()
            + self.key.as_ref().map_or(0, String::len)
            + self
                .headers
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
            + self.payload.len()
            + 32
    }
}

/// A producer timestamp read from a format that writes none as 0 (protobuf's
/// default, sluice's record encoding).
pub fn producer_timestamp(unix_nanos: i64) -> Option<i64> {
    (unix_nanos != 0).then_some(unix_nanos)
}

/// An event id: 1 to [`MAX_EVENT_ID_LEN`](crate::MAX_EVENT_ID_LEN) bytes of text
/// without control characters ([`validate_event_id`](crate::validate_event_id)); a
/// UUIDv7 unless the producer supplied its own. Only [`EventId::parse`] and sluice's
/// own generators make one, so every id in an [`Event`] has been checked.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EventId(String);

impl EventId {
    /// Checks `id` and makes it an event id.
    pub fn parse(id: impl Into<String>) -> Result<EventId, crate::HeaderError> {
        let id = id.into();
        crate::validate_event_id(&id)?;
        Ok(EventId(id))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl std::ops::Deref for EventId {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for EventId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for EventId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl PartialEq<str> for EventId {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for EventId {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl PartialEq<String> for EventId {
    fn eq(&self, other: &String) -> bool {
        &self.0 == other
    }
}

impl From<EventId> for String {
    fn from(id: EventId) -> String {
        id.0
    }
}

/// A new UUIDv7 as lowercase hyphenated text: unique and ordered by creation time.
///
/// RFC 9562 method 1 ("fixed-length dedicated counter"): 48 bits of Unix
/// milliseconds, then a 22-bit counter (12 bits in `rand_a`, 10 at the top of
/// `rand_b`) that makes ids from this process strictly increasing, then 52 random
/// bits. The clock and counter live in one atomic, so generating an id is a CAS and a
/// thread-local RNG draw: no lock and no `getrandom` syscall on the ingest hot path.
pub fn new_event_id() -> EventId {
    EventId(
        uuid::Uuid::from_bytes(next_v7_bytes())
            .hyphenated()
            .to_string(),
    )
}

const COUNTER_BITS: u32 = 22;
static V7_STATE: AtomicU64 = AtomicU64::new(0);

/// `n` new ids for the events of one request, as [`new_event_id`] would make them one
/// by one, but reading the clock and touching the shared counter once.
pub fn new_event_ids(n: usize) -> EventIds {
    let first = reserve_v7(n.max(1) as u64);
    EventIds {
        next: first,
        end: first + n as u64,
    }
}

/// Ids reserved by [`new_event_ids`].
#[derive(Debug)]
pub struct EventIds {
    next: u64,
    end: u64,
}

impl Iterator for EventIds {
    type Item = EventId;

    fn next(&mut self) -> Option<EventId> {
        if self.next == self.end {
            return None;
        }
        let state = self.next;
        self.next += 1;
        Some(EventId(
            uuid::Uuid::from_bytes(v7_bytes(state))
                .hyphenated()
                .to_string(),
        ))
    }
}

/// Reserves `n` consecutive states (`ms << 22 | counter`) and returns the first.
/// States are strictly increasing; if the counter overflows within one millisecond
/// the timestamp runs ahead by a millisecond, as the RFC allows.
fn reserve_v7(n: u64) -> u64 {
    let now_ms = (crate::now_unix_nanos() / 1_000_000).max(0) as u64;
    let floor = now_ms << COUNTER_BITS;
    let mut cur = V7_STATE.load(Ordering::Relaxed);
    loop {
        let first = if floor > cur { floor } else { cur + 1 };
        let last = first + n - 1;
        match V7_STATE.compare_exchange_weak(cur, last, Ordering::AcqRel, Ordering::Relaxed) {
            Ok(_) => return first,
            Err(seen) => cur = seen,
        }
    }
}

fn next_v7_bytes() -> [u8; 16] {
    v7_bytes(reserve_v7(1))
}

fn v7_bytes(next: u64) -> [u8; 16] {
    let ms = next >> COUNTER_BITS;
    let counter = next & ((1 << COUNTER_BITS) - 1);
    let random = fastrand::u64(..) & ((1 << 52) - 1);
    let hi = (ms << 16) | (0x7 << 12) | (counter >> 10);
    let lo = (0b10 << 62) | ((counter & 0x3ff) << 52) | random;
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&hi.to_be_bytes());
    b[8..].copy_from_slice(&lo.to_be_bytes());
    b
}

/// The events of one producer request: appended atomically, all or nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    /// The events, in the order the producer sent them.
    pub events: Vec<Event>,
}

impl Batch {
    /// A batch of the given events.
    pub fn new(events: Vec<Event>) -> Batch {
        Batch { events }
    }

    /// Number of events.
    pub fn len(&self) -> usize {
        self.events.len()
    }

    /// True when the batch holds no event.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// Sum of [`Event::size_hint`] over the batch.
    pub fn size_hint(&self) -> usize {
        self.events.iter().map(Event::size_hint).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_and_time_ordered() {
        let ids: Vec<EventId> = (0..1000).map(|_| new_event_id()).collect();
        let mut sorted = ids.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), ids.len(), "duplicate ids");
        assert_eq!(sorted, ids, "ids are not in creation order");
        assert_eq!(ids[0].len(), 36);
        let u = uuid::Uuid::parse_str(&ids[0]).unwrap();
        assert_eq!(u.get_version_num(), 7, "not a version-7 uuid: {}", ids[0]);
        assert_eq!(u.get_variant(), uuid::Variant::RFC4122);
        let (secs, _) = u.get_timestamp().unwrap().to_unix();
        let now = crate::now_unix_nanos() as u64 / 1_000_000_000;
        assert!(
            secs.abs_diff(now) <= 2,
            "timestamp {secs} is not now ({now})"
        );
    }

    #[test]
    fn reserved_ids_interleave_uniquely_and_in_order_with_single_ones() {
        let mut all = Vec::new();
        for round in 0..200 {
            all.push(new_event_id());
            all.extend(new_event_ids(round % 7));
            all.push(new_event_id());
        }
        let mut sorted = all.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(
            sorted, all,
            "reserved ids are unique and ordered with the rest"
        );
        assert_eq!(new_event_ids(5).count(), 5);
        assert_eq!(new_event_ids(0).count(), 0);
    }

    #[test]
    fn ids_from_many_threads_are_unique() {
        let ids: Vec<EventId> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..4)
                .map(|_| s.spawn(|| (0..20_000).map(|_| new_event_id()).collect::<Vec<_>>()))
                .collect();
            let batched = s.spawn(|| {
                (0..2_000)
                    .flat_map(|_| new_event_ids(10))
                    .collect::<Vec<_>>()
            });
            hs.into_iter()
                .chain([batched])
                .flat_map(|h| h.join().unwrap())
                .collect()
        });
        let unique: std::collections::HashSet<&EventId> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len());
    }

    #[test]
    fn an_event_id_is_checked_text() {
        assert!(EventId::parse("").is_err());
        assert!(EventId::parse("a\nb").is_err());
        assert!(EventId::parse("x".repeat(crate::MAX_EVENT_ID_LEN + 1)).is_err());
        let id = EventId::parse("order-17").unwrap();
        assert_eq!(id, "order-17");
        assert_eq!(id.len(), 8);
        assert_eq!(format!("{id}"), "order-17");
        assert_eq!(String::from(id), "order-17");
        let fresh = new_event_id();
        assert_eq!(EventId::parse(fresh.as_str()).unwrap(), fresh);
    }
}
