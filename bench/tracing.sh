#!/usr/bin/env bash
# What tracing costs a node, with the yardstick of the same run: for each case, one
# round of ../shared/bench/yardstick.sh (nginx 204, then sluice serve with the WAL,
# fsync and the file sink; single events at 64 and 1,000 connections, NDJSON bodies),
# cases in alternating order so that the host's drift falls on all of them:
#   base  BASE_BIN (an older build, without tracing), if given
#   off   BIN, no endpoint configured (tracing off: the default)
#   all   BIN exporting every request's spans over OTLP/HTTP to bench/otlp_sink.py
#   1pct  BIN with OTEL_TRACES_SAMPLER=parentbased_traceidratio, ARG=0.01
#   je    JE_BIN (BIN's code built with --features jemalloc), tracing off, if given
# Usage: bench/tracing.sh [BIN] [SECONDS] [ROUNDS] [BASE_BIN] [JE_BIN]
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/release/sluice} secs=${2:-15} rounds=${3:-2} base=${4:-} je=${5:-}
yard=../shared/bench/yardstick.sh
port=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
python3 bench/otlp_sink.py --port "$port" > /tmp/otlp_sink.$$.json &
sink=$!
trap 'kill $sink 2>/dev/null || true' EXIT
cases="off all 1pct"
[ -n "$base" ] && cases="base $cases"
[ -n "$je" ] && cases="$cases je"
for r in $(seq "$rounds"); do
    # Alternate the order between rounds.
    [ $((r % 2)) -eq 0 ] && cases=$(echo "$cases" | tr ' ' '\n' | tac | tr '\n' ' ')
    for c in $cases; do
        case $c in
            base) line=$(env -u OTEL_EXPORTER_OTLP_ENDPOINT "$yard" "$base" "$secs" 1) ;;
            off) line=$(env -u OTEL_EXPORTER_OTLP_ENDPOINT "$yard" "$bin" "$secs" 1) ;;
            je) line=$(env -u OTEL_EXPORTER_OTLP_ENDPOINT "$yard" "$je" "$secs" 1) ;;
            all) line=$(OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:$port \
                OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf "$yard" "$bin" "$secs" 1) ;;
            1pct) line=$(OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:$port \
                OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf \
                OTEL_TRACES_SAMPLER=parentbased_traceidratio OTEL_TRACES_SAMPLER_ARG=0.01 \
                "$yard" "$bin" "$secs" 1) ;;
        esac
        printf '%-5s %s\n' "$c" "${line#round 1 }"
    done
done
kill $sink
wait $sink 2>/dev/null || true
echo "collector received: $(cat /tmp/otlp_sink.$$.json)"
rm -f /tmp/otlp_sink.$$.json
