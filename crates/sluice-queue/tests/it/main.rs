//! Integration tests of sluice-queue's public API, one binary for the crate (a
//! module per queue).

mod memory;
mod tracker;
mod wal;
