//! One gRPC request message, from its frame to queue events: decompressed (bounded),
//! scanned (bounded), decoded and validated, its bytes held in the byte budget.

use std::sync::Arc;

use http::StatusCode;
use sluice_core::{validate_stream_name, Event, EventId, MAX_EVENT_ID_LEN};
use sluice_proto::prost::Message;
use sluice_proto::v1::{self as pb, IngestRequest};

use super::frames::Raw;
use super::scan;
use crate::auth::{check_stream, Principal};
use crate::error::ApiError;
use crate::front::budget::{Charge, EVENT_MEMORY_BYTES, HEADER_MEMORY_BYTES};
use crate::front::inflate::{inflate, Encoding};

/// A validated request message, ready to append; `charge` holds its bytes and
/// events in the byte budget until it is appended.
pub(super) struct Prepared {
    pub(super) events: Vec<Event>,
    /// Who sent them (for the per-key metrics).
    pub(super) principal: Principal,
    pub(super) bytes: usize,
    pub(super) return_ids: bool,
    _charge: Charge,
}

/// Decompresses (bounded), scans (bounded), decodes and validates one message.
pub(super) fn decode(
    principal: &Principal,
    encoding: Encoding,
    raw: Raw,
    (limit, max_events): (u64, usize),
) -> Result<Prepared, ApiError> {
    let Raw {
        bytes,
        compressed,
        mut charge,
    } = raw;
    let bytes = if compressed {
        if encoding == Encoding::Identity {
            return Err(ApiError::bad_request(
                "invalid_encoding",
                "a compressed message in a call without grpc-encoding",
            ));
        }
        let received = bytes.len() as u64;
        let what = "the decompressed request message";
        let out = inflate(encoding, &bytes, limit, what, &mut charge).map_err(|e| {
            if e.code == "payload_too_large" {
                ApiError::message_too_large(what, limit)
            } else {
                e
            }
        })?;
        drop(bytes);
        charge.release(received);
        out
    } else {
        bytes
    };
    let counts = scan::scan(&bytes, max_events).map_err(scan_error)?;
    charge.add(
        counts.events as u64 * EVENT_MEMORY_BYTES + counts.headers as u64 * HEADER_MEMORY_BYTES,
    )?;
    let req = IngestRequest::decode(bytes).map_err(|e| {
        ApiError::bad_request(
            "invalid_protobuf",
            format!("the request message is not a valid sluice.v1.IngestRequest: {e}"),
        )
    })?;
    let return_ids = req.return_ids;
    let (events, bytes) = to_events(principal, req.stream, req.events)?;
    Ok(Prepared {
        events,
        principal: principal.clone(),
        bytes,
        return_ids,
        _charge: charge,
    })
}

fn scan_error(e: scan::ScanError) -> ApiError {
    use scan::ScanError;
    match e {
        ScanError::TooManyEvents { max } => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_many_events",
            format!("the request message has more than http.max_events_per_request ({max}) events"),
        ),
        ScanError::TooManyHeaders { max, event } => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_many_headers",
            format!(
                "the request message has more than http.max_events_per_request ({max}) header entries in all"
            ),
        )
        .at_event(event),
        ScanError::NotUtf8 { event, field } => {
            let e = ApiError::bad_request("invalid_utf8", format!("{field} is not valid UTF-8"));
            match event {
                Some(n) => e.at_event(n),
                None => e,
            }
        }
        ScanError::Malformed { what } => ApiError::bad_request(
            "invalid_protobuf",
            format!("the request message is not a valid sluice.v1.IngestRequest: {what}"),
        ),
    }
}

/// Turns the protobuf events into queue events: ids assigned where missing, streams
/// defaulted and checked, payloads checked to be JSON objects.
fn to_events(
    principal: &Principal,
    stream: String,
    events: Vec<pb::Event>,
) -> Result<(Vec<Event>, usize), ApiError> {
    if events.is_empty() {
        return Err(ApiError::bad_request(
            "empty_body",
            "the request has no events",
        ));
    }
    let default: Option<Arc<str>> = if stream.is_empty() {
        None
    } else {
        validate_stream_name(&stream)?;
        check_stream(principal, &stream)?;
        Some(stream.into())
    };
    let received_at = sluice_core::now_unix_nanos();
    let mut fresh = sluice_core::new_event_ids(events.iter().filter(|e| e.id.is_empty()).count());
    let mut bytes = 0;
    let mut out = Vec::with_capacity(events.len());
    for (i, e) in events.into_iter().enumerate() {
        let n = i + 1;
        let stream = match (&default, e.stream.is_empty()) {
            (Some(d), true) => d.clone(),
            (Some(d), false) if *d.as_ref() == e.stream => d.clone(),
            (None, true) => {
                return Err(ApiError::bad_request(
                    "invalid_stream",
                    "no stream (set IngestRequest.stream or Event.stream)",
                )
                .at_event(n))
            }
            (_, false) => {
                validate_stream_name(&e.stream).map_err(|err| ApiError::from(err).at_event(n))?;
                check_stream(principal, &e.stream).map_err(|err| err.at_event(n))?;
                e.stream.into()
            }
        };
        sluice_proto::body::validate_payload(&e.payload, n)?;
        let id = if e.id.is_empty() {
            fresh.next().expect("one id reserved per event without one")
        } else {
            EventId::parse(e.id).map_err(|_| {
                ApiError::bad_request(
                    "invalid_id",
                    format!("an id has 1 to {MAX_EVENT_ID_LEN} bytes and no control characters"),
                )
                .at_event(n)
            })?
        };
        sluice_core::validate_headers(e.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .map_err(|(name, err)| {
                let name: String = name.escape_debug().take(128).collect();
                let msg = match name.is_empty() {
                    true => err.to_string(),
                    false => format!("header \"{name}\": {err}"),
                };
                ApiError::bad_request("invalid_header", msg).at_event(n)
            })?;
        sluice_core::validate_key(&e.key).map_err(|err| {
            ApiError::bad_request("invalid_key", format!("key: {err}")).at_event(n)
        })?;
        let mut headers: Vec<(String, String)> = e.headers.into_iter().collect();
        headers.sort_unstable();
        bytes += e.payload.len();
        out.push(Event {
            id,
            stream,
            key: (!e.key.is_empty()).then_some(e.key),
            received_at_unix_nanos: received_at,
            timestamp_unix_nanos: sluice_core::producer_timestamp(e.timestamp_unix_nanos),
            headers,
            payload: e.payload,
        });
    }
    Ok((out, bytes))
}
