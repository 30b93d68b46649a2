#!/usr/bin/env python3
"""Chaos scenarios against the compose cluster (compose.yaml), with an independent
checker of acked against delivered events.

    python3 bench/chaos.py smoke                      # one event, producer -> file
    python3 bench/chaos.py run kill-ingest-nats       # one scenario (see SCENARIOS)
    python3 bench/chaos.py run all --json out.jsonl
    python3 bench/chaos.py table out.jsonl            # the markdown table of CHAOS.md

Each scenario runs two producers through the TLS gateway for its duration:

- a *tagged* producer (this file): threads in an open model (requests are due on a
  fixed schedule; latency counts from the due time, so a stall is not hidden by
  coordinated omission), each request an NDJSON batch of events
  `{"chaos": RUN, "seq": N, ...}`. A request that is not answered 202 is sent again
  with the same events after its Retry-After (at-least-once, as a real producer
  would). The events of every 202 are *acked*.
- `sluice load --rate` (open model, untagged events) as the steady background, when
  a sluice binary is given (--load-bin); its events are checked by count only.

While they run the scenario's faults happen (docker kill -s KILL, docker start,
network disconnects ...). Afterwards the checker reads what the processors wrote
(`docker cp` from each processor container's /data/out, so a dead container's files
count too) until every acked event has been seen or --drain seconds pass, and
reports: acked, acked-but-lost (must be 0), duplicates delivered, what producers saw
(status counts; any non-202 other than 429/503-with-Retry-After is a failure), p99
latency during the fault, and each restarted container's time to healthy again.

The processes it starts are its own (subprocesses and threads); every loop is
bounded in time. Exit status 1 when an acked event is lost or producers saw
something else than 202/429/503.
"""
import argparse
import http.client
import io
import json
import os
import random
import shutil
import ssl
import subprocess
import sys
import tarfile
import threading
import time
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def log(*a):
    print("chaos:", *a, file=sys.stderr, flush=True)


class Cluster:
    """The compose project: service -> container id, and the docker verbs."""

    def __init__(self, project):
        self.project = project
        self.ids = {}

    def sh(self, *args, check=True, capture=True, timeout=120):
        r = subprocess.run(args, capture_output=capture, text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise RuntimeError(f"{' '.join(args)}: {r.stderr.strip()}")
        return r.stdout.strip() if capture else ""

    def containers(self, service=None):
        """Container ids of the project (or one service), running or not, by label."""
        cmd = ["docker", "ps", "-a", "--filter", f"label=com.docker.compose.project={self.project}",
               "--format", '{{.ID}} {{.Label "com.docker.compose.service"}}']
        pairs = [l.split() for l in self.sh(*cmd).splitlines() if l.strip()]
        return [(c, s) for c, s in pairs if service in (None, s)]

    def cid(self, service):
        if service not in self.ids:
            out = "\n".join(c for c, _ in self.containers(service))
            if not out:
                raise RuntimeError(f"no container for {service}")
            self.ids[service] = out.splitlines()[0]
        return self.ids[service]

    def network(self, name):
        """The compose network called `name` (e.g. edge -> sluice_edge)."""
        nets = self.sh("docker", "network", "ls", "--format", "{{.Name}}").split()
        for n in nets:
            if n in (f"{self.project}_{name}", f"{self.project}-{name}"):
                return n
        raise RuntimeError(f"no network {name} in {nets}")

    def stream_leader(self, consumer=False):
        """The NATS node leading the SLUICE stream, or with `consumer` its `processor`
        consumer (JetStream's /jsz, asked inside)."""
        for node in ("nats1", "nats2", "nats3"):
            out = self.sh("docker", "exec", self.cid(node), "bash", "-c",
                          "exec 3<>/dev/tcp/127.0.0.1/8222 && printf 'GET /jsz?streams=true&consumers=true "
                          "HTTP/1.0\\r\\n\\r\\n' >&3 && cat <&3", check=False)
            if "{" not in out:
                continue
            jsz = json.loads(out[out.index("{"):])
            for account in jsz.get("account_details") or []:
                for st in account.get("stream_detail") or []:
                    if st["name"] != "SLUICE":
                        continue
                    if consumer:
                        for c in st.get("consumer_detail") or []:
                            if c["name"] == "processor" and (c.get("cluster") or {}).get("leader"):
                                return c["cluster"]["leader"]
                    elif (st.get("cluster") or {}).get("leader"):
                        return st["cluster"]["leader"]
        raise RuntimeError("no leader found for the SLUICE stream")

    def leader_or_none(self, consumer=False):
        """The stream's (consumer's) leader for the record; None, not a failure, while
        there is none."""
        try:
            return self.stream_leader(consumer)
        except (RuntimeError, ValueError, subprocess.TimeoutExpired):
            return None

    def resolve(self, service):
        """`nats:leader` / `nats:follower`: the stream's leader or a follower, now."""
        if service not in ("nats:leader", "nats:follower"):
            return service
        leader = self.stream_leader()
        if service == "nats:leader":
            return leader
        return next(n for n in ("nats1", "nats2", "nats3") if n != leader)

    def fill(self, service):
        """Fills the file system under the service's /data (ENOSPC for its writers)."""
        self.sh("docker", "exec", "-u", "0", self.cid(service), "sh", "-c",
                "fallocate -l $(( $(df --output=avail -B1 /data | tail -1) - 4096 )) /data/filler"
                " || dd if=/dev/zero of=/data/filler bs=1M 2>/dev/null; df -h /data")

    def free(self, service):
        self.sh("docker", "exec", "-u", "0", self.cid(service), "rm", "-f", "/data/filler")

    def interface(self, service, net):
        """(pid, device) of the service's interface on a compose network."""
        pid = self.sh("docker", "inspect", "-f", "{{.State.Pid}}", self.cid(service))
        ip = self.sh("docker", "inspect", "-f",
                     f'{{{{(index .NetworkSettings.Networks "{self.network(net)}").IPAddress}}}}',
                     self.cid(service))
        for line in self.sh("nsenter", "-t", pid, "-n", "ip", "-o", "-4", "addr").splitlines():
            parts = line.split()
            if parts[3].split("/")[0] == ip:
                return pid, parts[1].split("@")[0]
        raise RuntimeError(f"no interface with {ip} in {service}")

    def slow(self, service, net, rate, limit=None):
        """A slow link: the service's egress on `net` through a token bucket (tc tbf:
        `rate`, 16 KiB burst, packets waiting more than 250 ms dropped; with `limit`,
        a queue of that many bytes and a 4 KiB burst instead, so that TCP's bursts
        overflow it: a lossy link), set from the host in the container's network
        namespace (this kernel has no netem; tbf works)."""
        pid, dev = self.interface(service, net)
        shape = ["burst", "16kb", "latency", "250ms"] if limit is None else \
            ["burst", "4kb", "limit", limit]
        self.sh("nsenter", "-t", pid, "-n", "tc", "qdisc", "replace", "dev", dev, "root",
                "tbf", "rate", rate, *shape)
        return dev

    def fast(self, service, net):
        """The link back to normal: drops the tbf qdisc; returns its counters."""
        pid, dev = self.interface(service, net)
        stats = self.sh("nsenter", "-t", pid, "-n", "tc", "-s", "qdisc", "show", "dev", dev)
        self.sh("nsenter", "-t", pid, "-n", "tc", "qdisc", "del", "dev", dev, "root")
        return " ".join(stats.split())

    def stepdown(self, what, via="nats1"):
        """Asks JetStream to move the SLUICE stream's (or the processor consumer's)
        leadership elsewhere, as an operator would with `nats consumer cluster
        step-down`: the API request in the NATS protocol, from inside `via`."""
        subject = {"stream": "$JS.API.STREAM.LEADER.STEPDOWN.SLUICE",
                   "consumer": "$JS.API.CONSUMER.LEADER.STEPDOWN.SLUICE.processor"}[what]
        script = ("exec 3<>/dev/tcp/127.0.0.1/4222 && printf 'CONNECT {\"verbose\":false}\\r\\n"
                  f"SUB _INBOX.stepdown 1\\r\\nPUB {subject} _INBOX.stepdown 0\\r\\n\\r\\n' >&3"
                  " && timeout 4 cat <&3")
        out = self.sh("docker", "exec", self.cid(via), "bash", "-c", script, check=False, timeout=30)
        return " ".join(l for l in out.splitlines() if l.startswith("{"))[:300]

    def logs(self, service, since):
        """The service's log lines since a wall-clock time (docker's timestamps)."""
        r = subprocess.run(["docker", "logs", "-t", "--since", f"{since:.3f}", self.cid(service)],
                           capture_output=True, text=True, timeout=60)
        return (r.stdout + r.stderr).splitlines()

    def health(self, service):
        return self.sh("docker", "inspect", "-f",
                       "{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{end}}",
                       self.cid(service), check=False)

    def kill(self, service):
        self.sh("docker", "kill", "-s", "KILL", self.cid(service))

    def start(self, service):
        self.sh("docker", "start", self.cid(service))

    def stop(self, service, timeout=40):
        self.sh("docker", "stop", "-t", str(timeout), self.cid(service), timeout=timeout + 30)

    def wait_healthy(self, service, limit=120):
        t0 = time.monotonic()
        while time.monotonic() - t0 < limit:
            # "running" alone: a container without a health check (the balancer).
            if self.health(service) in ("running healthy", "running"):
                return time.monotonic() - t0
            time.sleep(0.25)
        raise RuntimeError(f"{service} not healthy after {limit}s: {self.health(service)}")

    def processors(self):
        return sorted({s for _, s in self.containers() if s.startswith("process")})

    def collectors(self):
        """The `sluice serve` nodes an HTTP sink delivers to (docker/chaos.yaml)."""
        return sorted({s for _, s in self.containers() if s.startswith("collector")})

    def delivered(self):
        """Every envelope line in the processors' and collectors' /data/out (and dead
        letters). A collector's envelope (stream `relay`) carries the processor's
        envelope as its data: the second is what the checker reads."""
        lines = []
        for s in self.processors() + self.collectors():
            for d in ("/data/out", "/data/dead"):
                r = subprocess.run(["docker", "cp", f"{self.cid(s)}:{d}", "-"],
                                   capture_output=True, timeout=120)
                if r.returncode != 0:
                    continue  # nothing there yet
                with tarfile.open(fileobj=io.BytesIO(r.stdout)) as tar:
                    for m in tar.getmembers():
                        if m.isfile() and m.name.endswith(".ndjson"):
                            data = tar.extractfile(m).read()
                            lines.extend((d, m.name, l) for l in data.splitlines() if l)
        return lines


class Producer:
    """Tagged events through the gateway, open model, retries with the same events."""

    def __init__(self, url, ca, rate, batch, threads, duration, size=100):
        self.host, self.port = url.removeprefix("https://").split(":")
        self.port = int(self.port)
        self.ctx = ssl.create_default_context(cafile=ca)
        self.rate, self.batch, self.threads = rate, batch, threads
        self.duration, self.size = duration, size
        self.run = uuid.uuid4().hex[:12]
        self.acked = set()
        self.statuses = {}
        self.bad = []  # answers a producer must never see
        self.samples = []  # (due time, latency s, status)
        self.refusals = []  # (s from start, status) of every answer that was not 202
        self.lock = threading.Lock()
        self.next_seq = 0
        self.stop_retrying_at = None

    def body(self, seqs):
        pad = "x" * max(0, self.size - 40)
        return "".join(json.dumps({"chaos": self.run, "seq": s, "pad": pad},
                                  separators=(",", ":")) + "\n" for s in seqs).encode()

    def conn(self):
        return http.client.HTTPSConnection(self.host, self.port, context=self.ctx, timeout=15)

    def post(self, c, body):
        c.request("POST", "/v1/streams/chaos/events", body=body,
                  headers={"content-type": "application/x-ndjson"})
        r = c.getresponse()
        data = r.read()
        return r.status, r.getheader("retry-after"), data

    def worker(self, t0, index):
        interval = self.threads / self.rate
        c = self.conn()
        k = 0
        while True:
            due = t0 + index * interval / self.threads + k * interval
            if due - t0 >= self.duration:
                break
            k += 1
            now = time.monotonic()
            if due > now:
                time.sleep(due - now)
            with self.lock:
                seqs = list(range(self.next_seq, self.next_seq + self.batch))
                self.next_seq += self.batch
            body = self.body(seqs)
            first = True
            while True:
                try:
                    status, retry_after, data = self.post(c, body)
                except (OSError, http.client.HTTPException) as e:
                    status, retry_after, data = f"conn:{type(e).__name__}", None, b""
                    c.close()
                    c = self.conn()
                done = time.monotonic()
                with self.lock:
                    self.statuses[str(status)] = self.statuses.get(str(status), 0) + 1
                    if first:
                        self.samples.append((due - t0, done - due, status))
                    if status != 202:
                        self.refusals.append((round(done - t0, 2), str(status)))
                    if status == 202:
                        self.acked.update(seqs)
                    elif status in (429, 503):
                        if retry_after is None:
                            self.bad.append(f"{status} without Retry-After: {data[:200]!r}")
                    elif isinstance(status, int):
                        self.bad.append(f"{status}: {data[:200]!r}")
                first = False
                if status == 202 or time.monotonic() > t0 + self.duration + 20:
                    break
                wait = float(retry_after) if retry_after else 0.2
                time.sleep(min(max(wait, 0.05), 2.0) * (0.5 + random.random()))
        c.close()

    def start(self):
        t0 = time.monotonic()
        self.t0 = t0
        self.workers = [threading.Thread(target=self.worker, args=(t0, i), daemon=True)
                        for i in range(self.threads)]
        for w in self.workers:
            w.start()

    def join(self):
        for w in self.workers:
            w.join(timeout=self.duration + 60)


def pct(xs, p):
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p / 100))]


def check(cluster, producer, drain, load_acked=None):
    """Waits (bounded) until every acked tagged event was delivered; counts."""
    deadline = time.monotonic() + drain
    while True:
        seen = {}
        ids = {}
        load_ids = set()
        load_lines = 0
        dead = 0
        via_collector = 0
        for d, _, line in cluster.delivered():
            env = json.loads(line)
            if d == "/data/dead":
                dead += 1
            relayed = env.get("stream") == "relay" and isinstance(env.get("data"), dict)
            if relayed:
                env = env["data"]  # the processor's envelope, POSTed by its HTTP sink
            data = env.get("data") or {}
            if env.get("stream") == "chaos" and data.get("chaos") == producer.run:
                via_collector += relayed
                seen[data["seq"]] = seen.get(data["seq"], 0) + 1
                ids.setdefault(data["seq"], set()).add(env["id"])
            elif env.get("stream") == f"load-{producer.run}":
                load_lines += 1
                load_ids.add(env["id"])
        lost = producer.acked - seen.keys()
        load_ok = load_acked is None or len(load_ids) >= load_acked
        if (not lost and load_ok) or time.monotonic() > deadline:
            break
        time.sleep(2)
    return {
        "acked": len(producer.acked),
        "delivered_unique": len(seen),
        "acked_but_lost": len(lost),
        "lost_sample": sorted(lost)[:10],
        "duplicates": sum(seen.values()) - len(seen),
        # A duplicate under the event's own id (the same delivery redone: sink retry,
        # broker redelivery, gateway retry on another ingest) or under a new id (the
        # producer sent it again, its first answer lost).
        "duplicates_same_id": sum(seen[q] - len(ids[q]) for q in seen),
        "delivered_not_acked": len(seen.keys() - producer.acked),
        "dead_letters": dead,
        "via_collector": via_collector,
        "load_acked_events": load_acked,
        "load_delivered_unique": len(load_ids),
        "load_duplicates": load_lines - len(load_ids),
    }


def start_load(args, duration, project, stream, url):
    if not args.load_bin:
        return None, None
    out = os.path.join(args.workdir, f"load-{project}-{int(time.time())}.json")
    cmd = [args.load_bin, "load", "--url", url, "--ca", args.ca, "--mode", "http2",
           "--stream", stream, "--rate", str(args.load_rate), "-c", str(args.load_connections),
           "--batch", str(args.load_batch), "-d", f"{duration}s", "--timeout", "10s",
           "--threads", "1", "--quiet", "--json", out]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True), out


# A scenario: (description, duration s, [(at s, action name, service or arg)]
# [, options]). Actions: kill (SIGKILL), stop (SIGTERM), start (docker start, then
# time to healthy), restart (SIGTERM, then start), cut / join ("service:network":
# disconnect / connect it), fill / free (fill the service's /data file system /
# delete the filler), slow / fast ("service:network:rate": tc tbf on its egress /
# removed). After start, restart, join, free and fast the service's time to healthy
# is measured. Options: "url": "lb" (producers go through the balancer over two
# gateways, --lb-url), "wait": more services to be healthy before it starts,
# "alone": not part of `all` (it needs a compose overlay of its own, named there).
SCENARIOS = {
    "kill-ingest-nats": ("kill -9 an ingest container and a NATS node, restart both", 16,
                         [(4, "kill", "ingest1"), (4, "kill", "nats2"),
                          (9, "start", "ingest1"), (9, "start", "nats2")]),
    "kill-ingest": ("kill -9 an ingest container, restart it", 16,
                    [(4, "kill", "ingest2"), (9, "start", "ingest2")]),
    "kill-processor": ("kill -9 a processor container, restart it", 20,
                       [(4, "kill", "process1"), (9, "start", "process1")]),
    "kill-gateway": ("kill -9 the gateway, restart it", 16,
                     [(4, "kill", "gateway"), (6, "start", "gateway")]),
    "kill-nats-follower": ("kill -9 a NATS node (not the stream's leader), bring it back", 20,
                           [(4, "kill", "nats:follower"), (12, "start", "nats:follower")]),
    "kill-nats-leader": ("kill -9 the NATS node leading the stream, bring it back", 24,
                         [(4, "kill", "nats:leader"), (16, "start", "nats:leader")]),
    "cut-ingest-nats": ("cut an ingest node off NATS (network disconnect), reconnect", 24,
                        [(4, "cut", "ingest1:cluster"), (14, "join", "ingest1:cluster")]),
    "cut-gateway-ingest": ("cut the gateway off one ingest node, reconnect", 24,
                           [(4, "cut", "ingest2:edge"), (14, "join", "ingest2:edge")]),
    "disk-full-sink": ("a processor's file-sink volume fills up (ENOSPC), then is freed", 24,
                       [(4, "fill", "process3"), (14, "free", "process3")]),
    "rolling-restart": ("SIGTERM + start every sluice container in turn", 40,
                        [(3, "restart", "ingest1"), (8, "restart", "ingest2"),
                         (13, "restart", "process1"), (18, "restart", "process2"),
                         (23, "restart", "gateway")]),
    "http-sink-down": ("an HTTP sink's collector (process4 -> collector) stops for 10 s, "
                       "then starts", 24,
                       [(4, "stop", "collector"), (14, "start", "collector")],
                       {"wait": ["process4", "collector"], "logs": ["process4"]}),
    "kill-gateway-lb": ("two gateways behind haproxy, kill -9 one, restart it", 24,
                        [(4, "kill", "gateway2"), (14, "start", "gateway2")],
                        {"url": "lb", "wait": ["gateway2", "balancer"]}),
    "slow-ingest-nats": ("ingest1's link to NATS at 200 kbit/s with drops (tc tbf), then "
                         "restored", 24,
                         [(4, "slow", "ingest1:cluster:200kbit"), (14, "fast", "ingest1:cluster")]),
    "crawl-ingest-nats": ("ingest1's link to NATS at 32 kbit/s (tc tbf), then restored", 24,
                          [(4, "slow", "ingest1:cluster:32kbit"), (14, "fast", "ingest1:cluster")]),
    "lossy-ingest-nats": ("ingest1's link to NATS at 200 kbit/s with a 3,000-byte queue "
                          "(tc tbf: TCP's bursts overflow it, packets dropped), then restored", 24,
                          [(4, "slow", "ingest1:cluster:200kbit:3000"), (14, "fast", "ingest1:cluster")]),
    # nats3 led the consumer in both runs of 2026-12-02 19:44 and 19:51: delivery
    # stopped at the fill and neither freeing the disk nor a step-down (stream: done;
    # consumer: no answer) brought it back (bench/CHAOS.md); -restart adds the remedy
    # that is left, restarting nats3 (its tmpfs store comes back empty).
    "nats-disk-full": ("nats3's JetStream volume fills up (ENOSPC), then is freed; then "
                       "the consumer's and the stream's leadership are stepped down", 40,
                       [(4, "fill", "nats3"), (14, "free", "nats3"),
                        (24, "stepdown", "consumer"), (30, "stepdown", "stream")],
                       {"alone": "docker/chaos-nats-disk.yaml"}),
    "nats-disk-full-restart": ("nats3's JetStream volume fills up (ENOSPC), is freed, the "
                               "consumer's leadership stepped down, then nats3 restarted", 40,
                               [(4, "fill", "nats3"), (14, "free", "nats3"),
                                (20, "stepdown", "consumer"), (26, "restart", "nats3")],
                               {"alone": "docker/chaos-nats-disk.yaml"}),
}

# Scenarios whose faults touch NATS: the stream's leader before and after, and the
# NATS servers' log lines about leaders and storage, go into the result.
NATS_SCENARIOS = ("kill-ingest-nats", "kill-nats-follower", "kill-nats-leader", "nats-disk-full",
                  "nats-disk-full-restart")


def run_scenario(args, cluster, name):
    desc, duration, actions, *opts = SCENARIOS[name]
    opts = opts[0] if opts else {}
    url = args.lb_url if opts.get("url") == "lb" else args.url
    if not url:
        raise SystemExit(f"{name} needs --lb-url (the balancer of docker/chaos.yaml)")
    if args.duration:
        scale = args.duration / duration
        actions = [(t * scale, a, s) for t, a, s in actions]
        duration = args.duration
    log(f"{name}: {desc} ({duration}s)")
    for s in ("gateway", "ingest1", "ingest2", "process1", "process2", "nats1", "nats2",
              "nats3", *opts.get("wait", [])):
        cluster.wait_healthy(s, 120)
    leader_before = cluster.leader_or_none() if name in NATS_SCENARIOS else None
    consumer_leader_before = cluster.leader_or_none(True) if name in NATS_SCENARIOS else None
    wall0 = time.time()
    producer = Producer(url, args.ca, args.rate, args.batch, args.threads, duration)
    load, load_json = start_load(args, duration, cluster.project, f"load-{producer.run}", url)
    producer.start()
    events = []
    events_wall = []
    notes = {}
    ready = {}
    fault = [None, None]
    pending = []

    def time_to_healthy(service):
        try:
            ready[service] = round(cluster.wait_healthy(service, 120), 2)
        except RuntimeError as e:
            ready[service] = str(e)

    resolved = {}
    for at, action, service in sorted(actions):
        if service.startswith("nats:"):
            if service not in resolved:
                resolved[service] = cluster.resolve(service)
            service = resolved[service]
        now = time.monotonic() - producer.t0
        if at > now:
            time.sleep(at - now)
        t = time.monotonic() - producer.t0
        fault[0] = t if fault[0] is None else fault[0]
        if action == "kill":
            cluster.kill(service)
        elif action == "start":
            cluster.start(service)
        elif action == "stop":
            cluster.stop(service)
        elif action == "restart":
            cluster.stop(service)
            cluster.start(service)
        elif action in ("cut", "join"):
            service, net = service.split(":")
            if action == "cut":
                cluster.sh("docker", "network", "disconnect", cluster.network(net),
                           cluster.cid(service))
            else:
                cluster.sh("docker", "network", "connect", "--alias", service,
                           cluster.network(net), cluster.cid(service))
        elif action == "fill":
            cluster.fill(service)
        elif action == "free":
            cluster.free(service)
        elif action == "slow":
            service, net, rate, *limit = service.split(":")
            notes[f"slow {service}"] = f"{cluster.slow(service, net, rate, *limit)} tbf rate {rate} {limit}"
        elif action == "stepdown":
            notes[f"stepdown {service}"] = cluster.stepdown(service)
        elif action == "fast":
            service, net = service.split(":")
            notes[f"tc {service} at the end"] = cluster.fast(service, net)
        events.append((round(t, 2), action, service))
        events_wall.append((round(time.time(), 3), action, service))
        if action in ("start", "restart", "join", "free", "fast"):
            th = threading.Thread(target=time_to_healthy, args=(service,))
            th.start()
            pending.append(th)
        log(f"  t={t:5.1f}s {action} {service}")
    for th in pending:
        th.join(timeout=130)
    fault[1] = time.monotonic() - producer.t0
    producer.join()
    load_report = None
    if load:
        try:
            _, err = load.communicate(timeout=duration + 60)
        except subprocess.TimeoutExpired:
            load.kill()
            err = "timed out"
        if load.returncode == 0 and os.path.exists(load_json):
            with open(load_json) as f:
                load_report = json.load(f)
        else:
            log(f"sluice load failed ({load.returncode}): {err[-500:]}")
    load_acked = None
    if load_report:
        load_acked = load_report.get("events")
        if load_acked is None:
            load_acked = load_report.get("requests", 0) * args.load_batch
        load_acked += (load_report.get("warmup") or {}).get("events", 0)
    result = check(cluster, producer, args.drain, load_acked)
    if name in NATS_SCENARIOS:
        result["leader_before"] = leader_before
        result["leader_after"] = cluster.leader_or_none()
        result["consumer_leader_before"] = consumer_leader_before
        result["consumer_leader_after"] = cluster.leader_or_none(True)
        wanted = ("leader", "JetStream", "ERR", "WRN", "space", "storage", "resources")
        result["nats_log"] = {n: [l for l in cluster.logs(n, wall0) if any(w in l for w in wanted)][:40]
                              for n in ("nats1", "nats2", "nats3")}
    # What a filled or HTTP-sink node said about it (its warnings and errors).
    watched = {sv for _, a, sv in events if a in ("fill", "stop")} | set(opts.get("logs", []))
    result["service_log"] = {
        sv: [l for l in cluster.logs(sv, wall0) if "WARN" in l or "ERROR" in l][:30]
        for sv in sorted(watched)}
    refused = [t for t, st in producer.refusals if st in ("503", "429")]
    result.update({
        "events_wall": events_wall,
        "notes": notes,
        "url": url,
        "refusals_window_s": [refused[0], refused[-1]] if refused else None,
        "refusals": producer.refusals[:200],
    })
    during = [lat for due, lat, _ in producer.samples if fault[0] is not None and fault[0] <= due <= fault[1]]
    allv = [lat for _, lat, _ in producer.samples]
    result.update({
        "scenario": name,
        "description": desc,
        "duration_s": duration,
        "rate_req_s": args.rate,
        "batch": args.batch,
        "events": events,
        "statuses": producer.statuses,
        "bad_answers": len(producer.bad),
        "bad_sample": producer.bad[:5],
        "p99_ms_during_fault": round(pct(during, 99) * 1000, 1) if during else None,
        "p99_ms_all": round(pct(allv, 99) * 1000, 1) if allv else None,
        "p50_ms_all": round(pct(allv, 50) * 1000, 1) if allv else None,
        "time_to_healthy_s": ready,
    })
    if load_report:
        result["load"] = {k: load_report.get(k) for k in
                          ("requests", "events", "errors", "errors_by_kind", "latency_ms")
                          if k in load_report}
    # Nothing acked proves nothing: a scenario whose producers got no 202 (or whose
    # `sluice load` failed) fails.
    ok = result["acked_but_lost"] == 0 and not producer.bad and result["acked"] > 0 and \
        (not args.load_bin or load_report is not None) and \
        (load_acked is None or result["load_delivered_unique"] >= load_acked)
    result["ok"] = ok
    log(f"{name}: acked {result['acked']}, lost {result['acked_but_lost']}, "
        f"duplicates {result['duplicates']}, statuses {producer.statuses}, "
        f"p99 during fault {result['p99_ms_during_fault']} ms, ready {ready}, "
        f"load acked {load_acked} delivered {result['load_delivered_unique']} -> {'ok' if ok else 'FAILED'}")
    return result


def smoke(args, cluster):
    """One event through gateway -> ingest -> NATS -> processor -> file, bytes checked."""
    for s in ("gateway", "ingest1", "ingest2", "process1", "process2"):
        cluster.wait_healthy(s, 120)
    payload = json.dumps({"smoke": uuid.uuid4().hex, "n": 1, "text": "héllo"},
                         ensure_ascii=False, separators=(",", ":")).encode()
    host, port = args.url.removeprefix("https://").split(":")
    c = http.client.HTTPSConnection(host, int(port), timeout=15,
                                    context=ssl.create_default_context(cafile=args.ca))
    c.request("POST", "/v1/streams/smoke/events?ids=true", body=payload,
              headers={"content-type": "application/json"})
    r = c.getresponse()
    answer = r.read()
    if r.status != 202:
        raise SystemExit(f"smoke: the gateway answered {r.status}: {answer!r}")
    event_id = json.loads(answer)["ids"][0]
    t0 = time.monotonic()
    while time.monotonic() - t0 < 60:
        for d, name, line in cluster.delivered():
            if event_id.encode() in line:
                env = json.loads(line)
                want = b'"data":' + payload + b"}"
                if env["id"] != event_id or env["stream"] != "smoke" or not line.endswith(want):
                    raise SystemExit(f"smoke: delivered {line!r}, wanted ...{want!r}")
                log(f"smoke: event {event_id} delivered in {d}/{name} after "
                    f"{time.monotonic() - t0:.2f}s, bytes verbatim")
                return
        time.sleep(0.5)
    raise SystemExit(f"smoke: event {event_id} not delivered within 60 s")


class Sampler:
    """Once a second, while `sluice load` runs: each container's CPU (cgroup v1
    cpuacct), the host's CPU pressure (PSI "some"), the gateway's TCP counters
    (retransmits, listen overflows; nstat in its network namespace) and the load
    generator's peak RSS: what to lay beside the report's timeline to see where a
    stalled second came from."""

    def __init__(self, cluster, services, extra=None):
        self.cluster, self.services, self.extra = cluster, services, extra or {}
        self.rows = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)

    def ids(self):
        ids = {s: self.cluster.sh("docker", "inspect", "-f", "{{.Id}}", self.cluster.cid(s))
               for s in self.services}
        ids.update(self.extra)
        return ids

    @staticmethod
    def cpu_ns(cid):
        for path in (f"/sys/fs/cgroup/cpuacct/docker/{cid}/cpuacct.usage",
                     f"/sys/fs/cgroup/cpu,cpuacct/docker/{cid}/cpuacct.usage"):
            try:
                with open(path) as f:
                    return int(f.read())
            except OSError:
                pass
        return None

    @staticmethod
    def psi_us():
        try:
            with open("/proc/pressure/cpu") as f:
                return int(f.readline().split("total=")[1])
        except (OSError, IndexError, ValueError):
            return None

    def nstat(self, pid):
        out = subprocess.run(["nsenter", "-t", pid, "-n", "nstat", "-az",
                              "TcpRetransSegs", "TcpExtListenOverflows", "TcpExtListenDrops",
                              "TcpExtTCPTimeouts"], capture_output=True, text=True).stdout
        return {l.split()[0]: int(l.split()[1]) for l in out.splitlines()[1:] if l.split()}

    def loop(self):
        ids = self.ids()
        gw_pid = self.cluster.sh("docker", "inspect", "-f", "{{.State.Pid}}", self.cluster.cid("gateway"))
        prev = None
        while not self.stop.is_set():
            now = time.time()
            cur = {"cpu": {s: self.cpu_ns(c) for s, c in ids.items()}, "psi": self.psi_us(),
                   "tcp": self.nstat(gw_pid)}
            if prev:
                dt = now - prev[0]
                p = prev[1]
                self.rows.append({
                    "wall": round(now, 2),
                    "cpu_pct": {s: round((cur["cpu"][s] - p["cpu"][s]) / dt / 1e7, 1)
                                for s in ids if cur["cpu"][s] is not None and p["cpu"][s] is not None},
                    "psi_some_pct": round((cur["psi"] - p["psi"]) / dt / 1e4, 1)
                    if cur["psi"] is not None and p["psi"] is not None else None,
                    "gateway_tcp": {k: v - p["tcp"].get(k, 0) for k, v in cur["tcp"].items()},
                })
            prev = (now, cur)
            self.stop.wait(1.0)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(timeout=10)


def peak_rss(cluster, service):
    """VmHWM of the container's first process (sluice or nats-server), MiB."""
    out = cluster.sh("docker", "exec", cluster.cid(service), "cat", "/proc/1/status", check=False)
    for line in out.splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return None


def c10k(args, cluster):
    """`sluice load` in a container on the edge network (the host's docker-proxy
    would need two descriptors a connection, and this host caps a process at
    20,000), HTTP/1.1 over TLS to the gateway: every connection opened up front, then
    an open-model rate for --load-duration after --warmup. Writes the load report
    plus the per-second samples, RSS per role and the delivered count."""
    for s in ("gateway", "ingest1", "ingest2", "process1", "process2"):
        cluster.wait_healthy(s, 120)
    name = f"{cluster.project}-c10k-{os.getpid()}"
    stream = f"c10k-{uuid.uuid4().hex[:8]}"
    outdir = os.path.abspath(args.workdir)
    os.makedirs(outdir, exist_ok=True)
    os.chmod(outdir, 0o777)
    certs = os.path.join(ROOT, "docker/certs")
    cmd = ["docker", "run", "-d", "--name", name, "--network", cluster.network("edge"),
           "--ulimit", "nofile=20000:20000", "-v", f"{certs}:/certs:ro", "-v", f"{outdir}:/out",
           "--entrypoint", "sluice", args.image, "load", "--url", "https://gateway:8443",
           "--ca", "/certs/ca.pem", "--mode", "http1", "-c", str(args.connections),
           "--rate", str(args.load_rate), "-d", f"{args.load_duration}s",
           "--warmup", f"{args.warmup}s", "--stream", stream, "--timeout", "30s", "--quiet",
           "--json", f"/out/{stream}.json"]
    log(" ".join(cmd))
    try:
        cid = cluster.sh(*cmd)
    except RuntimeError:
        cluster.sh("docker", "rm", "-f", "-v", name, check=False)  # created, not started
        raise
    services = ["gateway", "ingest1", "ingest2", "nats1", "nats2", "nats3",
                *cluster.processors()]
    load_rss = 0
    with Sampler(cluster, services, {"load": cid}) as sampler:
        deadline = time.monotonic() + args.load_duration + args.warmup + 600
        while time.monotonic() < deadline:
            state = cluster.sh("docker", "inspect", "-f", "{{.State.Status}}", cid)
            if state != "running":
                break
            pid = cluster.sh("docker", "inspect", "-f", "{{.State.Pid}}", cid)
            try:
                with open(f"/proc/{pid}/status") as f:
                    for line in f:
                        if line.startswith("VmHWM:"):
                            load_rss = max(load_rss, int(line.split()[1]) // 1024)
            except OSError:
                pass
            time.sleep(1)
    finished = cluster.sh("docker", "inspect", "-f", "{{.State.FinishedAt}} {{.State.ExitCode}}", cid)
    logs = cluster.sh("docker", "logs", "--tail", "20", cid, check=False)
    cluster.sh("docker", "rm", "-f", "-v", cid, check=False)  # -v: the image's /data volume
    path = os.path.join(outdir, f"{stream}.json")
    if not os.path.exists(path):
        raise SystemExit(f"c10k: no report ({finished}): {logs}")
    with open(path) as f:
        report = json.load(f)
    rss = {s: peak_rss(cluster, s) for s in services}
    rss["load"] = load_rss
    acked = report["events"] + (report.get("warmup") or {}).get("events", 0)
    t0 = time.monotonic()
    delivered = 0
    while time.monotonic() - t0 < args.drain:
        ids = set()
        for _, _, line in cluster.delivered():
            if b'"stream":"' + stream.encode() + b'"' in line:
                ids.add(json.loads(line)["id"])
        delivered = len(ids)
        if delivered >= acked:
            break
        time.sleep(3)
    report["c10k"] = {"finished": finished, "rss_mib": rss, "acked_events": acked,
                      "delivered_unique": delivered, "samples": sampler.rows}
    with open(path, "w") as f:
        json.dump(report, f)
    lat = report["latency_ms"]
    log(f"c10k: {args.connections} connections at {args.load_rate}/s: {report['requests']} requests, "
        f"errors {report['errors']} {report.get('errors_by_kind')}, p50 {lat['p50']} p90 {lat['p90']} "
        f"p99 {lat['p99']} p99.9 {lat['p999']} max {lat['max']} ms; delivered {delivered} of {acked}; "
        f"RSS {rss}; report {path}")
    return report


def table(path):
    """The markdown table of a results file (JSON lines), as in bench/CHAOS.md."""
    print("| scenario | faults (s from start) | acked | acked-but-lost | duplicates | "
          "producers saw (tagged) | `sluice load`: ok / errors | p99 during fault (tagged; all) "
          "| time to healthy |")
    print("|---|---|---|---|---|---|---|---|---|")
    with open(path) as f:
        for line in f:
            r = json.loads(line)
            load = r.get("load") or {}
            errs = ", ".join(f"{k} {v}" for k, v in (load.get("errors_by_kind") or {}).items())
            saw = ", ".join(f"{k} {v}" for k, v in sorted(r["statuses"].items()))
            ready = ", ".join(f"{k} {v} s" for k, v in r["time_to_healthy_s"].items()) or "-"
            faults = ", ".join(f"{a} {sv} @{t:.1f}" for t, a, sv in r["events"])
            print(f"| {r['scenario']} | {faults} | {r['acked']:,} | **{r['acked_but_lost']}** | "
                  f"{r['duplicates']} ({r.get('duplicates_same_id', '?')} same id) | {saw} | {load.get('requests', 0):,} / "
                  f"{load.get('errors', 0):,}{' (' + errs + ')' if errs else ''} | "
                  f"{r['p99_ms_during_fault']} ms; {r['p99_ms_all']} ms | {ready} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("what", choices=["smoke", "run", "table", "c10k"])
    ap.add_argument("scenarios", nargs="*", default=[])
    ap.add_argument("--project", default=os.environ.get("COMPOSE_PROJECT_NAME", "sluice"))
    ap.add_argument("--url", default="https://127.0.0.1:8443")
    ap.add_argument("--lb-url", help="the balancer over two gateways (docker/chaos.yaml)")
    ap.add_argument("--ca", default=os.path.join(ROOT, "docker/certs/ca.pem"))
    ap.add_argument("--rate", type=float, default=100, help="tagged requests per second")
    ap.add_argument("--batch", type=int, default=10, help="tagged events per request")
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--duration", type=float, help="override each scenario's length (s)")
    ap.add_argument("--drain", type=float, default=90, help="seconds to wait for delivery")
    ap.add_argument("--load-bin", help="a sluice binary: run `sluice load` beside")
    ap.add_argument("--load-rate", type=float, default=500)
    ap.add_argument("--load-batch", type=int, default=1)
    ap.add_argument("--load-connections", type=int, default=16)
    ap.add_argument("--workdir", default="/tmp")
    ap.add_argument("--connections", type=int, default=10000, help="c10k: connections")
    ap.add_argument("--load-duration", type=float, default=30, help="c10k: measured seconds")
    ap.add_argument("--warmup", type=float, default=5, help="c10k: warm-up seconds")
    ap.add_argument("--image", default=os.environ.get("IMAGE", "sluice:test"), help="c10k: sluice image")
    ap.add_argument("--json", help="append the results here (JSON lines)")
    args = ap.parse_args()
    if args.what == "table":
        for path in args.scenarios:
            table(path)
        return 0
    cluster = Cluster(args.project)
    if args.what == "smoke":
        smoke(args, cluster)
        return 0
    if args.what == "c10k":
        c10k(args, cluster)
        return 0
    names = args.scenarios or ["kill-ingest-nats"]
    if names == ["all"]:
        names = [n for n, sc in SCENARIOS.items()
                 if not (len(sc) > 3 and sc[3].get("alone")) and (args.lb_url or not
                                                                   (len(sc) > 3 and sc[3].get("url")))]
    failed = False
    for name in names:
        if name not in SCENARIOS:
            raise SystemExit(f"unknown scenario {name}; one of {', '.join(SCENARIOS)}")
        result = run_scenario(args, cluster, name)
        failed |= not result["ok"]
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps(result) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
