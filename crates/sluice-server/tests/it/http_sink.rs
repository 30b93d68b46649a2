//! `--sink http://…` end to end: a real HTTP receiver on loopback that refuses (422)
//! any body holding a "poison" event; exactly those events are dead-lettered.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

use crate::support::*;

/// Serves POSTs on a free port; keeps the lines of every accepted body.
async fn receiver(lines: Arc<Mutex<Vec<String>>>) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (s, _) = listener.accept().await.unwrap();
            let lines = lines.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    let lines = lines.clone();
                    async move {
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let text = String::from_utf8(body.to_vec()).unwrap();
                        let status = match text.contains("poison") {
                            true => StatusCode::UNPROCESSABLE_ENTITY,
                            false => {
                                lines
                                    .lock()
                                    .unwrap()
                                    .extend(text.lines().map(str::to_string));
                                StatusCode::OK
                            }
                        };
                        let mut r = Response::new(Full::new(Bytes::from_static(b"no poison")));
                        *r.status_mut() = status;
                        Ok::<_, Infallible>(r)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_sink_delivers_and_dead_letters_exactly_the_refused_events() {
    let got = Arc::new(Mutex::new(Vec::new()));
    let addr = receiver(got.clone()).await;
    let url = format!("http://{addr}/ingest");
    let node = start(
        &[("sink.kind", "http"), ("sink.url", &url)],
        Default::default(),
    )
    .await;
    let body: String = (0..200)
        .map(|i| match i % 50 {
            17 => format!("{{\"k\":\"poison-{i}\"}}\n"),
            _ => format!("{{\"k\":\"ok-{i}\"}}\n"),
        })
        .collect();
    let a = Http::h1()
        .post(&node.events_url("web"), &[NDJSON], body)
        .await;
    assert_eq!(a.status, StatusCode::ACCEPTED);
    assert!(wait_until(Duration::from_secs(20), || got.lock().unwrap().len() >= 196).await);
    let dead_dir = node.dir.path().join("dead").join("web");
    assert!(wait_until(Duration::from_secs(20), || sink_lines(&dead_dir).len() >= 4).await);
    let mut dead: Vec<String> = sink_lines(&dead_dir)
        .iter()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let reason = v["headers"]["sluice-dead-letter-reason"].as_str().unwrap();
            assert!(reason.contains("422"), "{reason}");
            v["data"]["k"].as_str().unwrap().to_string()
        })
        .collect();
    dead.sort();
    assert_eq!(dead, ["poison-117", "poison-167", "poison-17", "poison-67"]);
    let got = got.lock().unwrap().clone();
    assert_eq!(got.len(), 196, "each accepted event once");
    assert!(got.iter().all(|l| l.contains("\"ok-")));
    node.node.shutdown();
    node.node.wait().await;
}
