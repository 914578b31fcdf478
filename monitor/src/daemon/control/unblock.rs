//! `monitor unblock CIDR`: lifts a ban on exactly this source and any expiring deny entry
//! for exactly this CIDR.

use anyhow::{Result, bail};
use serde_json::Value;

use super::{Maps, cidr, done};
use crate::daemon::{
    Shared,
    fleet::entry::{Entry, Op},
};

pub fn run<M: Maps>(shared: &Shared<M>, input: &str) -> Result<Value> {
    let c = cidr(input)?;
    let lifted = shared.writer().unblock(&c)?;
    if let Some(fleet) = &shared.fleet {
        // Any host may unblock a fleet ban, whether or not it holds the ban yet.
        fleet.submit(Entry {
            op: Op::Unblock,
            src: c,
            until_ms: 0,
            origin: fleet.settings.id.clone(),
            reason: "manual".into(),
        });
        let here = if lifted { "here and " } else { "" };
        return done(format!("unblocked {c} ({here}sent to the fleet)"));
    }
    if lifted {
        done(format!("unblocked {c}"))
    } else {
        bail!("{c} is not blocked (no ban and no expiring deny entry for exactly this CIDR)")
    }
}
