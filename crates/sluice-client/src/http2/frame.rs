//! The frame layer (RFC 9113 §4, §6): the preface, frame types, flags and error
//! codes, and writing and reading the 9-byte frame header.
//!
//! ```text
//! +-----------------------------------------------+
//! |                 Length (24)                   |
//! +---------------+---------------+---------------+
//! |   Type (8)    |   Flags (8)   |
//! +-+-------------+---------------+-------------------------------+
//! |R|                 Stream Identifier (31)                      |
//! +=+=============================================================+
//! |                   Frame Payload (Length bytes)                ...
//! +---------------------------------------------------------------+
//! ```

use std::sync::Arc;

pub(super) const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

// Frame types (RFC 9113 §6).
pub(super) const DATA: u8 = 0x0;
pub(super) const HEADERS: u8 = 0x1;
pub(super) const RST_STREAM: u8 = 0x3;
pub(super) const SETTINGS: u8 = 0x4;
pub(super) const PUSH_PROMISE: u8 = 0x5;
pub(super) const PING: u8 = 0x6;
pub(super) const GOAWAY: u8 = 0x7;
pub(super) const WINDOW_UPDATE: u8 = 0x8;
pub(super) const CONTINUATION: u8 = 0x9;

// Flags.
pub(super) const END_STREAM: u8 = 0x1;
pub(super) const ACK: u8 = 0x1;
pub(super) const END_HEADERS: u8 = 0x4;
pub(super) const PADDED: u8 = 0x8;
pub(super) const PRIORITY: u8 = 0x20;

// Error codes (§7).
pub(super) const NO_ERROR: u32 = 0x0;
pub(super) const PROTOCOL_ERROR: u32 = 0x1;
pub(super) const FLOW_CONTROL_ERROR: u32 = 0x3;
pub(super) const FRAME_SIZE_ERROR: u32 = 0x6;
pub(super) const REFUSED_STREAM: u32 = 0x7;
pub(super) const CANCEL: u32 = 0x8;
pub(super) const COMPRESSION_ERROR: u32 = 0x9;

/// The frame size we accept (SETTINGS_MAX_FRAME_SIZE's default; we never raise it).
pub(super) const MAX_FRAME: usize = 16_384;

/// A connection error: the GOAWAY code to send and why.
pub(super) type ConnError = (u32, Arc<str>);

/// Writes a frame header for a `len`-byte payload.
#[inline]
pub(super) fn frame_head(out: &mut Vec<u8>, len: usize, ty: u8, flags: u8, id: u32) {
    let len = len as u32;
    out.extend_from_slice(&[(len >> 16) as u8, (len >> 8) as u8, len as u8, ty, flags]);
    out.extend_from_slice(&id.to_be_bytes());
}

/// Writes a whole frame.
#[inline]
pub(super) fn frame(out: &mut Vec<u8>, ty: u8, flags: u8, id: u32, payload: &[u8]) {
    frame_head(out, payload.len(), ty, flags, id);
    out.extend_from_slice(payload);
}

/// The payload length in a frame header (its first three bytes).
#[inline]
pub(super) fn frame_len(head: &[u8]) -> usize {
    usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2])
}

pub(super) fn conn_err(code: u32, why: &str) -> ConnError {
    (code, Arc::from(why))
}

/// The data of a possibly PADDED frame.
#[inline]
pub(super) fn unpad(flags: u8, payload: &[u8]) -> Result<&[u8], ConnError> {
    if flags & PADDED == 0 {
        return Ok(payload);
    }
    let (&pad, rest) = payload
        .split_first()
        .ok_or_else(|| conn_err(FRAME_SIZE_ERROR, "padded frame without a pad length"))?;
    rest.len()
        .checked_sub(usize::from(pad))
        .map(|n| &rest[..n])
        .ok_or_else(|| conn_err(PROTOCOL_ERROR, "padding longer than the frame"))
}
