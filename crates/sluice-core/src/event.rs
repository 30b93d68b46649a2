//! Events and batches.

use bytes::Bytes;

/// One event as sluice stores and delivers it.
///
/// `payload` holds the producer's bytes verbatim (for HTTP, the JSON object exactly
/// as sent); nothing in sluice rewrites it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// Unique, time-ordered id (UUIDv7 text) unless the producer supplied one.
    pub id: String,
    /// The stream the event was written to.
    pub stream: String,
    /// Optional partition / ordering key.
    pub key: Option<String>,
    /// When ingest received the event, in nanoseconds since the Unix epoch.
    pub received_at_unix_nanos: i64,
    /// The producer's own timestamp, if it sent one (0 = none).
    pub timestamp_unix_nanos: i64,
    /// Free-form headers; usually empty.
    pub headers: Vec<(String, String)>,
    /// The producer's bytes, verbatim.
    pub payload: Bytes,
}

impl Event {
    /// An event with a fresh id, received now, with no key and no headers.
    pub fn new(stream: impl Into<String>, payload: impl Into<Bytes>) -> Event {
        Event {
            id: new_event_id(),
            stream: stream.into(),
            key: None,
            received_at_unix_nanos: crate::now_unix_nanos(),
            timestamp_unix_nanos: 0,
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

/// A new UUIDv7 as lowercase hyphenated text: unique and ordered by creation time.
pub fn new_event_id() -> String {
    uuid::Uuid::now_v7().hyphenated().to_string()
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
        let ids: Vec<String> = (0..1000).map(|_| new_event_id()).collect();
        let mut sorted = ids.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), ids.len(), "duplicate ids");
        assert_eq!(sorted, ids, "ids are not in creation order");
        assert_eq!(ids[0].len(), 36);
        assert_eq!(&ids[0][14..15], "7", "not a version-7 uuid: {}", ids[0]);
    }
}
