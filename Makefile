# The commands people reach for; each is a thin name for what the README documents.
#   make run      sluice on its embedded defaults (HTTP :8080, admin :9090, ./sluice-data)
#   make test     the whole test suite, as CI runs it (scripts/test)
#   make lint     rustfmt and clippy, as CI would refuse them
#   make build    the release binary (target/release/sluice)
#   make minimal  a release binary without the broker backends (no librdkafka)
#   make release  the stripped release binary and the container image sluice:latest
#   make bench    the end-to-end benchmark (bench/e2e.py; server on core 0, wrk on core 1)
#   make profile  CPU, off-CPU, lock and heap flame graphs of a loaded node (scripts/profile)
#   make fuzz     every fuzz target for FUZZ_SECONDS (default 60) each
.PHONY: run test lint build minimal release bench profile fuzz

FUZZ_SECONDS ?= 60
PROFILE_SECONDS ?= 10

run:
	cargo run --release -- serve

test:
	scripts/test

lint:
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings

build:
	cargo build --release -p sluice

minimal:
	cargo build --release -p sluice --no-default-features

release: build
	strip target/release/sluice
	scripts/docker-images
	docker build --target runtime -t sluice:latest .

bench: build
	python3 bench/e2e.py --bin target/release/sluice

profile:
	scripts/profile --seconds $(PROFILE_SECONDS)

fuzz:
	scripts/fuzz $(FUZZ_SECONDS)
