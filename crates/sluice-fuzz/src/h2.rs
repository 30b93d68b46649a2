//! Targets over the client's HTTP/2: the HPACK decoder (with Huffman strings and
//! the dynamic table) and the whole connection facing a hostile server.

use std::time::Duration;

use bytes::Bytes;
use sluice_client::http2::{self, fuzzing};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Header blocks (length-prefixed chunks) decoded one after another by one
/// decoder, as a connection does, until one is malformed (a connection error). Then
/// a literal we encode ourselves must still decode as sent.
pub fn hpack(data: &[u8]) {
    let mut decoder = fuzzing::Decoder::default();
    let mut last: Vec<u8> = Vec::new();
    for block in crate::chunks(data) {
        let mut fields = 0usize;
        let mut bytes = 0usize;
        let ok = decoder.decode(block, |n, v| {
            fields += 1;
            bytes += n.len() + v.len();
        });
        if ok.is_err() {
            return;
        }
        // A field costs at least one byte; a dynamic-table entry at most 4 KiB.
        assert!(
            fields <= block.len(),
            "{fields} fields from {} bytes",
            block.len()
        );
        assert!(bytes <= fields * 4096 + block.len() * 8 / 5 + 1);
        last = block.to_vec();
    }
    // Our own request literals decode as sent, whatever the table holds now.
    let index = usize::from(last.first().copied().unwrap_or(1) % 61) + 1;
    let mut name = Vec::new();
    let mut indexed = Vec::new();
    fuzzing::encode_indexed(&mut indexed, index);
    decoder
        .decode(&indexed, |n, _| name = n.to_vec())
        .expect("a static index decodes");
    let mut block = Vec::new();
    fuzzing::encode_literal(&mut block, index, &last, index % 2 == 0);
    let mut got = Vec::new();
    decoder
        .decode(&block, |n, v| got.push((n.to_vec(), v.to_vec())))
        .expect("our literal decodes");
    assert_eq!(got, vec![(name, last)]);
}

thread_local! {
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
}

const SETTINGS: u8 = 0x4;

fn frame(out: &mut Vec<u8>, ty: u8, flags: u8, id: u32, payload: &[u8]) {
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    out.push(ty);
    out.push(flags);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(payload);
}

/// What a hostile server sends after its SETTINGS: chunks of
/// `[type, flags, stream selector, payload...]` written as frames (the stream is 0,
/// 1, 3, or the selector's bits spread wide), or, for a type byte of 0xff, the raw
/// bytes of the chunk.
fn script(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut first = true;
    for chunk in crate::chunks(data) {
        let [ty, flags, sel, payload @ ..] = chunk else {
            out.extend_from_slice(chunk);
            continue;
        };
        if first && *ty != 0xfe {
            // The server's preface, unless the fuzzer chose to send something else.
            frame(&mut out, SETTINGS, 0, 0, &[]);
        }
        first = false;
        if *ty == 0xff {
            out.extend_from_slice(payload);
            continue;
        }
        let id = match sel % 4 {
            0 => 0,
            1 => 1,
            2 => 3,
            _ => u32::from(*sel) << 23 | u32::from(*sel),
        };
        frame(&mut out, *ty % 12, *flags, id, payload);
    }
    if first {
        frame(&mut out, SETTINGS, 0, 0, &[]);
    }
    out
}

/// A request over a connection whose server sends the fuzzer's frames, then hangs
/// up: the request ends (with an answer or an error) and the driver ends, both in
/// bounded time, and nothing panics.
pub fn h2_frames(data: &[u8]) {
    let script = script(data);
    RUNTIME.with(|rt| {
        rt.block_on(async move {
            let (client_io, mut server_io) = tokio::io::duplex(1 << 20);
            let server = tokio::spawn(async move {
                let mut sink = vec![0u8; 1 << 16];
                let _ = server_io.read(&mut sink).await;
                let _ = server_io.write_all(&script).await;
                // Read what the client answers for a moment, then hang up.
                let _ = tokio::time::timeout(Duration::from_millis(1), async {
                    while matches!(server_io.read(&mut sink).await, Ok(n) if n > 0) {}
                })
                .await;
            });
            let handshake = tokio::time::timeout(
                Duration::from_secs(5),
                http2::handshake(client_io, http2::Options::default()),
            )
            .await
            .expect("the handshake hung");
            let Ok((conn, driver)) = handshake else {
                server.await.expect("the server task");
                return;
            };
            let driver = tokio::spawn(driver);
            let head = http2::encode_post(false, "x", "/v1/streams/s/events");
            let sent = tokio::time::timeout(
                Duration::from_secs(5),
                conn.send(&[&head], &Bytes::from_static(b"{}")),
            )
            .await;
            assert!(sent.is_ok(), "the request hung");
            server.await.expect("the server task");
            drop(conn);
            tokio::time::timeout(Duration::from_secs(5), driver)
                .await
                .expect("the driver hung")
                .expect("the driver panicked");
        });
    });
}
