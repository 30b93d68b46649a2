//! `/debug/pprof/profile` and `/debug/pprof/heap` on the admin listener: a real CPU
//! profile of a node under load and a real heap profile of a known workload, as
//! pprof files and as flame graphs, and who may ask for one.

use std::io::Read;
use std::time::Duration;

use hyper::{Method, StatusCode};
use pprof::protos::Message;

use crate::support::*;

/// GETs `url`: a 200 with a gzipped pprof protobuf, decoded.
async fn get_pprof(http: &Http, url: &str) -> pprof::protos::Profile {
    let a = http.get(url).await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(&a.body[..])
        .read_to_end(&mut raw)
        .expect("gzipped");
    pprof::protos::Profile::decode(&raw[..]).expect("a pprof protobuf")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cpu_profile_of_a_loaded_node_is_a_pprof_file_or_a_flame_graph() {
    let node = sluice_server::test_util::start_fast(&[]).await;
    let (task, stop) = post_until_stopped(&node, "profiled");
    let http = Http::h1();
    let url = format!("{}/debug/pprof/profile?seconds=2", node.admin);

    let profile = get_pprof(&http, &url).await;
    let samples: i64 = profile.sample.iter().map(|s| s.value[0]).sum();
    // 2 s at 99 Hz over two busy cores would be ~400; the node is not alone here.
    assert!(samples >= 20, "{samples} samples");
    assert!(
        profile
            .string_table
            .iter()
            .any(|s| s.contains("sluice_server")),
        "the node's own functions are named"
    );

    let svg = http.get(&format!("{url}&format=svg")).await;
    assert_eq!(svg.status, StatusCode::OK);
    assert_eq!(svg.headers["content-type"], "image/svg+xml");
    let text = String::from_utf8_lossy(&svg.body);
    assert!(text.contains("<svg") && text.contains("sluice_server"));

    // One at a time: a second request while one runs is refused, not queued.
    let busy = tokio::spawn({
        let (http, url) = (http.clone(), url.clone());
        async move { http.get(&url).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = http.get(&url).await;
    assert_eq!(second.status, StatusCode::CONFLICT);
    assert_eq!(busy.await.unwrap().status, StatusCode::OK);

    for bad in ["seconds=0", "seconds=301", "seconds=x", "format=png"] {
        let a = http
            .get(&format!("{}/debug/pprof/profile?{bad}", node.admin))
            .await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{bad}");
    }
    stop.send(true).unwrap();
    assert!(task.await.unwrap() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debug_endpoints_need_the_admin_token_or_a_loopback_listener() {
    let url = |node: &TestNode| format!("{}/debug/pprof/profile?seconds=1", node.admin);
    let http = Http::h1();

    // A token: only a request that carries it gets a profile, even on loopback.
    let dir = tempfile::tempdir().unwrap();
    let config = test_config_file(dir.path(), "admin_token = \"s3cret-admin\"\n", &[]);
    let node = start_config(config, dir, Default::default()).await;
    for headers in [
        vec![],
        vec![("authorization", "Bearer wrong")],
        vec![("authorization", "s3cret-admin")],
    ] {
        let a = http
            .request(Method::GET, &url(&node), &headers, bytes::Bytes::new())
            .await
            .unwrap();
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{headers:?}");
    }
    let auth = [("authorization", "Bearer s3cret-admin")];
    let a = http
        .request(Method::GET, &url(&node), &auth, bytes::Bytes::new())
        .await
        .unwrap();
    assert_eq!(a.status, StatusCode::OK);
    // The rest of the admin listener stays open, as before.
    assert_eq!(
        http.get(&format!("{}/metrics", node.admin)).await.status,
        StatusCode::OK
    );

    // No token and an admin listener on every address: no profiles for anyone.
    let node = start(
        &[("admin_listen", "0.0.0.0:0"), ("queue.kind", "memory")],
        Default::default(),
    )
    .await;
    let port = node.admin.rsplit(':').next().unwrap();
    let a = http
        .get(&format!(
            "http://127.0.0.1:{port}/debug/pprof/profile?seconds=1"
        ))
        .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    assert!(String::from_utf8_lossy(&a.body).contains("admin_token"));
    assert_eq!(
        http.get(&format!("http://127.0.0.1:{port}/healthz"))
            .await
            .status,
        StatusCode::OK
    );
}

/// The runtime view in /metrics: workers, live tasks, and busy time that grows
/// under load.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_the_runtime_workers_tasks_and_busy_time() {
    let node = sluice_server::test_util::start_fast(&[]).await;
    let busy = |m: &str| -> f64 {
        m.lines()
            .filter(|l| l.starts_with("sluice_runtime_worker_busy_seconds_total{"))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
            .sum()
    };
    let before = node.metrics().await;
    let (task, stop) = post_until_stopped(&node, "busy");
    tokio::time::sleep(Duration::from_millis(700)).await;
    let during = node.metrics().await;
    stop.send(true).unwrap();
    assert!(task.await.unwrap() > 0);
    assert_eq!(
        metric(&during, "sluice_runtime_workers"),
        2.0,
        "the test runtime's"
    );
    assert!(metric(&during, "sluice_runtime_alive_tasks") >= 1.0);
    assert!(during.contains("sluice_runtime_global_queue_depth "));
    assert!(
        busy(&during) > busy(&before),
        "busy time grows under load: {} -> {}",
        busy(&before),
        busy(&during)
    );
    assert!(during.contains("sluice_runtime_worker_parks_total{worker=\"1\"}"));
}

/// The blocking pool seen by kind: a large body is decoded there and the file sink
/// writes and syncs there; each shows up counted, with its wait for a thread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_the_blocking_pool_work_by_kind() {
    // The memory queue, and the file sink (the default sink).
    let node =
        sluice_server::test_util::start(&[("queue.kind", "memory")], Default::default()).await;
    let before = node.metrics().await;
    assert_eq!(
        metric(
            &before,
            "sluice_blocking_jobs_total{kind=\"ingest_decode\"}"
        ),
        0.0
    );
    // Past the 64 KiB from which a body is decoded off the async runtime.
    let body: String = (0..2000)
        .map(|i| format!("{{\"i\":{i},\"pad\":\"{}\"}}\n", "x".repeat(40)))
        .collect();
    assert!(body.len() > 64 * 1024);
    let a = Http::h1()
        .post(&node.events_url("big"), &[NDJSON], body)
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{:?}", a.body);
    let delivered = wait_until_async(Duration::from_secs(10), || async {
        metric(
            &node.metrics().await,
            "sluice_blocking_jobs_total{kind=\"file_sink\"}",
        ) >= 1.0
    })
    .await;
    assert!(delivered, "the file sink's write ran on the blocking pool");
    let m = node.metrics().await;
    assert_eq!(
        metric(&m, "sluice_blocking_jobs_total{kind=\"ingest_decode\"}"),
        1.0
    );
    assert_eq!(
        metric(&m, "sluice_blocking_running{kind=\"ingest_decode\"}"),
        0.0
    );
    assert!(m.contains("sluice_blocking_wait_seconds_total{kind=\"file_sink\"}"));
}

/// A known workload: 64 MiB in 1 MiB buffers, held while the heap is profiled.
#[inline(never)]
fn hold_sixty_four_mebibytes() -> Vec<Vec<u8>> {
    (0..64)
        .map(|i| std::hint::black_box(vec![i as u8; 1 << 20]))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heap_profile_names_the_allocation_sites_of_a_known_workload() {
    let node = sluice_server::test_util::start_fast(&[]).await;
    let held = hold_sixty_four_mebibytes();
    let http = Http::h1();
    let url = format!("{}/debug/pprof/heap", node.admin);
    let p = get_pprof(&http, &url).await;
    let text = |i: i64| p.string_table[i as usize].as_str();
    assert_eq!(text(p.sample_type[0].ty), "inuse_space");
    let site: Vec<u64> = p
        .function
        .iter()
        .filter(|f| text(f.name).contains("hold_sixty_four_mebibytes"))
        .map(|f| f.id)
        .collect();
    assert!(!site.is_empty(), "the allocation site is named");
    let at_site: Vec<u64> = p
        .location
        .iter()
        .filter(|l| l.line.iter().any(|line| site.contains(&line.function_id)))
        .map(|l| l.id)
        .collect();
    let bytes: i64 = p
        .sample
        .iter()
        .filter(|s| s.location_id.iter().any(|id| at_site.contains(id)))
        .map(|s| *s.value.last().unwrap())
        .sum();
    // Sampled every ~512 KiB and scaled back up: an estimate of the 64 MiB held.
    assert!(
        (32 << 20..=128 << 20).contains(&bytes),
        "{} MiB attributed to the known site",
        bytes >> 20
    );
    let svg = http.get(&format!("{url}?format=svg")).await;
    assert_eq!(svg.status, StatusCode::OK);
    assert_eq!(svg.headers["content-type"], "image/svg+xml");
    let page = String::from_utf8_lossy(&svg.body);
    assert!(page.contains("<svg") && page.contains("hold_sixty_four_mebibytes"));
    let bad = http.get(&format!("{url}?format=png")).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    drop(held);
}
