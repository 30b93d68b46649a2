//! Sends a few NDJSON batches and prints each request's phase timings.
//!
//! Start a node (`sluice serve`), then:
//! `cargo run -p sluice-client --example send_events -- http://127.0.0.1:8080 [http1|http2]`
//! (an `https://` URL uses the system's CA bundle; set `SLUICE_CA=ca.pem` to trust another).

use sluice_client::{Body, Client, Protocol};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "http://127.0.0.1:8080".into());
    let protocol = match args.next().as_deref() {
        Some("http2") => Protocol::Http2,
        Some("http1") => Protocol::Http1,
        _ => Protocol::Auto,
    };
    let mut builder = Client::builder(url).protocol(protocol);
    if let Ok(ca) = std::env::var("SLUICE_CA") {
        builder = builder.ca_file(ca);
    }
    let client = builder.build()?;
    let clicks = client.endpoint("clicks")?;
    for i in 0..3 {
        let body = Body::ndjson(format!(
            "{{\"page\":\"/\",\"n\":{i}}}\n{{\"page\":\"/about\",\"n\":{i}}}\n"
        ));
        let sent = client.send(&clicks, &body).await?;
        println!(
            "batch {i}: {} accepted after {} attempt(s); {}",
            sent.accepted, sent.attempts, sent.timings
        );
    }
    Ok(())
}
