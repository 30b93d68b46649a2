//! Consumer checkpoints: one small file per consumer, replaced atomically.

use std::io;

use crate::storage::Storage;

const MAGIC: [u8; 4] = *b"SLCK";
const LEN: usize = 16;
pub const SUFFIX: &str = ".ckpt";
pub const TMP_SUFFIX: &str = ".ckpt.tmp";

/// Whether `name` can be a consumer (it becomes part of a file name).
pub fn valid_consumer(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

pub fn file_name(consumer: &str) -> String {
    format!("{consumer}{SUFFIX}")
}

/// The consumer named by a checkpoint file name.
pub fn parse_file_name(name: &str) -> Option<&str> {
    if name.ends_with(TMP_SUFFIX) {
        return None;
    }
    name.strip_suffix(SUFFIX).filter(|c| valid_consumer(c))
}

pub fn encode(pos: u64) -> [u8; LEN] {
    let mut b = [0u8; LEN];
    b[0..4].copy_from_slice(&MAGIC);
    b[4..12].copy_from_slice(&pos.to_le_bytes());
    let crc = crc32c::crc32c(&b[0..12]);
    b[12..16].copy_from_slice(&crc.to_le_bytes());
    b
}

pub fn decode(b: &[u8]) -> Option<u64> {
    if b.len() != LEN || b[0..4] != MAGIC {
        return None;
    }
    let crc = u32::from_le_bytes(b[12..16].try_into().ok()?);
    if crc32c::crc32c(&b[0..12]) != crc {
        return None;
    }
    let pos = u64::from_le_bytes(b[4..12].try_into().ok()?);
    // No log reaches 4 EiB; a position past it is a damaged or hand-made file, and
    // continuing there would overflow the position arithmetic (fuzz finding F1).
    (pos <= MAX_POSITION).then_some(pos)
}

/// The highest position a checkpoint may hold (2^62 bytes).
pub const MAX_POSITION: u64 = 1 << 62;

/// Reads a checkpoint file; `Ok(None)` when its content is not a checkpoint.
pub fn read(storage: &dyn Storage, name: &str) -> io::Result<Option<u64>> {
    let file = storage.open(name, false)?;
    let mut buf = [0u8; LEN + 1];
    let n = file.read_full_at(0, &mut buf)?;
    Ok(decode(&buf[..n]))
}

/// Writes `pos` for `consumer`: temp file, sync, rename over the old one, sync the directory.
/// On error returns the step and file that failed.
pub fn write(
    storage: &dyn Storage,
    consumer: &str,
    pos: u64,
) -> Result<(), (&'static str, String, io::Error)> {
    let tmp = format!("{consumer}{TMP_SUFFIX}");
    let target = file_name(consumer);
    fn step(
        op: &'static str,
        file: &str,
    ) -> impl FnOnce(io::Error) -> (&'static str, String, io::Error) {
        let file = file.to_owned();
        move |e| (op, file, e)
    }
    let f = storage.open(&tmp, true).map_err(step("create", &tmp))?;
    f.set_len(0).map_err(step("truncate", &tmp))?;
    f.write_all_at(0, &encode(pos))
        .map_err(step("write", &tmp))?;
    f.sync_data().map_err(step("fdatasync", &tmp))?;
    drop(f);
    storage
        .rename(&tmp, &target)
        .map_err(step("rename", &target))?;
    storage
        .sync_dir()
        .map_err(step("fsync directory", &target))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_round_trip_and_rejects_flips() {
        let b = encode(123_456);
        assert_eq!(decode(&b), Some(123_456));
        let mut bad = b;
        bad[5] ^= 0x10;
        assert_eq!(decode(&bad), None);
        assert_eq!(decode(&b[..15]), None);
    }

    #[test]
    fn consumer_names_are_safe_file_names() {
        assert!(valid_consumer("processor-1.main"));
        assert!(!valid_consumer(""));
        assert!(!valid_consumer("../etc"));
        assert!(!valid_consumer("a/b"));
        assert!(!valid_consumer(".hidden"));
        assert_eq!(parse_file_name("proc.ckpt"), Some("proc"));
        assert_eq!(parse_file_name("proc.ckpt.tmp"), None);
    }
}
