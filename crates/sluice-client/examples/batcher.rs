//! Feeds events one by one to a [`Batcher`], which sends them 100 at a time or
//! every 200 ms, whichever comes first.
//!
//! Start a node (`sluice serve`), then:
//! `cargo run -p sluice-client --example batcher -- http://127.0.0.1:8080`

use std::time::Duration;

use bytes::Bytes;
use sluice_client::{BatchOptions, Batcher, Client};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "http://127.0.0.1:8080".into());
    let client = Client::builder(url).build()?;
    let batcher = Batcher::new(
        client.clone(),
        client.endpoint("batched")?,
        BatchOptions {
            max_events: 100,
            max_wait: Duration::from_millis(200),
            ..BatchOptions::default()
        },
    );
    for i in 0..250 {
        batcher
            .push(Bytes::from(format!("{{\"reading\":{i}}}")))
            .await?;
        if i % 50 == 0 {
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
    }
    let s = batcher.close().await;
    println!(
        "{} batches, {} events accepted, {} rejected",
        s.batches, s.events_accepted, s.events_rejected
    );
    Ok(())
}
