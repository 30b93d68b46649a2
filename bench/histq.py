#!/usr/bin/env python3
"""Quantiles of sluice's own request-duration histogram between two readings, to set
beside the client's: the server's figure runs from the request's headers to its
response (the WAL ack included), so a client p99 far above it is time spent before
the request is read or after it is answered (connection scheduling, the socket).

  bench/histq.py save ADMIN_PORT FILE     remember the histogram now
  bench/histq.py since ADMIN_PORT FILE    print the quantiles of what came since
Quantiles are bucket upper bounds (the histogram doubles from 50 us)."""
import json, re, sys, urllib.request

NAME = "sluice_http_request_duration_seconds_bucket"


def read(port):
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    buckets = {}
    for line in text.splitlines():
        if line.startswith(NAME) and 'class="2xx"' in line:
            le = re.search(r'le="([^"]+)"', line).group(1)
            buckets[le] = float(line.rsplit(" ", 1)[1])
    return buckets


def main():
    op, port, path = sys.argv[1:4]
    if op == "save":
        json.dump(read(port), open(path, "w"))
        return
    before, now = json.load(open(path)), read(port)
    bounds = sorted(now, key=lambda k: float("inf") if k == "+Inf" else float(k))
    counts = [(b, now[b] - before.get(b, 0)) for b in bounds]
    total = counts[-1][1] if counts else 0
    out = [f"server-side, {int(total)} requests:"]
    for q in (0.5, 0.9, 0.99, 0.999):
        for b, c in counts:
            if total and c >= q * total:
                out.append(f"p{q * 100:g} <= {float(b) * 1000:g} ms")
                break
    print(" ".join(out))


main()
