// Temporary: lower bound of raw HTTP/2 client CPU per request.
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn thread_cpu() -> Duration {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap();
    Duration::from_nanos(s.split_whitespace().next().unwrap().parse().unwrap())
}

fn frame(out: &mut Vec<u8>, ty: u8, flags: u8, id: u32, payload: &[u8]) {
    let n = payload.len();
    out.extend_from_slice(&[(n >> 16) as u8, (n >> 8) as u8, n as u8, ty, flags]);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(payload);
}

fn lit(out: &mut Vec<u8>, idx: u8, v: &str) {
    out.push(idx); // literal without indexing, name index < 15
    out.push(v.len() as u8);
    out.extend_from_slice(v.as_bytes());
}

fn main() {
    let server_rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = sluice_server::Config::load(sluice_server::config::Sources {
        file: None,
        env: Vec::new(),
        flags: [("listen", "127.0.0.1:0"), ("admin_listen", "127.0.0.1:0"),
            ("data_dir", &dir.path().display().to_string()), ("queue.kind", "memory"), ("sink.kind", "blackhole")]
            .iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
    }).unwrap();
    let node = server_rt.block_on(sluice_server::Node::start(config, sluice_server::NodeOptions::default())).unwrap();
    let addr = node.http_addr;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async move {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.set_nodelay(true).unwrap();
        let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        frame(&mut out, 4, 0, 0, &[0, 4, 0, 0x10, 0, 0, 0, 2, 0, 0, 0, 0]);
        frame(&mut out, 8, 0, 0, &(8u32 << 20).to_be_bytes());
        s.write_all(&out).await.unwrap();
        let mut hb = Vec::new();
        hb.push(0x83); // :method POST
        hb.push(0x86); // :scheme http
        lit(&mut hb, 0x04, "/v1/streams/bench/events");
        lit(&mut hb, 0x01, &addr.to_string());
        hb.push(0x0f); hb.push(31 - 15); lit_val(&mut hb, "application/x-ndjson");
        let body = b"{\"page\":\"/\",\"user\":42}\n";
        let mut next_id = 1u32;
        let mut buf = vec![0u8; 1 << 20];
        let mut have = 0usize;
        let inflight = 64;
        let mut total_done = 0u64;
        let mut start = thread_cpu();
        let mut consumed: u64 = 0;
        let mut open = 0;
        let rounds = 40000u64;
        let mut reqs = 0u64;
        let mut writes = 0u64; let mut reads = 0u64;
        while reqs < rounds * 16 {
            out.clear();
            while open < inflight {
                frame(&mut out, 1, 4, next_id, &hb);
                frame(&mut out, 0, 1, next_id, body);
                next_id += 2; open += 1; reqs += 1;
            }
            if consumed > (1 << 20) { frame(&mut out, 8, 0, 0, &(consumed as u32).to_be_bytes()); consumed = 0; }
            if !out.is_empty() { s.write_all(&out).await.unwrap(); writes += 1; }
            let n = s.read(&mut buf[have..]).await.unwrap();
            reads += 1;
            assert!(n > 0);
            have += n;
            let mut p = 0;
            while have - p >= 9 {
                let len = (buf[p] as usize) << 16 | (buf[p+1] as usize) << 8 | buf[p+2] as usize;
                if have - p < 9 + len { break; }
                let ty = buf[p+3]; let fl = buf[p+4];
                if ty == 4 && fl & 1 == 0 { let mut a = Vec::new(); frame(&mut a, 4, 1, 0, &[]); s.write_all(&a).await.unwrap(); }
                if ty == 0 { consumed += len as u64; }
                if (ty == 0 || ty == 1) && fl & 1 == 1 { open -= 1; total_done += 1; }
                p += 9 + len;
            }
            buf.copy_within(p..have, 0); have -= p;
            if reqs == 100_000 { start = thread_cpu(); total_done = 0; writes = 0; reads = 0; }
        }
        let cpu = thread_cpu() - start;
        println!("{} done, {:.0} ns/req, {} writes {} reads", total_done, cpu.as_nanos() as f64 / total_done as f64, writes, reads);
    });
    node.shutdown();
}

fn lit_val(out: &mut Vec<u8>, v: &str) { out.push(v.len() as u8); out.extend_from_slice(v.as_bytes()); }
