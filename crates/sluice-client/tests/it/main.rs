//! Integration tests of sluice-client against real in-process sluice nodes.

mod batch;
mod http2;
mod load;
mod retry;
mod send;
mod support;
mod timing;
