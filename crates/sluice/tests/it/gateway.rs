//! `sluice gateway` in front of ingest nodes: requests are forwarded over gRPC and
//! spread over the upstreams; with one upstream SIGKILLed under load, producers see
//! no errors (the gateway retries elsewhere) and every 202'd event is delivered.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::StatusCode;
use sluice_server::{NodeOptions, Role};
use tokio::process::Command;

use crate::procs::*;
use crate::support::*;

/// A gateway node in this process, forwarding to `upstreams`.
async fn gateway(upstreams: &[SocketAddr], extra: &[(&str, &str)]) -> TestNode {
    let list: Vec<String> = upstreams.iter().map(|a| format!("http://{a}")).collect();
    let list = list.join(",");
    let mut flags = vec![
        ("gateway.upstreams", list.as_str()),
        ("gateway.probe_interval", "100ms"),
        ("gateway.request_timeout", "3s"),
    ];
    flags.extend_from_slice(extra);
    start(
        &flags,
        NodeOptions {
            role: Role::Gateway,
            ..Default::default()
        },
    )
    .await
}

/// The `n` of every event delivered under `out` (duplicates collapse).
fn delivered_ns(out: &Path) -> BTreeSet<u64> {
    sink_lines(out)
        .iter()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["data"]["n"].as_u64().unwrap()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_spreads_http_and_grpc_over_upstreams_with_ids_kept() {
    let a = start(&[], NodeOptions::default()).await;
    let b = start(&[], NodeOptions::default()).await;
    let gw = gateway(&[a.node.http_addr, b.node.http_addr], &[]).await;
    let http = Http::h2();
    for i in 0..40u64 {
        let body: String = (i * 10..i * 10 + 10)
            .map(|n| format!("{{\"n\":{n}}}\n"))
            .collect();
        let r = http.post(&gw.events_url("gw"), &[NDJSON], body).await;
        assert_eq!(r.status, StatusCode::ACCEPTED, "{:?}", r.body);
        assert_eq!(r.json()["accepted"], 10);
    }
    // gRPC through the gateway, with the ids the producer asked for.
    let mut client = grpc_client(gw.node.http_addr);
    let r = client
        .ingest(sluice_proto::v1::IngestRequest {
            stream: "gw".into(),
            events: vec![sluice_proto::v1::Event {
                id: "given-id".into(),
                key: "k1".into(),
                payload: "{\"n\":1000}".into(),
                ..Default::default()
            }],
            return_ids: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.ids, vec!["given-id".to_string()]);

    let all: BTreeSet<u64> = (0..400).chain([1000]).collect();
    let union = || {
        let mut u = delivered_ns(&a.out_dir("gw"));
        u.extend(delivered_ns(&b.out_dir("gw")));
        u
    };
    assert!(wait_until(Duration::from_secs(20), || union() == all).await);
    let (na, nb) = (
        sink_lines(&a.out_dir("gw")).len(),
        sink_lines(&b.out_dir("gw")).len(),
    );
    assert_eq!(na + nb, 401, "each event once");
    assert!(
        na >= 50 && nb >= 50,
        "both upstreams took work: {na} / {nb}"
    );
    let line = sink_lines(&a.out_dir("gw"))
        .into_iter()
        .chain(sink_lines(&b.out_dir("gw")))
        .find(|l| l.contains("given-id"))
        .expect("the gRPC event");
    assert!(line.contains("\"key\":\"k1\""), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_upstream_is_503_and_full_upstreams_are_429() {
    // Nothing listens on the upstream's port.
    let gw = gateway(&[free_addr()], &[]).await;
    let r = Http::h1()
        .post(&gw.events_url("x"), &[JSON], "{\"n\":1}")
        .await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", r.body);
    assert!(r.headers.contains_key("retry-after"));

    // An upstream rate-limited to nothing passes its back-pressure on as 429.
    let up = start(&[("limits.events_per_s", "1")], NodeOptions::default()).await;
    let gw = gateway(&[up.node.http_addr], &[]).await;
    let body: String = (0..50).map(|n| format!("{{\"n\":{n}}}\n")).collect();
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(
            Http::h1()
                .post(&gw.events_url("x"), &[NDJSON], body.clone())
                .await,
        );
    }
    let limited = statuses
        .iter()
        .find(|r| r.status == StatusCode::TOO_MANY_REQUESTS)
        .expect("a 429 came through");
    assert!(limited.headers.contains_key("retry-after"));
    assert_eq!(limited.json()["error"]["code"], "queue_full");
}

/// Concurrent requests share upstream calls (a group commit at the gateway), each
/// producer still gets its own 202, and every event is delivered once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_are_merged_into_fewer_upstream_calls() {
    let up = start(&[], NodeOptions::default()).await;
    let gw = gateway(&[up.node.http_addr], &[("gateway.max_in_flight", "1")]).await;
    let http = Http::h2();
    let mut tasks = Vec::new();
    for n in 0..300u64 {
        let (http, url) = (http.clone(), gw.events_url("merged"));
        tasks.push(tokio::spawn(async move {
            http.post(&url, &[JSON], format!("{{\"n\":{n}}}")).await
        }));
    }
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, StatusCode::ACCEPTED, "{:?}", r.body);
        assert_eq!(
            r.json()["accepted"],
            1,
            "each producer is answered for its own events"
        );
    }
    let all: BTreeSet<u64> = (0..300).collect();
    assert!(
        wait_until(Duration::from_secs(20), || delivered_ns(
            &up.out_dir("merged")
        ) == all)
        .await
    );
    assert_eq!(
        sink_lines(&up.out_dir("merged")).len(),
        300,
        "each event once"
    );
    let m = gw.metrics().await;
    let calls = metric(&m, "sluice_gateway_upstream_calls_total");
    let merged = metric(&m, "sluice_gateway_merged_requests_total");
    assert!(calls < 150.0, "300 requests took {calls} upstream calls");
    assert!(
        merged >= 300.0 - calls,
        "{merged} merged, {calls} calls: {m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_killed_under_load_loses_nothing_and_producers_see_no_error() {
    let dir = tempfile::tempdir().unwrap();
    let data = [dir.path().join("a"), dir.path().join("b")];
    let mut ups = Vec::new();
    for d in &data {
        ups.push(spawn_serve(d, free_addr(), free_addr(), &[]).await);
    }
    let gw = gateway(&[ups[0].http, ups[1].http], &[]).await;

    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let errors = Arc::new(Mutex::new(Vec::new()));
    let stop = tokio_util_stop();
    let mut tasks = Vec::new();
    for t in 0..8u64 {
        let (acked, errors, stop) = (acked.clone(), errors.clone(), stop.clone());
        let url = gw.events_url("kill");
        tasks.push(tokio::spawn(async move {
            let http = Http::h1();
            let mut seq = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && seq < 2000 {
                let base = t * 1_000_000 + seq * 10;
                let body: String = (base..base + 10)
                    .map(|n| format!("{{\"n\":{n}}}\n"))
                    .collect();
                match http
                    .request(hyper::Method::POST, &url, &[NDJSON], body)
                    .await
                {
                    Ok(r) if r.status == StatusCode::ACCEPTED => {
                        acked.lock().unwrap().extend(base..base + 10);
                    }
                    Ok(r) => errors
                        .lock()
                        .unwrap()
                        .push(format!("{} {:?}", r.status, r.body)),
                    Err(e) => errors.lock().unwrap().push(e),
                }
                seq += 1;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = acked.lock().unwrap().len();
    ups[0].child.start_kill().unwrap();
    ups[0].child.wait().await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    let errors = errors.lock().unwrap().clone();
    assert!(errors.is_empty(), "producers saw errors: {errors:?}");
    assert!(
        acked.len() > before + 100,
        "load went on after the kill: {before} → {}",
        acked.len()
    );
    let m = gw.metrics().await;
    assert!(metric(&m, "sluice_gateway_ejections_total") >= 1.0, "{m}");

    // The killed node comes back on its own data dir and delivers what it acked.
    let (http, admin) = (ups[0].http, ups[0].admin);
    let revived = spawn_serve(&ups[0].data.clone(), http, admin, &[]).await;
    let outs = [
        data[0].join("out").join("kill"),
        data[1].join("out").join("kill"),
    ];
    let union = || {
        let mut u = delivered_ns(&outs[0]);
        u.extend(delivered_ns(&outs[1]));
        u
    };
    assert!(
        wait_until(Duration::from_secs(30), || acked.is_subset(&union())).await,
        "missing {} acked events",
        acked.difference(&union()).count()
    );
    drop(revived);
}

fn tokio_util_stop() -> Arc<std::sync::atomic::AtomicBool> {
    Arc::new(std::sync::atomic::AtomicBool::new(false))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_binary_forwards_and_drains_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let up = spawn_serve(&dir.path().join("up"), free_addr(), free_addr(), &[]).await;
    let (http, admin) = (free_addr(), free_addr());
    let log = std::fs::File::create(dir.path().join("gw.log")).unwrap();
    let mut gw = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["gateway", "--upstream", &format!("http://{}", up.http)])
        .args([
            "--listen",
            &http.to_string(),
            "--admin-listen",
            &admin.to_string(),
        ])
        .args(["--data-dir", &dir.path().join("gw").display().to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let url = format!("http://{http}/v1/streams/gwbin/events");
    let mut ok = false;
    for _ in 0..200 {
        if let Ok(r) = Http::h1()
            .request(hyper::Method::POST, &url, &[JSON], "{\"n\":1}")
            .await
        {
            assert_eq!(r.status, StatusCode::ACCEPTED, "{:?}", r.body);
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ok, "the gateway never answered");
    let pid = gw.id().unwrap().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = tokio::time::timeout(Duration::from_secs(20), gw.wait())
        .await
        .expect("the gateway exits after SIGTERM")
        .unwrap();
    assert!(status.success(), "{status:?}");
    let out = up.data.join("out").join("gwbin");
    assert!(
        wait_until(Duration::from_secs(10), || delivered_ns(&out)
            == BTreeSet::from([1]))
        .await
    );
    assert!(
        !dir.path().join("gw").join("wal").exists(),
        "a gateway keeps no log of its own"
    );
}

/// A node from `flags` with one API key for every stream; returns the node and key.
async fn keyed_node(flags: &[(&str, &str)], role: Role) -> (TestNode, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path(), flags);
    let key = add_key(&mut config, None);
    let opts = NodeOptions {
        role,
        ..Default::default()
    };
    (start_config(config, dir, opts).await, key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_authenticates_producers_and_itself_to_upstreams() {
    let (up, up_key) = keyed_node(&[], Role::Serve).await;
    let upstream = format!("http://{}", up.node.http_addr);
    let (gw, gw_key) = keyed_node(
        &[
            ("gateway.upstreams", upstream.as_str()),
            ("gateway.upstream_api_key", up_key.as_str()),
        ],
        Role::Gateway,
    )
    .await;
    let http = Http::h1();
    let url = gw.events_url("authed");
    let r = http.post(&url, &[JSON], "{\"n\":1}").await;
    assert_eq!(
        r.status,
        StatusCode::UNAUTHORIZED,
        "producers need the gateway's key"
    );
    let bearer = format!("Bearer {gw_key}");
    let r = http
        .post(&url, &[JSON, ("authorization", &bearer)], "{\"n\":1}")
        .await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{:?}", r.body);
    let out = up.out_dir("authed");
    assert!(
        wait_until(Duration::from_secs(10), || delivered_ns(&out)
            == BTreeSet::from([1]))
        .await
    );

    // A gateway without the upstream's key is refused there: 503, nothing stored.
    let (bare, bare_key) =
        keyed_node(&[("gateway.upstreams", upstream.as_str())], Role::Gateway).await;
    let bearer = format!("Bearer {bare_key}");
    let r = http
        .post(
            &bare.events_url("authed"),
            &[JSON, ("authorization", &bearer)],
            "{\"n\":2}",
        )
        .await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", r.body);
    // The producer learns the queue is unavailable, not the upstream's answer or
    // address (those go to the gateway's log).
    let body = String::from_utf8_lossy(&r.body);
    assert!(body.contains("queue_unavailable"), "{body}");
    assert!(
        !body.contains("Unauthenticated") && !body.contains(&upstream),
        "{body}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(delivered_ns(&out), BTreeSet::from([1]));
}

/// With no upstream answering, the gateway is not ready (and says why), and its
/// refusals do not show producers the upstreams' internal addresses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_without_a_healthy_upstream_is_not_ready_and_hides_upstream_addresses() {
    let upstream = free_addr();
    let gw = gateway(&[upstream], &[("gateway.connect_timeout", "200ms")]).await;
    let http = Http::h1();
    let ready = format!("{}/readyz", gw.admin);
    let not_ready = wait_until_async(Duration::from_secs(5), || {
        let http = http.clone();
        let ready = ready.clone();
        async move { http.get(&ready).await.status == StatusCode::SERVICE_UNAVAILABLE }
    })
    .await;
    assert!(not_ready, "/readyz is 200 with no healthy upstream");
    let r = http.get(&ready).await;
    let why = String::from_utf8_lossy(&r.body).into_owned();
    assert!(why.contains("no healthy upstream"), "{why}");

    let r = http.post(&gw.events_url("x"), &[JSON], "{\"n\":1}").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", r.body);
    assert!(r.headers.contains_key("retry-after"));
    let body = String::from_utf8_lossy(&r.body);
    let port = upstream.port().to_string();
    assert!(
        !body.contains(&port) && !body.contains("127.0.0.1"),
        "the producer sees an upstream address: {body}"
    );
}

/// An upstream that accepts connections and never answers: the gateway's merge
/// queue fills, and past `gateway.max_queued_requests` producers get 429 at once
/// instead of waiting in an unbounded queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_merge_queue_is_bounded_and_sheds_with_429() {
    let black_hole = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = black_hole.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = black_hole.accept().await {
            held.push(s); // read nothing, answer nothing
        }
    });
    let gw = gateway(
        &[upstream],
        &[
            ("gateway.max_in_flight", "1"),
            ("gateway.max_queued_requests", "4"),
            ("gateway.request_timeout", "8s"),
        ],
    )
    .await;
    let http = Http::h1();
    let url = gw.events_url("x");
    let started = std::time::Instant::now();
    let posts: Vec<_> = (0..12)
        .map(|n| {
            let http = http.clone();
            let url = url.clone();
            tokio::spawn(async move {
                tokio::time::timeout(
                    Duration::from_secs(3),
                    http.post(&url, &[JSON], format!("{{\"n\":{n}}}")),
                )
                .await
                .ok()
            })
        })
        .collect();
    let mut shed = 0;
    for p in posts {
        if let Some(a) = p.await.unwrap() {
            assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS, "{:?}", a.body);
            assert_eq!(a.json()["error"]["code"], "queue_full");
            assert!(a.headers.contains_key("retry-after"));
            shed += 1;
        }
    }
    // One call in flight, four waiting, the rest refused at once. The call in
    // flight took every request that was waiting when it started (one to four), so
    // between five and eight requests are held and the other four to seven shed.
    let held = 12 - shed;
    assert!(
        (5..=8).contains(&held),
        "{held} of 12 held (shed {shed}) after {:?}",
        started.elapsed()
    );
    let m = gw.metrics().await;
    assert_eq!(
        metric(&m, "sluice_queue_capacity_bytes"),
        (64u64 << 20) as f64,
        "{m}"
    );
}
