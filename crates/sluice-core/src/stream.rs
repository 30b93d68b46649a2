//! Stream names.

/// The longest stream name accepted.
pub const MAX_STREAM_NAME_LEN: usize = 128;

/// The stream under which a dead-letter sink files what has no valid stream of its
/// own: a broker message sluice cannot read, or an event whose stream name is not
/// valid (the original name travels in a `sluice-dead-letter-stream` header).
pub const QUARANTINE_STREAM: &str = "_quarantine";

/// Why a stream name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamNameError {
    /// The name is empty.
    #[error("stream name is empty")]
    Empty,
    /// The name is longer than [`MAX_STREAM_NAME_LEN`].
    #[error("stream name is {len} bytes long; at most {MAX_STREAM_NAME_LEN} are allowed")]
    TooLong { len: usize },
    /// The name holds a byte outside `[A-Za-z0-9_.-]`.
    #[error("stream name has the character {ch:?} at byte {at}; only A-Z, a-z, 0-9, '_', '.' and '-' are allowed")]
    BadChar { ch: char, at: usize },
    /// `.` and `..` would be path components.
    #[error("stream name may not be '.' or '..'")]
    Dots,
}

/// Checks a stream name against `[A-Za-z0-9_.-]{1,128}` (and refuses `.` and `..`,
/// which file sinks would read as directories).
pub fn validate_stream_name(name: &str) -> Result<(), StreamNameError> {
    if name.is_empty() {
        return Err(StreamNameError::Empty);
    }
    if name.len() > MAX_STREAM_NAME_LEN {
        return Err(StreamNameError::TooLong { len: name.len() });
    }
    if let Some((at, ch)) = name
        .char_indices()
        .find(|(_, c)| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return Err(StreamNameError::BadChar { ch, at });
    }
    if name == "." || name == ".." {
        return Err(StreamNameError::Dots);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_and_refuses() {
        assert!(validate_stream_name("clicks").is_ok());
        assert!(validate_stream_name("a.b-c_D9").is_ok());
        assert!(validate_stream_name(&"x".repeat(128)).is_ok());
        assert_eq!(validate_stream_name(""), Err(StreamNameError::Empty));
        assert_eq!(
            validate_stream_name(&"x".repeat(129)),
            Err(StreamNameError::TooLong { len: 129 })
        );
        assert_eq!(
            validate_stream_name("a/b"),
            Err(StreamNameError::BadChar { ch: '/', at: 1 })
        );
        assert_eq!(validate_stream_name(".."), Err(StreamNameError::Dots));
    }
}
