#!/usr/bin/env python3
"""Is `sluice load` as fast a load generator as wrk (HTTP/1.1) and h2load (HTTP/2)?

Question: against the same cheap server (`sluice serve --queue memory --sink
blackhole`, pinned to core 0), with the load tool pinned to core 1 and the same
connections and concurrency, what is the top request rate each tool reaches?
sluice load's should be within 10 % of wrk's and h2load's.

Method: one-event NDJSON POSTs (~100 B) to /v1/streams/bench/events; each tool runs
a warm-up (its own warm-up option, or a discarded run for wrk) and then D seconds;
R runs per tool, the median is reported. Closed model everywhere (max throughput).
  * HTTP/1.1: wrk -t1 -c C            vs  sluice load --mode http1 -c C --threads 1
  * HTTP/2:   h2load -t1 -c K -m M     vs  sluice load --mode http2 -c K --concurrency K*M --threads 1

Usage: python3 bench/loadgen_vs.py [--duration 10] [--runs 3] [--connections 16]
       [--h2-connections 4] [--streams 16] [--json out.json]
Needs: wrk and h2load (Debian packages `wrk`, `nghttp2-client`), a release build
(`cargo build --release -p sluice`).
"""
import argparse, json, os, re, socket, statistics, subprocess, sys, tempfile, time, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "sluice")
EVENT = b'{"source":"loadgen-vs","pad":"' + b"x" * 68 + b'"}\n'


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_ready(admin, timeout=20):
    end = time.time() + timeout
    while time.time() < end:
        try:
            urllib.request.urlopen(f"http://{admin}/healthz", timeout=1).read()
            return
        except Exception:
            time.sleep(0.1)
    sys.exit("server did not become ready")


def run(cmd):
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{p.stdout}\n{p.stderr}")
    return p.stdout


def wrk(url, c, d, lua):
    out = run(["taskset", "-c", "1", "wrk", "-t1", f"-c{c}", f"-d{d}s", "-s", lua, url])
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx:
        sys.exit(f"wrk saw errors:\n{out}")
    return float(m.group(1))


def h2load(url, c, m, d, body):
    out = run(["taskset", "-c", "1", "h2load", "-t1", f"-c{c}", f"-m{m}", f"-D{d}",
               "--warm-up-time=2", "-d", body, "-H", "content-type: application/x-ndjson", url])
    rate = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)
    status = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    if status and (int(status.group(3)) or int(status.group(4))):
        sys.exit(f"h2load saw errors:\n{out}")
    return float(rate.group(1))


def sluice_load(base, mode, c, conc, d, out):
    run(["taskset", "-c", "1", BIN, "load", "--url", base, "--stream", "bench", "--mode", mode,
         "-c", str(c), "--concurrency", str(conc), "-d", f"{d}s", "--warmup", "2s",
         "--threads", "1", "--size", str(len(EVENT) - 1), "--quiet", "--json", out])
    r = json.load(open(out))
    if r["errors"]:
        sys.exit(f"sluice load saw errors: {r['errors_by_kind']}")
    return r["requests_per_s"], r["latency_ms"]["p99"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--h2-connections", type=int, default=4)
    ap.add_argument("--streams", type=int, default=16)
    ap.add_argument("--json")
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="loadgen-vs-")
    body = os.path.join(tmp, "event.ndjson")
    open(body, "wb").write(EVENT)
    lua = os.path.join(tmp, "post.lua")
    open(lua, "w").write('wrk.method = "POST"\nwrk.body = %s\nwrk.headers["Content-Type"] = "application/x-ndjson"\n'
                         % json.dumps(EVENT.decode()))
    port, admin_port = free_port(), free_port()
    base, admin = f"http://127.0.0.1:{port}", f"127.0.0.1:{admin_port}"
    url = f"{base}/v1/streams/bench/events"
    server = subprocess.Popen(["taskset", "-c", "0", BIN, "serve", "--listen", f"127.0.0.1:{port}",
                               "--admin-listen", admin, "--data-dir", os.path.join(tmp, "data"),
                               "--queue", "memory", "--sink", "blackhole", "--log-level", "warn"])
    try:
        wait_ready(admin)
        d, c, k, m = a.duration, a.connections, a.h2_connections, a.streams
        results = {}
        # HTTP/1.1
        wrk(url, c, 3, lua)  # warm-up, discarded
        results["wrk_http1"] = [wrk(url, c, d, lua) for _ in range(a.runs)]
        results["sluice_http1"] = [sluice_load(base, "http1", c, c, d, os.path.join(tmp, f"h1-{i}.json"))[0]
                                   for i in range(a.runs)]
        # HTTP/2
        results["h2load_http2"] = [h2load(url, k, m, d, body) for _ in range(a.runs)]
        results["sluice_http2"] = [sluice_load(base, "http2", k, k * m, d, os.path.join(tmp, f"h2-{i}.json"))[0]
                                   for i in range(a.runs)]
    finally:
        server.terminate()
        server.wait(timeout=30)
    med = {k: statistics.median(v) for k, v in results.items()}
    print(f"closed model, {d}s runs x {a.runs}, median req/s (server core 0, tool core 1)")
    print(f"  HTTP/1.1, {c} connections:            wrk {med['wrk_http1']:>10.0f}   sluice load {med['sluice_http1']:>10.0f}"
          f"   ({100 * (med['sluice_http1'] / med['wrk_http1'] - 1):+.1f} %)")
    print(f"  HTTP/2, {k} connections x {m} streams:  h2load {med['h2load_http2']:>7.0f}   sluice load {med['sluice_http2']:>10.0f}"
          f"   ({100 * (med['sluice_http2'] / med['h2load_http2'] - 1):+.1f} %)")
    print("  runs:", json.dumps(results))
    if a.json:
        json.dump({"runs": results, "median": med, "duration_s": d, "connections": c,
                   "h2_connections": k, "streams": m}, open(a.json, "w"), indent=2)


if __name__ == "__main__":
    main()
