//! The real binary, killed: SIGKILL at random moments under concurrent load, 20
//! times, loses no acknowledged event; SIGTERM under load exits 0 with every
//! acknowledged event in the sink.
//!
//! `scripts/crash-rounds N` runs the SIGKILL test for N rounds (`TEST_CRASH_ROUNDS`,
//! and `TEST_CRASH_ACK` = `fsync` | `write` to hold the ack mode; by default the
//! rounds alternate); its figures go in bench/RELIABILITY.md.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::procs::*;
use crate::support::*;

async fn spawn(data: &Path, ack: &str) -> Served {
    spawn_serve(data, free_addr(), free_addr(), &["--ack", ack]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_loses_no_acked_event() {
    let tmp = tempfile::tempdir().unwrap();
    let data: PathBuf = tmp.path().join("data");
    let mut acked = BTreeSet::new();
    let rounds: usize = std::env::var("TEST_CRASH_ROUNDS")
        .ok()
        .map_or(20, |v| v.parse().expect("TEST_CRASH_ROUNDS is a number"));
    let fixed_ack = std::env::var("TEST_CRASH_ACK").ok();
    let started = std::time::Instant::now();
    for round in 0..rounds {
        let ack = match &fixed_ack {
            Some(a) => a.as_str(),
            None if round % 2 == 0 => "fsync",
            None => "write",
        };
        let mut r = spawn(&data, ack).await;
        let load = Load::start(vec![r.http], 16, &format!("r{round}"));
        tokio::time::sleep(Duration::from_millis(50 + kill_delay_ms(round))).await;
        r.child.start_kill().unwrap();
        r.child.wait().await.unwrap();
        acked.extend(load.stop().await);
    }
    assert!(
        acked.len() > 1000,
        "the load produced only {} acked events",
        acked.len()
    );
    let r = spawn(&data, "fsync").await;
    let dups = assert_all_delivered(&[out(&data)], &acked, Duration::from_secs(30)).await;
    eprintln!(
        "{rounds} kill rounds ({}): {} acked, 0 lost, {dups} duplicates, {:.0} s",
        fixed_ack.as_deref().unwrap_or("fsync/write alternating"),
        acked.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(sigterm_and_wait(r).await.success());
    let verify = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["wal", "verify", &data.display().to_string()])
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
}

/// A deterministic spread of kill moments between 0 and ~450 ms.
fn kill_delay_ms(round: usize) -> u64 {
    (round as u64 * 2_654_435_761) % 450
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_exits_zero_with_everything_delivered() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let r = spawn(&data, "fsync").await;
    let load = Load::start(vec![r.http], 16, "term");
    tokio::time::sleep(Duration::from_millis(800)).await;
    let status = sigterm_and_wait(r).await;
    let acked = load.stop().await;
    assert!(status.success(), "exit status {status:?}");
    assert!(acked.len() > 100, "only {} acked", acked.len());
    // No restart: the sink must already hold everything.
    assert_all_delivered(&[out(&data)], &acked, Duration::ZERO).await;
}
