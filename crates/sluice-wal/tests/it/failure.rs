//! What happens when the disk fails under the writer.

use sluice_wal::{AppendError, CloseError, MemStorage, Wal, WalStats};

use crate::small_opts;

#[test]
fn failed_fsync_poisons_the_wal() {
    let storage = MemStorage::new();
    let (wal, _) = Wal::open_with_storage(storage.clone(), small_opts()).unwrap();
    wal.append_blocking(b"before".to_vec()).unwrap();
    // The write succeeds, the fdatasync after it fails.
    storage.fail_after(1);
    match wal.append_blocking(b"lost".to_vec()) {
        Err(AppendError::Io {
            op: "fdatasync", ..
        }) => {}
        other => panic!("expected an fdatasync error, got {other:?}"),
    }
    match wal.append(b"refused".to_vec(), Box::new(|_| panic!("not called"))) {
        Err(AppendError::Failed { record, .. }) => assert_eq!(record, b"refused"),
        other => panic!("expected Failed, got {other:?}"),
    }
    let WalStats {
        failed,
        durable_end,
        ..
    } = wal.stats();
    assert!(failed);
    assert_eq!(durable_end, 8 + 6, "the failed group never became readable");
    assert!(matches!(wal.close(), Err(CloseError::Failed { .. })));
    wal.close().unwrap();

    // After a reboot the acked record is there, the failed one may or may not be.
    let rebooted = storage.crash(1, 0);
    let (wal, _) = Wal::open_with_storage(rebooted, small_opts()).unwrap();
    let records = crate::read_all(&mut wal.reader(0));
    assert_eq!(records[0].data, &b"before"[..]);
    assert!(records.len() <= 2);
}

/// Counts `on_failure` calls by operation, as the server's metrics do.
#[derive(Default)]
struct Failures(std::sync::Mutex<Vec<&'static str>>);

impl sluice_wal::WalObserver for Failures {
    fn on_failure(&self, op: &'static str, _error: &std::io::Error) {
        self.0.lock().unwrap().push(op);
    }
}

fn observed(storage: &MemStorage) -> (Wal, std::sync::Arc<Failures>) {
    let failures = std::sync::Arc::new(Failures::default());
    let mut opts = small_opts();
    opts.observer = Some(failures.clone());
    let (wal, _) = Wal::open_with_storage(storage.clone(), opts).unwrap();
    (wal, failures)
}

#[test]
fn disk_full_on_write_is_reported_refuses_appends_and_recovers_on_restart() {
    let storage = MemStorage::new();
    let (wal, failures) = observed(&storage);
    let before = wal.append_blocking(b"acked before".to_vec()).unwrap();
    assert!(wal.failure().is_none());

    storage.fail_writes(Some(28)); // ENOSPC, half of the group reaches the file
    match wal.append_blocking(crate::payload(1, 300)) {
        Err(AppendError::Io { op: "write", .. }) => {}
        other => panic!("expected a write error, got {other:?}"),
    }
    let failure = wal.failure().expect("the failure is visible");
    assert_eq!(failure.op, "write");
    assert!(failure.disk_full);
    let text = failure.to_string();
    assert!(text.contains("00000000000000000000.wal"), "{text}");
    assert!(text.contains("No space left on device"), "{text}");
    assert!(
        text.contains("free space") && text.contains("restart"),
        "{text}"
    );
    assert_eq!(*failures.0.lock().unwrap(), vec!["write"]);
    assert!(wal.stats().failed);

    // Space freed: still refused in this process, with the same reason.
    storage.fail_writes(None);
    match wal.append(b"refused".to_vec(), Box::new(|_| panic!("not called"))) {
        Err(AppendError::Failed { record, reason }) => {
            assert_eq!(record, b"refused");
            assert_eq!(reason, text);
        }
        other => panic!("expected Failed, got {other:?}"),
    }
    let _ = wal.close();

    // Restart: the half-written frame is copied aside and cut, the acked one is kept.
    let (wal, rec) = Wal::open_with_storage(storage.clone(), small_opts()).unwrap();
    assert_eq!(rec.truncated_at, Some(32 + 8 + 12));
    let q = rec.quarantine_file.expect("torn bytes copied aside");
    assert!(q.ends_with("00000000000000000000.wal.quarantine-52"), "{q}");
    assert!(wal.failure().is_none());
    let after = wal.append_blocking(b"after restart".to_vec()).unwrap();
    let records = crate::read_all(&mut wal.reader(0));
    let got: Vec<(u64, &[u8])> = records.iter().map(|r| (r.pos, &r.data[..])).collect();
    assert_eq!(
        got,
        vec![
            (before, &b"acked before"[..]),
            (after, &b"after restart"[..])
        ]
    );
}

#[test]
fn failed_fsync_stays_failed_and_says_a_restart_is_needed() {
    let storage = MemStorage::new();
    let (wal, failures) = observed(&storage);
    wal.append_blocking(b"acked".to_vec()).unwrap();
    storage.fail_syncs(Some(5)); // EIO
    match wal.append_blocking(b"not acked".to_vec()) {
        Err(AppendError::Io {
            op: "fdatasync", ..
        }) => {}
        other => panic!("expected an fdatasync error, got {other:?}"),
    }
    storage.fail_syncs(None);
    let failure = wal.failure().expect("the failure is visible");
    assert_eq!(failure.op, "fdatasync");
    assert!(!failure.disk_full);
    let text = failure.to_string();
    assert!(text.contains("Input/output error"), "{text}");
    assert!(
        text.contains("cannot be retried") && text.contains("restarted"),
        "{text}"
    );
    assert!(matches!(
        wal.append(b"x".to_vec(), Box::new(|_| panic!("not called"))),
        Err(AppendError::Failed { .. })
    ));
    assert_eq!(*failures.0.lock().unwrap(), vec!["fdatasync"]);
    assert_eq!(wal.durable_end(), 8 + 5);
}
