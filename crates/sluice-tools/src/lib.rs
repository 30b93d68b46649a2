//! The command-line tools built on [`sluice_client`], behind `sluice load` and
//! `sluice send`:
//!
//! - [`load`]: an open- or closed-model load generator for the HTTP and gRPC APIs,
//!   with HDR histograms and table / JSON / HTML reports.
//! - [`send`]: NDJSON from a file or stdin to a stream, in batches.
//! - [`top`]: one or several nodes' pipelines, live in a terminal.
//!
//! Their flags are `clap` types ([`load::LoadArgs`], [`send::SendArgs`]) that the
//! binary flattens into its subcommands; durations and sizes use the config file's
//! grammar ([`sluice_core::units`]).
#![forbid(unsafe_code)]

pub mod load;
pub mod send;
pub mod top;
