#!/usr/bin/env bash
# Where the 1,000-connection tail is: the same sluice with the WAL (ack fsync, ack
# write) and with the memory queue, pinned to core 0, under `wrk -t1 -c1000` on core 1
# (3 s warm-up, then SECONDS); prints each one's latency distribution, and beside it
# the server's own (bench/histq.py: headers to response, the ack included), so a
# client tail the server does not see is known to lie outside the handler.
# Usage: bench/tail.sh [BIN] [SECONDS]      Needs wrk.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/release/sluice} secs=${2:-10}
work=$(mktemp -d)
pid=""
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"' EXIT
python3 - "$work" <<'PY'
import sys
e = open("../shared/bench/event.json").read().strip()
open(sys.argv[1] + "/ev.lua", "w").write(
    'wrk.method = "POST"; wrk.body = [[%s]]; wrk.headers["Content-Type"] = "application/json"\n' % e)
PY
free() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
for mode in wal wal-write memory; do
    case $mode in
        wal) extra=() ;;
        wal-write) extra=(--ack write) ;;
        memory) extra=(--queue memory) ;;
    esac
    port=$(free) admin=$(free)
    rm -rf "$work/data"
    taskset -c 0 "$bin" serve --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$admin" \
        --data-dir "$work/data" "${extra[@]}" >"$work/$mode.log" 2>&1 &
    pid=$!
    for _ in $(seq 50); do curl -sf "127.0.0.1:$admin/healthz" >/dev/null && break; sleep 0.1; done
    url="http://127.0.0.1:$port/v1/streams/b/events"
    taskset -c 1 wrk -t1 -c1000 -d3s -s "$work/ev.lua" "$url" >/dev/null
    echo "== $mode"
    bench/histq.py save "$admin" "$work/hist.json"
    taskset -c 1 wrk -t1 -c1000 -d"${secs}s" -s "$work/ev.lua" --latency "$url" |
        grep -E "Latency|50%|75%|90%|99%|Requests/sec"
    bench/histq.py since "$admin" "$work/hist.json"
    kill "$pid"
    wait "$pid" 2>/dev/null || true
    pid=""
done
