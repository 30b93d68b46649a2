//! Integration tests of sluice: real servers on 127.0.0.1, real files in temp dirs,
//! real HTTP clients; the crash and shutdown tests run the real binary.

mod auth;
mod backpressure;
mod brokers;
mod cli;
mod crash;
mod disk;
mod gateway;
mod grpc;
mod hostile;
mod http_sink;
mod ingest;
mod isolation;
mod kafka;
mod limits;
mod nats;
mod slow_clients;
mod support;
mod tls;
