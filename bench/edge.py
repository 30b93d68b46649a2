#!/usr/bin/env python3
"""The gRPC front door and the gateway, measured end to end (issue #3's figures).

Questions:
  1. grpc-stream: gRPC IngestStream with 1,000-event messages, ack = fsync: how many
     events/s does sluice take *and deliver* (file sink, fsynced)? And with the
     blackhole sink, how many can ingest (WAL with fsync) alone take?
  2. grpc-unary: one-event Ingest calls, 64 in flight: req/s, p50, p99.
  3. gateway: the same HTTP/2 load straight to ingest (h2c) and through `sluice
     gateway` with TLS (h2 by ALPN): throughput lost (%) and latency added (p50/p99).
     The ingest node uses the blackhole sink here (WAL with fsync still).
  3b. gateway-equal: the same comparison with the gateway given the CPU of the node it
     fronts: ingest and the gateway both on core 0, each capped at half of it by a
     cgroup CPU quota (the direct run's ingest too), the load generator alone on core
     1. Needs write access to /sys/fs/cgroup/cpu (cgroup v1; root here).
  4. c10k: 10,000 TLS connections held on the gateway, each sending one event every
     5 s (2,000 req/s in all, open model): p99 and the gateway's RSS.

Method: release build; `sluice serve` pinned to core 0 (`taskset -c 0`), the load
generator (`sluice load`) to core 1; in (3) and (4) the gateway shares core 1 with the
load generator (this machine has two cores), so the gateway's own CPU is charged to
the "through the gateway" side. Each run has a warm-up; delivered events are read
from the server's /metrics (`sluice_sink_delivered_events_total`) over the measured
window only, so a backlog absorbed by the WAL does not count. R runs, median.

Usage: python3 bench/edge.py [--duration 20] [--runs 3] [--only grpc-stream,...]
Needs: `cargo build --release -p sluice`.
"""
import argparse, json, os, re, shutil, socket, statistics, subprocess, sys, tempfile, time
import urllib.request

CPUS = {"server": "0", "load": "1"}
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "sluice")
SERVER_BIN = [BIN]  # the nodes under test (--server-bin); the load tool is always BIN


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def metrics(admin, scheme="http"):
    import ssl
    ctx = ssl._create_unverified_context() if scheme == "https" else None
    text = urllib.request.urlopen(f"{scheme}://{admin}/metrics", timeout=5, context=ctx).read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        k, v = line.rsplit(" ", 1)
        try:
            out[k] = float(v)
        except ValueError:
            pass
    return out


def delivered(admin):
    return sum(v for k, v in metrics(admin).items() if k.startswith("sluice_sink_delivered_events_total"))


def wait_ready(admin, scheme="http", timeout=30):
    end = time.time() + timeout
    while time.time() < end:
        try:
            metrics(admin, scheme)
            return
        except Exception:
            time.sleep(0.1)
    sys.exit(f"{admin} did not become ready")


class Proc:
    def __init__(self, cpus, args, log, env=None):
        self.log = open(log, "w")
        self.p = subprocess.Popen(["taskset", "-c", cpus, SERVER_BIN[0]] + args, stdout=self.log, stderr=self.log,
                                  env={**os.environ, **(env or {})})

    def cpu_s(self):
        """User + system CPU seconds of the process so far."""
        f = open(f"/proc/{self.p.pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")

    def rss_mib(self):
        for line in open(f"/proc/{self.p.pid}/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024

    def stop(self):
        self.p.terminate()
        try:
            self.p.wait(60)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()


class CpuBudget:
    """A cgroup (v1 `cpu` controller) capping its processes at `share` of one core,
    enforced every 10 ms: stands in for a machine of that size on this 2-core box."""

    ROOT = "/sys/fs/cgroup/cpu"

    def __init__(self, name, share):
        self.path = os.path.join(self.ROOT, f"sluice-bench-{name}")
        os.makedirs(self.path, exist_ok=True)
        with open(os.path.join(self.path, "cpu.cfs_period_us"), "w") as f:
            f.write("10000")
        with open(os.path.join(self.path, "cpu.cfs_quota_us"), "w") as f:
            f.write(str(int(10000 * share)))

    def add(self, proc):
        with open(os.path.join(self.path, "cgroup.procs"), "w") as f:
            f.write(str(proc.p.pid))

    def close(self):
        # The processes have exited; an empty cgroup can be removed.
        for _ in range(50):
            try:
                os.rmdir(self.path)
                return
            except OSError:
                time.sleep(0.1)


def serve(tmp, extra=(), env=None):
    http, admin = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    data = tempfile.mkdtemp(dir=tmp)
    p = Proc(CPUS["server"], ["serve", "--listen", http, "--admin-listen", admin, "--data-dir", data,
                   "--log-level", "warn", *extra], os.path.join(data, "log"), env)
    wait_ready(admin)
    return p, http, admin, data


def certs(tmp):
    """A throwaway CA and a server certificate for 127.0.0.1 it signed: (ca, cert, key)."""
    d = os.path.join(tmp, "pki")
    os.makedirs(d, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    run(["openssl", "req", "-x509", *ec, "-keyout", f"{d}/ca.key", "-out", f"{d}/ca.pem",
         "-days", "2", "-subj", "/CN=bench CA"])
    run(["openssl", "req", *ec, "-keyout", f"{d}/key.pem", "-out", f"{d}/req.csr", "-subj", "/CN=localhost"])
    with open(f"{d}/ext.cnf", "w") as f:
        f.write("subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n")
    run(["openssl", "x509", "-req", "-in", f"{d}/req.csr", "-CA", f"{d}/ca.pem", "-CAkey", f"{d}/ca.key",
         "-CAcreateserial", "-out", f"{d}/cert.pem", "-days", "2", "-extfile", f"{d}/ext.cnf"])
    return f"{d}/ca.pem", f"{d}/cert.pem", f"{d}/key.pem"


def gateway(tmp, upstream, cert, key, cpus="1"):
    http, admin = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    p = Proc(cpus, ["gateway", "--upstream", f"http://{upstream}", "--listen", http,
                    "--admin-listen", admin, "--tls-cert", cert, "--tls-key", key,
                    "--log-level", "warn", "--data-dir", tmp], os.path.join(tmp, "gateway.log"))
    wait_ready(admin, "https")
    return p, http, admin


def run(cmd):
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{p.stdout}\n{p.stderr}")
    return p.stdout


def load(tmp, url, mode, args, ca=None):
    out = os.path.join(tmp, "load.json")
    cmd = ["taskset", "-c", CPUS["load"], BIN, "load", "--url", url, "--stream", "bench", "--mode", mode,
           "--quiet", "--json", out] + args
    if ca:
        cmd += ["--ca", ca]
    run(cmd)
    return json.load(open(out))


def med(xs):
    return statistics.median(xs)


def grpc_stream(tmp, a, sink):
    # A 256 MiB log fills within the warm-up when ingest outruns the sink, so the
    # measured window is the steady state: streams held back to what is delivered.
    p, http, admin, data = serve(tmp, ["--sink", sink], {"SLUICE_QUEUE__MAX_BYTES": "256 MiB",
                                                        "SLUICE_QUEUE__SEGMENT_BYTES": "64 MiB"})
    try:
        before = [None]

        # Measure deliveries over the load's measured window: sample after warm-up.
        warm = 15
        import threading
        marks = {}

        def sampler():
            time.sleep(warm + 0.5)
            marks["a"] = (time.time(), delivered(admin))
            time.sleep(a.duration - 1)
            marks["b"] = (time.time(), delivered(admin))

        t = threading.Thread(target=sampler)
        t.start()
        r = load(tmp, f"http://{http}", "grpc-stream",
                 ["-c", "4", "--batch", "1000", "--messages", "50", "-d", f"{a.duration}s",
                  "--warmup", f"{warm}s", "--size", "60"])
        t.join()
        (ta, da), (tb, db) = marks["a"], marks["b"]
        return {"accepted_events_per_s": r["events_per_s"], "delivered_events_per_s": (db - da) / (tb - ta),
                "errors": r["errors"], "p99_ms": r["latency_ms"]["p99"]}
    finally:
        p.stop()
        shutil.rmtree(data, ignore_errors=True)


def grpc_unary(tmp, a):
    p, http, admin, data = serve(tmp)
    try:
        r = load(tmp, f"http://{http}", "grpc-unary",
                 ["-c", "1", "--concurrency", "64", "-d", f"{a.duration}s", "--warmup", "5s", "--size", "60"])
        return {"requests_per_s": r["requests_per_s"], "p50_ms": r["latency_ms"]["p50"],
                "p99_ms": r["latency_ms"]["p99"], "errors": r["errors"]}
    finally:
        p.stop()
        shutil.rmtree(data, ignore_errors=True)


def via_gateway(tmp, a, batch, share=None):
    # Blackhole sink: the file sink cannot keep up with the direct 100-event run,
    # whose WAL would fill and answer 429; this compares the front doors.
    #
    # share=None: ingest on core 0, the gateway on core 1 beside the load generator.
    # share=S: ingest and the gateway both on core 0, each capped at S of it (the
    # direct run's ingest too), the load generator alone on core 1: a gateway with the
    # CPU of the node it fronts, as when each runs on a machine of its own.
    ca, cert, key = certs(tmp)
    p, http, admin, data = serve(tmp, ["--sink", "blackhole"])
    g, ghttp, gadmin = gateway(tmp, http, cert, key, cpus="1" if share is None else "0")
    budgets = []
    try:
        if share is not None:
            budgets = [CpuBudget("ingest", share), CpuBudget("gateway", share)]
            budgets[0].add(p)
            budgets[1].add(g)
        args = ["-c", "4", "--concurrency", "64", "--batch", str(batch), "-d", f"{a.duration}s",
                "--warmup", "5s", "--size", "60"]
        c0 = p.cpu_s()
        direct = load(tmp, f"http://{http}", "http2", args)
        c1, g1 = p.cpu_s(), g.cpu_s()
        gw = load(tmp, f"https://{ghttp}", "http2", args, ca=ca)
        c2, g2 = p.cpu_s(), g.cpu_s()
        # Requests in the whole run, warm-up included (CPU is read around the whole run).
        n_direct = direct["requests_per_s"] * (a.duration + 5)
        n_gw = gw["requests_per_s"] * (a.duration + 5)
        return {
            "ingest_cpu_us_per_request": 1e6 * (c1 - c0) / n_direct,
            "gateway_cpu_us_per_request": 1e6 * (g2 - g1) / n_gw,
            "ingest_behind_gateway_cpu_us_per_request": 1e6 * (c2 - c1) / n_gw,
            "batch": batch,
            "direct_events_per_s": direct["events_per_s"], "gateway_events_per_s": gw["events_per_s"],
            "loss_pct": 100 * (1 - gw["events_per_s"] / direct["events_per_s"]),
            "direct_p50_ms": direct["latency_ms"]["p50"], "gateway_p50_ms": gw["latency_ms"]["p50"],
            "direct_p99_ms": direct["latency_ms"]["p99"], "gateway_p99_ms": gw["latency_ms"]["p99"],
            "errors": direct["errors"] + gw["errors"],
        }
    finally:
        g.stop()
        p.stop()
        for b in budgets:
            b.close()
        shutil.rmtree(data, ignore_errors=True)


def c10k(tmp, a):
    ca, cert, key = certs(tmp)
    p, http, admin, data = serve(tmp)
    g, ghttp, gadmin = gateway(tmp, http, cert, key)
    try:
        import threading
        seen = {}

        def sampler():  # connections held, read mid-run
            time.sleep(10 + a.duration / 2)
            seen["m"] = metrics(gadmin, "https")

        t = threading.Thread(target=sampler)
        t.start()
        r = load(tmp, f"https://{ghttp}", "http1",
                 ["-c", "10000", "--rate", "2000", "-d", f"{a.duration}s", "--warmup", "10s", "--size", "60",
                  "--timeout", "30s"], ca=ca)
        t.join()
        m = seen["m"]
        return {"connections": 10000, "requests_per_s": r["requests_per_s"], "p50_ms": r["latency_ms"]["p50"],
                "p99_ms": r["latency_ms"]["p99"], "max_ms": r["latency_ms"]["max"], "errors": r["errors"],
                "gateway_rss_mib": g.rss_mib(),
                "gateway_connections_open": m.get('sluice_connections_open{listener="ingest"}')}
    finally:
        g.stop()
        p.stop()
        shutil.rmtree(data, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=20)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--only", default="grpc-stream,grpc-unary,gateway,gateway-equal,c10k")
    ap.add_argument("--share", type=float, default=0.5,
                    help="gateway-equal: the share of core 0 given to ingest and to the gateway each")
    ap.add_argument("--json")
    ap.add_argument("--server-cpus", default="0")
    ap.add_argument("--load-cpus", default="1")
    ap.add_argument("--server-bin", default=BIN,
                    help="the sluice binary for the nodes (e.g. an older build to compare)")
    a = ap.parse_args()
    SERVER_BIN[0] = a.server_bin
    CPUS.update(server=a.server_cpus, load=a.load_cpus)
    only = a.only.split(",")
    tmp = tempfile.mkdtemp(prefix="sluice-edge-")
    results = {}
    try:
        benches = {
            "grpc-stream (file sink)": ("grpc-stream", lambda: grpc_stream(tmp, a, "file")),
            "grpc-stream (blackhole sink)": ("grpc-stream", lambda: grpc_stream(tmp, a, "blackhole")),
            "grpc-unary": ("grpc-unary", lambda: grpc_unary(tmp, a)),
            "gateway, 1-event requests": ("gateway", lambda: via_gateway(tmp, a, 1)),
            "gateway, 100-event requests": ("gateway", lambda: via_gateway(tmp, a, 100)),
            f"gateway, equal CPU ({a.share:g} core each), 1-event requests":
                ("gateway-equal", lambda: via_gateway(tmp, a, 1, a.share)),
            f"gateway, equal CPU ({a.share:g} core each), 100-event requests":
                ("gateway-equal", lambda: via_gateway(tmp, a, 100, a.share)),
            "c10k TLS on the gateway": ("c10k", lambda: c10k(tmp, a)),
        }
        for name, (key, fn) in benches.items():
            if key not in only:
                continue
            runs = [fn() for _ in range(a.runs)]
            agg = {k: med([r[k] for r in runs]) if isinstance(runs[0][k], (int, float)) else runs[0][k]
                   for k in runs[0]}
            results[name] = {"median": agg, "runs": runs}
            print(f"{name}: " + ", ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}"
                                          for k, v in agg.items()), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if a.json:
        json.dump(results, open(a.json, "w"), indent=2)


if __name__ == "__main__":
    main()
