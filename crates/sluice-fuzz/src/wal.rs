//! Targets over `sluice-wal`: recovery and reading of segment files and checkpoint
//! files whose bytes come from the fuzzer, on a [`MemStorage`].
//!
//! The segment bytes are mostly the fuzzer's own; a valid header (and, on request,
//! valid frame CRCs) is written for it, since a coverage-guided fuzzer cannot guess a
//! CRC32C and would otherwise never get past the first check.

use sluice_wal::{
    inspect_storage, segment_name, MemStorage, ReadError, Storage, SyncMode, Wal, WalOptions,
    HEADER_LEN,
};

const MAX_RECORD: u64 = 64 << 10;

fn options() -> WalOptions {
    WalOptions {
        segment_bytes: 256 << 10,
        max_bytes: 1 << 20,
        max_record_bytes: MAX_RECORD,
        sync: SyncMode::Fsync,
        observer: None,
    }
}

/// The 32-byte segment header for `base` (see the sluice-wal crate docs).
fn header(base: u64) -> [u8; HEADER_LEN as usize] {
    let mut h = [0u8; HEADER_LEN as usize];
    h[0..8].copy_from_slice(b"SLUICEWL");
    h[8..12].copy_from_slice(&1u32.to_le_bytes());
    h[16..24].copy_from_slice(&base.to_le_bytes());
    let crc = crc32c::crc32c(&h[0..28]);
    h[28..32].copy_from_slice(&crc.to_le_bytes());
    h
}

fn frame(payload: &[u8], out: &mut Vec<u8>) {
    let len = (payload.len() as u32).to_le_bytes();
    let crc = crc32c::crc32c_append(crc32c::crc32c(&len), payload);
    out.extend_from_slice(&len);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(payload);
}

/// The payloads of the valid frames at the start of `data` (segment data after the
/// header), up to the first frame that fails its length or CRC check.
fn valid_prefix(mut data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while data.len() >= 8 {
        let len = u32::from_le_bytes(data[0..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(data[4..8].try_into().expect("4 bytes"));
        if len as u64 > MAX_RECORD || data.len() - 8 < len {
            break;
        }
        let payload = &data[8..8 + len];
        if crc32c::crc32c_append(crc32c::crc32c(&data[0..4]), payload) != crc {
            break;
        }
        out.push(payload);
        data = &data[8 + len..];
    }
    out
}

fn put(storage: &MemStorage, name: &str, bytes: &[u8]) {
    let f = storage.open(name, true).expect("memory storage");
    f.write_all_at(0, bytes).expect("memory storage");
    f.sync_data().expect("memory storage");
}

/// Reads every record from the start of the log; corrupt spans are reported and
/// skipped, as a consumer does.
fn read_all(wal: &Wal) -> (Vec<Vec<u8>>, usize) {
    let mut reader = wal.reader(wal.start());
    let (mut records, mut corrupt) = (Vec::new(), 0);
    // Each call returns a record, reports a corrupt span, or moves to the next
    // segment; bounded by what a small input can hold.
    for _ in 0..10_000 {
        match reader.read(64, 1 << 20) {
            Ok(batch) if batch.is_empty() => break,
            Ok(batch) => records.extend(batch.into_iter().map(|r| r.data.to_vec())),
            Err(ReadError::Corrupt { .. }) => corrupt += 1,
            Err(e) => panic!("reading memory storage failed: {e}"),
        }
        if reader.position() >= wal.durable_end() {
            break;
        }
    }
    (records, corrupt)
}

/// Opens the log (recovery), reads it all, appends a record and reads it back, then
/// opens it again. Returns the records read before the append, or `None` when the
/// first open refused.
fn open_and_use(storage: &MemStorage) -> Option<Vec<Vec<u8>>> {
    let _ = inspect_storage(storage);
    let (wal, recovery) = Wal::open_with_storage(storage.clone(), options()).ok()?;
    assert!(recovery.start <= recovery.end, "{recovery:?}");
    assert_eq!(wal.durable_end(), recovery.end);
    let (mut records, corrupt) = read_all(&wal);
    let before = records.clone();
    const AFTER: &[u8] = b"{\"after\":\"recovery\"}";
    match wal.append_blocking(AFTER.to_vec()) {
        Ok(pos) => {
            let got = wal
                .reader(pos)
                .read(1, 1 << 20)
                .expect("the appended record reads back");
            assert_eq!(got.len(), 1, "the appended record is readable");
            assert_eq!(&got[0].data[..], AFTER);
            records.push(AFTER.to_vec());
        }
        Err(e) => assert!(
            matches!(e, sluice_wal::AppendError::Full { .. }),
            "append after recovery failed: {e}"
        ),
    }
    wal.close().expect("close");
    drop(wal);
    // What the first open left opens again with the same records.
    let (wal, _) = Wal::open_with_storage(storage.clone(), options()).expect("reopen");
    let (again, corrupt_again) = read_all(&wal);
    assert_eq!(again, records, "a second open reads other records");
    assert_eq!(
        corrupt_again, corrupt,
        "a second open finds other corruption"
    );
    wal.close().expect("close");
    Some(before)
}

/// `data[0]` holds mode bits: 1 = the first segment's header is the fuzzer's too
/// (else a valid one), 2 = frames get valid CRCs (the rest is then length-prefixed
/// payload chunks, see [`crate::chunks`]), 4 = a second segment follows, holding
/// what is left after `4 * data[1]` bytes.
pub fn wal_segment(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let two = mode & 4 != 0 && !rest.is_empty();
    let (first, second) = if two {
        let split = usize::from(rest[0]) * 4;
        let rest = &rest[1..];
        rest.split_at(split.min(rest.len()))
    } else {
        (rest, &[][..])
    };
    let body = |bytes: &[u8]| -> Vec<u8> {
        if mode & 2 == 0 {
            return bytes.to_vec();
        }
        let mut out = Vec::new();
        for chunk in crate::chunks(bytes) {
            frame(chunk, &mut out);
        }
        out
    };
    let storage = MemStorage::new();
    let first_body = body(first);
    let header_ok = mode & 1 == 0;
    let mut file = if header_ok {
        header(0).to_vec()
    } else {
        Vec::new()
    };
    file.extend_from_slice(&first_body);
    put(&storage, &segment_name(0), &file);
    let head: Vec<&[u8]> = if header_ok {
        valid_prefix(&first_body)
    } else {
        Vec::new()
    };
    let second_body = body(second);
    let tail: Vec<&[u8]> = if two {
        let base = first_body.len() as u64;
        let mut file = header(base).to_vec();
        file.extend_from_slice(&second_body);
        put(&storage, &segment_name(base), &file);
        valid_prefix(&second_body)
    } else {
        Vec::new()
    };
    let Some(records) = open_and_use(&storage) else {
        return;
    };
    // Whatever recovery decides about the rest, a valid frame before the first bad
    // one of a segment is never lost: it was acked.
    assert!(
        records.len() >= head.len() + tail.len(),
        "recovery lost valid records: read {}, valid {} + {}",
        records.len(),
        head.len(),
        tail.len()
    );
    for (i, (got, want)) in records.iter().zip(&head).enumerate() {
        assert_eq!(
            got.as_slice(),
            *want,
            "record {i} of the first segment differs"
        );
    }
    for (i, (got, want)) in records.iter().rev().zip(tail.iter().rev()).enumerate() {
        assert_eq!(got.as_slice(), *want, "record {i} from the end differs");
    }
}

/// A checkpoint file of the fuzzer's bytes (or, when `data[0]` is odd, a valid one
/// for the position in `data[1..9]`) beside a segment of three records.
pub fn wal_checkpoint(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let storage = MemStorage::new();
    let mut seg = header(0).to_vec();
    for p in [&b"{\"a\":1}"[..], b"{\"b\":2}", b"{\"c\":3}"] {
        frame(p, &mut seg);
    }
    put(&storage, &segment_name(0), &seg);
    let (name, ckpt) = if mode & 1 != 0 && rest.len() >= 8 {
        // Any position: past 2^62 open refuses the checkpoint as corrupt (finding F1
        // in bench/RELIABILITY.md: near u64::MAX the position arithmetic overflowed).
        let pos = u64::from_le_bytes(rest[..8].try_into().expect("8 bytes"));
        let mut b = Vec::with_capacity(16);
        b.extend_from_slice(b"SLCK");
        b.extend_from_slice(&pos.to_le_bytes());
        let crc = crc32c::crc32c(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        (String::from_utf8_lossy(&rest[8..]).into_owned(), b)
    } else {
        ("c".to_owned(), rest.to_vec())
    };
    let name = if mode & 2 != 0 { name } else { "c".to_owned() };
    put(&storage, &format!("{name}.ckpt"), &ckpt);
    if let Some(records) = open_and_use(&storage) {
        assert!(records.len() <= 3);
    }
}
