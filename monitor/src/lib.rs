//! The library behind the `monitor` binary: kernel access, policy values, the daemon, its
//! control protocol and the CLI.

pub mod batch;
pub mod cidr;
pub mod cli;
pub mod clock;
pub mod config;
pub mod control;
pub mod daemon;
pub mod history;
pub mod kernel;
pub mod limit;
pub mod logging;
pub mod metrics;
pub mod timefmt;
pub mod units;
