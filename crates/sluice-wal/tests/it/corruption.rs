//! Exhaustive corruption model over `MemStorage`: a bit flip in every byte of a
//! segment of acked records, and a cut at every offset. Acked records are never
//! dropped silently: open either refuses, naming the bad frame, or cuts only a bad
//! tail with nothing valid after it (copied aside first); `repair` keeps every
//! intact record at its position.

use sluice_wal::{
    inspect_storage, repair_storage, MemStorage, OpenError, Storage, Wal, WalOptions,
};

use crate::{payload, read_all, small_opts};

const SEGMENT: &str = "00000000000000000000.wal";

/// A closed WAL holding `sizes.len()` acked records in one segment; returns the
/// segment bytes and each record's (position, payload).
pub fn acked_segment(sizes: &[usize]) -> (Vec<u8>, Vec<(u64, Vec<u8>)>) {
    let storage = MemStorage::new();
    let (wal, _) = Wal::open_with_storage(storage.clone(), small_opts()).unwrap();
    let records = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            let p = payload(i, n);
            (wal.append_blocking(p.clone()).unwrap(), p)
        })
        .collect();
    wal.close().unwrap();
    (storage.file_bytes(SEGMENT).unwrap(), records)
}

/// File offset of each frame's start, and the end of the last.
pub fn frame_starts(records: &[(u64, Vec<u8>)]) -> Vec<u64> {
    let mut v: Vec<u64> = records.iter().map(|(pos, _)| 32 + pos).collect();
    let (pos, last) = records.last().unwrap();
    v.push(32 + pos + 8 + last.len() as u64);
    v
}

fn storage_with(segment: &[u8]) -> MemStorage {
    let s = MemStorage::new();
    let f = s.open(SEGMENT, true).unwrap();
    f.write_all_at(0, segment).unwrap();
    f.sync_data().unwrap();
    s.sync_dir().unwrap();
    s
}

fn records_of(wal: &Wal) -> Vec<(u64, Vec<u8>)> {
    read_all(&mut wal.reader(0))
        .into_iter()
        .map(|r| (r.pos, r.data.to_vec()))
        .collect()
}

/// What must survive when frame `bad` (or the header, `None`) is damaged.
fn without(records: &[(u64, Vec<u8>)], bad: Option<usize>) -> Vec<(u64, Vec<u8>)> {
    records
        .iter()
        .enumerate()
        .filter(|(i, _)| Some(*i) != bad)
        .map(|(_, r)| r.clone())
        .collect()
}

/// Opens a damaged segment whose frame `bad` (None: the header) is bad and checks
/// the outcome; returns the records readable after open (or after repair).
pub fn check_damaged<S: Storage + Clone>(
    storage: S,
    open: impl Fn(&S) -> Result<(Wal, sluice_wal::Recovery), OpenError>,
    repair: impl Fn(&S),
    records: &[(u64, Vec<u8>)],
    bad: Option<usize>,
    what: &str,
) {
    let starts = frame_starts(records);
    let last = records.len() - 1;
    let bad_offset = bad.map_or(0, |k| starts[k]);
    match open(&storage) {
        Ok((wal, rec)) => {
            // Only a torn tail may be cut: the damaged frame must be the last one.
            assert_eq!(bad, Some(last), "{what}: open cut acked records {rec:?}");
            assert_eq!(rec.truncated_at, Some(bad_offset), "{what}");
            assert!(
                rec.quarantine_file.is_some(),
                "{what}: tail not copied aside"
            );
            assert_eq!(records_of(&wal), without(records, bad), "{what}");
            wal.close().unwrap();
        }
        Err(OpenError::Corrupt {
            segment,
            offset,
            next_valid,
            ..
        }) => {
            assert_ne!(bad, Some(last), "{what}: a torn tail refused");
            assert!(segment.ends_with(SEGMENT), "{what}");
            assert_eq!(offset, bad_offset, "{what}");
            let next = bad.map_or(starts[0], |k| starts[k + 1]);
            assert_eq!(next_valid, next, "{what}");
            repair(&storage);
            repair(&storage); // idempotent
            let (wal, rec) = open(&storage).unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(rec.truncated_bytes, 0, "{what}");
            assert_eq!(records_of(&wal), without(records, bad), "{what}");
            wal.close().unwrap();
        }
        Err(e) => panic!("{what}: unexpected open error {e}"),
    }
}

fn mem_open(s: &MemStorage) -> Result<(Wal, sluice_wal::Recovery), OpenError> {
    Wal::open_with_storage(s.clone(), small_opts())
}

fn mem_repair(s: &MemStorage) {
    repair_storage(s).unwrap();
    let report = inspect_storage(s).unwrap();
    assert!(report.is_clean(), "{report}");
}

#[test]
fn a_bit_flip_anywhere_never_drops_an_acked_record_silently() {
    let (segment, records) = acked_segment(&[40, 7, 120, 0, 33]);
    let starts = frame_starts(&records);
    for offset in 0..segment.len() {
        for bit in [0u8, 5] {
            let mut damaged = segment.clone();
            damaged[offset] ^= 1 << bit;
            let bad =
                (offset >= 32).then(|| starts.iter().rposition(|&s| s <= offset as u64).unwrap());
            check_damaged(
                storage_with(&damaged),
                mem_open,
                mem_repair,
                &records,
                bad,
                &format!("bit {bit} of byte {offset}"),
            );
        }
    }
}

#[test]
fn first_of_three_acked_records_flipped_refuses_to_start_and_repair_keeps_the_rest() {
    let (mut segment, records) = acked_segment(&[30, 30, 30]);
    segment[32 + 8 + 3] ^= 0x04;
    let storage = storage_with(&segment);
    let err = mem_open(&storage).err().expect("open refuses");
    let text = err.to_string();
    assert!(text.contains("00000000000000000000.wal"), "{text}");
    assert!(text.contains("offset 32"), "{text}");
    assert!(text.contains("sluice wal repair"), "{text}");
    let report = repair_storage(&storage).unwrap();
    assert_eq!(report.segments.len(), 1, "{report}");
    assert_eq!(report.segments[0].kept_records, 2);
    assert_eq!(
        report.segments[0].quarantined[0].file,
        "00000000000000000000.wal.quarantine-32"
    );
    assert_eq!(
        storage
            .file_bytes("00000000000000000000.wal.quarantine-32")
            .unwrap(),
        segment[32..32 + 38]
    );
    let (wal, _) = mem_open(&storage).unwrap();
    assert_eq!(records_of(&wal), records[1..].to_vec());
    // The log goes on after the repaired records.
    let pos = wal.append_blocking(b"new".to_vec()).unwrap();
    assert_eq!(pos, 3 * 38);
    assert_eq!(repair_storage(&storage).unwrap().segments.len(), 0);
}

#[test]
fn a_cut_at_every_offset_keeps_every_whole_record() {
    let (segment, records) = acked_segment(&[40, 7, 120, 0, 33]);
    let starts = frame_starts(&records);
    for cut in 0..segment.len() {
        let storage = storage_with(&segment[..cut]);
        let (wal, rec) = mem_open(&storage).unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
        let whole = starts.iter().skip(1).filter(|&&e| e <= cut as u64).count();
        assert_eq!(records_of(&wal), records[..whole].to_vec(), "cut at {cut}");
        let boundary = cut as u64 == starts[whole] || cut == 32;
        if cut > 0 && !boundary {
            let q = rec.quarantine_file.as_deref().expect("tail copied aside");
            let name = q.rsplit('/').next().unwrap();
            let from = if cut < 32 { 0 } else { starts[whole] as usize };
            assert_eq!(
                storage.file_bytes(name).unwrap(),
                segment[from..cut],
                "cut at {cut}"
            );
        }
        wal.close().unwrap();
    }
}

#[test]
fn a_record_bigger_than_todays_limit_survives_a_restart() {
    let storage = MemStorage::new();
    let big = WalOptions {
        segment_bytes: 64 * 1024,
        max_bytes: 1024 * 1024,
        max_record_bytes: 32 * 1024,
        ..small_opts()
    };
    let (wal, _) = Wal::open_with_storage(storage.clone(), big).unwrap();
    wal.append_blocking(payload(0, 100)).unwrap();
    wal.append_blocking(payload(1, 20_000)).unwrap();
    wal.append_blocking(payload(2, 100)).unwrap();
    wal.close().unwrap();
    // segment_bytes lowered: max_record_bytes (1024) is now below the big record.
    let (wal, rec) = Wal::open_with_storage(storage.clone(), small_opts()).unwrap();
    assert_eq!(rec.truncated_bytes, 0, "{rec:?}");
    let got = records_of(&wal);
    assert_eq!(got.len(), 3);
    assert_eq!(got[1].1, payload(1, 20_000));
    assert!(inspect_storage(&storage).unwrap().is_clean());
}

#[test]
fn a_corrupt_checkpoint_refuses_to_start_and_repair_replays_from_the_oldest_record() {
    let storage = MemStorage::new();
    let (wal, _) = Wal::open_with_storage(storage.clone(), small_opts()).unwrap();
    let positions: Vec<u64> = (0..3)
        .map(|i| wal.append_blocking(payload(i, 20)).unwrap())
        .collect();
    wal.commit("proc", positions[1]).unwrap();
    wal.close().unwrap();
    let mut ckpt = storage.file_bytes("proc.ckpt").unwrap();
    ckpt[6] ^= 0x01;
    let f = storage.open("proc.ckpt", true).unwrap();
    f.write_all_at(0, &ckpt).unwrap();
    f.sync_data().unwrap();

    let err = mem_open(&storage).err().expect("open refuses");
    let text = err.to_string();
    assert!(text.contains("proc.ckpt is corrupt"), "{text}");
    assert!(text.contains("sluice wal repair"), "{text}");

    let report = repair_storage(&storage).unwrap();
    assert_eq!(
        report.checkpoints,
        vec![("proc".to_string(), "proc.ckpt.quarantine".to_string())],
        "{report}"
    );
    assert_eq!(storage.file_bytes("proc.ckpt.quarantine").unwrap(), ckpt);
    let (wal, _) = mem_open(&storage).unwrap();
    // No position is guessed: the consumer starts over at the oldest record.
    assert_eq!(wal.committed("proc"), None);
    assert_eq!(wal.start(), 0);
    assert_eq!(records_of(&wal).len(), 3);
    wal.close().unwrap();
    let again = repair_storage(&storage).unwrap();
    assert!(again.checkpoints.is_empty() && again.segments.is_empty());
}
