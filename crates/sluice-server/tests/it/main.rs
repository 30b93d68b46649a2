//! Integration tests of sluice's front doors with in-process nodes: real listeners on
//! 127.0.0.1, real files in temp dirs, real HTTP, gRPC and TLS clients.

/// jemalloc with its heap profiler sampling (.cargo/config.toml), as a `--features
/// jemalloc` binary runs: what `/debug/pprof/heap` reads.
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

mod auth;
mod backpressure;
mod debug;
mod grpc;
mod http_sink;
mod ingest;
mod limits;
mod slow_clients;
mod support;
mod tenants;
mod tls;
mod ui;
