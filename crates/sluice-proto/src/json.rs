//! A JSON syntax validator (RFC 8259) for the ingest hot path.
//!
//! Ingest only needs to know that each payload is well-formed JSON, not its value;
//! this checks exactly that in one pass with an explicit stack (no recursion, no
//! allocation below 32 levels of nesting) — about twice as fast as deserialising
//! into `serde_json::value::RawValue`, which was the largest cost of a profiled
//! NDJSON ingest. A differential test holds it to serde_json's verdicts.
//!
//! Kept over sonic-rs and simd-json on measurement (`benches/json.rs`; bench/RESULTS.md,
//! "JSON validation: own validator vs sonic-rs and simd-json"): on event-sized
//! documents it is faster than both, and each would change a verdict that matters —
//! sonic-rs skips containers recursively with no depth limit (deep nesting overflows
//! the stack and aborts the process), simd-json refuses lone surrogate escapes,
//! integers past 64 bits and exponents past f64 (a 30-digit id, `1e999`), all of
//! which serde_json's `RawValue` accepts.

/// Where and why a document is not valid JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyntaxError {
    /// Byte offset of the problem.
    pub at: usize,
    /// What was expected or found.
    pub what: &'static str,
}

impl std::fmt::Display for SyntaxError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} at column {}", self.what, self.at + 1)
    }
}

/// Deepest nesting accepted (serde_json's default recursion limit).
pub const MAX_DEPTH: usize = 128;

/// Checks that `doc` is exactly one JSON value, optionally surrounded by whitespace.
pub fn validate(doc: &[u8]) -> Result<(), SyntaxError> {
    match std::str::from_utf8(doc) {
        Ok(text) => validate_str(text),
        Err(e) => Err(SyntaxError {
            at: e.valid_up_to(),
            what: "invalid UTF-8",
        }),
    }
}

/// [`validate`] for text already known to be UTF-8 (a body checked once as a whole).
pub fn validate_str(doc: &str) -> Result<(), SyntaxError> {
    let doc = doc.as_bytes();
    let mut p = Parser { b: doc, i: 0 };
    p.value()?;
    p.ws();
    if p.i != doc.len() {
        return Err(p.err("trailing characters"));
    }
    Ok(())
}

/// Checks the one JSON value that starts at byte `start` of `doc` (after optional
/// whitespace) and returns the offset just past it; what follows is not looked at.
/// Splitting an array of objects uses it element by element, so no element list is
/// built and nesting stays bounded by [`MAX_DEPTH`] without recursion.
pub fn value_end(doc: &str, start: usize) -> Result<usize, SyntaxError> {
    let mut p = Parser {
        b: doc.as_bytes(),
        i: start,
    };
    p.value()?;
    Ok(p.i)
}

struct Parser<'a> {
    b: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    #[inline]
    fn peek(&self) -> u8 {
        self.b.get(self.i).copied().unwrap_or(0)
    }

    fn err(&self, what: &'static str) -> SyntaxError {
        let what = if self.i >= self.b.len() {
            "unexpected end of input"
        } else {
            what
        };
        SyntaxError { at: self.i, what }
    }

    #[inline]
    fn ws(&mut self) {
        while matches!(self.peek(), b' ' | b'\t' | b'\n' | b'\r') {
            self.i += 1;
        }
    }

    /// One value, containers included, iteratively.
    fn value(&mut self) -> Result<(), SyntaxError> {
        let mut stack: smallstack::Stack = smallstack::Stack::default();
        'value: loop {
            self.ws();
            match self.peek() {
                open @ (b'{' | b'[') => {
                    self.i += 1;
                    self.ws();
                    let close = if open == b'{' { b'}' } else { b']' };
                    if self.peek() == close {
                        self.i += 1;
                    } else {
                        if stack.len() >= MAX_DEPTH {
                            return Err(self.err("nesting deeper than 128 levels"));
                        }
                        stack.push(open);
                        if open == b'{' {
                            self.key()?;
                        }
                        continue 'value;
                    }
                }
                b'"' => self.string()?,
                b'-' | b'0'..=b'9' => self.number()?,
                b't' => self.literal(b"true")?,
                b'f' => self.literal(b"false")?,
                b'n' => self.literal(b"null")?,
                _ => return Err(self.err("expected a value")),
            }
            // A value is complete: close containers or move to the next member.
            loop {
                let Some(top) = stack.last() else {
                    return Ok(());
                };
                self.ws();
                match (top, self.peek()) {
                    (_, b',') => {
                        self.i += 1;
                        if top == b'{' {
                            self.ws();
                            self.key()?;
                        }
                        continue 'value;
                    }
                    (b'{', b'}') | (b'[', b']') => {
                        self.i += 1;
                        stack.pop();
                    }
                    (b'{', _) => return Err(self.err("expected ',' or '}'")),
                    _ => return Err(self.err("expected ',' or ']'")),
                }
            }
        }
    }

    fn key(&mut self) -> Result<(), SyntaxError> {
        if self.peek() != b'"' {
            return Err(self.err("key must be a string"));
        }
        self.string()?;
        self.ws();
        if self.peek() != b':' {
            return Err(self.err("expected ':'"));
        }
        self.i += 1;
        Ok(())
    }

    fn string(&mut self) -> Result<(), SyntaxError> {
        self.i += 1; // the opening quote
        loop {
            // Skip the plain run in one go.
            self.i = crate::scan::string_special(self.b, self.i);
            match self.peek() {
                b'"' if self.i < self.b.len() => {
                    self.i += 1;
                    return Ok(());
                }
                b'\\' => {
                    self.i += 1;
                    match self.peek() {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => self.i += 1,
                        b'u' => {
                            self.i += 1;
                            for _ in 0..4 {
                                if !self.peek().is_ascii_hexdigit() {
                                    return Err(self.err("invalid \\u escape"));
                                }
                                self.i += 1;
                            }
                        }
                        _ => return Err(self.err("invalid escape")),
                    }
                }
                _ if self.i >= self.b.len() => return Err(self.err("unterminated string")),
                _ => return Err(self.err("control character in string")),
            }
        }
    }

    fn digits(&mut self) -> usize {
        let start = self.i;
        while self.peek().is_ascii_digit() {
            self.i += 1;
        }
        self.i - start
    }

    fn number(&mut self) -> Result<(), SyntaxError> {
        if self.peek() == b'-' {
            self.i += 1;
        }
        match self.peek() {
            b'0' => self.i += 1,
            b'1'..=b'9' => {
                self.digits();
            }
            _ => return Err(self.err("invalid number")),
        }
        if self.peek() == b'.' {
            self.i += 1;
            if self.digits() == 0 {
                return Err(self.err("invalid number"));
            }
        }
        if matches!(self.peek(), b'e' | b'E') {
            self.i += 1;
            if matches!(self.peek(), b'+' | b'-') {
                self.i += 1;
            }
            if self.digits() == 0 {
                return Err(self.err("invalid number"));
            }
        }
        Ok(())
    }

    fn literal(&mut self, word: &'static [u8]) -> Result<(), SyntaxError> {
        if self.b[self.i..].starts_with(word) {
            self.i += word.len();
            Ok(())
        } else {
            Err(self.err("expected a value"))
        }
    }
}

/// The container stack: inline up to 32 levels, on the heap beyond.
mod smallstack {
    #[derive(Default)]
    pub struct Stack {
        inline: [u8; 32],
        len: usize,
        spill: Vec<u8>,
    }

    impl Stack {
        pub fn len(&self) -> usize {
            self.len
        }
        pub fn push(&mut self, b: u8) {
            if self.len < 32 {
                self.inline[self.len] = b;
            } else {
                self.spill.push(b);
            }
            self.len += 1;
        }
        pub fn pop(&mut self) {
            self.len -= 1;
            if self.len >= 32 {
                self.spill.pop();
            }
        }
        pub fn last(&self) -> Option<u8> {
            match self.len {
                0 => None,
                n if n <= 32 => Some(self.inline[n - 1]),
                _ => self.spill.last().copied(),
            }
        }
    }
}

#[cfg(test)]
mod tests;
