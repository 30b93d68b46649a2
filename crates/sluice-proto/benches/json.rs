//! Is our hand-written JSON validator (`sluice_proto::json`) still worth keeping, or is
//! sonic-rs or simd-json faster at the one thing ingest asks: "is this well-formed
//! JSON"? Each library runs its cheapest validate-only path on the same inputs:
//!
//! - ours: `json::validate` (bytes, UTF-8 checked) or `json::validate_str` (text already
//!   checked as a whole, as NDJSON ingest does);
//! - sonic-rs: `from_slice::<IgnoredAny>` / `from_str::<IgnoredAny>` — a full, checked
//!   skip of the value plus the trailing-characters check, nothing built;
//! - simd-json: a copy of the input into a reused, padded buffer (simd-json parses in
//!   place, so the copy is what ingest would pay: payloads are shared `Bytes`) and
//!   `fill_tape_padded` with reused buffers and tape, depth limited to 128 like ours.
//!
//! Inputs: the realistic 202-byte click event (`shared/bench/event.json`), a
//! 1,000-line NDJSON body of it validated line by line after one UTF-8 check of the
//! whole body, a 72-byte event, and a 64 KiB nested document.
//!
//! Run: `nice -n 0 taskset -c 1 cargo bench -p sluice-proto --features compare-json --bench json -- json_validate`

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use sluice_proto::json;

/// `shared/bench/event.json` (the team's realistic click event), byte for byte.
const EVENT: &str = r#"{"ts":"2026-11-27T00:00:00Z","user":"u123","session":"s-7f3a9c2e41d0","event":"click","page":"/home","referrer":"/landing/spring-sale","ua":"Mozilla/5.0 (X11; Linux x86_64)","value":42,"tags":["a","b"]}"#;

const SMALL: &str = r#"{"user":"u42","event":"click","page":"/home","ts":1732665600,"value":42}"#;

/// A document of at least `min` bytes: an object of records, each a small tree of
/// objects and arrays (six levels deep) with strings, escapes, numbers and literals.
fn nested(min: usize) -> String {
    fn node(out: &mut String, depth: usize, seed: &mut u64) {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let k = (*seed >> 33) as usize;
        if depth == 0 {
            match k % 5 {
                0 => out.push_str(&format!("\"leaf-{k} caf\\u00e9 \\\"q\\\"\"")),
                1 => out.push_str(&format!("{}", k % 100_000)),
                2 => out.push_str(&format!("-{}.{}e-3", k % 1000, k % 97)),
                3 => out.push_str(if k & 1 == 0 { "true" } else { "null" }),
                _ => out.push_str("\"plain ascii value of some length\""),
            }
            return;
        }
        if depth & 1 == 0 {
            out.push('{');
            for i in 0..3 {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&format!("\"key_{depth}_{i}\":"));
                node(out, depth - 1, seed);
            }
            out.push('}');
        } else {
            out.push('[');
            for i in 0..2 {
                if i > 0 {
                    out.push_str(", ");
                }
                node(out, depth - 1, seed);
            }
            out.push(']');
        }
    }
    let mut out = String::from("{\"records\":[");
    let mut seed = 42;
    let mut n = 0;
    while out.len() < min {
        if n > 0 {
            out.push_str(",\n");
        }
        node(&mut out, 6, &mut seed);
        n += 1;
    }
    out.push_str("]}");
    out
}

fn sonic(doc: &[u8]) -> bool {
    sonic_rs::from_slice::<serde::de::IgnoredAny>(doc).is_ok()
}

fn sonic_str(doc: &str) -> bool {
    sonic_rs::from_str::<serde::de::IgnoredAny>(doc).is_ok()
}

/// simd-json with everything reused between calls but the copy of the input.
struct Simd {
    scratch: Vec<u8>,
    buffers: simd_json::Buffers,
    tape: Option<simd_json::Tape<'static>>,
}

impl Simd {
    fn new() -> Simd {
        Simd {
            scratch: Vec::new(),
            buffers: simd_json::Buffers::with_max_depth(64 * 1024, json::MAX_DEPTH),
            tape: Some(simd_json::Tape::null()),
        }
    }

    fn validate(&mut self, doc: &[u8]) -> bool {
        self.scratch.clear();
        self.scratch.extend_from_slice(doc);
        self.scratch
            .resize(doc.len() + simd_json::INPUT_PADDING, b' ');
        let mut tape = self.tape.take().expect("tape is put back");
        let ok =
            simd_json::fill_tape_padded(&mut self.scratch, doc.len(), &mut self.buffers, &mut tape)
                .is_ok();
        self.tape = Some(tape.reset());
        ok
    }
}

/// Validates each non-blank line of an NDJSON body after one UTF-8 check of the whole.
fn lines(body: &str, mut check: impl FnMut(&str) -> bool) -> usize {
    let mut ok = 0;
    for line in body.split('\n') {
        let line = line.trim_matches(|c| matches!(c, ' ' | '\t' | '\r'));
        if !line.is_empty() && check(line) {
            ok += 1;
        }
    }
    ok
}

fn bench(c: &mut Criterion) {
    let ndjson: String = std::iter::repeat_n(format!("{EVENT}\n"), 1000).collect();
    let big = nested(64 * 1024);
    for doc in [EVENT, SMALL, &big] {
        assert!(json::validate(doc.as_bytes()).is_ok());
        assert!(sonic(doc.as_bytes()));
        assert!(Simd::new().validate(doc.as_bytes()));
    }

    let mut g = c.benchmark_group("json_validate");
    for (name, doc) in [
        ("event_202B", EVENT),
        ("small_72B", SMALL),
        ("nested_64KiB", &big),
    ] {
        let doc = doc.as_bytes();
        g.throughput(Throughput::BytesDecimal(doc.len() as u64));
        g.bench_with_input(BenchmarkId::new("ours", name), doc, |b, d| {
            b.iter(|| json::validate(d).is_ok())
        });
        g.bench_with_input(BenchmarkId::new("sonic_rs", name), doc, |b, d| {
            b.iter(|| sonic(d))
        });
        g.bench_with_input(BenchmarkId::new("simd_json", name), doc, |b, d| {
            let mut simd = Simd::new();
            b.iter(|| simd.validate(d))
        });
    }

    let name = "ndjson_1000";
    let body = ndjson.as_bytes();
    g.throughput(Throughput::BytesDecimal(body.len() as u64));
    g.bench_with_input(BenchmarkId::new("ours", name), body, |b, body| {
        b.iter(|| {
            let text = std::str::from_utf8(body).unwrap();
            lines(text, |l| json::validate_str(l).is_ok())
        })
    });
    g.bench_with_input(BenchmarkId::new("sonic_rs", name), body, |b, body| {
        b.iter(|| {
            let text = std::str::from_utf8(body).unwrap();
            lines(text, sonic_str)
        })
    });
    g.bench_with_input(BenchmarkId::new("simd_json", name), body, |b, body| {
        let mut simd = Simd::new();
        // simd-json checks UTF-8 itself, so no whole-body check here.
        b.iter(|| {
            let text = byte_lines(body);
            let mut ok = 0;
            for line in text {
                if simd.validate(line) {
                    ok += 1;
                }
            }
            ok
        })
    });
    g.finish();
}

/// Non-blank lines of `body` as bytes.
fn byte_lines(body: &[u8]) -> impl Iterator<Item = &[u8]> {
    body.split(|&c| c == b'\n').filter(|l| !l.is_empty())
}

criterion_group!(benches, bench);
criterion_main!(benches);
