//! Running the real `sluice` binary.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper::{Method, StatusCode};

use crate::support::*;

/// A `sluice serve` child process.
pub struct Served {
    pub child: tokio::process::Child,
    pub http: SocketAddr,
    pub admin: SocketAddr,
    pub data: PathBuf,
}

/// Starts the real binary on `data` and the given addresses (so a restart can reuse
/// them), logging to `<data>.log`, and waits until `/healthz` answers.
pub async fn spawn_serve(
    data: &Path,
    http: SocketAddr,
    admin: SocketAddr,
    extra: &[&str],
) -> Served {
    spawn_role("serve", data, http, admin, extra).await
}

/// Sends SIGTERM and waits (at most 30 s) for the process to exit.
pub async fn sigterm_and_wait(mut r: Served) -> std::process::ExitStatus {
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

/// Starts `sluice <role>` (serve, ingest, process) like [`spawn_serve`].
pub async fn spawn_role(
    role: &str,
    data: &Path,
    http: SocketAddr,
    admin: SocketAddr,
    extra: &[&str],
) -> Served {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(data.with_extension("log"))
        .unwrap();
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args([role, "--listen", &http.to_string()])
        .args(["--admin-listen", &admin.to_string()])
        .args([
            "--data-dir",
            &data.display().to_string(),
            "--log-level",
            &test_log().unwrap_or_else(|| "warn".into()),
        ])
        .args(extra)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::from(log))
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let url = format!("http://{admin}/healthz");
    for _ in 0..500 {
        if let Ok(a) = Http::h1().request(Method::GET, &url, &[], "").await {
            if a.status == StatusCode::OK {
                return Served {
                    child,
                    http,
                    admin,
                    data: data.to_path_buf(),
                };
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let log = std::fs::read_to_string(data.with_extension("log")).unwrap_or_default();
    let tail: Vec<&str> = log.lines().rev().take(20).collect();
    panic!(
        "sluice {role} did not become healthy; the end of its log:\n{}",
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    );
}
