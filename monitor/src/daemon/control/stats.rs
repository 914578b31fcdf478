//! `monitor stats`: the kernel's counters, summed over CPUs.

use anyhow::Result;
use serde_json::Value;

use super::{Maps, counters, json};
use crate::daemon::Shared;

pub fn run<M: Maps>(shared: &Shared<M>) -> Result<Value> {
    Ok(json(counters(shared)?))
}
