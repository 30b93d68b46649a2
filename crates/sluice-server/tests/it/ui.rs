//! The `/ui` dashboard in a real browser (Debian's chromium, headless): the page
//! loads with no script error, its figures match `/metrics` taken around it, its
//! charts move under load, and it fetches nothing from elsewhere. A screenshot is
//! kept as an artifact (`target/tmp/ui-dashboard.png`).

use std::path::PathBuf;
use std::process::Command;

use hyper::StatusCode;

use crate::support::*;

/// The browser, or `None` (a failure under `CI=true`: scripts/install-brokers
/// installs it).
fn chromium() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    let found = ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .flat_map(|b| dirs.iter().map(move |d| d.join(b)))
        .find(|p| p.is_file());
    if found.is_none() {
        assert!(
            std::env::var("CI").is_err(),
            "chromium is missing (scripts/install-brokers installs it)"
        );
        eprintln!("skipped: no chromium");
    }
    found
}

/// Runs headless chromium on `url` for ~4 s of page time; returns the DOM then.
fn browse(browser: &PathBuf, url: &str, screenshot: Option<&std::path::Path>) -> String {
    let profile = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(browser);
    cmd.args([
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--window-size=1280,1000",
        "--virtual-time-budget=4000",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()));
    match screenshot {
        Some(p) => cmd.arg(format!("--screenshot={}", p.display())),
        None => cmd.arg("--dump-dom"),
    };
    let out = cmd.arg(url).output().expect("running chromium");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The text and attributes of the element with `id`.
fn element<'a>(dom: &'a str, id: &str) -> &'a str {
    let start = dom
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no #{id}"));
    let end = dom[start..].find('<').unwrap() + start;
    &dom[start..end]
}

fn attribute(element: &str, name: &str) -> String {
    let start = element
        .find(&format!("{name}=\""))
        .unwrap_or_else(|| panic!("no {name} in {element}"))
        + name.len()
        + 2;
    element[start..].split('"').next().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_a_loaded_node_live_in_a_real_browser() {
    let Some(browser) = chromium() else {
        return;
    };
    let node = sluice_server::test_util::start_fast(&[]).await;
    let http = Http::h1();
    let page = http.get(&format!("{}/ui", node.admin)).await;
    assert_eq!(page.status, StatusCode::OK);
    let csp = page.headers["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("default-src 'none'") && csp.contains("connect-src 'self'"));
    let html = String::from_utf8_lossy(&page.body);
    assert!(
        !html.contains("http://") && !html.contains("https://") && !html.contains("src="),
        "the page loads nothing from elsewhere"
    );

    let (task, stop) = post_until_stopped(&node, "clicks");
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let before = node.counter("sluice_ingest_events_total").await;
    let url = format!("{}/ui", node.admin);
    let dom = {
        let (browser, url) = (browser.clone(), url.clone());
        tokio::task::spawn_blocking(move || browse(&browser, &url, None))
            .await
            .unwrap()
    };
    let after = node.counter("sluice_ingest_events_total").await;
    let shot = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("ui-dashboard.png");
    let _ = std::fs::remove_file(&shot);
    {
        let (browser, url, shot) = (browser.clone(), url.clone(), shot.clone());
        tokio::task::spawn_blocking(move || browse(&browser, &url, Some(&shot)))
            .await
            .unwrap();
    }
    stop.send(true).unwrap();
    let sent = task.await.unwrap();

    assert_eq!(element(&dom, "errors"), "id=\"errors\">", "no script error");
    assert!(
        element(&dom, "status").ends_with(">ready"),
        "{}",
        element(&dom, "status")
    );
    // Its total is a /metrics reading taken between ours.
    let shown: u64 = attribute(element(&dom, "v-total-in"), "data-value")
        .parse()
        .unwrap();
    assert!(
        (before..=after).contains(&shown),
        "{before} <= {shown} <= {after}"
    );
    // The rate chart has points and its last "in" rate is above 0 under load.
    let chart = element(&dom, "c-rate");
    let points: usize = attribute(chart, "data-points").parse().unwrap();
    assert!(points >= 2, "{chart}");
    let last_in: f64 = attribute(chart, "data-last")
        .split(',')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(last_in > 0.0, "{chart}");
    assert!(
        dom.contains(">clicks<"),
        "the stream is in the top-streams table"
    );
    assert!(sent > 0);
    let png = std::fs::read(&shot).expect("a screenshot");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{} bytes",
        png.len()
    );
}
