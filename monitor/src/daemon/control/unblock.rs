//! `monitor unblock CIDR`: lifts a ban on exactly this source and any expiring deny entry
//! for exactly this CIDR.

use anyhow::{Result, bail};
use serde_json::Value;

use super::{Maps, cidr, done};
use crate::daemon::Shared;

pub fn run<M: Maps>(shared: &Shared<M>, input: &str) -> Result<Value> {
    let c = cidr(input)?;
    if shared.writer().unblock(&c)? {
        done(format!("unblocked {c}"))
    } else {
        bail!("{c} is not blocked (no ban and no expiring deny entry for exactly this CIDR)")
    }
}
