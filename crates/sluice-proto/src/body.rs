//! Request bodies: a JSON object, a JSON array of objects, or NDJSON.
//!
//! Each event's payload is the exact bytes of its object in the body (a zero-copy
//! slice of it), so what a sink delivers is what the producer sent.
//!
//! Splitting is bounded: the `_limited` splitters stop at the event after the
//! limit (`too_many_events`), and nothing is reserved from a count the producer
//! controls, so a body of millions of `{}` costs no more than the limit allows.
//! Nesting is bounded by [`crate::json::MAX_DEPTH`] without recursion.

use bytes::Bytes;

/// Why a body was refused. Maps to HTTP 400 with `code` and, for NDJSON, `line`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct BodyError {
    /// Machine-readable code: `invalid_json`, `not_an_object`, `empty_body`,
    /// `too_many_events` (the only one that is not a 400 but a 413).
    pub code: &'static str,
    /// What is wrong, for a person.
    pub message: String,
    /// 1-based NDJSON line (or array element for JSON arrays, as `line` = element index + 1).
    pub line: Option<usize>,
}

impl BodyError {
    fn new(code: &'static str, message: impl Into<String>, line: Option<usize>) -> BodyError {
        BodyError {
            code,
            message: message.into(),
            line,
        }
    }
}

/// Splits a JSON body (one object or an array of objects) into payloads.
pub fn split_json(body: &Bytes) -> Result<Vec<Bytes>, BodyError> {
    split_json_limited(body, usize::MAX)
}

/// Splits an NDJSON body into payloads, one JSON object per non-blank line.
/// The first bad line fails the whole body, with its 1-based line number.
pub fn split_ndjson(body: &Bytes) -> Result<Vec<Bytes>, BodyError> {
    split_ndjson_limited(body, usize::MAX)
}

/// The `too_many_events` error for a body with more than `max` events.
fn too_many(max: usize, at: usize, unit: &str) -> BodyError {
    BodyError::new(
        "too_many_events",
        format!(
            "the request has more than http.max_events_per_request ({max}) events ({unit} {at} is one too many)"
        ),
        Some(at),
    )
}

/// [`split_json`], refusing a body of more than `max` events as soon as it finds
/// the one too many.
pub fn split_json_limited(body: &Bytes, max: usize) -> Result<Vec<Bytes>, BodyError> {
    let text = trim_ws(body);
    match text.first() {
        None => Err(BodyError::new("empty_body", "request body is empty", None)),
        Some(b'{') => {
            validate_object(text, None)?;
            Ok(vec![body.slice_ref(text)])
        }
        Some(b'[') => {
            let text = std::str::from_utf8(text).map_err(|e| {
                let e = crate::json::SyntaxError {
                    at: e.valid_up_to(),
                    what: "invalid UTF-8",
                };
                BodyError::new("invalid_json", format!("invalid JSON: {e}"), None)
            })?;
            let out = split_array(text, max)?;
            Ok(out
                .into_iter()
                .map(|s| body.slice_ref(s.as_bytes()))
                .collect())
        }
        Some(_) => Err(BodyError::new(
            "not_an_object",
            "body must be a JSON object or an array of JSON objects",
            None,
        )),
    }
}

/// The elements of a JSON array of objects (`text` starts with `[` and has no
/// trailing whitespace), each checked as it is reached.
fn split_array(text: &str, max: usize) -> Result<Vec<&str>, BodyError> {
    let b = text.as_bytes();
    let invalid = |at: usize, what: &'static str| {
        let e = crate::json::SyntaxError { at, what };
        BodyError::new("invalid_json", format!("invalid JSON: {e}"), None)
    };
    let skip_ws = |mut i: usize| {
        while matches!(b.get(i), Some(b' ' | b'\t' | b'\r' | b'\n')) {
            i += 1;
        }
        i
    };
    let mut out = Vec::new();
    let mut i = skip_ws(1);
    if b.get(i) == Some(&b']') {
        i += 1;
    } else {
        loop {
            let n = out.len() + 1;
            if b.get(i) != Some(&b'{') {
                if i >= b.len() {
                    return Err(invalid(i, "unexpected end of input"));
                }
                return Err(BodyError::new(
                    "not_an_object",
                    format!("array element {n} is not a JSON object"),
                    Some(n),
                ));
            }
            if n > max {
                return Err(too_many(max, n, "array element"));
            }
            let end = crate::json::value_end(text, i).map_err(|e| {
                BodyError::new("invalid_json", format!("invalid JSON: {e}"), Some(n))
            })?;
            out.push(&text[i..end]);
            i = skip_ws(end);
            match b.get(i) {
                Some(b',') => i = skip_ws(i + 1),
                Some(b']') => {
                    i += 1;
                    break;
                }
                _ => return Err(invalid(i, "expected ',' or ']'")),
            }
        }
    }
    if i != b.len() {
        return Err(invalid(i, "trailing characters"));
    }
    if out.is_empty() {
        return Err(BodyError::new("empty_body", "JSON array is empty", None));
    }
    Ok(out)
}

/// [`split_ndjson`], refusing a body of more than `max` events as soon as it finds
/// the one too many.
pub fn split_ndjson_limited(body: &Bytes, max: usize) -> Result<Vec<Bytes>, BodyError> {
    // UTF-8 once for the whole body: one long check is much cheaper than one per line.
    let text = std::str::from_utf8(body).map_err(|e| {
        let at = e.valid_up_to();
        let line = memchr::memchr_iter(b'\n', &body[..at]).count() + 1;
        let column = at - memchr::memrchr(b'\n', &body[..at]).map_or(0, |i| i + 1);
        let e = crate::json::SyntaxError {
            at: column,
            what: "invalid UTF-8",
        };
        BodyError::new(
            "invalid_json",
            format!("invalid JSON on line {line}: {e}"),
            Some(line),
        )
    })?;
    // No capacity from the body's newline count: the producer controls it.
    let mut out = Vec::new();
    let mut start = 0;
    let mut line_no = 0;
    while start < text.len() {
        line_no += 1;
        let end = memchr::memchr(b'\n', &body[start..]).map_or(body.len(), |i| start + i);
        // Cut at ASCII newlines, so always on character boundaries.
        let line = text[start..end].trim_matches(|c| matches!(c, ' ' | '\t' | '\r' | '\n'));
        if !line.is_empty() {
            if out.len() >= max {
                return Err(too_many(max, line_no, "line"));
            }
            check_object(line.as_bytes(), Some(line_no), || {
                crate::json::validate_str(line)
            })?;
            out.push(body.slice_ref(line.as_bytes()));
        }
        start = end + 1;
    }
    if out.is_empty() {
        return Err(BodyError::new(
            "empty_body",
            "NDJSON body has no events",
            None,
        ));
    }
    Ok(out)
}

/// Checks one event payload of a gRPC request: a JSON object, optionally surrounded by
/// whitespace. `n` is the event's 1-based position, reported as `line`.
pub fn validate_payload(payload: &[u8], n: usize) -> Result<(), BodyError> {
    let text = trim_ws(payload);
    if text.first() != Some(&b'{') {
        return Err(BodyError::new(
            "not_an_object",
            format!("event {n}: payload is not a JSON object"),
            Some(n),
        ));
    }
    crate::json::validate(text).map_err(|e| {
        BodyError::new(
            "invalid_json",
            format!("event {n}: invalid JSON payload: {e}"),
            Some(n),
        )
    })
}

fn validate_object(text: &[u8], line: Option<usize>) -> Result<(), BodyError> {
    check_object(text, line, || crate::json::validate(text))
}

/// Refuses `text` unless it starts an object and `syntax` accepts it.
fn check_object(
    text: &[u8],
    line: Option<usize>,
    syntax: impl FnOnce() -> Result<(), crate::json::SyntaxError>,
) -> Result<(), BodyError> {
    if text.first() != Some(&b'{') {
        let what = line.map_or(String::from("body"), |l| format!("line {l}"));
        return Err(BodyError::new(
            "not_an_object",
            format!("{what} is not a JSON object"),
            line,
        ));
    }
    syntax().map_err(|e| {
        let msg = match line {
            Some(l) => format!("invalid JSON on line {l}: {e}"),
            None => format!("invalid JSON: {e}"),
        };
        BodyError::new("invalid_json", msg, line)
    })?;
    Ok(())
}

fn trim_ws(b: &[u8]) -> &[u8] {
    let is_ws = |c: &u8| matches!(c, b' ' | b'\t' | b'\r' | b'\n');
    let start = b.iter().position(|c| !is_ws(c)).unwrap_or(b.len());
    let end = b.iter().rposition(|c| !is_ws(c)).map_or(start, |i| i + 1);
    &b[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[test]
    fn single_object_kept_verbatim() {
        let got = split_json(&b("  {\"a\": 1,  \"b\":[1, 2]}\n")).unwrap();
        assert_eq!(got, vec![b("{\"a\": 1,  \"b\":[1, 2]}")]);
    }

    #[test]
    fn array_elements_kept_verbatim() {
        let got = split_json(&b("[{\"a\":1} , {\"b\" : \"x\"}]")).unwrap();
        assert_eq!(got, vec![b("{\"a\":1}"), b("{\"b\" : \"x\"}")]);
    }

    #[test]
    fn array_with_non_object_names_element() {
        let err = split_json(&b("[{\"a\":1}, 3]")).unwrap_err();
        assert_eq!(err.code, "not_an_object");
        assert_eq!(err.line, Some(2));
    }

    #[test]
    fn bad_json_and_scalars_refused() {
        assert_eq!(split_json(&b("{\"a\":")).unwrap_err().code, "invalid_json");
        assert_eq!(split_json(&b("42")).unwrap_err().code, "not_an_object");
        assert_eq!(split_json(&b("  ")).unwrap_err().code, "empty_body");
        assert_eq!(split_json(&b("[]")).unwrap_err().code, "empty_body");
        assert_eq!(split_json(&b("{} {}")).unwrap_err().code, "invalid_json");
        assert_eq!(split_json(&b("[{}")).unwrap_err().code, "invalid_json");
        assert_eq!(split_json(&b("[{},]")).unwrap_err().code, "not_an_object");
        assert_eq!(split_json(&b("[{}] x")).unwrap_err().code, "invalid_json");
        assert_eq!(split_json(&b("[{} {}]")).unwrap_err().code, "invalid_json");
    }

    #[test]
    fn event_counts_stop_at_the_limit() {
        let ok = split_json_limited(&b("[{}, {\"a\":[1]} ,{}]"), 3).unwrap();
        assert_eq!(ok, vec![b("{}"), b("{\"a\":[1]}"), b("{}")]);
        let e = split_json_limited(&b("[{},{},{},{}]"), 3).unwrap_err();
        assert_eq!((e.code, e.line), ("too_many_events", Some(4)));
        assert!(e.message.contains("http.max_events_per_request (3)"), "{e}");
        let e = split_ndjson_limited(&b("{}\n\n{}\n{}\n{}\n"), 2).unwrap_err();
        assert_eq!((e.code, e.line), ("too_many_events", Some(4)));
        assert_eq!(split_ndjson_limited(&b("{}\n{}\n\n"), 2).unwrap().len(), 2);
    }

    #[test]
    fn deep_nesting_is_invalid_json_not_a_stack_overflow() {
        let deep = "[".repeat(1_000_000);
        assert_eq!(split_json(&b(&deep)).unwrap_err().code, "not_an_object");
        let deep = format!("{{\"a\":{}}}", "[".repeat(1_000_000));
        assert_eq!(split_json(&b(&deep)).unwrap_err().code, "invalid_json");
        assert_eq!(split_ndjson(&b(&deep)).unwrap_err().code, "invalid_json");
        let deep = format!("[{{\"a\":{}}}]", "[".repeat(1_000_000));
        assert_eq!(split_json(&b(&deep)).unwrap_err().code, "invalid_json");
    }

    #[test]
    fn ndjson_lines_and_blank_lines() {
        let got = split_ndjson(&b("{\"a\":1}\r\n\n  {\"b\":2}\n{\"c\":3}")).unwrap();
        assert_eq!(got, vec![b("{\"a\":1}"), b("{\"b\":2}"), b("{\"c\":3}")]);
    }

    #[test]
    fn ndjson_bad_line_reports_its_number() {
        let err = split_ndjson(&b("{\"a\":1}\n{\"b\":2}\n{oops}\n{\"d\":4}\n")).unwrap_err();
        assert_eq!(err.code, "invalid_json");
        assert_eq!(err.line, Some(3));
        let err = split_ndjson(&b("{\"a\":1}\n\n[1]\n")).unwrap_err();
        assert_eq!(err.code, "not_an_object");
        assert_eq!(err.line, Some(3));
    }

    #[test]
    fn ndjson_invalid_utf8_names_its_line_and_column() {
        let body = Bytes::from_static(b"{\"a\":1}\n{\"b\":\"\xc3\xa9\"}\n{\"c\":\"x\xff\"}\n");
        let err = split_ndjson(&body).unwrap_err();
        assert_eq!(err.code, "invalid_json");
        assert_eq!(err.line, Some(3));
        assert_eq!(
            err.message,
            "invalid JSON on line 3: invalid UTF-8 at column 8"
        );
        // Valid multi-byte text is kept verbatim.
        let ok = split_ndjson(&Bytes::from_static(b"{\"b\":\"\xc3\xa9\"}\n")).unwrap();
        assert_eq!(&ok[0][..], b"{\"b\":\"\xc3\xa9\"}");
    }
}
