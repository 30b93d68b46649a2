//! The command line: `config check`, `wal verify` and `health` exit codes and messages.

use std::process::Command;

use crate::support::free_addr;

fn sluice(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn config_check_accepts_good_and_names_bad_keys_and_values() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        "listen = \"127.0.0.1:8081\"\n[queue]\nack = \"write\"\nmax_bytes = \"2 GiB\"\n",
    )
    .unwrap();
    let out = sluice(&["config", "check", good.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("is valid"));
    // The effective configuration, as TOML: what the file set and every default.
    let shown = String::from_utf8_lossy(&out.stdout);
    for line in [
        "listen = \"127.0.0.1:8081\"",
        "kind = \"wal\"",
        "ack = \"write\"",
        "max_bytes = \"2 GiB\"",
        "segment_bytes = \"64 MiB\"",
        "checkpoint_interval = \"100ms\"",
    ] {
        assert!(shown.lines().any(|l| l == line), "{line} in:\n{shown}");
    }

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[queue]\nmax_bytes = \"10 KiB\"\n").unwrap();
    let out = sluice(&["config", "check", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("queue.max_bytes must be at least 1 MiB; got 10 KiB"),
        "{err}"
    );

    std::fs::write(&bad, "[sink]\nkind = \"file\"\nrotate = true\n").unwrap();
    let out = sluice(&["config", "check", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("rotate"));
}

#[test]
fn wal_verify_exits_nonzero_on_a_flipped_bit() {
    let dir = tempfile::tempdir().unwrap();
    let wal_dir = dir.path().join("wal");
    {
        let opts = sluice_wal::WalOptions {
            segment_bytes: 64 * 1024,
            max_record_bytes: 16 * 1024,
            ..Default::default()
        };
        let (wal, _) = sluice_wal::Wal::open(&wal_dir, opts).unwrap();
        for i in 0..100u32 {
            wal.append_blocking(vec![i as u8; 2000]).unwrap();
        }
        wal.close().unwrap();
    }
    let out = sluice(&["wal", "verify", dir.path().to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = sluice(&["wal", "inspect", wal_dir.to_str().unwrap()]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("00000000000000000000.wal"), "{text}");

    // Flip one payload byte in the middle of the first (not the last) segment.
    let first = wal_dir.join("00000000000000000000.wal");
    let mut bytes = std::fs::read(&first).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x40;
    std::fs::write(&first, bytes).unwrap();
    let out = sluice(&["wal", "verify", dir.path().to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let text = String::from_utf8_lossy(&out.stdout).to_lowercase();
    assert!(text.contains("corrupt") || text.contains("crc"), "{text}");
}

#[test]
fn serve_logs_json_with_the_flag_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .args([
            "--data-dir",
            dir.path().to_str().unwrap(),
            "--log-format",
            "json",
        ])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "exit {:?}", out.status);
    let text = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() >= 2, "{text}");
    for l in &lines {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        assert!(v["fields"]["message"].is_string(), "{l}");
    }
    assert!(text.contains("sluice is serving"), "{text}");
}

#[test]
fn stdout_sink_prints_envelopes() {
    use std::io::{BufRead, BufReader, Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let http = free_addr();
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args([
            "serve",
            "--listen",
            &http.to_string(),
            "--admin-listen",
            "127.0.0.1:0",
        ])
        .args([
            "--data-dir",
            dir.path().to_str().unwrap(),
            "--sink",
            "stdout",
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let body = "{\"to\":\"stdout\"}";
    let mut answer = String::new();
    for _ in 0..200 {
        if let Ok(mut s) = std::net::TcpStream::connect(http) {
            write!(
                s,
                "POST /v1/streams/out/events HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            )
            .unwrap();
            s.read_to_string(&mut answer).unwrap();
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["stream"], "out");
    assert_eq!(v["data"]["to"], "stdout");
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn open_listener_needs_keys_or_allow_unauthenticated() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().display().to_string();
    let out = sluice(&["serve", "--listen", "0.0.0.0:0", "--data-dir", &data]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("listen") && err.contains("--allow-unauthenticated"),
        "{err}"
    );

    // A generated key makes the same listener acceptable to `config check`.
    let out = sluice(&[
        "keys",
        "generate",
        "--name",
        "edge",
        "--streams",
        "logs.*,audit",
    ]);
    assert!(out.status.success());
    let key = String::from_utf8_lossy(&out.stderr);
    assert!(
        key.lines().any(|l| l.starts_with("sk_")),
        "the key is on stderr: {key}"
    );
    let entry = String::from_utf8(out.stdout).unwrap();
    assert!(
        !entry.contains("sk_"),
        "the key itself is not in the config entry: {entry}"
    );
    let file = dir.path().join("sluice.toml");
    std::fs::write(&file, format!("listen = \"0.0.0.0:8080\"\n{entry}")).unwrap();
    let out = sluice(&["config", "check", file.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `sluice health` (the container health check) exits 0 on a ready node's `/readyz`,
/// and non-zero with the reason on a 404, on a port nobody listens on, and on a URL
/// it cannot probe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_exits_zero_only_on_a_200() {
    let node = crate::support::start(&[], sluice_server::NodeOptions::default()).await;
    let admin = node.node.admin_addr;
    let ready = format!("http://{admin}/readyz");
    let missing = format!("http://{admin}/nope");
    let closed = format!("http://{}/readyz", free_addr());
    let run = |url: String| {
        tokio::task::spawn_blocking(move || sluice(&["health", "--url", &url, "--timeout", "2"]))
    };
    let out = run(ready.clone()).await.unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("200"),
        "{out:?}"
    );
    for url in [missing, closed, "https://127.0.0.1:1/readyz".to_string()] {
        let out = run(url.clone()).await.unwrap();
        assert!(!out.status.success(), "{url}: {out:?}");
    }
}
