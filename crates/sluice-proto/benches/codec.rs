//! How fast are the codecs on the ingest hot path? Splitting a 1,000-event NDJSON body
//! (~120-byte objects), encoding it as a queue record, decoding it back and writing
//! the delivery envelopes, per event.
//!
//! Run: `cargo bench -p sluice-proto --bench codec`

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sluice_core::{Batch, Event};

fn body(n: usize) -> Bytes {
    let mut s = String::new();
    for i in 0..n {
        s.push_str(&format!(
            "{{\"user\":\"u{i}\",\"action\":\"click\",\"page\":\"/products/{i}\",\"ms\":{i},\"tags\":[\"a\",\"b\"]}}\n"
        ));
    }
    Bytes::from(s)
}

fn bench(c: &mut Criterion) {
    let body = body(1000);
    let mut g = c.benchmark_group("codec");
    g.throughput(Throughput::Elements(1000));
    g.bench_function("split_ndjson_1000", |b| {
        b.iter(|| sluice_proto::body::split_ndjson(&body).unwrap())
    });
    let payloads = sluice_proto::body::split_ndjson(&body).unwrap();
    let batch = Batch::new(
        payloads
            .into_iter()
            .map(|p| Event::new("clicks", p))
            .collect(),
    );
    g.bench_function("encode_1000", |b| {
        b.iter(|| {
            let mut out = Vec::new();
            sluice_proto::record::encode(&batch, &mut out);
            out
        })
    });
    let mut rec = Vec::new();
    sluice_proto::record::encode(&batch, &mut rec);
    let rec = Bytes::from(rec);
    g.bench_function("decode_1000", |b| {
        b.iter(|| sluice_proto::record::decode(rec.clone()).unwrap())
    });
    g.bench_function("envelope_1000", |b| {
        let mut out = Vec::with_capacity(256 * 1024);
        b.iter(|| {
            out.clear();
            for e in &batch.events {
                sluice_proto::envelope::write_line(e, &mut out);
            }
            out.len()
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
