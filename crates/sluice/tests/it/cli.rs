//! The command line: `config check` and `wal verify` exit codes and messages.

use std::process::Command;

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
    assert!(String::from_utf8_lossy(&out.stdout).contains("is valid"));

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
