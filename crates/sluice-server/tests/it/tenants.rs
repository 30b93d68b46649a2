//! Per-stream, per-key metrics: what each tenant sent and had refused, bounded in
//! cardinality whatever stream names producers make up.

use sluice_server::metrics::MAX_TENANT_SERIES;

use crate::support::*;

fn series<'a>(page: &'a str, name: &str) -> Vec<&'a str> {
    page.lines().filter(|l| l.starts_with(name)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_tenants_events_and_refusals_are_counted_and_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(
        dir.path(),
        &[("queue.kind", "memory"), ("sink.kind", "blackhole")],
    );
    let a = add_key(&mut config, None);
    config.auth.keys.last_mut().unwrap().name = "tenant-a".into();
    let b = add_key(&mut config, None);
    config.auth.keys.last_mut().unwrap().name = "tenant-b".into();
    let node = start_config(config, dir, Default::default()).await;
    let http = Http::h1();
    let bearer = |k: &str| format!("Bearer {k}");
    let (auth_a, auth_b) = (bearer(&a), bearer(&b));
    let as_a = [("authorization", auth_a.as_str()), NDJSON];
    let as_b = [("authorization", auth_b.as_str()), JSON];

    let body = "{\"n\":1}\n{\"n\":22}\n{\"n\":333}\n";
    let r = http.post(&node.events_url("clicks"), &as_a, body).await;
    assert_eq!(r.status, 202);
    let r = http
        .post(&node.events_url("orders"), &as_b, "{\"o\":1}")
        .await;
    assert_eq!(r.status, 202);
    let r = http
        .post(&node.events_url("clicks"), &as_a, "{\"n\":")
        .await;
    assert_eq!(r.status, 400);
    let r = http.post(&node.events_url("clicks"), &[JSON], "{}").await;
    assert_eq!(r.status, 401);
    let r = http
        .post(
            &format!("{}/v1/streams/bad%20name/events", node.base),
            &as_a,
            "{}",
        )
        .await;
    assert_eq!(r.status, 400);

    let m = node.metrics().await;
    let clicks_a = "{stream=\"clicks\",key=\"tenant-a\"}";
    assert_eq!(
        metric(&m, &format!("sluice_stream_events_total{clicks_a}")),
        3.0
    );
    assert_eq!(
        metric(&m, &format!("sluice_stream_bytes_total{clicks_a}")),
        24.0
    );
    let orders_b = "{stream=\"orders\",key=\"tenant-b\"}";
    assert_eq!(
        metric(&m, &format!("sluice_stream_events_total{orders_b}")),
        1.0
    );
    let rejected = |labels: &str| {
        metric(
            &m,
            &format!("sluice_stream_rejected_requests_total{labels}"),
        )
    };
    assert_eq!(
        rejected("{stream=\"clicks\",key=\"tenant-a\",reason=\"invalid_json\"}"),
        1.0
    );
    assert_eq!(
        rejected("{stream=\"clicks\",key=\"_unauthenticated\",reason=\"unauthorized\"}"),
        1.0
    );
    assert_eq!(
        rejected("{stream=\"_invalid\",key=\"tenant-a\",reason=\"invalid_stream\"}"),
        1.0,
        "{:?}",
        series(&m, "sluice_stream_rejected")
    );

    // A producer making up stream names cannot grow the series past the cap; every
    // event is still counted, the late ones under _other.
    let extra = MAX_TENANT_SERIES + 20;
    for i in 0..extra {
        let r = http
            .post(&node.events_url(&format!("s{i}")), &as_a, "{}")
            .await;
        assert_eq!(r.status, 202);
    }
    let m = node.metrics().await;
    let events = series(&m, "sluice_stream_events_total");
    assert!(
        events.len() <= MAX_TENANT_SERIES + 1,
        "{} series",
        events.len()
    );
    let total: f64 = events
        .iter()
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    assert_eq!(total, (3 + 1 + extra) as f64);
    assert!(
        metric(
            &m,
            "sluice_stream_events_total{stream=\"_other\",key=\"tenant-a\"}"
        ) >= 20.0
    );

    // Refusals past the cap land under _other too, counted one by one.
    for i in 0..30 {
        let r = http
            .post(&node.events_url(&format!("late{i}")), &as_a, "{\"n\":")
            .await;
        assert_eq!(r.status, 400);
    }
    let m = node.metrics().await;
    assert_eq!(
        metric(
            &m,
            "sluice_stream_rejected_requests_total{stream=\"_other\",key=\"tenant-a\",reason=\"invalid_json\"}"
        ),
        30.0
    );
    assert!(series(&m, "sluice_stream_rejected_requests_total").len() <= 8);
}
