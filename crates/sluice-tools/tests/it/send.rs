//! `sluice send`: NDJSON in, batches out, an error when anything was rejected.

use std::io::Write;

use sluice_tools::send::{self, HttpVersion, SendArgs, SendError};

use crate::support::*;

fn args(node: &TestNode, file: &std::path::Path) -> SendArgs {
    SendArgs {
        url: node.base.clone(),
        stream: "sent".into(),
        batch: 100,
        linger: std::time::Duration::from_millis(50),
        protocol: HttpVersion::Auto,
        api_key: None,
        ca: None,
        retries: 1,
        quiet: true,
        file: Some(file.to_path_buf()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_is_sent_in_batches() {
    let node = start_fast(&[]).await;
    let mut f = tempfile::NamedTempFile::new().unwrap();
    for i in 0..1050 {
        writeln!(f, "{{\"line\":{i}}}").unwrap();
    }
    writeln!(f).unwrap(); // blank lines are skipped
    let s = send::run(&args(&node, f.path())).await.unwrap();
    assert_eq!(s.events_accepted, 1050);
    assert_eq!(s.batches, 11);
    assert_eq!(node.counter(EVENTS).await, 1050);
    assert_eq!(node.counter(REQUESTS).await, 11);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_line_rejects_its_batch_and_fails_the_command() {
    let node = start_fast(&[]).await;
    let mut f = tempfile::NamedTempFile::new().unwrap();
    for i in 0..250 {
        if i == 120 {
            writeln!(f, "{{not json").unwrap();
        } else {
            writeln!(f, "{{\"line\":{i}}}").unwrap();
        }
    }
    let err = send::run(&args(&node, f.path())).await.unwrap_err();
    let SendError::Rejected {
        rejected,
        total,
        first,
    } = err
    else {
        panic!("{err:?}");
    };
    assert_eq!((rejected, total), (100, 250));
    assert_eq!(first.kind(), "http_400");
    assert_eq!(node.counter(EVENTS).await, 150);
}
