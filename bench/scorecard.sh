#!/usr/bin/env bash
# Every row of issue #16's table in one sitting, so each figure has the same host (and
# the nginx yardstick of the same run) beside it:
#   1. ../shared/bench/yardstick.sh: nginx 204 vs sluice (WAL, ack fsync, file sink),
#      single 203-byte events at 64 and 1,000 connections, NDJSON at 16 connections;
#   2. the open model: `sluice load -c 1000 --rate R` for each rate, p99 and p999;
#   3. NDJSON sustained: 1,000-event bodies for SUSTAIN seconds, delivered events/s
#      (from the sink's counter) against accepted, and peak RSS;
#   4. the broker path: bench/brokers.py --native for NATS and Kafka (skipped when
#      nats-server or tansu is missing, or with BROKERS=0).
# Server on core 0, load on core 1. Usage:
#   bench/scorecard.sh [BIN] [SECONDS] [ROUNDS]     (env: RATES="10000 20000" SUSTAIN=60)
# Needs wrk, nginx, bc (apt-get install -y wrk nginx-light bc); brokers: scripts/install-brokers
# and `cargo build --release -p sluice-brokers --all-features --examples`.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/release/sluice} secs=${2:-15} rounds=${3:-3}
rates=${RATES:-10000 20000} sustain=${SUSTAIN:-60}
event=../shared/bench/event.json
work=$(mktemp -d)
pid=""
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"' EXIT
free() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
start() { # a fresh `sluice serve` on core 0 with its defaults (WAL, ack fsync, file sink)
    port=$(free) admin=$(free)
    rm -rf "$work/data"
    taskset -c 0 "$bin" serve --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$admin" \
        --data-dir "$work/data" >"$work/serve.log" 2>&1 &
    pid=$!
    for _ in $(seq 100); do curl -sf "127.0.0.1:$admin/healthz" >/dev/null && return; sleep 0.1; done
    echo "scorecard: sluice did not start" >&2; cat "$work/serve.log" >&2; exit 1
}
stop() { kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""; }
delivered() { curl -s "127.0.0.1:$admin/metrics" | awk '/^sluice_sink_delivered_events_total/ {s+=$2} END {printf "%d", s}'; }
peak_rss() { awk '/VmHWM/ {print int($2/1024)}' "/proc/$pid/status"; }

echo "== $(date -u +%FT%TZ) $(git rev-parse --short HEAD) $(nproc) cores; $bin"
echo "== 1. yardstick, $rounds rounds of ${secs}s"
../shared/bench/yardstick.sh "$bin" "$secs" "$rounds"

echo "== 2. open model, 1,000 connections, ${secs}s after 3 s of warm-up"
for rate in $rates; do
    start
    taskset -c 1 "$bin" load --url "http://127.0.0.1:$port" --stream bench -c 1000 --rate "$rate" \
        --template "$event" -d "${secs}s" --warmup 3s --threads 1 --quiet --json "$work/open.json" >/dev/null
    python3 - "$work/open.json" "$rate" "$(peak_rss)" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); l = r["latency_ms"]
print(f"rate {sys.argv[2]:>6}: achieved {r['requests_per_s']:8.0f} req/s, errors {r['errors']}, "
      f"p50 {l['p50']:.1f} p99 {l['p99']:.1f} p999 {l['p999']:.1f} max {l['max']:.1f} ms, peak RSS {sys.argv[3]} MiB")
PY
    stop
done

echo "== 3. NDJSON sustained: 1,000 x 203-byte events per body, 16 connections, ${sustain}s"
python3 -c "
e = open('$event').read().strip()
open('$work/batch.ndjson', 'w').write((e + '\n') * 1000)"
cat >"$work/batch.lua" <<LUA
local f = assert(io.open("$work/batch.ndjson", "rb")); local body = f:read("*all"); f:close()
wrk.method = "POST"; wrk.body = body; wrk.headers["Content-Type"] = "application/x-ndjson"
LUA
start
url="http://127.0.0.1:$port/v1/streams/bench/events"
taskset -c 1 wrk -t1 -c16 -d5s -s "$work/batch.lua" "$url" >/dev/null
d0=$(delivered)
taskset -c 1 wrk -t1 -c16 -d"${sustain}s" -s "$work/batch.lua" --latency "$url" >"$work/nd.txt"
d1=$(delivered)
acc=$(awk '/Requests\/sec/ {printf "%d", $2 * 1000}' "$work/nd.txt")
p99=$(awk '$1 == "99%" {print $2}' "$work/nd.txt")
echo "accepted $acc events/s, delivered $(( (d1 - d0) / sustain )) events/s, p99 $p99, $(grep -c Non-2xx "$work/nd.txt" || true) non-2xx lines, peak RSS $(peak_rss) MiB"
stop

if [ "${BROKERS:-1}" = 1 ] && command -v nats-server >/dev/null && { command -v tansu >/dev/null || [ -x ~/.cargo/bin/tansu ]; }; then
    echo "== 4. broker path, beside native clients"
    python3 bench/brokers.py --queues nats,kafka --native --event "$event" --runs "$rounds" \
        --duration "$secs" --warmup 5 --bin "$bin"
else
    echo "== 4. broker path skipped (BROKERS=0, or nats-server/tansu missing: scripts/install-brokers)"
fi
