//! Integration tests of sluice: real servers on 127.0.0.1, real files in temp dirs,
//! real HTTP clients; the crash and shutdown tests run the real binary.

mod auth;
mod backpressure;
mod cli;
mod crash;
mod gateway;
mod grpc;
mod ingest;
mod kafka;
mod limits;
mod support;
mod tls;
