//! `sluice top` in a real terminal (tmux): it shows a loaded node's figures live,
//! the node's streams, and quits on `q`.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::*;

fn tmux(args: &[&str]) -> std::process::Output {
    Command::new("tmux")
        .args(args)
        .output()
        .expect("running tmux")
}

fn have_tmux() -> bool {
    let ok = Command::new("tmux")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var("CI").is_err(),
            "tmux is missing (scripts/install-brokers installs it)"
        );
        eprintln!("skipped: no tmux");
    }
    ok
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_shows_a_loaded_node_live_and_quits_on_q() {
    if !have_tmux() {
        return;
    }
    let node = sluice_server::test_util::start_fast(&[]).await;
    let (task, stop) = post_until_stopped(&node, "clicks");
    let session = format!("sluice-top-{}", std::process::id());
    let cmd = format!(
        "{} top --url {} --interval 300ms",
        env!("CARGO_BIN_EXE_sluice"),
        node.admin
    );
    let started = tmux(&[
        "new-session",
        "-d",
        "-s",
        &session,
        "-x",
        "160",
        "-y",
        "30",
        &cmd,
    ]);
    assert!(started.status.success(), "{started:?}");

    // Wait until a row shows a rate above 0 for the node.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut screen = String::new();
    let mut seen_rate = 0.0;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let out = tmux(&["capture-pane", "-p", "-t", &session]);
        screen = String::from_utf8_lossy(&out.stdout).into_owned();
        let row = screen
            .lines()
            .find(|l| l.contains(&node.admin) && l.contains("ready"));
        if let Some(row) = row {
            // node, status, then in/s.
            let after = row.split("ready").nth(1).unwrap_or_default();
            let first = after.split_whitespace().next().unwrap_or("0");
            let n: f64 = first.trim_end_matches(['k', 'M']).parse().unwrap_or(0.0);
            if n > 0.0 && screen.contains("clicks") {
                seen_rate = n;
                break;
            }
        }
    }
    assert!(seen_rate > 0.0, "no live rate on screen:\n{screen}");
    assert!(screen.contains("sluice top: 1 node(s)"), "{screen}");
    assert!(screen.contains("streams, all nodes"), "{screen}");

    tmux(&["send-keys", "-t", &session, "q"]);
    let quit_by = Instant::now() + Duration::from_secs(5);
    while Instant::now() < quit_by && tmux(&["has-session", "-t", &session]).status.success() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let still = tmux(&["has-session", "-t", &session]).status.success();
    if still {
        tmux(&["kill-session", "-t", &session]);
    }
    assert!(!still, "q did not quit");
    stop.send(true).unwrap();
    assert!(task.await.unwrap() > 0);
}
