//! Integration tests of sluice: real servers on 127.0.0.1, real files in temp dirs,
//! real HTTP clients; the crash and shutdown tests run the real binary.

mod auth;
mod backpressure;
mod brokers;
mod cli;
mod crash;
mod gateway;
mod grpc;
mod hostile;
mod http_sink;
mod ingest;
mod kafka;
mod limits;
mod nats;
mod support;
mod tls;
