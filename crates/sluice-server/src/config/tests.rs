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
    assert_eq!(
        c.queue,
        QueueConfig::Wal(sluice_queue::WalConfig::default())
    );
    assert_eq!(wal(&c).ack, AckMode::Fsync);
    assert_eq!(c.http.max_body_bytes.0, 10 << 20);
    assert_eq!(c.sink_dir(), PathBuf::from("./sluice-data/out"));
    assert!(
        !file_sink(&c.sink).keep_page_cache,
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
    assert!(file_sink(&c.sink).keep_page_cache);
    assert_eq!(c.workers(), 3);
}

fn wal(c: &Config) -> &sluice_queue::WalConfig {
    match &c.queue {
        QueueConfig::Wal(w) => w,
        other => panic!("not the WAL: {other:?}"),
    }
}

fn file_sink(s: &SinkConfig) -> &sluice_pipeline::sinks::FileSinkOptions {
    match s {
        SinkConfig::File(f) => f,
        other => panic!("not the file sink: {other:?}"),
    }
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
    assert_eq!(wal(&c).max_bytes.0, 3 << 30, "env beats file");
    assert_eq!(wal(&c).ack, AckMode::Write, "file beats default");
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

/// Each backend's own options, from the file, the environment and flags, into the
/// options type the backend is built from.
#[test]
fn every_backend_takes_its_own_options() {
    let c = load(
        r#"
[queue]
kind = "nats"
url = "nats://n1:4222,n2:4222"
token = "s3cret"
replicas = 3
publish_timeout = "2s"

[sink]
kind = "http"
url = "https://collector.example/ingest"
headers = { Authorization = "Bearer s3cret", "X-Tenant" = "a" }
max_request_bytes = "256 KiB"
ca_file = "/etc/private-ca.pem"

[dead_letter]
kind = "kafka"
url = "kafka://k1:9092,k2:9092"
topic = "dead"
partitions = 3
client = { "security.protocol" = "sasl_ssl", "sasl.mechanism" = "PLAIN", "sasl.password" = "s3cret" }
producer = { "linger.ms" = 5 }
"#,
        &[("SLUICE_QUEUE__STREAM", "EVENTS")],
        &[("sink.timeout", "3s")],
    )
    .unwrap();
    let QueueConfig::Nats(q) = &c.queue else {
        panic!("{:?}", c.queue)
    };
    assert_eq!(q.url, "nats://n1:4222,n2:4222");
    assert_eq!(q.token.as_ref().map(|t| t.expose()), Some("s3cret"));
    assert_eq!((q.replicas, q.stream.as_str()), (3, "EVENTS"));
    assert_eq!(q.publish_timeout.0, Duration::from_secs(2));
    let SinkConfig::Http(h) = &c.sink else {
        panic!("{:?}", c.sink)
    };
    assert_eq!(h.max_request_bytes.0, 256 << 10);
    assert_eq!(h.timeout.0, Duration::from_secs(3));
    assert_eq!(h.ca_file.as_deref(), Some(Path::new("/etc/private-ca.pem")));
    let headers: Vec<_> = h.headers.iter().collect();
    assert_eq!(
        headers,
        [("Authorization", "Bearer s3cret"), ("X-Tenant", "a")]
    );
    let SinkConfig::Kafka(k) = &c.dead_letter else {
        panic!("{:?}", c.dead_letter)
    };
    assert_eq!((k.topic.as_str(), k.partitions), ("dead", 3));
    assert_eq!(
        k.client.iter().find(|(n, _)| *n == "security.protocol"),
        Some(("security.protocol", "sasl_ssl"))
    );
    assert_eq!(k.producer.iter().collect::<Vec<_>>(), [("linger.ms", "5")]);
}

/// A key of another backend (or of none) is an error naming it, not ignored.
#[test]
fn an_option_of_another_backend_is_refused() {
    for (text, flags, want) in [
        (
            "[queue]\nkind = \"nats\"\nsegment_bytes = \"1 MiB\"\n",
            &[][..],
            "segment_bytes",
        ),
        (
            "[queue]\nkind = \"memory\"\n",
            &[("queue.ack", "write")][..],
            "ack",
        ),
        ("[sink]\nkind = \"stdout\"\ndir = \"/x\"\n", &[][..], "dir"),
        (
            "[sink]\nkind = \"file\"\nurl = \"http://x\"\n",
            &[][..],
            "url",
        ),
        (
            "[sink]\nkind = \"http\"\n",
            &[][..],
            "sink.url must be an http",
        ),
        (
            "[queue]\nkind = \"kafka\"\npartitions = 0\n",
            &[][..],
            "queue.partitions must be at least 1",
        ),
        (
            "[queue]\nkind = \"nats\"\nurl = \",\"\n",
            &[][..],
            "queue.url needs at least one server",
        ),
    ] {
        let e = load(text, &[], flags).unwrap_err().to_string();
        assert!(e.contains(want), "{text}: {e}");
    }
}

/// `sluice config check` prints the effective configuration as TOML that loads
/// back the same, and no secret in it.
#[test]
fn the_effective_config_round_trips_and_hides_secrets() {
    let text = r#"
[queue]
kind = "kafka"
url = "kafka://k1:9092"
client = { "sasl.username" = "me", "sasl.password" = "s3cret-1" }
[sink]
kind = "nats"
url = "nats://me:s3cret-2@n1:4222"
token = "s3cret-3"
[dead_letter]
kind = "http"
url = "http://collector/dead"
headers = { "X-Api-Key" = "s3cret-4", Accept = "*/*" }
[gateway]
upstream_api_key = "s3cret-5"
"#;
    let c = load(text, &[], &[]).unwrap();
    let shown = c.to_toml();
    assert!(!shown.contains("s3cret"), "{shown}");
    assert!(shown.contains("sasl.username"), "{shown}");
    assert!(shown.contains("me:<redacted>@n1:4222"), "{shown}");
    // Without secrets the output is itself the same configuration.
    let plain = load(
        "[queue]\nkind = \"memory\"\nmax_events = 7\n[sink]\nkind = \"blackhole\"\n",
        &[],
        &[],
    )
    .unwrap();
    let again = load(&plain.to_toml(), &[], &[]).unwrap();
    assert_eq!(again.to_toml(), plain.to_toml());
    assert!(
        plain.to_toml().contains("max_events = 7"),
        "{}",
        plain.to_toml()
    );
}

/// With tracing on, a request's record may also carry its trace context (74 bytes
/// per event, at most 1 MiB): limits that leave no room for it are refused at
/// startup, not found out by a 413 under load. Without tracing nothing changes.
#[test]
fn tracing_needs_room_for_trace_context_in_a_wal_record() {
    let tight = "[http]\nmax_body_bytes = \"64 KiB\"\nmax_events_per_request = 300\n\
                 [queue]\nsegment_bytes = \"256 KiB\"\nmax_bytes = \"1 MiB\"\n";
    load(tight, &[], &[]).expect("no tracing: fits");
    let traced = format!("{tight}[telemetry]\nendpoint = \"http://127.0.0.1:4318\"\n");
    let err = load(&traced, &[], &[]).unwrap_err().to_string();
    assert!(
        err.contains("http.max_events_per_request") && err.contains("trace context"),
        "{err}"
    );
    let bad = load("[telemetry]\nsample_ratio = 2.0\n", &[], &[]).unwrap_err();
    assert!(bad.to_string().contains("telemetry.sample_ratio"), "{bad}");
}
