//! The file sink: stream names, group commit, rotation, torn lines.

use std::io::Write;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use sluice_core::{Event, Sink, SinkError};
use sluice_pipeline::sinks::FileSink;

use crate::read_lines;

/// Every file and directory under `dir`, recursively.
fn tree(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(tree(&p));
        }
        out.push(p);
    }
    out.sort();
    out
}

#[tokio::test]
async fn a_stream_name_that_is_a_path_writes_nothing_anywhere() {
    let outer = tempfile::tempdir().unwrap();
    let root = outer.path().join("a").join("out");
    std::fs::create_dir_all(&root).unwrap();
    let sink = FileSink::new(&root, 1 << 20);
    let absolute = outer.path().join("abs").display().to_string();
    let bad = [
        "../../x", "../x", "..", ".", "", &absolute, "a/b", "a/../..", "x\0", "\\x",
    ];
    let mut events: Vec<Event> = bad
        .iter()
        .map(|s| Event::new(*s, Bytes::from_static(b"{}")))
        .collect();
    events.push(Event::new("ok", Bytes::from_static(b"{\"n\":1}")));
    let Err(SinkError::Rejected(list)) = sink.deliver(&events).await else {
        panic!("the bad streams are refused");
    };
    let indexes: Vec<usize> = list.iter().map(|r| r.index).collect();
    assert_eq!(indexes, (0..bad.len()).collect::<Vec<_>>());
    assert!(list[0].reason.contains("invalid"), "{}", list[0].reason);
    // Only the good event was written, under the root.
    assert_eq!(read_lines(&sink.stream_dir("ok")).len(), 1);
    let all = tree(outer.path());
    let outside: Vec<_> = all.iter().filter(|p| !p.starts_with(&root)).collect();
    assert_eq!(
        outside,
        [&outer.path().join("a")],
        "nothing but the parent of out/ outside it"
    );
    assert_eq!(
        tree(&root).len(),
        2,
        "ok/ and its one file: {:?}",
        tree(&root)
    );
}

/// Group commit: deliveries racing on one stream (the processor's workers) share
/// fdatasyncs and rotations, and every line of every delivery that returned Ok is
/// in the files, whole, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_deliveries_to_one_stream_all_land_whole() {
    let root = tempfile::tempdir().unwrap();
    let sink = FileSink::new(root.path(), 64 * 1024);
    let tasks: Vec<_> = (0..8)
        .map(|t| {
            let sink = sink.clone();
            tokio::spawn(async move {
                for d in 0..40 {
                    let events: Vec<Event> = (0..25)
                        .map(|i| {
                            let body = format!("{{\"t\":{t},\"d\":{d},\"i\":{i}}}");
                            Event::new("clicks", Bytes::from(body))
                        })
                        .collect();
                    sink.deliver(&events).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let dir = sink.stream_dir("clicks");
    assert!(
        std::fs::read_dir(&dir).unwrap().count() > 10,
        "rotated many times"
    );
    let mut seen = std::collections::HashSet::new();
    for l in read_lines(&dir) {
        let v: serde_json::Value = serde_json::from_str(&l).unwrap();
        let key = v["data"].to_string();
        assert!(seen.insert(key), "written once: {l}");
    }
    assert_eq!(seen.len(), 8 * 40 * 25);
}

#[tokio::test]
async fn writes_rotates_and_truncates_partial_line() {
    let root = tempfile::tempdir().unwrap();
    let sink = FileSink::new(root.path(), 300);
    let events: Vec<Event> = (0..6)
        .map(|i| Event::new("clicks", Bytes::from(format!("{{\"n\":{i}}}"))))
        .collect();
    sink.deliver(&events[..3]).await.unwrap();
    sink.deliver(&events[3..]).await.unwrap();
    let dir = sink.stream_dir("clicks");
    let files = std::fs::read_dir(&dir).unwrap().count();
    assert!(files >= 2, "rotated by size: {files} files");
    let lines = read_lines(&dir);
    assert_eq!(lines.len(), 6);
    for (i, l) in lines.iter().enumerate() {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        assert_eq!(v["data"]["n"], i, "{l}");
        assert_eq!(v["stream"], "clicks");
    }
    // A crash mid-write leaves a partial line; a new sink truncates it.
    let newest = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .max()
        .unwrap();
    std::fs::OpenOptions::new()
        .append(true)
        .open(&newest)
        .unwrap()
        .write_all(b"{\"id\":\"torn")
        .unwrap();
    let sink = FileSink::new(root.path(), 1 << 20);
    sink.deliver(&events[..1]).await.unwrap();
    let lines = read_lines(&dir);
    assert_eq!(lines.len(), 7);
    assert!(lines
        .iter()
        .all(|l| l.starts_with("{\"id\":\"") && l.ends_with('}')));
}
