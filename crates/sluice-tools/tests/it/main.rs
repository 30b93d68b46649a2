//! Integration tests of `sluice load` and `sluice send` against real in-process
//! sluice nodes.

mod load;
mod send;
// The client's test support (nodes, metrics, certificates), shared rather than copied.
#[allow(dead_code)]
#[path = "../../../sluice-client/tests/it/support.rs"]
mod support;
