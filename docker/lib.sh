# Sourced by scripts/docker-test and scripts/chaos: the compose command, the image
# from a binary, and a cluster under its own project name, torn down on exit.

if docker compose version >/dev/null 2>&1; then
    compose=(docker compose)
else
    compose=(docker-compose)
fi

# The image the cluster runs (compose.yaml's IMAGE): its own tag, so a test never
# replaces the sluice:latest a user built.
export IMAGE="${IMAGE:-sluice:test}"

# build_image BINARY: $IMAGE from ./Dockerfile (target runtime), from BINARY without
# its debug info, in a context holding only it.
build_image() {
    local binary="$1" context
    context="$(mktemp -d -t sluice-docker.XXXXXX)"
    strip -o "$context/sluice" "$binary" 2>/dev/null || cp "$binary" "$context/sluice"
    local out
    out="$(docker build -q --target runtime --build-arg BINARY=sluice -t "$IMAGE" \
        -f Dockerfile "$context" 2>&1)" || {
        echo "$out" >&2
        rm -rf "$context"
        return 1
    }
    rm -rf "$context"
    echo "docker: image $IMAGE $(docker image inspect -f '{{.Size}}' "$IMAGE" |
        awk '{printf "%.0f MB", $1/1e6}')" >&2
}

# cluster_up PROJECT [COMPOSE FILE...]: starts it with the gateway on a free loopback
# port (GATEWAY_PORT), waits for every health check; cluster_down on exit.
cluster_up() {
    project="$1"
    shift
    files=(-f compose.yaml)
    for f in "$@"; do files+=(-f "$f"); done
    GATEWAY_PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    export GATEWAY_PORT
    trap cluster_down EXIT
    "${compose[@]}" -p "$project" "${files[@]}" up -d --no-build >/dev/null 2>&1 || {
        "${compose[@]}" -p "$project" "${files[@]}" ps >&2
        return 1
    }
}

cluster_down() {
    local status=$?
    if [ $status -ne 0 ]; then
        echo "docker: failed; the cluster's last log lines:" >&2
        "${compose[@]}" -p "$project" "${files[@]}" logs --tail 30 >&2 2>&1 || true
    fi
    "${compose[@]}" -p "$project" "${files[@]}" down -v --remove-orphans -t 5 >/dev/null 2>&1 || true
    exit $status
}
