//! Integration tests of sluice-wal: real files in temp dirs, concurrency, and a
//! proptest crash model over `MemStorage`.

mod concurrent;
mod corruption;
mod failure;
mod files;
mod model;

use sluice_wal::{Reader, Record, SyncMode, WalOptions};

/// Small segments so tests roll often.
pub fn small_opts() -> WalOptions {
    WalOptions {
        segment_bytes: 4096,
        max_bytes: 64 * 1024,
        max_record_bytes: 1024,
        sync: SyncMode::Fsync,
        observer: None,
    }
}

/// Reads everything currently durable.
pub fn read_all(reader: &mut Reader) -> Vec<Record> {
    let mut out = Vec::new();
    loop {
        let batch = reader.read(64, 1 << 20).expect("read");
        if batch.is_empty() {
            return out;
        }
        out.extend(batch);
    }
}

/// A recognizable payload of `len` bytes for record `i`.
pub fn payload(i: usize, len: usize) -> Vec<u8> {
    let mut v = format!("record-{i}-").into_bytes();
    v.resize(len.max(v.len()), b'a' + (i % 26) as u8);
    v
}
