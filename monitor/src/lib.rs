//! The library behind the `monitor` binary: kernel access, policy values, the daemon, its
//! control protocol and the CLI.
//!
//! Policy flows one way: `cli` -> `proto` (the control socket) -> `daemon::control` (one
//! handler per command) -> `daemon::writer` (the only code that writes maps) -> the kernel.

pub mod batch;
pub mod cidr;
pub mod cli;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod history;
pub mod kernel;
pub mod limit;
pub mod logging;
pub mod metrics;
pub mod proto;
pub mod source_table;
pub mod timefmt;
pub mod units;
