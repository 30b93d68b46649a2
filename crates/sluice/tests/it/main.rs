//! Integration tests of the `sluice` binary and of the broker queues: real servers on
//! 127.0.0.1, real brokers, real files in temp dirs; the crash, shutdown and
//! scale-out tests run the real binary. The in-process node tests are in
//! sluice-server's tests, whose support module this crate shares.

mod brokers;
mod cli;
mod crash;
mod disk;
mod gateway;
mod hostile;
mod isolation;
mod kafka;
mod nats;
mod procs;
#[path = "../../../sluice-server/tests/it/support.rs"]
mod support;
mod telemetry;
mod top;
