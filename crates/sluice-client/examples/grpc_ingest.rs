//! Sends batches over gRPC: one unary `Ingest`, one `IngestStream`, one `IngestBidi`.
//!
//! Start a node (`sluice serve`), then:
//! `cargo run -p sluice-client --example grpc_ingest -- http://127.0.0.1:8080`

use bytes::Bytes;
use futures_util::stream;
use sluice_client::Client;
use sluice_proto::v1::{Event, IngestRequest};

fn batch(n: usize) -> IngestRequest {
    IngestRequest {
        stream: "grpc-example".into(),
        events: (0..n)
            .map(|i| Event {
                payload: Bytes::from(format!("{{\"i\":{i}}}")),
                ..Default::default()
            })
            .collect(),
        return_ids: false,
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "http://127.0.0.1:8080".into());
    let client = Client::builder(url).build_grpc()?;

    let unary = client.ingest(&batch(3)).await?;
    println!(
        "unary: {} accepted; {}",
        unary.response.accepted, unary.timings
    );

    let summary = client
        .ingest_stream(stream::iter((0..4).map(|_| batch(5))))
        .await?;
    println!("client stream: {} accepted", summary.accepted);

    let mut acks = client
        .ingest_bidi(stream::iter((0..3).map(|_| batch(2))))
        .await?;
    while let Some(ack) = acks.message().await? {
        println!(
            "bidi ack {}: {} accepted {}",
            ack.sequence, ack.accepted, ack.error
        );
    }
    Ok(())
}
