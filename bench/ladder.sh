#!/usr/bin/env bash
# Where a single-event request's CPU goes, layer by layer, at 64 connections: the same
# wrk load (one 203-byte event per POST) against a ladder of servers, each pinned to
# core 0 with wrk on core 1, one after the other in each round:
#   nginx        one nginx worker answering 204 (the yardstick: HTTP and TCP alone)
#   hyper-floor  sluice's admin listener, GET /healthz (sluice's HTTP stack: tokio,
#                hyper, the connection deadlines and counters; no handler work)
#   memory       POST to sluice --queue memory --sink blackhole (the ingest handler:
#                auth, admission, validation, ids, metrics; no WAL)
#   wal-write    --ack write --sink blackhole (+ the WAL record and write, no fsync)
#   wal-fsync    --sink blackhole (+ the fsync a 202 waits for)
#   default      the defaults: WAL, ack fsync, file sink (+ delivery and its fsync)
# For each: req/s, p99, core 0's busy share (user+system+irq+softirq from
# /proc/stat over the measured seconds) and so the CPU per request in µs, and the
# share of nginx's req/s. Usage: bench/ladder.sh [BIN] [SECONDS] [ROUNDS]
# (env STEPS="nginx memory ..." picks steps, CONNS=1000 the connections). Needs wrk, nginx-light, python3.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/release/sluice} secs=${2:-10} rounds=${3:-3}
steps=${STEPS:-nginx hyper-floor memory wal-write wal-fsync default}
conns=${CONNS:-64}
PATH=$PATH:/usr/sbin
event=../shared/bench/event.json
work=$(mktemp -d)
pid=""
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"' EXIT
free() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
cat >"$work/post.lua" <<LUA
local f = assert(io.open("$event", "rb")); local body = f:read("*all"); f:close()
wrk.method = "POST"; wrk.body = body; wrk.headers["Content-Type"] = "application/json"
LUA
# core 0's busy and total jiffies
cpu0() { awk '$1 == "cpu0" { print $2+$3+$4+$7+$8, $2+$3+$4+$5+$6+$7+$8 }' /proc/stat; }
up() { for _ in $(seq 100); do curl -sf "$1" >/dev/null && return; sleep 0.1; done
    echo "ladder: server did not start" >&2; cat "$work/server.log" >&2; exit 1; }
start() { # STEP -> sets pid and url
    local port admin
    port=$(free) admin=$(free)
    rm -rf "$work/data"
    case $1 in
    nginx)
        cat >"$work/nginx.conf" <<NG
worker_processes 1; daemon off; pid $work/nginx.pid; error_log $work/nginx.err;
events { worker_connections 4096; }
http { access_log off; client_body_buffer_size 256k; server { listen 127.0.0.1:$port; location / { return 204; } } }
NG
        taskset -c 0 nginx -c "$work/nginx.conf" >"$work/server.log" 2>&1 &
        pid=$! url=http://127.0.0.1:$port/
        sleep 1
        return ;;
    hyper-floor | memory) extra=(--queue memory --sink blackhole) ;;
    wal-write) extra=(--ack write --sink blackhole) ;;
    wal-fsync) extra=(--sink blackhole) ;;
    default) extra=() ;;
    esac
    taskset -c 0 "$bin" serve --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$admin" \
        --data-dir "$work/data" "${extra[@]}" >"$work/server.log" 2>&1 &
    pid=$!
    up "127.0.0.1:$admin/healthz"
    url=http://127.0.0.1:$port/v1/streams/bench/events
    [ "$1" = hyper-floor ] && url=http://127.0.0.1:$admin/healthz
    return 0
}
echo "== $(date -u +%FT%TZ) $(git rev-parse --short HEAD); $bin; $conns connections, ${secs}s after 3 s warm-up"
for r in $(seq "$rounds"); do
    nginx_rps=""
    for step in $steps; do
        start "$step"
        script=(-s "$work/post.lua")
        [ "$step" = hyper-floor ] && script=()
        taskset -c 1 wrk -t1 -c"$conns" -d3s "${script[@]}" "$url" >/dev/null
        read -r b0 t0 < <(cpu0)
        taskset -c 1 wrk -t1 -c"$conns" -d"${secs}s" "${script[@]}" --latency "$url" >"$work/wrk.out"
        read -r b1 t1 < <(cpu0)
        rss=$(awk '/VmHWM/ {print int($2/1024)}' "/proc/$pid/status")
        kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""
        rps=$(awk '/Requests\/sec/ {print $2}' "$work/wrk.out")
        p99=$(awk '$1 == "99%" {print $2}' "$work/wrk.out")
        bad=$(awk '/Non-2xx/ {print $NF}' "$work/wrk.out")
        [ "$step" = nginx ] && nginx_rps=$rps
        python3 - "$r" "$step" "$rps" "$p99" "$((b1 - b0))" "$((t1 - t0))" "${nginx_rps:-0}" "$rss" "${bad:-0}" <<'PY'
import sys
r, step, rps, p99, busy, total, ng, rss, bad = sys.argv[1:]
rps, busy, total, ng = float(rps), int(busy), int(total), float(ng)
share = busy / total if total else 0
us = share * 1e6 / rps if rps else 0
vs = f"{100 * rps / ng:5.1f} % of nginx" if ng else ""
print(f"round {r} {step:<12} {rps:9.0f} req/s  p99 {p99:>8}  core0 busy {100 * share:5.1f} %"
      f"  {us:5.1f} us/req  {vs}  RSS {rss} MiB  non-2xx {bad}")
PY
    done
done
