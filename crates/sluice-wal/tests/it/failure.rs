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
