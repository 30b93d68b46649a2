use super::*;

fn load(
    toml_text: &str,
    env: &[(&str, &str)],
    flags: &[(&str, &str)],
) -> Result<Config, ConfigError> {
    let dir = tempfile_dir();
    let path = dir.join("sluice.toml");
    std::fs::write(&path, toml_text).unwrap();
    let r = Config::load(Sources {
        file: Some(&path),
        env: env
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect(),
        flags: flags
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect(),
    });
    std::fs::remove_dir_all(&dir).ok();
    r
}

fn tempfile_dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("sluice-config-{}", sluice_core::new_event_id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn defaults_without_any_source() {
    let c = Config::load(Sources::default()).unwrap();
    assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(c.admin_listen.to_string(), "127.0.0.1:9090");
    assert_eq!(c.queue.kind, QueueKind::Wal);
    assert_eq!(c.queue.ack, AckMode::Fsync);
    assert_eq!(c.http.max_body_bytes.0, 10 << 20);
    assert_eq!(c.sink_dir(), PathBuf::from("./sluice-data/out"));
    assert!(
        !c.sink.keep_page_cache,
        "synced output leaves the page cache"
    );
    assert_eq!(c.workers(), sluice_pipeline::default_workers());
    assert!(c.workers() >= 4, "deliveries wait on the sink");
    let c = load(
        "[sink]\nkeep_page_cache = true\n[processor]\nworkers = 3\n",
        &[],
        &[],
    )
    .unwrap();
    assert!(c.sink.keep_page_cache);
    assert_eq!(c.workers(), 3);
}

#[test]
fn file_then_env_then_flags() {
    let c = load(
        "listen = \"127.0.0.1:1000\"\n[queue]\nmax_bytes = \"2 GiB\"\nack = \"write\"\n",
        &[
            ("SLUICE_LISTEN", "127.0.0.1:2000"),
            ("SLUICE_QUEUE__MAX_BYTES", "3 GiB"),
            ("HOME", "/x"),
        ],
        &[("listen", "127.0.0.1:3000")],
    )
    .unwrap();
    assert_eq!(c.listen.to_string(), "127.0.0.1:3000", "flag wins");
    assert_eq!(c.queue.max_bytes.0, 3 << 30, "env beats file");
    assert_eq!(c.queue.ack, AckMode::Write, "file beats default");
}

#[test]
fn unknown_keys_and_bad_values_name_the_key_and_value() {
    let e = load("[queue]\nmax_bytez = 5\n", &[], &[])
        .unwrap_err()
        .to_string();
    assert!(e.contains("max_bytez"), "{e}");
    let e = load("[queue]\nmax_bytes = \"10 KiB\"\n", &[], &[])
        .unwrap_err()
        .to_string();
    assert_eq!(e, "queue.max_bytes must be at least 1 MiB; got 10 KiB");
    let e = load("[queue]\nack = \"sometimes\"\n", &[], &[])
        .unwrap_err()
        .to_string();
    assert!(e.contains("sometimes"), "{e}");
    let e = load("", &[("SLUICE_QUEUE", "disk")], &[])
        .unwrap_err()
        .to_string();
    assert!(e.contains("disk"), "{e}");
    let e = load("shutdown_grace = \"soon\"\n", &[], &[])
        .unwrap_err()
        .to_string();
    assert!(e.contains("soon"), "{e}");
}

#[test]
fn a_request_must_fit_one_wal_record_exactly() {
    let c = Config::load(Sources::default()).unwrap();
    assert_eq!(c.http.max_events_per_request, 100_000);
    assert_eq!(c.http.max_inflight_bytes.0, 512 << 20);
    // 10 MiB + 150,000 x 209 bytes is over a 32 MiB record.
    let e = load("[http]\nmax_events_per_request = 150000\n", &[], &[])
        .unwrap_err()
        .to_string();
    assert!(e.starts_with("http.max_events_per_request "), "{e}");
    assert!(e.contains("http.max_body_bytes (10 MiB)"), "{e}");
    assert!(e.contains("(150000) x 209"), "{e}");
    assert!(e.contains("queue.segment_bytes / 2 (32 MiB)"), "{e}");
    // A bigger segment makes room.
    let c = load(
        "[http]\nmax_events_per_request = 150000\n[queue]\nsegment_bytes = \"128 MiB\"\n",
        &[],
        &[],
    )
    .unwrap();
    assert_eq!(c.http.max_events_per_request, 150_000);
    let e = load("[http]\nmax_events_per_request = 0\n", &[], &[]).unwrap_err();
    assert!(e.to_string().contains("must be at least 1"), "{e}");
}

#[test]
fn the_byte_budget_must_hold_the_largest_request() {
    let e = load("[http]\nmax_inflight_bytes = \"16 MiB\"\n", &[], &[])
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("http.max_inflight_bytes must hold the largest request"),
        "{e}"
    );
    load("[http]\nmax_inflight_bytes = \"64 MiB\"\n", &[], &[]).unwrap();
}

/// Fuzz finding F4: sizes and counts past what the bounds' arithmetic can hold are
/// refused with a message, never an overflow panic (`max_body_bytes` of 7.7e24 KiB
/// once saturated to u64::MAX and `record_bound` added to it).
#[test]
fn absurd_sizes_and_counts_are_refused_not_overflowed() {
    let err = load(
        "[http]\nmax_body_bytes = \"7777777777777777777777777KiB\"\n",
        &[],
        &[],
    )
    .unwrap_err();
    assert!(err.to_string().contains("larger than any size"), "{err}");
    for (key, value) in [
        ("http.max_body_bytes", "18446744073709551615"),
        ("http.max_events_per_request", "18446744073709551615"),
        ("http.max_inflight_bytes", "16777216 TiB"),
    ] {
        let r = load("", &[], &[(key, value)]);
        assert!(r.is_err(), "{key} = {value}: accepted");
    }
}
