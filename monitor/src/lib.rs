//! The library behind the `monitor` binary: kernel access, policy values, and (in their own
//! modules) the daemon, its control protocol and the CLI.

pub mod batch;
pub mod cidr;
pub mod clock;
pub mod kernel;
pub mod limit;
pub mod units;
