//! sluice's front doors and their wiring: the HTTP ingest API, the admin endpoints,
//! configuration, metrics and the `sluice serve` node with its shutdown path.
#![forbid(unsafe_code)]

pub mod auth;
pub mod build;
pub mod config;
pub mod error;
pub mod front;
pub mod gateway;
pub mod grpc;
pub mod http;
pub mod limit;
pub mod metrics;
pub mod node;
#[cfg(feature = "test-util")]
pub mod test_util;
pub mod tls;

pub use config::Config;
pub use node::{Node, NodeOptions, Role, StartError};
