#!/usr/bin/env python3
"""End-to-end throughput and ack latency through each queue, in one run:
the embedded WAL, NATS JetStream and Kafka (tansu), for single-event POSTs and for
NDJSON bodies of 1,000 events, measured at the sink (file sink, fsynced).

Method: as bench/e2e.py (whose run_case this reuses): `sluice serve --queue Q` pinned
to core 0, wrk pinned to core 1, a fresh broker per case, a warm-up, then N runs of
D seconds, the median run;
throughput = events the sink delivered over the run (from /metrics), flagged when the
queue backlog grew. The broker runs unpinned (it has no core of its own on a 2-core
box), so broker figures include the broker's CPU competing with both.

With --native, each broker case is preceded, on a fresh broker, by the broker's ceiling
with nothing of sluice in the way, pinned to core 0 as sluice is: for NATS a native
async-nats client (crates/sluice-brokers/examples/nats_native.rs) publishing with many
publishes in flight and consuming with a pull consumer and batched acks; for Kafka a
librdkafka producer configured as sluice's (idempotent, acks=all, 4,096 records in
flight, one record per event) and a consumer group member committing every 100 ms
(crates/sluice-brokers/examples/kafka_native.rs); producing and consuming at once.

Usage: python3 bench/brokers.py [--duration 20] [--runs 3] [--queues wal,nats,kafka]
       [--event ../shared/bench/event.json] [--native]
Needs: wrk, nats-server and tansu (scripts/install-brokers), `cargo build --release`;
for --native also `cargo build --release -p sluice-brokers --all-features --examples`.
"""
import argparse, json, os, shutil, subprocess, sys, tempfile, time, socket

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import e2e  # noqa: E402


def which(name):
    for d in os.environ.get("PATH", "").split(":") + ["/usr/sbin", os.path.expanduser("~/.cargo/bin")]:
        p = os.path.join(d, name)
        if os.path.isfile(p) and os.access(p, os.X_OK):
            return p
    sys.exit(f"{name} not found: run scripts/install-brokers")


def wait_port(port, timeout=30):
    end = time.time() + timeout
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"broker on port {port} did not come up")


def start_broker(kind, tmp):
    port = e2e.free_port()
    if kind == "nats":
        conf = os.path.join(tmp, "nats.conf")
        with open(conf, "w") as f:
            f.write(f"host: 127.0.0.1\nport: {port}\njetstream {{ store_dir: {os.path.join(tmp, 'js')!r} }}\n")
        p = subprocess.Popen([which("nats-server"), "-c", conf], stdout=subprocess.DEVNULL,
                             stderr=open(os.path.join(tmp, "nats.log"), "w"))
        url = f"nats://127.0.0.1:{port}"
    else:
        addr = f"tcp://127.0.0.1:{port}"
        p = subprocess.Popen([which("tansu"), "broker", "--listener-url", addr, "--advertised-listener-url", addr,
                              "--storage-engine", "memory://tansu/"], stdout=subprocess.DEVNULL,
                             stderr=open(os.path.join(tmp, "tansu.log"), "w"))
        url = f"kafka://127.0.0.1:{port}"
    wait_port(port)
    time.sleep(1)
    return p, url


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--connections", type=int, default=64, help="connections for single-event requests")
    ap.add_argument("--batch-connections", type=int, default=16, help="connections for 1,000-event bodies")
    ap.add_argument("--timeout", type=int, default=10, help="wrk's request timeout, seconds")
    ap.add_argument("--queues", default="wal,nats,kafka")
    ap.add_argument("--cases", default="single-fsync,ndjson-fsync")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (server and broker logs)")
    ap.add_argument("--event", default=None, help="a file holding the event to send (default: a 75-byte click)")
    ap.add_argument("--native", action="store_true", help="also measure each broker with a native client, same run")
    ap.add_argument("--bin", default=e2e.BIN, help="the sluice binary to run (e.g. an older build to compare)")
    args = ap.parse_args()
    e2e.BIN = args.bin
    native_bins = {q: os.path.join(e2e.ROOT, "target", "release", "examples", f"{q}_native")
                   for q in ("nats", "kafka")}
    if args.native and not all(os.path.exists(b) for b in native_bins.values()):
        sys.exit("build first: cargo build --release -p sluice-brokers --all-features --examples")
    if not os.path.exists(e2e.BIN):
        sys.exit("build first: cargo build --release")
    tmp = tempfile.mkdtemp(prefix="sluice-brokers-", dir=os.environ.get("BENCH_DIR", "/tmp"))
    scripts = os.path.join(tmp, "scripts")
    os.makedirs(scripts)
    single, ndjson = e2e.write_scripts(scripts, args.event)
    natives = []
    cases = {"single-fsync": (single, 1), "ndjson-fsync": (ndjson, 1000)}
    results = []
    for queue in args.queues.split(","):
        for name in args.cases.split(","):
            # A fresh broker per case: what one case leaves in the broker (a
            # backlog, a consumer group) must not slow the next.
            broker = None
            if queue == "wal":
                args.server_args = ""
            else:
                d = os.path.join(tmp, f"{queue}-{name}-broker")
                os.makedirs(d)
                broker, url = start_broker(queue, d)
                if args.native and not any(n[:2] == (queue, name) for n in natives):
                    natives.append((queue, name, run_native(queue, native_bins[queue], url, scripts, args)))
                    broker.kill()
                    broker.wait()
                    shutil.rmtree(d)
                    os.makedirs(d)
                    broker, url = start_broker(queue, d)
                args.server_args = f"--queue {url}"
            try:
                script, per = cases[name]
                r = e2e.run_case(f"{queue}-{name}", "fsync", script, per, args, tmp)
                results.append((queue, name, r))
            finally:
                if broker:
                    broker.kill()
                    broker.wait()
    if args.keep:
        print(f"logs kept under {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    print("| queue | case | req/s | delivered events/s | p50 ms | p99 ms | non-2xx | sluice peak RSS MiB | backlog grew |")
    print("|---|---|---|---|---|---|---|---|---|")
    for queue, name, r in results:
        print(f"| {queue} | {name} | {r['req_s']:,.0f} | {r['delivered_events_s']:,.0f} | {r['p50_ms']} | "
              f"{r['p99_ms']} | {r['non_2xx']} | {r['peak_rss_mib']:.0f} | {r['backlog_grew']} |")
    for queue, name, r in natives:
        left = f"{r['backlog_end']} left" if "backlog_end" in r else ""
        print(f"| {queue}, native client (before {name}) | publish + consume | — | {r['consumed_per_s']:,.0f} consumed "
              f"({r['published_per_s']:,.0f} published) | | | | {left} |")


def run_native(queue, native_bin, url, scripts, args):
    """The native client against a fresh broker, the sluice case's event as payload."""
    if queue == "nats":
        target = ["--url", url, "--msg-id"]
    else:
        target = ["--brokers", url]
    cmd = ["taskset", "-c", "0", native_bin, *target, "--seconds", str(args.duration),
           "--payload", os.path.join(scripts, "single.body")]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=args.duration + 60).stdout
    r = json.loads(out.strip().splitlines()[-1])
    print(f"  {queue} native client: {json.dumps(r)}", flush=True)
    return r


if __name__ == "__main__":
    main()
