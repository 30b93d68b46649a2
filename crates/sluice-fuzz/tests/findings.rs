//! The fuzzers' findings, each as the smallest input that showed it, kept as a
//! regression test (an open finding would be `#[ignore]`d until fixed); see
//! bench/RELIABILITY.md for each.

use bytes::Bytes;
use sluice_wal::{MemStorage, Storage, Wal, WalOptions};

fn put(storage: &MemStorage, name: &str, bytes: &[u8]) {
    let f = storage.open(name, true).expect("memory storage");
    f.write_all_at(0, bytes).expect("memory storage");
    f.sync_data().expect("memory storage");
}

/// F1: a checkpoint file with a valid CRC whose position is near `u64::MAX` (only a
/// bug or a hand-edited data directory writes one) makes the log continue there, and
/// the position arithmetic overflowed: a panic with overflow checks, wrapped positions
/// without. Fixed: a checkpoint past 2^62 is refused as corrupt.
/// Reproducer: fuzz/artifacts/wal_checkpoint/checkpoint-at-u64-max.
#[test]
fn checkpoint_near_u64_max_is_refused_or_works() {
    let storage = MemStorage::new();
    let mut ckpt = b"SLCK".to_vec();
    ckpt.extend_from_slice(&(u64::MAX - 8).to_le_bytes());
    let crc = crc32c::crc32c(&ckpt);
    ckpt.extend_from_slice(&crc.to_le_bytes());
    put(&storage, "c.ckpt", &ckpt);
    let outcome = std::panic::catch_unwind(|| {
        let Ok((wal, _)) = Wal::open_with_storage(storage.clone(), WalOptions::default()) else {
            return; // refused: fixed
        };
        if let Ok(pos) = wal.append_blocking(b"{}".to_vec()) {
            let got = wal.reader(pos).read(1, 1 << 20).expect("read back");
            assert_eq!(got.len(), 1);
            assert!(
                got[0].next > pos,
                "positions wrapped: {} after {pos}",
                got[0].next
            );
        }
    });
    assert!(
        outcome.is_ok(),
        "the wal panicked on a checkpoint near u64::MAX"
    );
}

/// F2: a JSON array body's elements are checked by serde_json's `RawValue`, which has
/// no depth limit, so an element nested 200 deep is accepted in an array while the same
/// object is refused as a single body, an NDJSON line or a gRPC payload (128 levels).
/// Reproducer: fuzz/artifacts/json_body/array-element-deeper-than-128.
#[test]
fn array_elements_have_the_same_depth_limit_as_other_bodies() {
    let object = format!("{}1{}", "{\"a\":".repeat(200), "}".repeat(200));
    let single = sluice_proto::body::split_json(&Bytes::from(object.clone()));
    assert_eq!(single.unwrap_err().code, "invalid_json");
    let array = sluice_proto::body::split_json(&Bytes::from(format!("[{object}]")));
    assert_eq!(
        array.map(|p| p.len()).map_err(|e| e.code),
        Err("invalid_json"),
        "the same object inside an array is accepted"
    );
}

/// F3 (found by the corpus replay's mutants): an older segment whose header is bad
/// made a reader compute a resume point inside that header (an overflow with
/// overflow checks), then, once clamped, resume at the same position forever: a
/// consumer stuck on it for good, and a second open reading none of the records
/// after it. Fixed: a bad header skips the whole segment, and a resume point must
/// move forward.
#[test]
fn a_bad_header_in_an_older_segment_is_skipped_not_read_forever() {
    sluice_fuzz::wal_segment(&[15, 68, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
}

/// F5: a file named like a quarantine file of a segment at position u64::MAX
/// (`18446744073709551615.wal.quarantine-0`, only ever hand-made) overflowed the hole
/// arithmetic of `inspect`. Fixed: a segment name past 2^62 (the highest position a
/// log can reach) is not a segment, and the hole bounds saturate.
/// Reproducer: fuzz/artifacts/wal_checkpoint/quarantine-name-at-u64-max.
#[test]
fn a_quarantine_name_at_u64_max_is_not_an_overflow() {
    let mut input = vec![3, 27, 128, 27, 237, 126, 27, 27, 47];
    input.extend_from_slice(b"18446744073709551615.wal.quarantine-0");
    sluice_fuzz::wal_checkpoint(&input);
}
