//! Many appenders sharing fsyncs.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sluice_wal::{Wal, WalObserver, WalOptions};

use crate::read_all;

#[derive(Default)]
struct Counting {
    groups: AtomicUsize,
    records: AtomicUsize,
    biggest: AtomicUsize,
    syncs: AtomicUsize,
    durable: AtomicU64,
}

impl WalObserver for Counting {
    fn on_group_commit(&self, records: usize, _bytes: u64, sync: Option<Duration>) {
        self.groups.fetch_add(1, Ordering::SeqCst);
        self.records.fetch_add(records, Ordering::SeqCst);
        self.biggest.fetch_max(records, Ordering::SeqCst);
        if sync.is_some() {
            self.syncs.fetch_add(1, Ordering::SeqCst);
        }
    }
    fn on_durable(&self, end: u64) {
        self.durable.fetch_max(end, Ordering::SeqCst);
    }
}

#[test]
fn concurrent_appenders_share_fsyncs_and_all_get_callbacks() {
    let dir = tempfile::tempdir().unwrap();
    let obs = Arc::new(Counting::default());
    let opts = WalOptions {
        segment_bytes: 1 << 20,
        max_record_bytes: 1 << 16,
        observer: Some(obs.clone()),
        ..WalOptions::default()
    };
    let (wal, _) = Wal::open(dir.path(), opts).unwrap();
    let threads = 16;
    let per_thread = 50;
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let wal = wal.clone();
            std::thread::spawn(move || {
                (0..per_thread)
                    .map(|i| {
                        wal.append_blocking(format!("{t}:{i}").into_bytes())
                            .unwrap()
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut positions: Vec<u64> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    // Plus callback-style appends, fired all at once.
    let acked = Arc::new(Mutex::new(Vec::new()));
    for i in 0..200 {
        let acked = acked.clone();
        wal.append(
            format!("cb:{i}").into_bytes(),
            Box::new(move |r| acked.lock().unwrap().push(r.unwrap().position)),
        )
        .unwrap();
    }
    wal.close().unwrap();
    positions.extend(acked.lock().unwrap().iter());
    let total = threads * per_thread + 200;
    assert_eq!(positions.len(), total, "every callback ran exactly once");
    positions.sort_unstable();
    positions.dedup();
    assert_eq!(positions.len(), total, "positions are unique");
    assert_eq!(obs.records.load(Ordering::SeqCst), total);
    assert!(obs.biggest.load(Ordering::SeqCst) > 1, "groups were shared");
    assert!(
        obs.syncs.load(Ordering::SeqCst) < total,
        "fewer fsyncs than appends"
    );
    assert_eq!(obs.durable.load(Ordering::SeqCst), wal.durable_end());
    let (wal, _) = Wal::open(dir.path(), WalOptions::default()).unwrap();
    assert_eq!(read_all(&mut wal.reader(0)).len(), total);
}

#[test]
fn callbacks_see_their_record_durable() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(dir.path(), WalOptions::default()).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let w = wal.clone();
    wal.append(
        b"hello".to_vec(),
        Box::new(move |r| {
            let a = r.unwrap();
            let seen = w.reader(a.position).read(1, usize::MAX).unwrap();
            tx.send((seen, a)).unwrap();
        }),
    )
    .unwrap();
    let (seen, a) = rx.recv().unwrap();
    assert_eq!(seen[0].data, &b"hello"[..]);
    // The group commit it was part of, as traces report it: one record, synced.
    assert_eq!(a.group_records, 1);
    assert!(a.group_bytes > 5, "{a:?}");
    assert!(a.sync.is_some(), "the default sync mode fsyncs: {a:?}");
}
