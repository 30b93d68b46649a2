//! Phase timings: present, ordered, with a TLS phase over TLS, and reuse reported.

use sluice_client::timing::HttpVersion;
use sluice_client::{Body, Client, Protocol, Timings};

use crate::support::*;

/// connect (end of the connection phases) ≤ first byte ≤ total.
fn assert_ordered(t: &Timings) {
    assert!(t.connected_at() <= t.first_byte, "{t:?}");
    assert!(t.first_byte <= t.total, "{t:?}");
    assert!(t.total > std::time::Duration::ZERO, "{t:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_tcp_reports_connect_then_reuse() {
    let node = start_fast(&[]).await;
    for protocol in [Protocol::Http1, Protocol::Http2] {
        let client = Client::builder(&node.base)
            .protocol(protocol)
            .build()
            .unwrap();
        let ep = client.endpoint("timing").unwrap();

        let first = client.send(&ep, &Body::json("{\"n\":1}")).await.unwrap();
        assert_eq!(first.accepted, 1);
        let t = first.timings;
        assert!(!t.reused, "{t:?}");
        assert!(
            t.connect.is_some(),
            "a new connection has a connect phase: {t:?}"
        );
        assert_eq!(t.dns, None, "127.0.0.1 needs no DNS");
        assert_eq!(t.tls, None, "plain TCP has no TLS phase");
        assert_eq!(
            t.version,
            if protocol == Protocol::Http2 {
                HttpVersion::Http2
            } else {
                HttpVersion::Http1
            }
        );
        assert_ordered(&t);

        // Back to back, every later request reuses the one connection, even when it
        // is checked out again before its dispatcher asked for the next request.
        for n in 2..100 {
            let body = Body::json(format!("{{\"n\":{n}}}"));
            let t = client.send(&ep, &body).await.unwrap().timings;
            assert!(t.reused, "request {n} reuses the connection: {t:?}");
            assert_eq!((t.dns, t.connect, t.tls), (None, None, None));
            assert_ordered(&t);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_name_has_a_dns_phase() {
    let node = start_fast(&[]).await;
    let url = format!("http://localhost:{}", node.node.http_addr.port());
    let client = Client::builder(url).build().unwrap();
    let ep = client.endpoint("timing").unwrap();
    let t = client.send(&ep, &Body::json("{}")).await.unwrap().timings;
    assert!(t.dns.is_some(), "{t:?}");
    assert!(t.connect.is_some(), "{t:?}");
    assert_ordered(&t);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_has_its_own_phase_and_alpn_picks_h2() {
    let pki = Pki::new();
    let (cert, key) = (pki.path("server.pem"), pki.path("server.key"));
    let node = start_fast(&[("tls.cert", &cert), ("tls.key", &key)]).await;
    let url = format!("https://localhost:{}", node.node.http_addr.port());
    for (protocol, version) in [
        (Protocol::Auto, HttpVersion::Http2),
        (Protocol::Http1, HttpVersion::Http1),
    ] {
        let client = Client::builder(&url)
            .protocol(protocol)
            .ca_file(pki.path("ca.pem"))
            .build()
            .unwrap();
        let ep = client.endpoint("tls").unwrap();
        let t = client.send(&ep, &Body::json("{}")).await.unwrap().timings;
        assert!(!t.reused);
        assert!(t.dns.is_some() && t.connect.is_some(), "{t:?}");
        let tls = t.tls.expect("a TLS handshake phase");
        assert!(tls > std::time::Duration::ZERO);
        assert_eq!(t.version, version);
        assert_ordered(&t);

        // An HTTP/1.1 connection goes back to the pool once its connection task has
        // seen the response end, which a loaded machine may not have run yet.
        let mut t = client.send(&ep, &Body::json("{}")).await.unwrap().timings;
        for _ in 0..20 {
            if t.reused {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            t = client.send(&ep, &Body::json("{}")).await.unwrap().timings;
        }
        assert!(t.reused, "{t:?}");
        assert_eq!(t.tls, None, "a reused connection has no handshake");
        assert_ordered(&t);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_certificate_is_a_tls_error() {
    let pki = Pki::new();
    let (cert, key) = (pki.path("server.pem"), pki.path("server.key"));
    let node = start_fast(&[("tls.cert", &cert), ("tls.key", &key)]).await;
    let url = format!("https://localhost:{}", node.node.http_addr.port());
    let client = Client::builder(url)
        .roots(rustls::RootCertStore::empty())
        .build()
        .unwrap();
    let err = client
        .send(&client.endpoint("tls").unwrap(), &Body::json("{}"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), "tls", "{err:?}");
}
