//! Real files in a temp dir.

use std::fs::OpenOptions;
use std::io::Write;

use sluice_wal::{inspect, segment_name, AppendError, ReadError, Wal, HEADER_LEN};

use crate::{payload, read_all, small_opts};

fn segment_files(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".wal"))
        .collect();
    v.sort();
    v
}

#[test]
fn round_trip_across_segment_rolls() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, rec) = Wal::open(dir.path(), small_opts()).unwrap();
    assert_eq!(rec.end, 0);
    let mut positions = Vec::new();
    for i in 0..100 {
        positions.push(wal.append_blocking(payload(i, 100 + i)).unwrap());
    }
    assert!(
        segment_files(dir.path()).len() >= 3,
        "{:?}",
        segment_files(dir.path())
    );
    let records = read_all(&mut wal.reader(0));
    assert_eq!(records.len(), 100);
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r.data, payload(i, 100 + i));
        assert_eq!(r.pos, positions[i]);
        assert_eq!(r.next, r.pos + 8 + r.data.len() as u64);
    }
    // Positions are contiguous across segments and the last `next` is the durable end.
    assert!(records.windows(2).all(|w| w[0].next == w[1].pos));
    assert_eq!(records.last().unwrap().next, wal.durable_end());
    // Segment names are the positions of their first records.
    for name in segment_files(dir.path()) {
        let base: u64 = name.trim_end_matches(".wal").parse().unwrap();
        assert!(
            positions.contains(&base),
            "segment {name} does not start at a record"
        );
    }
    // Limits are honoured.
    let mut r = wal.reader(0);
    assert_eq!(r.read(5, usize::MAX).unwrap().len(), 5);
    assert_eq!(
        r.read(100, 1).unwrap().len(),
        1,
        "at least one record even past max_bytes"
    );
    wal.close().unwrap();
    wal.close().unwrap();
    assert!(matches!(
        wal.append_blocking(b"x".to_vec()),
        Err(AppendError::Closed { .. })
    ));
    assert!(inspect(dir.path()).unwrap().is_clean());
}

#[test]
fn reopen_resumes_after_the_last_record() {
    let dir = tempfile::tempdir().unwrap();
    let end = {
        let (wal, _) = Wal::open(dir.path(), small_opts()).unwrap();
        for i in 0..50 {
            wal.append_blocking(payload(i, 200)).unwrap();
        }
        wal.commit("proc", 0).unwrap();
        wal.close().unwrap();
        wal.durable_end()
    };
    let (wal, rec) = Wal::open(dir.path(), small_opts()).unwrap();
    assert_eq!(rec.truncated_bytes, 0);
    assert_eq!(rec.end, end);
    assert_eq!(wal.durable_end(), end);
    assert_eq!(wal.committed("proc"), Some(0));
    let pos = wal.append_blocking(b"after reopen".to_vec()).unwrap();
    assert_eq!(pos, end);
    let all = read_all(&mut wal.reader(0));
    assert_eq!(all.len(), 51);
    assert_eq!(all[50].data, &b"after reopen"[..]);
}

#[test]
fn commit_deletes_only_fully_consumed_segments() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), small_opts()).unwrap();
    for i in 0..60 {
        wal.append_blocking(payload(i, 300)).unwrap();
    }
    let segs = segment_files(dir.path());
    assert!(segs.len() >= 4);
    let second: u64 = segs[1].trim_end_matches(".wal").parse().unwrap();
    let third: u64 = segs[2].trim_end_matches(".wal").parse().unwrap();
    let records = read_all(&mut wal.reader(0));
    let inside_second = records
        .iter()
        .find(|r| r.pos > second && r.pos < third)
        .unwrap();

    // Two consumers: the slower one holds segments back.
    wal.commit("slow", 0).unwrap();
    wal.commit("fast", inside_second.next).unwrap();
    assert_eq!(segment_files(dir.path()), segs, "slow consumer still at 0");
    wal.commit("slow", second).unwrap();
    assert_eq!(
        segment_files(dir.path()),
        segs[1..],
        "first segment fully consumed"
    );
    assert_eq!(wal.start(), second);
    // Still inside the second segment: it stays.
    wal.commit("slow", inside_second.next).unwrap();
    assert_eq!(segment_files(dir.path()), segs[1..]);
    // A reader from 0 is clamped to the start.
    let r = wal.reader(0);
    assert_eq!(r.position(), second);
    // Everything consumed: all but the active segment go.
    let end = wal.durable_end();
    wal.commit("slow", end).unwrap();
    wal.commit("fast", end).unwrap();
    assert_eq!(segment_files(dir.path()), segs[segs.len() - 1..]);
    assert_eq!(wal.stats().segments, 1);
    drop(wal);
    // Checkpoints survive a reopen and positions keep growing.
    let (wal, _) = Wal::open(dir.path(), small_opts()).unwrap();
    assert_eq!(wal.committed("slow"), Some(end));
    assert_eq!(wal.append_blocking(b"more".to_vec()).unwrap(), end);
}

#[test]
fn positions_are_not_reused_when_all_segments_are_gone() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), small_opts()).unwrap();
    for i in 0..10 {
        wal.append_blocking(payload(i, 100)).unwrap();
    }
    let end = wal.durable_end();
    wal.commit("proc", end).unwrap();
    wal.close().unwrap();
    drop(wal);
    for name in segment_files(dir.path()) {
        std::fs::remove_file(dir.path().join(name)).unwrap();
    }
    let (wal, rec) = Wal::open(dir.path(), small_opts()).unwrap();
    assert_eq!(rec.start, end);
    assert_eq!(wal.append_blocking(b"x".to_vec()).unwrap(), end);
}

#[test]
fn full_at_max_bytes_and_space_returns_after_commit() {
    let dir = tempfile::tempdir().unwrap();
    let opts = small_opts(); // 64 KiB max, 4 KiB segments
    let (wal, _) = Wal::open(dir.path(), opts).unwrap();
    let mut appended = 0;
    let record = loop {
        match wal.append_blocking(payload(appended, 500)) {
            Ok(_) => appended += 1,
            Err(AppendError::Full {
                record,
                bytes_on_disk,
                max_bytes,
                ..
            }) => {
                assert!(bytes_on_disk <= max_bytes);
                break record;
            }
            Err(e) => panic!("unexpected {e}"),
        }
    };
    assert_eq!(record, payload(appended, 500), "full hands the record back");
    let stats = wal.stats();
    assert!(stats.bytes_on_disk + 508 > stats.max_bytes);
    assert!(matches!(
        wal.append_blocking(b"x".repeat(1025)),
        Err(AppendError::TooLarge {
            len: 1025,
            max: 1024
        })
    ));
    // Consuming everything frees all but the active segment.
    wal.commit("proc", wal.durable_end()).unwrap();
    assert!(wal.stats().bytes_on_disk <= 4096);
    wal.append_blocking(record).unwrap();
}

#[test]
fn torn_tail_is_truncated_on_open_with_byte_count() {
    let dir = tempfile::tempdir().unwrap();
    let (end, last) = {
        let (wal, _) = Wal::open(dir.path(), small_opts()).unwrap();
        for i in 0..20 {
            wal.append_blocking(payload(i, 150)).unwrap();
        }
        wal.close().unwrap();
        (wal.durable_end(), segment_files(dir.path()).pop().unwrap())
    };
    // A half-written frame: a plausible length, then garbage, 37 bytes in all.
    let mut garbage = 100u32.to_le_bytes().to_vec();
    garbage.extend_from_slice(&[0xAB; 33]);
    let path = dir.path().join(&last);
    let before = std::fs::metadata(&path).unwrap().len();
    OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap()
        .write_all(&garbage)
        .unwrap();

    let (wal, rec) = Wal::open(dir.path(), small_opts()).unwrap();
    assert_eq!(rec.truncated_bytes, 37);
    assert_eq!(rec.end, end);
    assert!(rec.records_in_tail > 0);
    assert_eq!(std::fs::metadata(&path).unwrap().len(), before);
    assert_eq!(read_all(&mut wal.reader(0)).len(), 20);
    assert_eq!(wal.append_blocking(b"next".to_vec()).unwrap(), end);
    drop(wal);

    // A complete frame with a bad CRC is cut the same way.
    let mut frame = 4u32.to_le_bytes().to_vec();
    frame.extend_from_slice(&0xDEAD_BEEFu32.to_le_bytes());
    frame.extend_from_slice(b"evil");
    OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap()
        .write_all(&frame)
        .unwrap();
    let (wal, rec) = Wal::open(dir.path(), small_opts()).unwrap();
    assert_eq!(rec.truncated_bytes, 12);
    let all = read_all(&mut wal.reader(0));
    assert_eq!(all.len(), 21);
    assert_eq!(all[20].data, &b"next"[..]);
}

#[test]
fn bit_flip_in_older_segment_is_reported_by_reader_and_inspect() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (wal, _) = Wal::open(dir.path(), small_opts()).unwrap();
        for i in 0..40 {
            wal.append_blocking(payload(i, 200)).unwrap();
        }
        wal.close().unwrap();
    }
    let segs = segment_files(dir.path());
    assert!(segs.len() >= 3);
    assert_eq!(segs[0], segment_name(0));
    // Flip a bit in the payload of the third record of the first segment.
    let path = dir.path().join(&segs[0]);
    let mut bytes = std::fs::read(&path).unwrap();
    let frame = 8 + 200;
    let at = HEADER_LEN as usize + 2 * frame + 8 + 17;
    bytes[at] ^= 0x04;
    std::fs::write(&path, &bytes).unwrap();

    let report = inspect(dir.path()).unwrap();
    assert!(!report.is_clean());
    let bad = report.segments[0]
        .corruption
        .as_ref()
        .expect("corruption reported");
    assert_eq!(bad.offset, HEADER_LEN + 2 * frame as u64);
    assert_eq!(report.segments[0].records, 2);
    assert!(report.to_string().contains("CORRUPT"));

    let (wal, rec) = Wal::open(dir.path(), small_opts()).unwrap();
    assert_eq!(
        rec.truncated_bytes, 0,
        "older segments are not rescanned at open"
    );
    let mut reader = wal.reader(0);
    let first = reader.read(100, usize::MAX).unwrap();
    assert_eq!(first.len(), 2, "records before the corruption come first");
    let second: u64 = segs[1].trim_end_matches(".wal").parse().unwrap();
    match reader.read(100, usize::MAX) {
        Err(ReadError::Corrupt {
            pos,
            skipped_bytes,
            offset,
            ..
        }) => {
            assert_eq!(pos, 2 * frame as u64);
            assert_eq!(offset, HEADER_LEN + 2 * frame as u64);
            assert_eq!(skipped_bytes, frame as u64, "only the bad frame is skipped");
        }
        other => panic!("expected corrupt, got {other:?}"),
    }
    assert_eq!(reader.position(), 3 * frame as u64);
    let rest = read_all(&mut reader);
    assert_eq!(rest.len(), 37, "every other record is read");
    assert_eq!(rest.first().unwrap().data, payload(3, 200));
    assert!(rest.iter().any(|r| r.pos == second));
    assert_eq!(rest.last().unwrap().data, payload(39, 200));
}

/// The corruption model of `corruption.rs` on real files: a bit flip in every byte
/// of a segment of acked records.
#[test]
fn a_bit_flip_anywhere_in_a_real_segment_never_drops_an_acked_record_silently() {
    use crate::corruption::{acked_segment, check_damaged, frame_starts};
    use sluice_wal::FsStorage;

    let (segment, records) = acked_segment(&[30, 30, 90, 5]);
    let starts = frame_starts(&records);
    for offset in 0..segment.len() {
        let dir = tempfile::tempdir().unwrap();
        let mut damaged = segment.clone();
        damaged[offset] ^= 1 << (offset % 8);
        std::fs::write(dir.path().join(segment_name(0)), &damaged).unwrap();
        let bad = (offset >= 32).then(|| starts.iter().rposition(|&s| s <= offset as u64).unwrap());
        let storage = FsStorage::new(dir.path()).unwrap();
        check_damaged(
            storage,
            |s| Wal::open_with_storage(s.clone(), small_opts()),
            |s| {
                let report = sluice_wal::repair(s.dir()).unwrap();
                assert!(inspect(s.dir()).unwrap().is_clean(), "{report}");
            },
            &records,
            bad,
            &format!("real file, byte {offset}"),
        );
        // Nothing is deleted: every byte is in a segment or a quarantine file.
        let kept: u64 = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum();
        assert!(
            kept >= segment.len() as u64,
            "byte {offset}: {kept} bytes kept"
        );
    }
}
