//! The real binary, killed: SIGKILL at random moments under concurrent load, 20
//! times, loses no acknowledged event; SIGTERM under load exits 0 with every
//! acknowledged event in the sink.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::StatusCode;

use crate::support::*;

async fn spawn(data: &Path, ack: &str) -> Served {
    spawn_serve(data, free_addr(), free_addr(), &["--ack", ack]).await
}

/// Producers that POST NDJSON bodies of unique events and remember what got a 202.
fn producers(
    http: SocketAddr,
    round: usize,
    acked: Arc<Mutex<BTreeSet<String>>>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..16)
        .map(|task| {
            let acked = acked.clone();
            tokio::spawn(async move {
                let client = Http::h1();
                let url = format!("http://{http}/v1/streams/crash/events");
                for seq in 0.. {
                    let n = 1 + (seq * 7 + task) % 20;
                    let keys: Vec<String> = (0..n)
                        .map(|i| format!("r{round}-t{task}-s{seq}-e{i}"))
                        .collect();
                    let body: String = keys
                        .iter()
                        .map(|k| format!("{{\"k\":\"{k}\"}}\n"))
                        .collect();
                    match client
                        .request(hyper::Method::POST, &url, &[NDJSON], body)
                        .await
                    {
                        Ok(a) if a.status == StatusCode::ACCEPTED => {
                            acked.lock().unwrap().extend(keys);
                        }
                        Ok(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                        Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                    }
                }
            })
        })
        .collect()
}

/// Every delivered key with how often it was delivered.
fn delivered(out: &Path) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for line in sink_lines(out) {
        let v: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("corrupt line in the sink ({e}): {line:?}"));
        *m.entry(v["data"]["k"].as_str().unwrap().to_string())
            .or_insert(0) += 1;
    }
    m
}

async fn sigterm_and_wait(mut r: Served) -> std::process::ExitStatus {
    let pid = r.child.id().unwrap().to_string();
    let st = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(st.success());
    tokio::time::timeout(Duration::from_secs(30), r.child.wait())
        .await
        .expect("sluice exits within 30 s of SIGTERM")
        .unwrap()
}

async fn all_delivered(out: &Path, acked: &BTreeSet<String>) -> BTreeMap<String, usize> {
    let mut got = delivered(out);
    for _ in 0..300 {
        if acked.iter().all(|k| got.contains_key(k)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        got = delivered(out);
    }
    got
}

fn assert_nothing_lost(acked: &BTreeSet<String>, got: &BTreeMap<String, usize>) -> usize {
    let lost: Vec<&String> = acked.iter().filter(|k| !got.contains_key(*k)).collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged events were lost, e.g. {:?}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(5)]
    );
    got.values().map(|n| n - 1).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_loses_no_acked_event() {
    let tmp = tempfile::tempdir().unwrap();
    let data: PathBuf = tmp.path().join("data");
    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let rounds = 20;
    for round in 0..rounds {
        let ack = if round % 2 == 0 { "fsync" } else { "write" };
        let mut r = spawn(&data, ack).await;
        let load = producers(r.http, round, acked.clone());
        tokio::time::sleep(Duration::from_millis(50 + kill_delay_ms(round))).await;
        r.child.start_kill().unwrap();
        r.child.wait().await.unwrap();
        for t in load {
            t.abort();
        }
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() > 1000,
        "the load produced only {} acked events",
        acked.len()
    );
    let r = spawn(&data, "fsync").await;
    let got = all_delivered(&data.join("out/crash"), &acked).await;
    let dups = assert_nothing_lost(&acked, &got);
    eprintln!(
        "{rounds} kill rounds: {} acked, {} delivered, {dups} duplicates",
        acked.len(),
        got.len()
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
    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let r = spawn(&data, "fsync").await;
    let load = producers(r.http, 0, acked.clone());
    tokio::time::sleep(Duration::from_millis(800)).await;
    let status = sigterm_and_wait(r).await;
    for t in load {
        t.abort();
    }
    assert!(status.success(), "exit status {status:?}");
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > 100, "only {} acked", acked.len());
    // No restart: the sink must already hold everything.
    let got = delivered(&data.join("out/crash"));
    assert_nothing_lost(&acked, &got);
}
