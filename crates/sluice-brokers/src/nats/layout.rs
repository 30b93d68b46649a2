//! The message layout every NATS queue and sink shares: subjects, the headers of a
//! one-event message, batch messages and reading either back.

use async_nats::HeaderMap;
use sluice_core::Event;
use sluice_proto::broker;

/// The subject of stream `name` under `prefix`. Stream names may hold dots, which
/// NATS reads as token separators; empty tokens (`a..b`, a leading dot) would make
/// an invalid subject, so they become `_`. The exact name travels in a header.
pub fn subject_for(prefix: &str, name: &str) -> String {
    let mut s = String::with_capacity(prefix.len() + 1 + name.len());
    s.push_str(prefix);
    for token in name.split('.') {
        s.push('.');
        s.push_str(if token.is_empty() { "_" } else { token });
    }
    s
}

/// The headers of one event's message, with `Nats-Msg-Id` = `msg_id`. Refuses an
/// event that [`broker::check_event`] refuses (a reserved or malformed header of its
/// own, an invalid stream, id or key): nothing is rewritten.
pub fn message_headers(event: &Event, msg_id: &str) -> Result<HeaderMap, broker::EncodeError> {
    broker::check_event(event)?;
    let mut h = HeaderMap::new();
    for (k, v) in broker::headers(event) {
        h.append(k, v.as_ref());
    }
    h.insert("Nats-Msg-Id", msg_id);
    Ok(h)
}

/// The message's headers as (name, value) pairs, in order.
pub(super) fn header_pairs(m: &async_nats::Message) -> impl Iterator<Item = (&str, &str)> {
    m.headers.iter().flat_map(|h| {
        h.iter()
            .flat_map(|(k, vs)| vs.iter().map(move |v| (k.as_ref(), v.as_str())))
    })
}

/// Rebuilds an event from a message.
pub fn decode_message(m: &async_nats::Message) -> Result<Event, broker::DecodeError> {
    broker::decode(
        header_pairs(m),
        |n| n.starts_with("Nats-"),
        m.payload.clone(),
    )
}

/// The events of a message: a batch message's, or the one event of any other
/// ([`broker::decode_messages`]).
pub fn decode_messages(m: &async_nats::Message) -> Result<Vec<Event>, broker::DecodeError> {
    let headers: Vec<(&str, &str)> = header_pairs(m).collect();
    broker::decode_messages(&headers, |n| n.starts_with("Nats-"), m.payload.clone())
}

/// The most event bytes a batch message may carry: the server's `max_payload` less
/// room for the headers.
pub(super) fn batch_limit(client: &async_nats::Client) -> usize {
    client
        .server_info()
        .max_payload
        .saturating_sub(BATCH_HEADROOM)
        .max(1)
}

/// Room left in a batch message for its headers under the server's `max_payload`
/// (NATS counts headers and payload together).
const BATCH_HEADROOM: usize = 512;

/// The events split into runs of one stream whose record encoding fits in `limit`
/// bytes (an event larger than that alone is a run of its own: the server refuses it).
pub(super) fn batch_chunks(events: &[Event], limit: usize) -> Vec<&[Event]> {
    let mut chunks = Vec::new();
    let (mut start, mut size) = (0, 5);
    for (i, e) in events.iter().enumerate() {
        let len = sluice_proto::record::event_len(e);
        if i > start && (e.stream != events[start].stream || size + len > limit) {
            chunks.push(&events[start..i]);
            (start, size) = (i, 5);
        }
        size += len;
    }
    if start < events.len() {
        chunks.push(&events[start..]);
    }
    chunks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn odd_event_headers_are_refused_not_rewritten() {
        let mut e = Event::new("s", &b"{}"[..]);
        e.headers = vec![("trace".into(), "abc".into())];
        let h = message_headers(&e, "m-1").unwrap();
        assert_eq!(h.get("trace").map(|v| v.as_str()), Some("abc"));
        assert_eq!(h.get("Nats-Msg-Id").map(|v| v.as_str()), Some("m-1"));
        assert_eq!(h.get("sluice-id").map(|v| v.as_str()), Some(e.id.as_str()));
        for (name, value) in [
            ("a:b c", "v"),
            ("", "v"),
            ("t", "x\r\ny"),
            ("Nats-Rollup", "all"),
            ("NATS-ROLLUP", "all"),
            ("Nats-Expected-Last-Sequence", "1"),
            ("Nats-Msg-Id", "x"),
            ("sluice-stream", "../../x"),
        ] {
            e.headers = vec![(name.into(), value.into())];
            assert!(message_headers(&e, "m").is_err(), "{name:?}: {value:?}");
        }
    }

    #[test]
    fn subjects_never_have_empty_tokens() {
        assert_eq!(
            subject_for("sluice.events", "clicks"),
            "sluice.events.clicks"
        );
        assert_eq!(subject_for("p", "eu.clicks"), "p.eu.clicks");
        assert_eq!(subject_for("p", ".a..b."), "p._.a._.b._");
    }
}
