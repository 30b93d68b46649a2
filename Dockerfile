# sluice as a container image: one small runtime image (Debian 12 slim, a non-root
# user, /data as the volume), made either from a binary you built or from source.
#
#   From a binary (no network needed; what scripts/test does with its debug build):
#     cargo build --release && strip target/release/sluice   # (its debug info: 125 MB -> 17 MB)
#     docker build --target runtime -t sluice .        # --build-arg BINARY=path/in/context
#
#   From source, on a machine that can pull rust:1-bookworm and reach crates.io
#   (the default target; not tested by scripts/test, whose machine has no registry):
#     docker build -t sluice .
#
# Run it (the image's defaults: listen 0.0.0.0:8080, admin 0.0.0.0:9090, data /data):
#   docker run -d -p 127.0.0.1:8080:8080 -p 127.0.0.1:9090:9090 -v sluice-data:/data --stop-timeout 40 \
#       sluice serve --allow-unauthenticated        # or mount a config with [[auth.keys]]
#
# SIGTERM (docker stop) is sluice's shutdown: 503 to new requests, in-flight ones
# finished, fsync, the processor commits, exit 0, within shutdown_grace (30 s by
# default) - so give `docker stop` / compose's stop_grace_period more than that.
# The health check is `sluice health`: GET /readyz on the admin listener (plain HTTP:
# with TLS set SLUICE_TLS__ADMIN=false and keep the admin port private; if you move
# the admin port, override HEALTHCHECK with `sluice health --url http://127.0.0.1:PORT/readyz`).

FROM debian:bookworm-slim AS base
RUN useradd --system --uid 10001 --user-group --home-dir /data --no-create-home \
        --shell /usr/sbin/nologin sluice \
    && install -d -o sluice -g sluice -m 0750 /data
ENV SLUICE_LISTEN=0.0.0.0:8080 \
    SLUICE_ADMIN_LISTEN=0.0.0.0:9090 \
    SLUICE_DATA_DIR=/data
WORKDIR /data
VOLUME /data
EXPOSE 8080 9090
USER sluice
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=5s --timeout=4s --start-period=20s --retries=3 \
    CMD ["sluice", "health"]
ENTRYPOINT ["sluice"]
CMD ["serve"]

# The image from a prebuilt binary: BINARY is its path inside the build context.
FROM base AS runtime
ARG BINARY=target/release/sluice
COPY ${BINARY} /usr/local/bin/sluice
RUN ["sluice", "--version"]

# Source build (needs network: the rust image and crates.io).
FROM rust:1-bookworm AS builder
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
# jemalloc's build-time malloc conf (heap sampling for /debug/pprof/heap).
COPY .cargo .cargo
COPY proto proto
COPY crates crates
RUN cargo build --release --locked -p sluice \
    && strip target/release/sluice \
    && cp target/release/sluice /usr/local/bin/sluice

FROM base AS from-source
COPY --from=builder /usr/local/bin/sluice /usr/local/bin/sluice
RUN ["sluice", "--version"]
