//! Replays every fuzz target over its committed corpus (`fuzz/corpus/<target>/`),
//! the reproducers of past findings (`fuzz/regressions/<target>/`), and a few thousand
//! inputs mutated from them with a fixed seed — the cheap, deterministic part of the
//! fuzzing that CI runs on every build (`scripts/fuzz` runs the coverage-guided part).
//!
//! `SLUICE_FUZZ_MUTANTS` sets how many mutated inputs each target gets (default 3000).

use std::path::{Path, PathBuf};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<(String, Vec<u8>)> = entries
        .filter_map(Result::ok)
        .filter(|e| e.path().is_file())
        .map(|e| {
            let bytes = std::fs::read(e.path()).expect("reading a corpus file");
            (e.path().display().to_string(), bytes)
        })
        .collect();
    out.sort();
    out
}

/// One mutation like libFuzzer's simplest ones: flip, set, insert, erase, splice.
fn mutate(rng: &mut fastrand::Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut b = seeds[rng.usize(..seeds.len())].clone();
    for _ in 0..rng.usize(1..5) {
        let at = rng.usize(..=b.len());
        match rng.u8(..6) {
            0 if at < b.len() => b[at] ^= 1 << rng.u8(..8),
            1 if at < b.len() => b[at] = [0, 0xff, 0x7f, 0x80, b'{', b'"', b'\n'][rng.usize(..7)],
            2 => b.insert(at, rng.u8(..)),
            3 if at < b.len() => {
                let n = rng.usize(..=(b.len() - at).min(16));
                b.drain(at..at + n);
            }
            4 => {
                let other = &seeds[rng.usize(..seeds.len())];
                let from = rng.usize(..=other.len());
                let n = rng.usize(..=(other.len() - from).min(64));
                b.splice(at..at, other[from..from + n].iter().copied());
            }
            _ => b.truncate(at),
        }
    }
    b
}

fn replay(name: &str) {
    let target = sluice_fuzz::TARGETS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, t)| *t)
        .expect("a known target");
    let dir = fuzz_dir();
    let mut inputs = files(&dir.join("corpus").join(name));
    assert!(!inputs.is_empty(), "no seed corpus for {name}");
    inputs.extend(files(&dir.join("regressions").join(name)));
    for (path, bytes) in &inputs {
        let result = std::panic::catch_unwind(|| target(bytes));
        assert!(result.is_ok(), "{name}: {path} fails");
    }
    let seeds: Vec<Vec<u8>> = inputs.into_iter().map(|(_, b)| b).collect();
    let mutants: usize = std::env::var("SLUICE_FUZZ_MUTANTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000);
    let mut rng = fastrand::Rng::with_seed(0x5EED_F022);
    for i in 0..mutants {
        let input = mutate(&mut rng, &seeds);
        let result = std::panic::catch_unwind(|| target(&input));
        assert!(
            result.is_ok(),
            "{name}: mutant {i} fails; its bytes: {input:?}"
        );
    }
}

macro_rules! replay_tests {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                replay(stringify!($name));
            }
        )*
    };
}

replay_tests!(
    json,
    ndjson,
    json_body,
    record,
    broker,
    grpc_request,
    wal_segment,
    wal_checkpoint,
    hpack,
    h2_frames,
    gzip,
    zstd,
    config,
);

#[test]
fn every_target_has_a_test_and_a_libfuzzer_target() {
    for (name, _) in sluice_fuzz::TARGETS {
        let target = fuzz_dir().join("fuzz_targets").join(format!("{name}.rs"));
        assert!(target.is_file(), "{} is missing", target.display());
    }
}
