#!/usr/bin/env python3
"""End-to-end load benchmark of `sluice serve` over loopback, measured at the sink.

Question: how many events per second does sluice *deliver* (file sink, fsynced)
sustained, for single-event POSTs over 64 keep-alive connections and for NDJSON
bodies of 1,000 events, with ack = fsync and ack = write; what latency do producers
see (p50/p99 from wrk) and how much memory does the server use (peak RSS)?

Method (see DEVELOPERS.md "benchmarks you can trust"):
  * the server is pinned to core 0, wrk to core 1 (`taskset`);
  * a warm-up run first, then N measured runs of D seconds each; the figure is the
    median run;
  * throughput = sink-delivered events (from /metrics) over the run, and the run
    only counts if the queue backlog did not grow (a buffer filling is not throughput).

Usage: python3 bench/e2e.py [--duration 60] [--runs 3] [--json bench/e2e.json]
Needs: wrk (Debian package `wrk`), a release build (`cargo build --release`).
"""
import argparse, json, os, re, shlex, shutil, signal, socket, statistics, subprocess, sys, tempfile, time, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "sluice")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def metrics(admin):
    text = urllib.request.urlopen(f"http://{admin}/metrics", timeout=5).read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        k, _, v = line.rpartition(" ")
        try:
            out[k] = float(v)
        except ValueError:
            pass
    return out


def delivered(m):
    return sum(v for k, v in m.items() if k.startswith("sluice_sink_delivered_events_total"))


def rss_peak_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def wrk(url, script, duration, conns, timeout=2):
    cmd = ["taskset", "-c", "1", "wrk", "-t1", f"-c{conns}", f"-d{duration}s", f"--timeout={timeout}s", "--latency", "-s", script, url]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    def lat(pct):
        m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if not m:
            return None
        v, unit = float(m.group(1)), m.group(2)
        return v / 1000 if unit == "us" else v * 1000 if unit == "s" else v
    reqs = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errs = re.search(r"Socket errors: (.*)", out)
    return {"req_s": reqs, "p50_ms": lat(50), "p99_ms": lat(99), "non_2xx": int(non2xx.group(1)) if non2xx else 0,
            "socket_errors": errs.group(1) if errs else "", "raw": out}


def run_case(name, ack, script, events_per_req, args, tmp):
    data = os.path.join(tmp, name)
    shutil.rmtree(data, ignore_errors=True)
    http, admin = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    extra = shlex.split(args.server_args)
    # The ack mode is an option of the WAL only; another queue refuses it.
    queue = next((a.split("=", 1)[1] for a in extra if a.startswith("--queue=")), None)
    if queue is None and "--queue" in extra:
        queue = extra[extra.index("--queue") + 1]
    ack_args = ["--ack", ack] if queue in (None, "wal") else []
    server = subprocess.Popen(["taskset", "-c", "0", BIN, "serve", "--listen", http, "--admin-listen", admin,
                               "--data-dir", data, "--log-level", "warn"] + ack_args + extra,
                              stdout=subprocess.DEVNULL, stderr=open(data + ".log", "w"))
    try:
        for _ in range(200):
            try:
                urllib.request.urlopen(f"http://{admin}/healthz", timeout=1)
                break
            except Exception:
                time.sleep(0.05)
        url = f"http://{http}/v1/streams/bench/events"
        conns = args.connections if events_per_req == 1 else getattr(args, "batch_connections", args.connections)
        timeout = getattr(args, "timeout", 2)
        wrk(url, script, args.warmup, conns, timeout)  # warm-up
        runs = []
        for i in range(args.runs):
            m0, t0 = metrics(admin), time.time()
            w = wrk(url, script, args.duration, conns, timeout)
            m1, t1 = metrics(admin), time.time()
            secs = t1 - t0
            run = {
                "delivered_events_s": (delivered(m1) - delivered(m0)) / secs,
                "accepted_events_s": (m1.get("sluice_ingest_events_total", 0) - m0.get("sluice_ingest_events_total", 0)) / secs,
                "req_s": w["req_s"], "p50_ms": w["p50_ms"], "p99_ms": w["p99_ms"],
                "non_2xx": w["non_2xx"], "socket_errors": w["socket_errors"],
                "backlog_start": m0.get("sluice_queue_depth_events", 0),
                "backlog_end": m1.get("sluice_queue_depth_events", 0),
            }
            # Grew = more than what half a second of delivery (or four requests per
            # connection) clears: a real backlog, not the events in flight.
            slack = max(events_per_req * conns * 4, 0.5 * run["delivered_events_s"])
            run["backlog_grew"] = run["backlog_end"] > run["backlog_start"] + slack
            runs.append(run)
            print(f"  {name} run {i + 1}: {json.dumps(run)}", file=sys.stderr)
        med = sorted(runs, key=lambda r: r["delivered_events_s"])[len(runs) // 2]
        med = dict(med)
        med["peak_rss_mib"] = rss_peak_kib(server.pid) / 1024
        med["runs"] = runs
        return med
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
        shutil.rmtree(data, ignore_errors=True)


def write_scripts(scripts, event=None):
    """The wrk scripts: one event per request, and an NDJSON body of 1,000 events.
    The event is a 75-byte click unless `event` names a file holding one (e.g. the
    203-byte ../shared/bench/event.json); then every event is that one."""
    if event:
        with open(event) as f:
            one = f.read().strip()
        body = (one + "\n") * 1000
    else:
        one = '{"user":"u1","action":"click","page":"/products/1","ms":1,"tags":["a","b"]}'
        body = "".join('{"user":"u%d","action":"click","page":"/products/%d","ms":%d,"tags":["a","b"]}\n' % (i, i, i) for i in range(1000))
    with open(os.path.join(scripts, "ndjson.body"), "w") as f:
        f.write(body)
    with open(os.path.join(scripts, "single.body"), "w") as f:
        f.write(one)
    single = os.path.join(scripts, "single.lua")
    with open(single, "w") as f:
        f.write('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                f'local f = io.open("{scripts}/single.body", "rb")\nwrk.body = f:read("*a")\nf:close()\n')
    ndjson = os.path.join(scripts, "ndjson.lua")
    with open(ndjson, "w") as f:
        f.write('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/x-ndjson"\n'
                f'local f = io.open("{scripts}/ndjson.body", "rb")\nwrk.body = f:read("*a")\nf:close()\n')
    return single, ndjson


def main():
    global BIN
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--json", default=None)
    ap.add_argument("--cases", default="single-fsync,single-write,ndjson-fsync,ndjson-write")
    ap.add_argument("--bin", default=BIN, help="the sluice binary to run (e.g. an older build to compare)")
    ap.add_argument("--server-args", default="", help="extra flags for sluice serve, e.g. \"--queue memory --sink blackhole\"")
    args = ap.parse_args()
    BIN = args.bin
    if not os.path.exists(BIN):
        sys.exit("build first: cargo build --release")
    tmp = tempfile.mkdtemp(prefix="sluice-bench-", dir=os.environ.get("BENCH_DIR", "/tmp"))
    scripts = os.path.join(tmp, "scripts")
    os.makedirs(scripts)
    single, ndjson = write_scripts(scripts)
    cases = {"single-fsync": ("fsync", single, 1), "single-write": ("write", single, 1),
             "ndjson-fsync": ("fsync", ndjson, 1000), "ndjson-write": ("write", ndjson, 1000)}
    results = {}
    for name in args.cases.split(","):
        ack, script, per = cases[name]
        results[name] = run_case(name, ack, script, per, args, tmp)
    shutil.rmtree(tmp, ignore_errors=True)
    print("| case | req/s | delivered events/s | p50 ms | p99 ms | non-2xx | peak RSS MiB | backlog grew |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['req_s']:,.0f} | {r['delivered_events_s']:,.0f} | {r['p50_ms']} | {r['p99_ms']} | "
              f"{r['non_2xx']} | {r['peak_rss_mib']:.0f} | {r['backlog_grew']} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": os.uname().nodename, "cpus": os.cpu_count(), "args": vars(args), "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
