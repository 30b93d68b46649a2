//! Disk faults for real: the WAL on a tiny tmpfs until it hits ENOSPC.
//!
//! Needs root (to mount a tmpfs). Without it the test fails under `CI=true` and
//! is skipped with a message otherwise.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use hyper::StatusCode;
use sluice_server::{Node, NodeOptions};

use crate::support::{
    assert_all_delivered, metric, test_config, wait_until_async, Http, Load, NDJSON,
};

/// A tmpfs mounted on a temp dir; unmounted on drop, even when the test fails.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Tmpfs { dir }),
            other => {
                let why = match other {
                    Ok(o) => String::from_utf8_lossy(&o.stderr).into_owned(),
                    Err(e) => e.to_string(),
                };
                assert!(
                    std::env::var("CI").as_deref() != Ok("true"),
                    "cannot mount a tmpfs for the disk-full test (run as root): {why}"
                );
                eprintln!("SKIPPED: cannot mount a tmpfs (run as root): {why}");
                None
            }
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Fills the file system with `path` until it is full, then gives `leave` bytes back.
fn fill_leaving(path: &Path, leave: u64) {
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0x5a; 64 << 10];
    let mut written = 0u64;
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(e) if e.raw_os_error() == Some(28) => break,
            Err(e) => panic!("filling the tmpfs: {e}"),
        }
    }
    f.set_len(written.saturating_sub(leave)).unwrap();
    f.sync_all().unwrap();
}

async fn readyz(admin: &str) -> (StatusCode, String) {
    let a = Http::h1().get(&format!("http://{admin}/readyz")).await;
    (a.status, String::from_utf8_lossy(&a.body).into_owned())
}

async fn metrics(admin: &str) -> String {
    let a = Http::h1().get(&format!("http://{admin}/metrics")).await;
    String::from_utf8(a.body.to_vec()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wal_disk_full_fails_readiness_refuses_ingest_loses_nothing_and_restarts_cleanly() {
    let Some(fs) = Tmpfs::mount("4m") else {
        return;
    };
    let data: PathBuf = fs.path().to_path_buf();
    let sink = tempfile::tempdir().unwrap();
    let out = sink.path().join("load");
    let balloon = data.join("balloon");
    // Less free space than one segment: consumed segments cannot be deleted to make room.
    fill_leaving(&balloon, 160 << 10);
    let sink_dir = sink.path().display().to_string();
    let flags = [
        ("sink.dir", sink_dir.as_str()),
        ("queue.segment_bytes", "1 MiB"),
        ("queue.max_bytes", "64 MiB"),
        ("http.max_body_bytes", "64 KiB"),
        ("http.max_events_per_request", "1000"),
    ];
    let node = Node::start(test_config(&data, &flags), NodeOptions::default())
        .await
        .unwrap();
    let (base, admin) = (node.http_addr, node.admin_addr.to_string());
    assert_eq!(readyz(&admin).await.0, StatusCode::OK);

    let load = Load::start(vec![base], 4, "disk");
    let failed = wait_until_async(Duration::from_secs(20), || {
        let admin = admin.clone();
        async move { metric(&metrics(&admin).await, "sluice_wal_failed") == 1.0 }
    })
    .await;
    assert!(failed, "the wal never reported a failure on a full disk");
    // Producers now see 503 `queue_unavailable`, never 202.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = load.acked_count();
    let url = format!("http://{base}/v1/streams/load/events");
    let a = Http::h1()
        .post(&url, &[NDJSON], "{\"k\":\"after-failure\"}\n")
        .await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", a.body);
    let body = String::from_utf8_lossy(&a.body).into_owned();
    assert!(body.contains("queue_unavailable"), "{body}");
    assert!(a.headers.contains_key("retry-after"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let refused = load.refused.lock().unwrap().clone();
    let acked = load.stop().await;
    assert_eq!(acked.len(), before, "nothing is acked once the wal failed");
    assert!(refused.get(&503).copied().unwrap_or(0) > 0, "{refused:?}");
    assert!(!acked.is_empty());

    // /readyz says why and what to do; the metrics say so too.
    let (status, why) = readyz(&admin).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{why}");
    assert!(why.contains("No space left on device"), "{why}");
    assert!(why.contains(".wal") && why.contains("restart"), "{why}");
    let page = metrics(&admin).await;
    assert!(
        metric(&page, "sluice_wal_io_errors_total{op=\"write\"}") >= 1.0,
        "{page}"
    );

    // Every acked event is delivered although the log cannot append.
    assert_all_delivered(std::slice::from_ref(&out), &acked, Duration::from_secs(20)).await;

    // Space freed: the node stays failed (a restart is needed, and it says so) ...
    std::fs::remove_file(&balloon).unwrap();
    let (status, why) = readyz(&admin).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{why}");
    node.shutdown();
    let _ = node.wait().await;

    // ... and restarts cleanly: ready, taking events, nothing acked lost.
    let node = Node::start(test_config(&data, &flags), NodeOptions::default())
        .await
        .unwrap();
    let admin = node.admin_addr.to_string();
    assert_eq!(readyz(&admin).await.0, StatusCode::OK);
    let url = format!("http://{}/v1/streams/load/events", node.http_addr);
    let a = Http::h1()
        .post(&url, &[NDJSON], "{\"k\":\"after-restart\"}\n")
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED);
    let mut all = acked;
    all.insert("after-restart".to_string());
    assert_all_delivered(&[out], &all, Duration::from_secs(20)).await;
    assert_eq!(metric(&metrics(&admin).await, "sluice_wal_failed"), 0.0);
    node.shutdown();
    assert!(node.wait().await);
    drop(fs);
}

/// The whole chain of an error, as `main` prints it.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_bit_in_acked_data_refuses_start_until_wal_repair() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_path_buf();
    let node = Node::start(test_config(&data, &[]), NodeOptions::default())
        .await
        .unwrap();
    let url = format!("http://{}/v1/streams/s/events", node.http_addr);
    for i in 0..3 {
        let body = format!("{{\"k\":\"before-{i}\"}}\n");
        assert_eq!(
            Http::h1().post(&url, &[NDJSON], body).await.status,
            StatusCode::ACCEPTED
        );
    }
    let out = data.join("out").join("s");
    assert!(
        crate::support::wait_until(Duration::from_secs(10), || {
            crate::support::sink_lines(&out).len() == 3
        })
        .await
    );
    node.shutdown();
    assert!(node.wait().await);

    // One flipped bit in the first of the three acked records of the last segment.
    let segment = data.join("wal").join("00000000000000000000.wal");
    let mut bytes = std::fs::read(&segment).unwrap();
    bytes[32 + 8 + 5] ^= 0x01;
    std::fs::write(&segment, &bytes).unwrap();

    let err = match Node::start(test_config(&data, &[]), NodeOptions::default()).await {
        Ok(_) => panic!("a node started on a corrupt log"),
        Err(e) => chain(&e),
    };
    assert!(err.contains("00000000000000000000.wal"), "{err}");
    assert!(err.contains("offset 32"), "{err}");
    assert!(err.contains("sluice wal repair"), "{err}");
    assert_eq!(
        std::fs::read(&segment).unwrap(),
        bytes,
        "nothing was cut from the corrupt segment"
    );

    let repair = |dir: &Path| {
        Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["wal", "repair"])
            .arg(dir)
            .output()
            .unwrap()
    };
    let out1 = repair(&data);
    let text = String::from_utf8_lossy(&out1.stdout);
    assert!(out1.status.success(), "{text}");
    assert!(text.contains("kept 2 valid records"), "{text}");
    assert!(
        text.contains("00000000000000000000.wal.quarantine-32"),
        "{text}"
    );
    assert!(data
        .join("wal")
        .join("00000000000000000000.wal.quarantine-32")
        .exists());
    let again = repair(&data);
    assert!(again.status.success());
    assert!(String::from_utf8_lossy(&again.stdout).contains("nothing to repair"));
    let verify = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["wal", "verify"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(verify.status.success(), "{:?}", verify);

    // The node starts, resumes after its checkpoint and takes new events.
    let node = Node::start(test_config(&data, &[]), NodeOptions::default())
        .await
        .unwrap();
    let url = format!("http://{}/v1/streams/s/events", node.http_addr);
    assert_eq!(
        Http::h1()
            .post(&url, &[NDJSON], "{\"k\":\"after\"}\n")
            .await
            .status,
        StatusCode::ACCEPTED
    );
    assert!(
        crate::support::wait_until(Duration::from_secs(10), || {
            crate::support::sink_lines(&out).len() == 4
        })
        .await,
        "{:?}",
        crate::support::sink_lines(&out)
    );
    node.shutdown();
    assert!(node.wait().await);
}
