//! Integration tests of sluice-client against real in-process sluice nodes.

mod batch;
mod http2;
mod retry;
mod support;
mod timing;
